"""Dense encoding speed: ragkit's encoder vs plain sentence-transformers `encode` on the same texts
(same model, batch 64, all cores), then search latency p50/p95 over a 10k+ chunk index (npl),
one query at a time on one torch thread, flat (exact) and HNSW.

usage: python bench/dense.py [SET] [--encode-docs 3000]     writes bench/results/dense.json
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, load_set, table, write_results  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ragkit import Index, IndexConfig  # noqa: E402
from ragkit.retrieval.stores.vectors import FaissConfig, FaissVectorStore  # noqa: E402
from ragkit.retrieval.encoder import SentenceEncoder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", nargs="?", default="npl")
    ap.add_argument("--encode-docs", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    docs, queries = load_set(args.set)
    encoder = SentenceEncoder.from_pretrained("default")
    torch.set_num_threads(os.cpu_count() or 1)

    # 1) encoding throughput on the same texts, alternating to share any machine noise
    texts = [f"{d.title} {d.text}".strip() for d in docs[: args.encode_docs]]
    encoder.model.encode(texts[:64], batch_size=64)  # warm-up
    t_st, t_rk = [], []
    st_encode = lambda: encoder.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    rk_encode = lambda: encoder.encode(texts, batch_size=64)
    for r in range(args.rounds):  # alternate who goes first, so drift and noise hit both alike
        for fn, times in ([(st_encode, t_st), (rk_encode, t_rk)] if r % 2 == 0 else [(rk_encode, t_rk), (st_encode, t_st)]):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    st_rate, rk_rate = len(texts) / min(t_st), len(texts) / min(t_rk)

    # 2) the whole set indexed by ragkit (chunking + encoding), then query latency
    t0 = time.perf_counter()
    index = Index.build(docs, config=IndexConfig(retrievers=["dense"]), encoder=encoder, show_progress=False)
    t_index = time.perf_counter() - t0
    torch.set_num_threads(1)
    dense = index.retrievers["dense"]
    latencies = {}
    stores = {"flat": dense.store}
    hnsw = FaissVectorStore(encoder.dim, FaissConfig(kind="hnsw"))
    hnsw.add(dense.store.ids, dense.store.vectors)
    stores["hnsw"] = hnsw
    for kind, store in stores.items():
        dense.store = store
        ms = []
        for _ in range(3):
            for q in queries:
                t0 = time.perf_counter()
                index.search(q, k=10, retriever="dense")
                ms.append((time.perf_counter() - t0) * 1000)
        latencies[kind] = {"p50_ms": round(float(np.percentile(ms, 50)), 2),
                           "p95_ms": round(float(np.percentile(ms, 95)), 2)}
    dense.store = stores["flat"]
    res = {
        "set": args.set, "encode_texts": len(texts),
        "encode_docs_per_s": {"ragkit": round(rk_rate, 1), "sentence_transformers": round(st_rate, 1)},
        "encode_ratio_vs_st": round(rk_rate / st_rate, 3),
        "index_chunks": len(index.chunks), "index_s": round(t_index, 1),
        "p50_ms": latencies["flat"]["p50_ms"], "p95_ms": latencies["flat"]["p95_ms"],
        "latency_by_index": latencies,
        "encode_s": {"ragkit": [round(t, 2) for t in t_rk], "sentence_transformers": [round(t, 2) for t in t_st]},
        "mode": "encoding: all cores, batch 64, best of `rounds` runs, order alternating; search: Index.search(retriever='dense'), "
                "query encoding + faiss + Hit objects, one query at a time, torch 1 thread",
        "environment": environment(),
    }
    print(table(["encoder", "docs/s", "ratio (ragkit ÷ ST)"], [
        ["ragkit SentenceEncoder.encode", res["encode_docs_per_s"]["ragkit"], res["encode_ratio_vs_st"]],
        ["sentence-transformers encode", res["encode_docs_per_s"]["sentence_transformers"], 1.0]]))
    print(table(["index", "chunks", "p50 ms", "p95 ms"],
                [[k, len(index.chunks), v["p50_ms"], v["p95_ms"]] for k, v in latencies.items()]))
    write_results("dense", res)


if __name__ == "__main__":
    main()
