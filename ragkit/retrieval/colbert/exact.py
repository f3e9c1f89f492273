"""ColBERT late-interaction retrieval behind the common retriever interface.

Engine `exact` (the default): every chunk's token vectors are stored as float16 in one
memory-mapped `embeddings.npy` with per-chunk lengths, and queries are scored by exact MaxSim in
torch. Past `centroid_min_tokens` stored tokens a cheap candidate stage runs first: the token vectors
are clustered once with k-means (faiss), each token keeps its centroid id, and a query scores every
chunk by MaxSim against its tokens' centroids (PLAID's centroid interaction, one gather and one
segment max); the best `candidates` chunks are then scored exactly. Adding chunks encodes only the
new ones (their tokens are assigned to the existing centroids); deleting drops rows, re-encoding
nothing.

Engine `plaid` is colbert-ai's PLAID index (token vectors compressed to a centroid id plus 1/2/4-bit
residuals per dimension, searched in-process by colbert-ai's IndexScorer): `ColBERTConfig(engine="plaid",
nbits=2)`, implemented in `ragkit.retrieval.colbert.plaid` (needs `pip install 'ragkit[colbert]'`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from typing import TYPE_CHECKING

import numpy as np

from ragkit.config import from_dict
from ragkit.data.chunking import Chunk
from ragkit.errors import IndexFormatError, RagkitError
from ragkit.integrity import read_json, read_npy
from ragkit.retrieval.stores.vectors import InvalidVectorsError, nonfinite_rows
from ragkit.retrieval.base import Ranking, Retriever

if TYPE_CHECKING:  # torch and the model load only when ColBERT is used: `ragkit info` and BM25-only
    import torch   # indexes stay free of the ~3 s torch import

    from ragkit.retrieval.colbert.model import ColBERTModel

DEFAULT_COLBERT = "default"  # the same value as ragkit.retrieval.colbert.model.DEFAULT_COLBERT (checked by a test)

ENGINES = ("exact", "plaid")


@dataclass
class ColBERTConfig:
    checkpoint: str = DEFAULT_COLBERT   # "default" (untrained MiniLM), a checkpoint folder or hub id
    engine: str = "exact"
    batch_size: int = 32
    candidates: int = 256               # chunks scored exactly after the centroid stage
    centroid_min_tokens: int = 200_000  # fewer stored tokens: score every chunk exactly
    n_centroids: int = 0                # 0: exact: about 2·sqrt(tokens), a power of two (64..4096);
                                        #    plaid: colbert-ai's 2^floor(log2(16·sqrt(tokens)))
    # engine "plaid" only (colbert-ai's settings; 0/None: Searcher.dense_search's defaults for k)
    nbits: int = 2                      # residual bits per dimension: 1, 2 or 4
    ncells: int = 0                     # centroids probed per query token (k ≤ 10: 1, ≤ 100: 2, else 4)
    centroid_score_threshold: float | None = None  # centroid pruning (0.5 / 0.45 / 0.4)
    ndocs: int = 0                      # chunks kept after centroid interaction (256 / 1024 / max(4k, 4096))
    threads: int = 1                    # torch threads while searching (0: leave torch's setting)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown ColBERT engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.nbits not in (1, 2, 4):
            raise ValueError(f"ColBERT PLAID nbits must be 1, 2 or 4, not {self.nbits!r}")
        if self.checkpoint not in (DEFAULT_COLBERT, "") and os.path.isdir(self.checkpoint):
            self.checkpoint = str(Path(self.checkpoint).resolve())  # saved indexes must find it again


def segment_maxsim(q: torch.Tensor, tokens: torch.Tensor, lengths: np.ndarray) -> np.ndarray:
    """MaxSim of one query (Lq × dim) against documents stored back to back (tokens × dim, float32)."""
    sim = (q @ tokens.T).numpy()  # Lq × tokens
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return np.maximum.reduceat(sim, starts, axis=1).sum(axis=0)


class TokenVectorRetriever(Retriever):
    """What both ColBERT engines share: chunk ids with a row each (`ids`, `_row`), encoding through
    the ColBERT model, and the checks on new chunks. Engines implement `add_embeddings`,
    `score_rows`, `search`, `delete`, `save` and `load`."""

    model: ColBERTModel

    @classmethod
    def for_index(cls, config, encoder=None, model=None) -> "TokenVectorRetriever":
        """An empty engine over `model` (a ColBERTModel, a checkpoint path, or None: the config's)."""
        from ragkit.retrieval.colbert.model import ColBERTModel

        if model is None or isinstance(model, str):
            model = ColBERTModel.from_pretrained(model or config.colbert.checkpoint)
        return cls(model, config.colbert)

    @classmethod
    def load_for_index(cls, path: Path, config, encoder=None, model=None) -> "TokenVectorRetriever":
        return cls.load(path, model)
    config: ColBERTConfig
    ids: list[str]
    _row: dict[str, int]

    def __len__(self) -> int:
        return len(self.ids)

    def has(self, chunk_id: str) -> bool:
        return chunk_id in self._row

    def add(self, chunks: Sequence[Chunk], progress: Callable[[int], None] | None = None) -> None:
        self.add_embeddings([c.id for c in chunks], self.model.encode_docs(
            [c.indexed_text for c in chunks], batch_size=self.config.batch_size, progress=progress))

    def add_embeddings(self, ids: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        raise NotImplementedError

    def _check_new(self, ids: Sequence[str]) -> None:
        dup = [i for i in ids if i in self._row]
        if dup:
            raise ValueError(f"chunks already indexed: {dup[:5]}")

    def query_vectors(self, query: str) -> torch.Tensor:
        q, mask = self.model.encode_queries([query])
        return q[0][mask[0]].float()

    def _drop_rows(self, chunk_ids: Iterable[str]) -> tuple[int, np.ndarray | None]:
        """Forget the rows of `chunk_ids` (ids, lengths, then the engine's `_reindex`): (how many, mask of the token
        vectors to keep). Engines then cut their token arrays with the mask."""
        drop = {cid for cid in chunk_ids if cid in self._row}
        if not drop:
            return 0, None
        keep_rows = np.array([cid not in drop for cid in self.ids], dtype=bool)
        keep_tokens = np.repeat(keep_rows, self.lengths)
        self.ids = [cid for cid, k in zip(self.ids, keep_rows) if k]
        self.lengths = self.lengths[keep_rows]
        self._reindex()
        return len(drop), keep_tokens


class ColBERTRetriever(TokenVectorRetriever):
    """Token vectors of every chunk (title + text) with exact MaxSim search."""

    name = "colbert"

    def __init__(self, model: ColBERTModel, config: ColBERTConfig | None = None) -> None:
        self.model = model
        self.config = config or ColBERTConfig()
        self.ids: list[str] = []
        self.lengths = np.zeros(0, dtype=np.int64)
        self.emb = np.zeros((0, model.dim), dtype=np.float16)
        self.centroids: np.ndarray | None = None
        self.codes = np.zeros(0, dtype=np.int32)
        self._reindex()

    def describe(self) -> dict:
        return {"type": "colbert", **asdict(self.config), "model": self.model.describe(),
                "tokens": int(self.lengths.sum()), "centroids": 0 if self.centroids is None else len(self.centroids)}

    def _reindex(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self._row = {cid: i for i, cid in enumerate(self.ids)}

    # -- building -------------------------------------------------------------------------------
    def add_embeddings(self, ids: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        """Store already-encoded chunks (one tokens × dim array each)."""
        self._check_new(ids)
        if not len(ids):
            return
        new = np.concatenate([np.asarray(a, dtype=np.float16) for a in arrays])
        if new.ndim != 2 or new.shape[1] != self.model.dim:
            raise ValueError(f"expected token vectors of dimension {self.model.dim}, got shape {new.shape}")
        bad = nonfinite_rows(new)
        if len(bad):
            raise InvalidVectorsError(f"{len(bad)} token vectors hold NaN or infinite values (or overflow float16); "
                                      "the ColBERT model produced invalid embeddings, nothing was stored")
        self.ids.extend(ids)
        self.lengths = np.concatenate([self.lengths, [len(a) for a in arrays]]).astype(np.int64)
        self.emb = np.concatenate([self.emb, new]) if len(self.emb) else new
        if self.centroids is not None:
            self.codes = np.concatenate([self.codes, self._assign(new)])
        self._reindex()
        self._maybe_train_centroids()

    def delete(self, chunk_ids: Iterable[str]) -> int:
        dropped, keep_tokens = self._drop_rows(chunk_ids)
        if dropped:
            self.emb = np.ascontiguousarray(self.emb[keep_tokens])
            if self.centroids is not None:
                self.codes = self.codes[keep_tokens]
        return dropped

    # -- candidate stage ------------------------------------------------------------------------
    def _maybe_train_centroids(self) -> None:
        n = len(self.emb)
        if self.centroids is not None or n < self.config.centroid_min_tokens:
            return
        import faiss

        k = self.config.n_centroids or int(np.clip(2 ** np.floor(np.log2(2 * np.sqrt(n))), 64, 4096))
        rng = np.random.default_rng(0)
        sample = self.emb[np.sort(rng.choice(n, size=min(n, 64 * k), replace=False))].astype(np.float32)
        km = faiss.Kmeans(self.model.dim, k, niter=10, seed=0, spherical=True, verbose=False)
        km.train(sample)
        self.centroids = km.centroids.astype(np.float32)
        self.codes = self._assign(self.emb)

    def _assign(self, emb: np.ndarray) -> np.ndarray:
        import torch

        out = np.empty(len(emb), dtype=np.int32)
        c = torch.from_numpy(self.centroids)
        for start in range(0, len(emb), 65536):
            block = torch.from_numpy(emb[start:start + 65536].astype(np.float32))
            out[start:start + len(block)] = (block @ c.T).argmax(dim=1).numpy()
        return out

    def _candidates(self, q: torch.Tensor, n: int) -> np.ndarray:
        """Rows of the `n` chunks with the best centroid-interaction scores."""
        import torch

        s = (q @ torch.from_numpy(self.centroids).T).numpy()  # Lq × centroids
        approx = np.maximum.reduceat(s[:, self.codes], self.offsets[:-1], axis=1).sum(axis=0)
        if n >= len(approx):
            return np.arange(len(approx))
        return np.argpartition(-approx, n - 1)[:n]

    # -- searching ------------------------------------------------------------------------------
    def score_rows(self, q: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        """Exact MaxSim of the query vectors against stored chunks `rows`."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros(0, dtype=np.float32)
        starts, lengths = self.offsets[rows], self.lengths[rows]
        # token positions of every row, back to back: start of its row + position inside it
        index = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
        import torch

        tokens = torch.from_numpy(np.asarray(self.emb[index], dtype=np.float32))
        return segment_maxsim(q, tokens, lengths)

    def score(self, query: str, chunk_ids: Sequence[str]) -> list[float]:
        """MaxSim scores of stored chunks (used by reranking); a chunk not stored is a KeyError."""
        q = self.query_vectors(query)
        return self.score_rows(q, np.array([self._row[c] for c in chunk_ids], dtype=np.int64)).tolist()

    def search(self, query: str, k: int = 10) -> Ranking:
        if not self.ids:
            return []
        q = self.query_vectors(query)
        if self.centroids is not None and len(self.ids) > max(k, self.config.candidates):
            rows = self._candidates(q, max(k, self.config.candidates))
            scores = self.score_rows(q, rows)
        else:
            rows = np.arange(len(self.ids))
            scores = np.concatenate([self.score_rows(q, rows[s:s + 4096]) for s in range(0, len(rows), 4096)])
        top = np.argsort(-scores, kind="stable")[:k]
        return [(self.ids[rows[i]], float(scores[i])) for i in top]

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "embeddings.npy", np.ascontiguousarray(self.emb, dtype=np.float16), allow_pickle=False)
        np.save(path / "lengths.npy", self.lengths, allow_pickle=False)
        (path / "ids.json").write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")
        if self.centroids is not None:
            np.save(path / "centroids.npy", self.centroids, allow_pickle=False)
            np.save(path / "codes.npy", self.codes, allow_pickle=False)
        (path / "config.json").write_text(json.dumps(self.describe(), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path, model: ColBERTModel | str | None = None) -> "ColBERTRetriever":
        """Load a saved retriever; its checkpoint is loaded from the recorded id unless `model` is given.
        A model other than the one the chunks were encoded with is an IndexFormatError."""
        path = Path(path)
        meta = read_json(path / "config.json")
        try:
            built = meta.pop("model")
            config = from_dict(ColBERTConfig, meta, str(path / "config.json"),
                               ignore=("type", "model", "tokens", "centroids", "chunks", "partitions", "embeddings"))
            if not isinstance(built, dict):
                raise TypeError("'model' is not an object")
        except (AttributeError, ValueError, TypeError, KeyError, RagkitError) as e:
            raise IndexFormatError(f"{path / 'config.json'} is damaged: {e}") from e
        if config.engine != "exact":
            raise IndexFormatError(f"{path} holds a ColBERT {config.engine!r} index: open it with "
                                   "ragkit.retrieval.colbert.plaid.PlaidRetriever.load (Index.load does)")
        if model is None or isinstance(model, str):
            from ragkit.retrieval.colbert.model import ColBERTModel

            model = ColBERTModel.from_pretrained(model or config.checkpoint)
        check_checkpoint(path, built, model.describe())
        r = cls(model, config)
        ids = read_json(path / "ids.json")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
            raise IndexFormatError(f"{path / 'ids.json'} is damaged: expected a list of distinct chunk ids")
        r.ids = ids
        r.lengths = read_npy(path / "lengths.npy")
        r.emb = read_npy(path / "embeddings.npy", mmap=True)
        if (r.lengths.ndim != 1 or not np.issubdtype(r.lengths.dtype, np.integer)
                or (len(r.lengths) and r.lengths.min() < 0)):
            raise IndexFormatError(f"{path / 'lengths.npy'} is damaged: expected one non-negative token count "
                                   "per chunk")
        if r.emb.ndim != 2 or r.emb.dtype != np.float16 or r.emb.shape[1] != model.dim:
            raise IndexFormatError(f"{path / 'embeddings.npy'} is damaged: token vectors of shape {r.emb.shape} and "
                                   f"type {r.emb.dtype}, expected float16 vectors of dimension {model.dim}")
        if len(r.ids) != len(r.lengths) or int(r.lengths.sum()) != len(r.emb):
            raise IndexFormatError(f"ColBERT index in {path} is damaged: {path / 'ids.json'} holds {len(r.ids)} ids, "
                                   f"{path / 'lengths.npy'} {len(r.lengths)} lengths adding up to "
                                   f"{int(r.lengths.sum())} tokens, {path / 'embeddings.npy'} {len(r.emb)} "
                                   "token vectors")
        if (path / "centroids.npy").is_file() or (path / "codes.npy").is_file():
            r.centroids = read_npy(path / "centroids.npy")
            r.codes = read_npy(path / "codes.npy")
            if (r.centroids.ndim != 2 or r.centroids.shape[1] != model.dim or not len(r.centroids)
                    or len(nonfinite_rows(r.centroids))):
                raise IndexFormatError(f"{path / 'centroids.npy'} is damaged: shape {r.centroids.shape}, expected "
                                       f"finite centroids of dimension {model.dim}")
            if (r.codes.ndim != 1 or len(r.codes) != len(r.emb) or not np.issubdtype(r.codes.dtype, np.integer)
                    or (len(r.codes) and (r.codes.min() < 0 or r.codes.max() >= len(r.centroids)))):
                raise IndexFormatError(f"{path / 'codes.npy'} is damaged: expected one centroid id below "
                                       f"{len(r.centroids)} per token vector ({len(r.emb)})")
        r._reindex()
        return r


def check_checkpoint(path: Path, built: dict, given: dict) -> None:
    """A clear error when an index is opened with another ColBERT checkpoint than it was built with."""
    problems = [f"{key} {built.get(key)!r} vs {given.get(key)!r}" for key in ("fingerprint", "dim")
                if built.get(key) != given.get(key)]
    if problems:
        raise IndexFormatError(f"{path} was built with ColBERT checkpoint {built.get('id')!r} and is being opened with "
                               f"{given.get('id')!r} ({'; '.join(problems)}); load it with the checkpoint it was "
                               "built with, or rebuild the index")
