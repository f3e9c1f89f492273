"""Vector storage behind a small interface: faiss here, pgvector in `ragkit.retrieval.stores.postgres`.

The stored float32 vectors are the source of truth: the faiss structure is derived from them, so
deletes and rebuilds never re-encode text. Kinds: `flat` (exact inner product, the default),
`hnsw` (graph, approximate), `ivfpq` (inverted lists + product quantisation, for large corpora).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import faiss
import numpy as np

from ragkit.errors import IndexFormatError, RagkitError
from ragkit.integrity import read_json, read_npy

KINDS = ("flat", "hnsw", "ivfpq")


class InvalidVectorsError(RagkitError, ValueError):
    """Vectors that cannot be stored: NaN or infinite values (they would silently wreck rankings)."""


def nonfinite_rows(vectors: np.ndarray, block: int = 65536) -> np.ndarray:
    """Indices of the rows holding a NaN or an infinity (checked in blocks: bounded extra memory)."""
    bad = [start + np.flatnonzero(~np.isfinite(vectors[start:start + block]).all(axis=1))
           for start in range(0, len(vectors), block)]
    return np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64)


def checked_vectors(ids: Sequence[str], vectors: np.ndarray, dim: int) -> np.ndarray:
    """`vectors` as float32, or a ValueError (wrong shape) / InvalidVectorsError (NaN, infinity)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim or len(ids) != len(vectors):
        raise ValueError(f"expected {len(ids)} vectors of dimension {dim}, got shape {vectors.shape}")
    bad = nonfinite_rows(vectors)
    if len(bad):
        raise InvalidVectorsError(f"{len(bad)} of {len(vectors)} vectors hold NaN or infinite values (ids "
                                  f"{[ids[i] for i in bad[:5]]}); the encoder produced invalid embeddings, "
                                  "nothing was stored")
    return vectors


class VectorStore(Protocol):
    """What a dense retriever needs from its storage."""

    ids: list[str]

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None: ...
    def existing(self, ids: Sequence[str]) -> list[str]: ...
    def export(self) -> tuple[list[str], np.ndarray]: ...
    def remove(self, ids: Iterable[str]) -> int: ...
    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]: ...
    def save(self, path: Path) -> None: ...
    def __len__(self) -> int: ...


@dataclass
class FaissConfig:
    kind: str = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int = 0          # 0: about 4·sqrt(n)
    ivf_nprobe: int = 16
    pq_m: int = 0               # 0: dimension / 8 sub-quantisers
    pq_nbits: int = 8

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown dense index kind {self.kind!r}; choose one of {', '.join(KINDS)}")


class FaissVectorStore:
    """Inner-product search over normalised vectors (= cosine) with faiss."""

    MIN_IVFPQ_TRAIN = 1000

    def __init__(self, dim: int, config: FaissConfig | None = None) -> None:
        self.dim = dim
        self.config = config or FaissConfig()
        self.ids: list[str] = []
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self.index: faiss.Index | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _new_index(self) -> faiss.Index:
        c, d = self.config, self.dim
        if c.kind == "flat":
            return faiss.IndexFlatIP(d)
        if c.kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, c.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = c.hnsw_ef_construction
            index.hnsw.efSearch = c.hnsw_ef_search
            return index
        n = len(self.vectors)
        if n < self.MIN_IVFPQ_TRAIN:
            raise ValueError(f"an ivfpq index needs at least {self.MIN_IVFPQ_TRAIN} vectors to train, got {n}; "
                             "use the flat (exact) index for small corpora")
        nlist = c.ivf_nlist or int(max(1, min(4 * np.sqrt(n), n // 39)))
        pq_m = c.pq_m or max(1, d // 8)
        if d % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the dimension {d}")
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, c.pq_nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(self.vectors))
        index.nprobe = min(c.ivf_nprobe, nlist)
        return index

    def _rebuild(self) -> None:
        """(Re)build the faiss structure from the stored vectors; ivfpq keeps its trained codebooks."""
        if self.index is not None and self.config.kind == "ivfpq":
            self.index.reset()
        else:
            self.index = self._new_index() if len(self.vectors) else None
        if self.index is not None and len(self.vectors):
            self.index.add(np.ascontiguousarray(self.vectors))

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = checked_vectors(ids, vectors, self.dim)
        dup = set(ids) & set(self.ids)
        if dup:
            raise ValueError(f"ids already stored: {sorted(dup)[:5]}")
        self.ids.extend(ids)
        self.vectors = np.concatenate([self.vectors, vectors]) if len(self.vectors) else vectors.copy()
        if self.index is None:
            self._rebuild()
        else:
            self.index.add(np.ascontiguousarray(vectors))

    def existing(self, ids: Sequence[str]) -> list[str]:
        """Those of `ids` already stored."""
        known = set(self.ids)
        return [i for i in ids if i in known]

    def export(self) -> tuple[list[str], np.ndarray]:
        """Every (id, vector), in insertion order."""
        return list(self.ids), self.vectors

    def remove(self, ids: Iterable[str]) -> int:
        drop = set(ids)
        keep = np.array([cid not in drop for cid in self.ids], dtype=bool)
        removed = int((~keep).sum())
        if removed:
            self.ids = [cid for cid, k in zip(self.ids, keep) if k]
            self.vectors = self.vectors[keep]
            self._rebuild()
        return removed

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        if self.index is None or not self.ids:
            return [[] for _ in range(len(queries))]
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self.ids)))
        ids = self.ids
        return [[(ids[r], float(s)) for r, s in zip(rr, ss) if r >= 0] for rr, ss in zip(rows, scores)]

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "vectors.npy", self.vectors, allow_pickle=False)
        (path / "ids.json").write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")
        (path / "store.json").write_text(json.dumps({"dim": self.dim, **asdict(self.config)}, indent=2))
        if self.config.kind != "flat" and self.index is not None:
            faiss.write_index(self.index, str(path / "faiss.index"))

    @classmethod
    def load(cls, path: Path) -> "FaissVectorStore":
        """Read a saved store; a missing, truncated or inconsistent file (wrong width, NaN vectors,
        a faiss file that does not match) is an IndexFormatError naming it."""
        path = Path(path)
        meta = read_json(path / "store.json")
        try:
            dim = meta.pop("dim")
            if not isinstance(dim, int) or dim <= 0:
                raise ValueError(f"bad dimension {dim!r}")
            store = cls(dim, FaissConfig(**meta))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{path / 'store.json'} is damaged: {e}") from e
        ids = read_json(path / "ids.json")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
            raise IndexFormatError(f"{path / 'ids.json'} is damaged: expected a list of distinct chunk ids")
        vectors = read_npy(path / "vectors.npy")
        f = path / "vectors.npy"
        if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype != np.float32:
            raise IndexFormatError(f"{f} is damaged: vectors of shape {vectors.shape} and type {vectors.dtype}, "
                                   f"expected float32 vectors of dimension {dim} (store.json)")
        if len(ids) != len(vectors):
            raise IndexFormatError(f"vector store in {path} is damaged: {path / 'ids.json'} holds {len(ids)} ids, "
                                   f"{f} {len(vectors)} vectors")
        bad = nonfinite_rows(vectors)
        if len(bad):
            raise IndexFormatError(f"{f} is damaged: {len(bad)} of {len(vectors)} vectors hold NaN or infinite values "
                                   f"(ids {[ids[i] for i in bad[:5]]})")
        store.ids, store.vectors = ids, vectors
        index_file = path / "faiss.index"
        if store.config.kind != "flat" and index_file.exists():
            try:
                store.index = faiss.read_index(str(index_file))
            except Exception as e:  # noqa: BLE001 - faiss raises RuntimeError (or worse) on a bad file
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise IndexFormatError(f"{index_file} is damaged: faiss cannot read it ({first})") from e
            if store.index.d != dim or store.index.ntotal != len(ids):
                raise IndexFormatError(f"{index_file} is damaged: it holds {store.index.ntotal} vectors of dimension "
                                       f"{store.index.d}, {f} {len(ids)} of dimension {dim}")
            if store.config.kind == "hnsw":
                if not hasattr(store.index, "hnsw"):
                    raise IndexFormatError(f"{index_file} is damaged: not an HNSW index ({type(store.index).__name__})")
                store.index.hnsw.efSearch = store.config.hnsw_ef_search
        else:
            store._rebuild()
        return store
