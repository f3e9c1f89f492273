"""BM25 query speed: ragkit vs plain bm25s vs rank-bm25 on npl (11k docs), same tokenisation, one
query at a time; checks that ragkit's top-10 equals bm25s's.

usage: python bench/bm25.py [SET] [--repeats 5]     writes bench/results/bm25.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, load_set, table, write_results  # noqa: E402

import bm25s  # noqa: E402
import numpy as np  # noqa: E402
import Stemmer  # noqa: E402
from rank_bm25 import BM25Okapi  # noqa: E402

from ragkit import Index, IndexConfig  # noqa: E402

STEM = Stemmer.Stemmer("english")


def tok(texts):
    return bm25s.tokenize(texts, stopwords="en", stemmer=STEM, return_ids=False, show_progress=False)


def qps(fn, queries, repeats):
    """Best of `repeats` passes over all queries, one at a time (queries per second)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for q in queries:
            fn(q)
        best = min(best, time.perf_counter() - t0)
    return len(queries) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", nargs="?", default="npl")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    docs, queries = load_set(args.set)
    ids = [d.id for d in docs]

    t0 = time.perf_counter()
    plain = bm25s.BM25()
    plain.index(tok([f"{d.title} {d.text}".strip() for d in docs]), show_progress=False)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = Index.build(docs, config=IndexConfig(retrievers=["bm25"]), show_progress=False)
    t_ragkit = time.perf_counter() - t0
    t0 = time.perf_counter()
    okapi = BM25Okapi([t if t else [""] for t in tok([f"{d.title} {d.text}".strip() for d in docs])])
    t_rank = time.perf_counter() - t0

    def run_plain(q):
        d, s = plain.retrieve(tok([q]), k=10, show_progress=False, n_threads=1)
        return [ids[i] for i in d[0]], s[0]

    def run_ragkit(q):
        hits = index.search(q, k=10, retriever="bm25")
        return [h.doc_id for h in hits], [h.score for h in hits]

    def run_rank(q):
        s = okapi.get_scores(tok([q])[0])
        return [ids[i] for i in np.argsort(-s)[:10]]

    equal, tie_only = 0, 0
    for q in queries:
        (a, sa), (b, sb) = run_plain(q), run_ragkit(q)
        if a == b:
            equal += 1
        elif np.allclose(sorted(sa), sorted(sb), rtol=1e-5):
            tie_only += 1  # same scores, tied documents in another order
    r_ragkit = qps(run_ragkit, queries, args.repeats)
    r_plain = qps(run_plain, queries, args.repeats)
    r_rank = qps(run_rank, queries, max(1, args.repeats // 5))
    res = {
        "set": args.set, "documents": len(docs), "chunks": len(index.chunks), "queries": len(queries),
        "qps": {"ragkit": round(r_ragkit, 1), "bm25s": round(r_plain, 1), "rank_bm25": round(r_rank, 1)},
        "index_s": {"ragkit": round(t_ragkit, 2), "bm25s": round(t_plain, 2), "rank_bm25": round(t_rank, 2)},
        "qps_ratio_vs_bm25s": round(r_ragkit / r_plain, 3),
        "qps_ratio_vs_rank_bm25": round(r_ragkit / r_rank, 1),
        "top10_equal": equal + tie_only == len(queries),
        "top10_identical_order": equal, "top10_equal_up_to_ties": tie_only,
        "mode": "one query at a time, best of repeats; ragkit = Index.search(retriever='bm25') incl. Hit objects",
        "environment": environment(),
    }
    print(table(["system", "queries/s", "ratio (ragkit ÷ system)", "index s"], [
        ["ragkit", res["qps"]["ragkit"], 1.0, res["index_s"]["ragkit"]],
        ["bm25s", res["qps"]["bm25s"], res["qps_ratio_vs_bm25s"], res["index_s"]["bm25s"]],
        ["rank-bm25", res["qps"]["rank_bm25"], res["qps_ratio_vs_rank_bm25"], res["index_s"]["rank_bm25"]]]))
    print(f"top-10 equal to bm25s: {equal}/{len(queries)} identical, {tie_only} differ only among tied scores")
    write_results("bm25", res)


if __name__ == "__main__":
    main()
