"""`ragkit tune` on the shared sets: untuned vs tuned dense, ColBERT and hybrid, nDCG@10 and R@100.

Per set: the untuned index (BM25, MiniLM dense, untrained MiniLM ColBERT) is built and scored; then
`ragkit.retrieval.tune.tune` runs on the set's corpus alone (questions by the LLM, round-trip filter,
hybrid-teacher pseudo-labels, KL distillation into MiniLM and into the ColBERT projection, fusion chosen
on held-out synthetic questions), and the tuned index (tuned dense + tuned ColBERT, the chosen fusion) is
scored. Judged queries are read only to score; nothing is chosen on them.

Rows per set (the contract of bench/results/tune.json): bm25, dense, dense_tuned, colbert,
colbert_tuned, hybrid, hybrid_tuned (the fusion chosen on synthetic questions), hybrid+colbert_rerank
and hybrid_tuned+colbert_rerank; each with nDCG@10 and R@100. Plus the tune summary (LLM, counts,
synthesis and training times, questions/s, steps/s) and the mean over the sets done.

usage: python bench/tune.py [--sets cranfield,time,...] [--queries 300] [--questions-per-chunk 3] [--llm default]
                            [--out tune] [--redo]
Resumable: a set already in bench/results/OUT.json is skipped (its tune folder in ~/.cache/ragkit/tune/
also resumes a half-done run). Threads: indexing and training on 2 torch threads, queries on 1.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, datasets_dir, environment, table, write_results  # noqa: E402

SETS = ("adi", "time", "cranfield", "cisi", "cacm", "lisa", "npl", "pubmedqa_labeled")
WORK = Path.home() / ".cache" / "ragkit" / "tune"
UNTUNED = ("bm25", "dense", "colbert", "hybrid", "hybrid+colbert_rerank")
TUNED = {"dense": "dense_tuned", "colbert": "colbert_tuned", "hybrid": "hybrid_tuned",
         "hybrid+colbert_rerank": "hybrid_tuned+colbert_rerank"}


def keep(m: dict) -> dict:
    return {k: m[k] for k in ("nDCG@10", "R@100", "RR@10", "ms_per_query")}


def systems_of(entry: dict) -> dict:
    return {n: m for n, m in entry.items() if isinstance(m, dict) and "nDCG@10" in m}


def mean_table(sets: dict) -> dict:
    names = sorted({n for s in sets.values() for n in systems_of(s)})
    return {n: {m: round(sum(s[n][m] for s in sets.values()) / len(sets), 4) for m in ("nDCG@10", "R@100")}
            for n in names if all(n in s for s in sets.values())}


def cost_table(sets: dict) -> dict:
    """Per set: corpus size and the cost of each stage; and how index time grows with the number of
    chunks (log-log slope over the sets). Questions/s and steps/s do not depend on the corpus size
    (a question reads one chunk, a step a fixed number of passages)."""
    import math
    import statistics

    rows = {}
    for name, s in sets.items():
        t = s.get("tune", {})
        rows[name] = {"documents": t.get("corpus_documents"), "chunks": s.get("chunks"),
                      "untuned_index_s": s.get("untuned_index_s"),
                      "questions_per_s": (t.get("synthesis") or {}).get("questions_per_s"),
                      "synthesis_s": (t.get("synthesis") or {}).get("seconds"),
                      "dense_steps": (t.get("dense") or {}).get("steps"),
                      "dense_steps_per_s": (t.get("dense") or {}).get("steps_per_s"),
                      "colbert_steps_per_s": (t.get("colbert") or {}).get("steps_per_s"),
                      "seconds_total": s.get("seconds_total")}
    pts = [(math.log(r["chunks"]), math.log(r["untuned_index_s"])) for r in rows.values()
           if r["chunks"] and r["untuned_index_s"] and r["chunks"] >= 500]
    slope = round(statistics.linear_regression(*zip(*pts)).slope, 3) if len({x for x, _ in pts}) >= 2 else None
    return {"per_set": rows, "index_time_growth_exponent": slope,
            "note": "index time: chunking + BM25 + one MiniLM pass for dense and ColBERT (sets of 500+ chunks)"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--queries", type=int, default=300, help="chunks to write questions for, per set")
    ap.add_argument("--questions-per-chunk", type=int, default=3)
    ap.add_argument("--out", default="tune", help="results name: bench/results/OUT.json (a run of another method "
                                                  "goes beside tune.json until it covers every set)")
    ap.add_argument("--llm", default="default")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--teacher", default="hybrid")
    ap.add_argument("--redo", action="store_true")
    args = ap.parse_args()
    from ragkit.retrieval.evaluate import build_eval_index, score_index
    from ragkit.retrieval.tune import TuneConfig, tune
    from ragkit.runtime import torch_threads

    path = RESULTS / f"{args.out}.json"
    results = json.loads(path.read_text()) if path.exists() else {"sets": {}}
    results["method"] = __doc__.split("\n\n")[1].replace("\n", " ")
    for name in args.sets.split(","):
        if name in results["sets"] and not args.redo:
            continue
        data = datasets_dir() / name
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        untuned = build_eval_index(data, ["bm25", "dense", "colbert"], show_progress=True)
        index_s = time.perf_counter() - t0
        base_scores = score_index(untuned, data, UNTUNED, show_progress=True)
        config = TuneConfig(queries=args.queries, questions_per_chunk=args.questions_per_chunk, llm=args.llm,
                            dense_steps=args.steps, colbert_steps=args.steps,
                            teacher=args.teacher, threads=2)
        from ragkit.data.corpus import load_beir_corpus

        with torch_threads(2):
            summary, tuned = tune(load_beir_corpus(data), WORK / name, config, show_progress=True, index=untuned,
                                  return_index=True, log=print)
        tuned_scores = score_index(tuned, data, tuple(TUNED), show_progress=True)
        systems = {n: keep(base_scores[n]) for n in UNTUNED}
        systems.update({TUNED[n]: keep(tuned_scores[n]) for n in TUNED})
        summary = {k: v for k, v in summary.items() if k != "config"}
        results["sets"][name] = {**systems, "tune": summary, "chunks": len(untuned.chunks),
                                 "untuned_index_s": round(index_s, 1),
                                 "seconds_total": round(time.perf_counter() - t0, 1)}
        results["mean"] = mean_table(results["sets"])
        results["sets_done"] = sorted(results["sets"])
        results["environment"] = environment()
        write_results(args.out, results)
        rows = [[n, m["nDCG@10"], m["R@100"]] for n, m in systems.items()]
        print(table(["system", "nDCG@10", "R@100"], rows))
    if results["sets"]:
        results["cost"] = cost_table(results["sets"])
        write_results(args.out, results)
    if results.get("mean"):
        rows = [[n, m["nDCG@10"], m["R@100"]] for n, m in results["mean"].items()]
        print(f"mean over {len(results['sets'])} sets: {', '.join(sorted(results['sets']))}")
        print(table(["system", "nDCG@10", "R@100"], rows))


if __name__ == "__main__":
    main()
