"""Retrieval quality of ragkit's BM25, dense and hybrid retrievers on every shared BEIR set,
beside the baselines of BASELINES.md (bm25s, MiniLM dense) measured on the same machine kind.

usage: python bench/quality.py [SET ...] [--fusion rrf|weighted]
Writes bench/results/quality.json and quality.html (ragkit.report.retrieval_report).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, read_baselines, require_datasets, table, write_report, write_results  # noqa: E402

from ragkit.retrieval.evaluate import evaluate_beir  # noqa: E402
from ragkit.retrieval.index import IndexConfig  # noqa: E402
from ragkit.retrieval.hybrid import FusionConfig  # noqa: E402

SETS = ["adi", "time", "cisi", "cranfield", "cacm", "pubmedqa_labeled", "lisa", "npl"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sets", nargs="*", default=SETS)
    ap.add_argument("--fusion", default="rrf", choices=["rrf", "weighted"])
    ap.add_argument("--out", default="quality")
    args = ap.parse_args()
    root = require_datasets()
    base = read_baselines(root / "BASELINES.md")
    config = IndexConfig(fusion=FusionConfig(method=args.fusion))
    per_set, rows = {}, []
    for name in args.sets:
        t0 = time.perf_counter()
        res = evaluate_beir(root / name, ["bm25", "dense", "hybrid"], config=config)
        res["baseline_bm25s"] = base.get((name, "bm25s"))
        res["baseline_minilm"] = base.get((name, "MiniLM-L6 dense"))
        per_set[name] = res
        b, d = res["baseline_bm25s"]["nDCG@10"], res["baseline_minilm"]["nDCG@10"]
        rows.append([name, res["bm25"]["nDCG@10"], b, res["bm25"]["nDCG@10"] - b, res["dense"]["nDCG@10"], d,
                     res["dense"]["nDCG@10"] - d, res["hybrid"]["nDCG@10"]])
        print(table(["set", "bm25", "bm25s base", "Δ", "dense", "MiniLM base", "Δ", "hybrid"], rows[-1:]).splitlines()[-1],
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    n = len(rows)
    mean = {k: sum(r[i] for r in rows) / n for k, i in (("bm25", 1), ("bm25s_baseline", 2), ("dense", 4),
                                                         ("minilm_baseline", 5), ("hybrid", 7))}
    mean["hybrid_minus_best_single"] = mean["hybrid"] - max(mean["bm25"], mean["dense"])
    rows.append(["MEAN", mean["bm25"], mean["bm25s_baseline"], mean["bm25"] - mean["bm25s_baseline"], mean["dense"],
                 mean["minilm_baseline"], mean["dense"] - mean["minilm_baseline"], mean["hybrid"]])
    print("\nnDCG@10 (ragkit vs BASELINES.md)")
    print(table(["set", "bm25", "bm25s base", "Δ", "dense", "MiniLM base", "Δ", "hybrid"], rows))
    print(f"\nhybrid ({args.fusion}) mean − best single retriever mean: {mean['hybrid_minus_best_single']:+.4f}")
    result = {"fusion": args.fusion, "sets": per_set, "mean_nDCG@10": mean, "environment": environment()}
    write_results(args.out, result)
    write_report(args.out, report(result))


def report(result: dict):
    """The HTML report of a quality.json: ragkit's retrievers beside the BASELINES.md rows."""
    from ragkit.report import retrieval_report

    sets = {name: {("bm25s (BASELINES.md)" if r == "baseline_bm25s" else "MiniLM (BASELINES.md)" if r == "baseline_minilm"
                    else r): m for r, m in res.items() if m}
            for name, res in result["sets"].items()}
    return retrieval_report(sets, "Retrieval quality on the shared BEIR sets",
                            f"fusion {result['fusion']} · ragkit's bm25, dense and hybrid beside the published baselines")


if __name__ == "__main__":
    main()
