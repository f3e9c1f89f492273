"""A domain QA bot over a folder of documents: index it once, then answer questions with citations.

usage: python examples/qa_bot.py DOCS_FOLDER [QUESTION ...]
       (no question: read questions from stdin, one per line; an empty line quits)

The index is kept in indexes/<folder name> and rebuilt only when missing. Everything runs offline
with the packaged models (MiniLM encoder, SmolLM2-135M-Instruct); set RAGKIT_LLM to another
transformers model (hub id or local folder) to answer with it.
"""
import os
import sys
from pathlib import Path

from ragkit import Index
from ragkit.config import PipelineConfig
from ragkit.generation.llm import GenerationConfig
from ragkit import Pipeline, load_llm


def open_index(folder: Path) -> Index:
    where = Path(os.environ.get("RAGKIT_INDEX_DIR", "indexes")) / folder.resolve().name
    if (where / "manifest.json").exists():
        return Index.load(where)
    index = Index.build(folder)
    index.save(where)
    return index


def main() -> None:
    folder, questions = Path(sys.argv[1]), sys.argv[2:]
    config = PipelineConfig()
    config.retrieval.k = 3
    config.llm.model = os.environ.get("RAGKIT_LLM", "default")
    bot = Pipeline(open_index(folder), load_llm(config.llm), config)
    gen = GenerationConfig(max_new_tokens=int(os.environ.get("RAGKIT_MAX_NEW_TOKENS", "120")))
    if not questions:
        questions = iter(lambda: sys.stdin.readline().strip(), "")
    for question in questions:
        print(f"Q: {question}\nA: ", end="", flush=True)
        stream = bot.stream(question, gen)
        for piece in stream:
            print(piece, end="", flush=True)
        answer = stream.answer
        print("\nSources:")
        for s in answer.sources:
            mark = "cited" if s.n in answer.citations else "not cited"
            print(f"  [{s.n}] {s.title or s.doc_id} ({s.source}, chars {s.start}-{s.end}) {mark}")
        print()


if __name__ == "__main__":
    main()
