"""ColBERT (exact engine, untrained MiniLM default) beside BM25, dense and hybrid on every shared set,
plus ColBERT reranking of the hybrid's candidates; on npl (the largest set) also the exact engine's
speed: index seconds, MB on disk, p50/p95 query ms with and without the centroid candidate stage,
and reranking latency for 100 candidates.

usage: python bench/colbert.py [SET ...] [--force]
Writes bench/results/colbert_quality.json (after each set, so an interrupted run resumes) and, when
npl is run, bench/results/colbert_speed.json; colbert_quality.html is the report (ragkit.report). Queries run one at a time on one torch thread; corpus
encoding uses all cores (one MiniLM pass gives both the dense vectors and ColBERT's token vectors).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, require_datasets, table, write_report, write_results  # noqa: E402

from ragkit.retrieval.evaluate import build_eval_index, score_index  # noqa: E402

SETS = ["adi", "time", "cisi", "cranfield", "pubmedqa_labeled", "cacm", "lisa", "npl"]
RETRIEVERS = ["bm25", "dense", "hybrid", "colbert", "hybrid+colbert_rerank"]
NOTE = ("measured on 2 shared CPU cores while other jobs (tests, training) were running: "
        "timings are noisy and pessimistic; nDCG/R/RR are exact")


def folder_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 2)


def speed(index, data_dir: Path, index_s: float) -> dict:
    """Exact-engine speed on a built index: disk size, query latency, rerank latency (one thread)."""
    import torch

    from ragkit.data.corpus import load_beir_judged
    from ragkit.retrieval.colbert.exact import ColBERTRetriever

    torch.set_num_threads(1)
    queries = list(load_beir_judged(data_dir)[0].values())
    tmp = Path(tempfile.mkdtemp(prefix="ragkit-colbert-bench-"))
    try:
        colbert = index.retrievers["colbert"]
        colbert.save(tmp / "colbert")
        mb = folder_mb(tmp / "colbert")
        loaded = ColBERTRetriever.load(tmp / "colbert", colbert.model)  # memory-mapped embeddings
        out = {"chunks": len(loaded), "tokens": int(loaded.lengths.sum()), "dim": loaded.model.dim,
               "centroids": 0 if loaded.centroids is None else len(loaded.centroids),
               "index_s": round(index_s, 1), "disk_mb": mb, "torch_threads": 1}

        def lat(fn, qs):
            fn(qs[0])
            t = []
            for q in qs:
                t0 = time.perf_counter()
                fn(q)
                t.append((time.perf_counter() - t0) * 1000)
            return {"p50_ms": round(float(np.percentile(t, 50)), 2), "p95_ms": round(float(np.percentile(t, 95)), 2)}

        out["exact_centroid_candidates"] = lat(lambda q: loaded.search(q, 100), queries)
        centroids = loaded.centroids
        loaded.centroids = None  # brute force: every chunk scored exactly
        out["exact_all_chunks"] = lat(lambda q: loaded.search(q, 100), queries[:30])
        loaded.centroids = centroids
        out["query_encoding"] = lat(lambda q: loaded.query_vectors(q), queries)
        hybrid = index.retriever("hybrid")
        cands = {q: [cid for cid, _ in hybrid.search(q, 100)] for q in queries[:30]}
        qv = {q: loaded.query_vectors(q) for q in queries[:30]}
        out["rerank_100_stored"] = lat(lambda q: loaded.score_rows(qv[q], np.array([loaded._row[c] for c in cands[q]])),
                                       queries[:30])
        out["rerank_100_stored"]["note"] = "MaxSim over stored fp16 token vectors, query already encoded"
        from ragkit.retrieval.rerank import ColBERTReranker
        from ragkit.retrieval.index import Hit

        rr = ColBERTReranker(model=loaded.model)  # no stored vectors: encodes the 100 texts
        hits = {q: [Hit(i, 0.0, c, c, index.chunks[c].title, index.chunks[c].text, "", 0, 0)
                    for i, c in enumerate(cands[q])] for q in queries[:5]}
        out["rerank_100_encoding_texts"] = lat(lambda q: rr.rerank(q, hits[q]), queries[:5])
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="*", default=SETS)
    ap.add_argument("--force", action="store_true", help="re-run sets already in the results file")
    args = ap.parse_args()
    root = require_datasets()
    path = RESULTS / "colbert_quality.json"
    done = json.loads(path.read_text())["sets"] if path.exists() and not args.force else {}
    for name in args.sets:
        if name in done:
            print(f"{name}: already measured (--force to redo)")
            continue
        t0 = time.perf_counter()
        index = build_eval_index(root / name, RETRIEVERS)
        res = score_index(index, root / name, RETRIEVERS)
        done[name] = res
        print(name, {r: res[r]["nDCG@10"] for r in RETRIEVERS}, f"({time.perf_counter() - t0:.0f}s)", flush=True)
        order = [s for s in SETS if s in done] + [s for s in done if s not in SETS]
        summary = summarize({s: done[s] for s in order})
        write_results("colbert_quality", {"retrievers": RETRIEVERS, "sets": {s: done[s] for s in order},
                                          "mean": summary, "note": NOTE, "environment": environment()})
        if name == "npl":
            sp = speed(index, root / name, res["colbert"]["index_s"])
            sp["nDCG@10_exact"] = res["colbert"]["nDCG@10"]
            prev = json.loads((RESULTS / "colbert_speed.json").read_text()) if (RESULTS / "colbert_speed.json").exists() else {}
            prev.update({"set": "npl", "exact": sp, "note": NOTE, "environment": environment()})
            write_results("colbert_speed", prev)
        del index
    from ragkit.report import retrieval_report

    write_report("colbert_quality", retrieval_report(done, "ColBERT beside BM25, dense and hybrid",
                                                     "untrained MiniLM ColBERT, exact engine"))
    rows = [[s] + [done[s][r]["nDCG@10"] for r in RETRIEVERS] for s in done]
    summary = summarize(done)
    rows.append(["MEAN"] + [summary[r]["nDCG@10"] for r in RETRIEVERS])
    print("\nnDCG@10 (untrained MiniLM ColBERT, exact engine)")
    print(table(["set"] + RETRIEVERS, rows))
    print(f"\nmean nDCG@10: colbert_rerank − dense = {summary['hybrid+colbert_rerank']['nDCG@10'] - summary['dense']['nDCG@10']:+.4f}, "
          f"colbert − dense = {summary['colbert']['nDCG@10'] - summary['dense']['nDCG@10']:+.4f} "
          f"(ratio colbert/dense {summary['colbert']['nDCG@10'] / summary['dense']['nDCG@10']:.3f})")
    print("threads: encoding on all cores, queries on 1 torch thread;", NOTE)


def summarize(sets: dict) -> dict:
    out = {}
    for r in RETRIEVERS:
        out[r] = {m: round(sum(s[r][m] for s in sets.values()) / len(sets), 4)
                  for m in ("nDCG@10", "R@100", "RR@10", "ms_per_query")}
    out["sets"] = len(sets)
    return out


if __name__ == "__main__":
    main()
