"""ColBERT engines side by side on one set (default npl, the largest): `exact` and `plaid` (colbert-ai's
PLAID index, 2-bit and 4-bit residuals) over the same token vectors (the corpus is encoded once by
the untrained MiniLM default), measured in the same run.

Per engine: index seconds (the shared encoding + the engine's own build), MB on disk (saved folder),
load seconds, p50/p95 query ms (end to end: query encoding + search, one torch thread) at the
evaluation depth (k ≈ 2·100·chunks/documents, 201 on npl: colbert-ai's k > 100 settings) and at k=10,
nDCG@10 / R@100 / RR@10 on the judged queries (chunks collapsed to documents by their best chunk,
as `ragkit eval` does), and reranking latency for 100 candidates (the hybrid-style candidates are the
exact engine's top 100; the query is encoded once, stored vectors are scored: fp16 for exact,
decompressed residuals for plaid).

The 4-bit index reuses the 2-bit run's k-means centroids (the k-means is the same computation: same
sample, same seed) to save ~6 min on 2 shared cores; its index_s counts that k-means time too.

usage: python bench/colbert_plaid.py [SET]     writes bench/results/colbert_plaid.json
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
from common import environment, require_datasets, table, write_results  # noqa: E402

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/colbert.py would shadow colbert-ai

NOTE = ("measured on 2 CPU cores shared with 2 other heavy jobs (load average recorded): timings are noisy and "
        "pessimistic; nDCG/R/RR are exact")


def pct(ts: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ts, 50)), 2), "p95_ms": round(float(np.percentile(ts, 95)), 2)}


def folder_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 2)


def main() -> None:
    import ir_measures
    import torch

    from ragkit.data.chunking import Chunker, ChunkingConfig
    from ragkit.data.corpus import load_beir_corpus, load_beir_judged
    from ragkit.retrieval.evaluate import MEASURES, best_chunk_per_document
    from ragkit.retrieval.colbert.model import ColBERTModel
    from ragkit.retrieval.colbert.exact import ColBERTConfig, ColBERTRetriever
    from ragkit.retrieval.colbert.plaid import PlaidRetriever, load_extensions

    name = sys.argv[1] if len(sys.argv) > 1 else "npl"
    data = require_datasets() / name
    docs = load_beir_corpus(data)
    queries, qrels = load_beir_judged(data)
    load = {"start": round(os.getloadavg()[0], 2)}
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    model = ColBERTModel.from_pretrained("default")
    t0 = time.perf_counter()
    chunker = Chunker(model.tokenizer, ChunkingConfig())
    chunks = [c for s in range(0, len(docs), 512) for c in chunker.chunk(docs[s:s + 512])]
    ids = [c.id for c in chunks]
    print(f"{name}: {len(docs)} documents, {len(chunks)} chunks, {len(queries)} queries; encoding...", flush=True)
    arrays = model.encode_docs([c.indexed_text for c in chunks])
    encode_s = time.perf_counter() - t0
    print(f"encoded in {encode_s:.0f}s ({sum(len(a) for a in arrays):,} token vectors)", flush=True)
    load["after_encoding"] = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    load_extensions()  # compiled once per machine (cached); not part of any engine's index time
    ext_s = time.perf_counter() - t0

    engines: dict[str, object] = {}
    build: dict[str, float] = {}
    t0 = time.perf_counter()
    engines["exact"] = ColBERTRetriever(model, ColBERTConfig())
    engines["exact"].add_embeddings(ids, arrays)
    build["exact"] = time.perf_counter() - t0
    print(f"exact built in {build['exact']:.0f}s", flush=True)
    t0 = time.perf_counter()
    p2 = PlaidRetriever(model, ColBERTConfig(engine="plaid", nbits=2))
    kmeans_s = {}
    orig = p2._kmeans

    def timed_kmeans(train, k):
        t = time.perf_counter()
        c = orig(train, k)
        kmeans_s["s"] = time.perf_counter() - t
        return c

    p2._kmeans = timed_kmeans
    p2.add_embeddings(ids, arrays)
    engines["plaid_2bit"] = p2
    build["plaid_2bit"] = time.perf_counter() - t0
    print(f"plaid 2-bit built in {build['plaid_2bit']:.0f}s (k-means {kmeans_s['s']:.0f}s)", flush=True)
    t0 = time.perf_counter()
    p4 = PlaidRetriever(model, ColBERTConfig(engine="plaid", nbits=4))
    p4._kmeans = lambda train, k: p2.codec_arrays["centroids"].astype(np.float32)  # same k-means (see docstring)
    p4.add_embeddings(ids, arrays)
    engines["plaid_4bit"] = p4
    build["plaid_4bit"] = time.perf_counter() - t0 + kmeans_s["s"]
    print(f"plaid 4-bit built in {build['plaid_4bit']:.0f}s (k-means counted from the 2-bit run)", flush=True)
    load["after_builds"] = round(os.getloadavg()[0], 2)
    del arrays

    chunk_to_doc = {c.id: c.doc_id for c in chunks}
    depth = min(len(chunks), max(100, int(np.ceil(2 * 100 * len(chunks) / len(docs)))))
    torch.set_num_threads(1)
    qtexts = list(queries.values())
    res: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ragkit-colbert-plaid-bench-"))
    try:
        for key, r in engines.items():
            t0 = time.perf_counter()
            r.save(tmp / key)
            save_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            loaded = (ColBERTRetriever if key == "exact" else PlaidRetriever).load(tmp / key, model)
            loaded.search(qtexts[0], depth)  # plaid: builds its IndexScorer (IVF) on first use
            load_s = time.perf_counter() - t0
            run, lat = {}, []
            for qid, text in queries.items():
                t0 = time.perf_counter()
                ranking = loaded.search(text, depth)
                lat.append((time.perf_counter() - t0) * 1000)
                run[qid] = best_chunk_per_document(ranking, chunk_to_doc, 100)
            lat10 = []
            for text in qtexts:
                t0 = time.perf_counter()
                loaded.search(text, 10)
                lat10.append((time.perf_counter() - t0) * 1000)
            agg = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, run)
            res[key] = {"index_s": round(encode_s + build[key], 1), "build_s": round(build[key], 1),
                        "disk_mb": folder_mb(tmp / key), "save_s": round(save_s, 2), "load_and_first_search_s":
                        round(load_s, 2), "query_ms": pct(lat), "k": depth, "query_ms_k10": pct(lat10),
                        **{m: round(float(agg[v]), 4) for m, v in MEASURES.items()}}
            if key == "exact":
                cands = {q: [c for c, _ in loaded.search(q, 100)] for q in qtexts[:50]}
            qv = {q: loaded.query_vectors(q) for q in qtexts[:50]}
            rr = []
            for q in qtexts[:50]:
                rows = np.array([loaded._row[c] for c in cands[q]])
                t0 = time.perf_counter()
                loaded.score_rows(qv[q], rows)
                rr.append((time.perf_counter() - t0) * 1000)
            res[key]["rerank_100_stored_ms"] = pct(rr)
            res[key]["tokens"] = int(loaded.lengths.sum())
            if key != "exact":
                res[key]["centroids"] = len(loaded.codec_arrays["centroids"])
            print(key, res[key], flush=True)
            shutil.rmtree(tmp / key, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load["end"] = round(os.getloadavg()[0], 2)

    ex = res["exact"]
    rows = []
    for key, r in res.items():
        rows.append([key, r["index_s"], r["disk_mb"], r["query_ms"]["p50_ms"], r["query_ms"]["p95_ms"],
                     r["query_ms_k10"]["p50_ms"], r["query_ms_k10"]["p95_ms"], r["nDCG@10"],
                     r["R@100"], r["rerank_100_stored_ms"]["p50_ms"],
                     f"{r['disk_mb'] / ex['disk_mb']:.2f}", f"{r['query_ms']['p50_ms'] / ex['query_ms']['p50_ms']:.2f}",
                     f"{r['nDCG@10'] / ex['nDCG@10']:.3f}"])
    print(f"\n{name}: ColBERT engines over the same vectors (untrained MiniLM default, queries on 1 torch thread)")
    print(table(["engine", "index s", "MB", f"p50 ms k={depth}", f"p95 ms k={depth}", "p50 ms k=10", "p95 ms k=10", "nDCG@10", "R@100", "rerank100 p50 ms",
                 "MB/exact", "p50/exact", "nDCG/exact"], rows))
    print(f"load average: {load}; {NOTE}")
    write_results("colbert_plaid", {
        "set": name, "documents": len(docs), "chunks": len(chunks), "queries": len(queries), "dim": model.dim,
        "encode_s_shared": round(encode_s, 1), "extensions_load_s": round(ext_s, 2), "engines": res,
        "ratios_vs_exact": {k: {"disk": round(r["disk_mb"] / ex["disk_mb"], 3),
                                "p50": round(r["query_ms"]["p50_ms"] / ex["query_ms"]["p50_ms"], 3),
                                "nDCG@10": round(r["nDCG@10"] / ex["nDCG@10"], 4)} for k, r in res.items()},
        "threads": {"encoding_and_build": threads, "queries": 1}, "loadavg": load, "note": NOTE,
        "environment": environment()})


if __name__ == "__main__":
    main()
