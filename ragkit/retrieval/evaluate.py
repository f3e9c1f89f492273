"""Retrieval evaluation on BEIR folders with ir-measures (nDCG@10, R@100, RR@10).

Evaluation is per document: a chunked document scores as its best chunk. Timing follows the shared
baselines: corpus encoding on all cores, then one query at a time on one torch thread.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from ragkit.runtime import QUERY_THREADS, torch_threads
from ragkit.data.corpus import load_beir_corpus, load_beir_judged
from ragkit.retrieval.index import Index, IndexConfig
from ragkit.progress import progress_bar
from ragkit.retrieval.base import Ranking
from ragkit.retrieval.hybrid import HybridRetriever

MEASURES = {"nDCG@10": nDCG @ 10, "R@100": R @ 100, "RR@10": RR @ 10}
RECALL_CURVE = {f"R@{k}": R @ k for k in (1, 5, 10, 20, 50)}  # with R@100: the report's recall@k curve
MEMBERS = {"bm25": ["bm25"], "dense": ["dense"], "hybrid": ["bm25", "dense"], "colbert": ["colbert"]}  # base retrievers
RERANK = "+colbert_rerank"  # "X+colbert_rerank": X's candidates reordered by ColBERT MaxSim (stored token vectors)
EVAL_RETRIEVERS = tuple(MEMBERS) + tuple(f"{m}{RERANK}" for m in ("bm25", "dense", "hybrid"))


def members(name: str) -> list[str]:
    """The base retrievers an evaluated name needs (`hybrid+colbert_rerank` → bm25, dense, colbert)."""
    if name.endswith(RERANK):
        return MEMBERS[name[: -len(RERANK)]] + ["colbert"]
    return MEMBERS[name]


def rerank_ranking(colbert, query: str, ranking: Ranking, depth: int) -> Ranking:
    """The first `depth` chunks of `ranking` reordered by ColBERT MaxSim, the rest after them as they were."""
    head = [cid for cid, _ in ranking[:depth]]
    if not head:
        return ranking
    scores = colbert.score(query, head)
    order = sorted(range(len(head)), key=lambda i: -scores[i])
    return [(head[i], scores[i]) for i in order] + list(ranking[depth:])


def best_chunk_per_document(ranking: Ranking, chunk_to_doc: dict[str, str], k: int) -> dict[str, float]:
    """Collapse a chunk ranking to documents (max score), keeping the first k documents."""
    docs: dict[str, float] = {}
    for cid, score in ranking:
        d = chunk_to_doc[cid]
        if d not in docs:
            docs[d] = score  # rankings are best first, so the first chunk seen is the best
            if len(docs) == k:
                break
    return docs


def evaluate_beir(data_dir: str | Path, retrievers: Sequence[str] = EVAL_RETRIEVERS, split: str = "test",
                  config: IndexConfig | None = None, k: int = 100, show_progress: bool | None = None,
                  rerank_depth: int = 100, store: str | None = None) -> dict:
    """Index a BEIR folder in memory and score each retriever; returns {retriever: {measure: value, ...}}.

    `X+colbert_rerank` reorders X's first `rerank_depth` chunks by ColBERT; `hybrid` always fuses
    bm25 and dense (ColBERT is evaluated on its own and as a reranker). With `store` (a location,
    e.g. a `postgresql://` URL) the index is saved there and scored as loaded back from it."""
    _check_retrievers(retrievers)
    load_beir_judged(data_dir, split)  # missing or bad queries/qrels fail before the index is built
    index = build_eval_index(data_dir, retrievers, config, show_progress)
    if store is not None:
        index.save(store)
        timings, index = index.timings, Index.load(store)
        index.timings = timings
    return score_index(index, data_dir, retrievers, split, k, show_progress, rerank_depth)


def _check_retrievers(retrievers: Sequence[str]) -> None:
    unknown = [r for r in retrievers if r not in EVAL_RETRIEVERS]
    if unknown:
        raise ValueError(f"unknown retrievers {unknown}; choose from {', '.join(EVAL_RETRIEVERS)}")


def build_eval_index(data_dir: str | Path, retrievers: Sequence[str] = EVAL_RETRIEVERS,
                     config: IndexConfig | None = None, show_progress: bool | None = None) -> Index:
    """An in-memory index of a BEIR folder's corpus with the base retrievers `retrievers` need."""
    _check_retrievers(retrievers)
    docs = load_beir_corpus(data_dir)
    needed = sorted({m for name in retrievers for m in members(name)})
    config = replace(config or IndexConfig(), retrievers=needed)
    needs_torch = any(r != "bm25" for r in needed)
    with torch_threads(os.cpu_count() or 1 if needs_torch else None):  # indexing: large batches, every core
        index = Index(config)
        index.add(docs, show_progress=show_progress)
    return index


def score_index(index: Index, data_dir: str | Path, retrievers: Sequence[str] = EVAL_RETRIEVERS,
                split: str = "test", k: int = 100, show_progress: bool | None = None,
                rerank_depth: int = 100) -> dict:
    """Score an index of a BEIR folder's corpus with its judged queries (see `evaluate_beir`)."""
    queries, qrels = load_beir_judged(data_dir, split)
    t_chunk = index.timings.get("chunking", 0.0)
    chunk_to_doc = {c.id: c.doc_id for c in index.chunks}
    n_chunks, n_docs = len(index.chunks), index.chunks.n_documents
    depth = min(n_chunks, max(k, int(math.ceil(2 * k * n_chunks / n_docs))))
    fusion = replace(index.config.fusion, candidates=depth)

    with torch_threads(QUERY_THREADS if index.needs_torch("hybrid") else None):
        return _score(index, queries, qrels, retrievers, k, show_progress, rerank_depth, depth, fusion, t_chunk,
                      chunk_to_doc)


def _score(index, queries, qrels, retrievers, k, show_progress, rerank_depth, depth, fusion, t_chunk,
           chunk_to_doc) -> dict:
    results: dict[str, dict] = {}
    for name in retrievers:
        base = name[: -len(RERANK)] if name.endswith(RERANK) else name
        retriever = (HybridRetriever({m: index.retrievers[m] for m in MEMBERS["hybrid"]}, fusion)
                     if base == "hybrid" else index.retriever(base))
        colbert = index.retrievers["colbert"] if name.endswith(RERANK) else None
        run: dict[str, dict[str, float]] = {}
        latencies: list[float] = []
        with progress_bar(f"queries ({name})", len(queries), show_progress) as advance:
            start = time.perf_counter()
            for qid, text in queries.items():
                t0 = time.perf_counter()
                ranking = retriever.search(text, depth)
                if colbert is not None:
                    ranking = rerank_ranking(colbert, text, ranking, rerank_depth)
                run[qid] = best_chunk_per_document(ranking, chunk_to_doc, k)
                latencies.append((time.perf_counter() - t0) * 1000)
                advance(1)
            ms = (time.perf_counter() - start) / len(queries) * 1000
        measures = {**MEASURES, **RECALL_CURVE}
        agg = ir_measures.calc_aggregate(list(measures.values()), qrels, run)
        results[name] = {m: round(float(agg[v]), 4) for m, v in measures.items()}
        used = set(members(name))
        shared = index.timings["colbert"] if {"dense", "colbert"} <= used and index._shared_pass() else 0.0
        results[name]["index_s"] = round(t_chunk + sum(index.timings[m] for m in used) - shared, 2)
        results[name]["ms_per_query"] = round(ms, 2)
        q = np.percentile(latencies, [5, 25, 50, 75, 95]) if latencies else [0.0] * 5
        results[name]["latency_ms"] = {p: round(float(v), 3) for p, v in zip(("p5", "p25", "p50", "p75", "p95"), q)}
    return results
