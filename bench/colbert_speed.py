"""Exact ColBERT engine speed at npl's scale without encoding npl: each chunk gets as many token
vectors as the default ColBERT would keep (npl tokenised for real), but the vectors are random unit
vectors, so this measures latency, memory and disk, not quality (`bench/colbert.py` measures both on
the real index when it runs npl). Queries are npl's real queries encoded by the default model.

usage: python bench/colbert_speed.py [SET]    (default npl)
Adds "exact_npl_shaped_random" to bench/results/colbert_speed.json. Queries on one torch thread.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, load_set, write_results  # noqa: E402

from ragkit.data.chunking import Chunker, ChunkingConfig  # noqa: E402
from ragkit.retrieval.colbert.model import ColBERTModel  # noqa: E402
from ragkit.retrieval.colbert.exact import ColBERTConfig, ColBERTRetriever  # noqa: E402

NOTE = ("measured on 2 shared CPU cores while other jobs (tests, training) were running: "
        "timings are noisy and pessimistic")


def pct(ts: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ts, 50)), 2), "p95_ms": round(float(np.percentile(ts, 95)), 2)}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "npl"
    docs, queries = load_set(name)
    model = ColBERTModel.from_pretrained("default")
    chunks = [c for start in range(0, len(docs), 512)
              for c in Chunker(model.tokenizer, ChunkingConfig()).chunk(docs[start:start + 512])]
    lengths = []
    for start in range(0, len(chunks), 256):
        ids, mask = model.tokenize_docs([c.indexed_text for c in chunks[start:start + 256]])
        lengths.extend(model._doc_keep(ids, mask).sum(dim=1).tolist())
    rng = np.random.default_rng(0)
    r = ColBERTRetriever(model, ColBERTConfig())
    arrays = []
    for n in lengths:
        v = rng.standard_normal((n, model.dim)).astype(np.float32)
        arrays.append((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float16))
    t0 = time.perf_counter()
    r.add_embeddings([c.id for c in chunks], arrays)
    build_s = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="ragkit-colbert-speed-"))
    try:
        t0 = time.perf_counter()
        r.save(tmp / "colbert")
        save_s = time.perf_counter() - t0
        mb = round(sum(p.stat().st_size for p in (tmp / "colbert").rglob("*") if p.is_file()) / 2**20, 1)
        t0 = time.perf_counter()
        loaded = ColBERTRetriever.load(tmp / "colbert", model)
        load_s = time.perf_counter() - t0
        torch.set_num_threads(1)
        qv = [loaded.query_vectors(q) for q in queries]
        enc = []
        for q in queries:
            t0 = time.perf_counter()
            loaded.query_vectors(q)
            enc.append((time.perf_counter() - t0) * 1000)

        def timed(fn) -> list[float]:
            out = []
            for q in qv:
                t0 = time.perf_counter()
                fn(q)
                out.append((time.perf_counter() - t0) * 1000)
            return out

        def search(q, centroids=True):
            if centroids:
                rows = loaded._candidates(q, loaded.config.candidates)
            else:
                rows = np.arange(len(loaded.ids))
            s = np.concatenate([loaded.score_rows(q, rows[i:i + 4096]) for i in range(0, len(rows), 4096)])
            return rows[np.argsort(-s)[:100]]

        cand = timed(lambda q: search(q, True))
        brute = timed(lambda q: search(q, False))
        picks = rng.choice(len(loaded.ids), size=100, replace=False)
        rerank = timed(lambda q: loaded.score_rows(q, picks))
        res = {"set": name, "chunks": len(chunks), "tokens": int(sum(lengths)), "dim": model.dim,
               "centroids": len(loaded.centroids), "candidates": loaded.config.candidates,
               "add_s_centroid_training_and_assignment": round(build_s, 1), "save_s": round(save_s, 1),
               "load_s_memmap": round(load_s, 2), "disk_mb": mb,
               "query_encoding_ms": pct(enc),
               "search_centroid_candidates_then_exact_ms": pct(cand),
               "search_exact_all_chunks_ms": pct(brute),
               "rerank_100_candidates_stored_ms": pct(rerank),
               "torch_threads_queries": 1,
               "what": "npl tokenised for real, random unit token vectors: latency/disk only, no quality"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in res.items():
        print(f"{k:>42}: {v}")
    print(f"exact-all / centroid-candidates p50: {res['search_exact_all_chunks_ms']['p50_ms'] / res['search_centroid_candidates_then_exact_ms']['p50_ms']:.1f}x; "
          "queries on 1 torch thread (search times exclude query encoding)")
    path = RESULTS / "colbert_speed.json"
    prev = json.loads(path.read_text()) if path.exists() else {}
    prev.update({"exact_npl_shaped_random": res, "note": NOTE, "environment": environment()})
    write_results("colbert_speed", prev)


if __name__ == "__main__":
    main()
