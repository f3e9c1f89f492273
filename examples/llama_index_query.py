"""A llama-index query engine over a ragkit index: ragkit retrieval (optionally MaxSim-reranked)
answered by a ragkit LLM (default: the packaged SmolLM2-135M-Instruct), all offline.

usage: python examples/llama_index_query.py INDEX_DIR "QUESTION" [--rerank] [--stream]

Needs the llama-index extra: pip install 'ragkit[llamaindex]'.
"""
import argparse
import os

from ragkit.integrations.llama_index import RagkitLLM, RagkitRerankPostprocessor, RagkitRetriever
from llama_index.core.query_engine import RetrieverQueryEngine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("index")
    ap.add_argument("question")
    ap.add_argument("--rerank", action="store_true", help="retrieve 20 candidates, keep the 3 best by MaxSim")
    ap.add_argument("--stream", action="store_true")
    args = ap.parse_args()

    llm = RagkitLLM(max_new_tokens=int(os.environ.get("RAGKIT_MAX_NEW_TOKENS", "120")))  # llama-index LLM
    retriever = RagkitRetriever(args.index, k=20 if args.rerank else 3)                 # llama-index retriever
    post = [RagkitRerankPostprocessor(top_n=3)] if args.rerank else []                   # node postprocessor
    engine = RetrieverQueryEngine.from_args(retriever, llm=llm, node_postprocessors=post, streaming=args.stream)

    response = engine.query(args.question)
    print(f"Q: {args.question}\nA: ", end="", flush=True)
    if args.stream:
        for piece in response.response_gen:
            print(piece, end="", flush=True)
        print()
    else:
        print(response.response)
    print("Sources:")
    for n, node in enumerate(response.source_nodes, start=1):
        m = node.node.metadata
        print(f"  [{n}] {m['title'] or m['doc_id']} ({m['source']}, chars {m['start']}-{m['end']}) score {node.score:.3f}")


if __name__ == "__main__":
    main()
