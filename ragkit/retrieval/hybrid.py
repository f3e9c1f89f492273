"""Hybrid retrieval: reciprocal-rank fusion or weighted fusion of min-max normalised scores."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ragkit.data.chunking import Chunk
from ragkit.retrieval.base import Ranking, Retriever

FUSION_METHODS = ("rrf", "weighted")


@dataclass
class FusionConfig:
    method: str = "rrf"
    rrf_k: int = 60
    weights: dict[str, float] = field(default_factory=dict)  # per retriever; missing -> 1.0 (rrf) / equal (weighted)
    candidates: int = 100  # depth taken from each retriever (at least k)
    unit: str = "document"  # fuse per document (hit = its best-ranked chunk) or per chunk

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"unknown fusion {self.method!r}; choose one of {', '.join(FUSION_METHODS)}")
        if self.unit not in ("document", "chunk"):
            raise ValueError(f"unknown fusion unit {self.unit!r}; choose document or chunk")


def document_of(chunk_id: str) -> str:
    """Chunk ids are `docid#n`."""
    return chunk_id.rsplit("#", 1)[0]


def by_document(rankings: Sequence[Ranking]) -> tuple[list[Ranking], dict[str, str]]:
    """Each ranking reduced to its first (best) chunk per document, keyed by document id; plus, per
    document, the chunk that the ranking placing it highest chose."""
    reduced, best = [], {}
    best_rank: dict[str, int] = {}
    for ranking in rankings:
        seen: dict[str, float] = {}
        for cid, score in ranking:
            d = document_of(cid)
            if d not in seen:
                seen[d] = score
                rank = len(seen)
                if rank < best_rank.get(d, 1 << 30):
                    best_rank[d], best[d] = rank, cid
        reduced.append(list(seen.items()))
    return reduced, best


def reciprocal_rank_fusion(rankings: Sequence[Ranking], k: int = 60,
                           weights: Sequence[float] | None = None) -> Ranking:
    """score(d) = Σ_r w_r / (k + rank_r(d)), ranks from 1 (Cormack et al., 2009)."""
    weights = weights or [1.0] * len(rankings)
    fused: dict[str, float] = {}
    for ranking, w in zip(rankings, weights):
        for rank, (cid, _) in enumerate(ranking, start=1):
            fused[cid] = fused.get(cid, 0.0) + w / (k + rank)
    return sorted(fused.items(), key=lambda x: -x[1])


def weighted_fusion(rankings: Sequence[Ranking], weights: Sequence[float] | None = None) -> Ranking:
    """Σ_r w_r · minmax_r(score); a chunk missing from a ranking gets 0 there."""
    weights = weights or [1.0 / len(rankings)] * len(rankings)
    fused: dict[str, float] = {}
    for ranking, w in zip(rankings, weights):
        if not ranking:
            continue
        scores = [s for _, s in ranking]
        lo, hi = min(scores), max(scores)
        span = hi - lo
        for cid, s in ranking:
            fused[cid] = fused.get(cid, 0.0) + w * ((s - lo) / span if span > 0 else 1.0)
    return sorted(fused.items(), key=lambda x: -x[1])


class HybridRetriever(Retriever):
    """Fuses the rankings of several retrievers that index the same chunks."""

    name = "hybrid"

    def __init__(self, retrievers: dict[str, Retriever], config: FusionConfig | None = None) -> None:
        if len(retrievers) < 2:
            raise ValueError("a hybrid retriever needs at least two retrievers")
        self.retrievers = retrievers
        self.config = config or FusionConfig()

    def __len__(self) -> int:
        return len(next(iter(self.retrievers.values())))

    def describe(self) -> dict:
        c = self.config
        return {"type": "hybrid", "members": list(self.retrievers), "method": c.method, "unit": c.unit, "rrf_k": c.rrf_k,
                "weights": c.weights, "candidates": c.candidates}

    def add(self, chunks: Sequence[Chunk], progress: Callable[[int], None] | None = None) -> None:
        for r in self.retrievers.values():
            r.add(chunks, progress)

    def delete(self, chunk_ids: Iterable[str]) -> int:
        chunk_ids = list(chunk_ids)
        return max(r.delete(chunk_ids) for r in self.retrievers.values())

    def fuse(self, rankings: Sequence[Ranking]) -> Ranking:
        c = self.config
        best = None
        if c.unit == "document":
            rankings, best = by_document(rankings)
        if c.method == "rrf":
            fused = reciprocal_rank_fusion(rankings, c.rrf_k, [c.weights.get(n, 1.0) for n in self.retrievers])
        else:
            fused = weighted_fusion(rankings, [c.weights.get(n, 1.0 / len(self.retrievers)) for n in self.retrievers])
        return fused if best is None else [(best[d], s) for d, s in fused]

    def search(self, query: str, k: int = 10) -> Ranking:
        depth = max(k, self.config.candidates)
        return self.fuse([r.search(query, depth) for r in self.retrievers.values()])[:k]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[Ranking]:
        depth = max(k, self.config.candidates)
        per = [r.search_batch(queries, depth) for r in self.retrievers.values()]
        return [self.fuse([p[i] for p in per])[:k] for i in range(len(queries))]

    def save(self, path: Path) -> None:
        for name, r in self.retrievers.items():
            r.save(Path(path) / name)
