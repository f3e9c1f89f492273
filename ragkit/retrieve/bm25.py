"""BM25 on bm25s: eager sparse scores, configurable stemming and stop words.

`method="okapi"` reproduces rank-bm25's `BM25Okapi` scores exactly (its idf with the epsilon floor
for negative idf, and the (k1 + 1) term-frequency factor); the other methods are bm25s's own.

Incremental updates: each chunk's token ids are kept, so adding or deleting chunks re-tokenises
only the new chunks and rebuilds the score matrix from stored ids (BM25's idf and average length
change with every update, so every stored score changes anyway).
"""
from __future__ import annotations

import json

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import bm25s
import numpy as np

from ..chunking import Chunk
from ..errors import IndexFormatError
from .base import Ranking, Retriever

METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+", "okapi")


@dataclass
class BM25Config:
    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    delta: float = 0.5       # bm25l / bm25+
    epsilon: float = 0.25    # okapi: floor for negative idf, as a share of the mean idf
    stopwords: str | None = "en"
    stemmer: str | None = "english"
    lowercase: bool = True
    token_pattern: str = r"(?u)\b\w\w+\b"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown BM25 method {self.method!r}; choose one of {', '.join(METHODS)}")


class BM25Tokenizer:
    """Lowercase, split on `token_pattern`, drop stop words, stem (the order bm25s.tokenize uses)."""

    def __init__(self, config: BM25Config) -> None:
        self.split = re.compile(config.token_pattern).findall
        self.lowercase = config.lowercase
        self.stopwords = frozenset(self._stopwords(config.stopwords))
        self.stemmer = None
        if config.stemmer:
            import Stemmer

            self.stemmer = Stemmer.Stemmer(config.stemmer)
        self._cache: dict[str, str] = {}

    @staticmethod
    def _stopwords(name: str | None) -> Iterable[str]:
        if not name:
            return ()
        from bm25s.tokenization import _infer_stopwords

        return _infer_stopwords(name)

    def __call__(self, text: str) -> list[str]:
        tokens = [t for t in self.split(text.lower() if self.lowercase else text) if t not in self.stopwords]
        if self.stemmer is None:
            return tokens
        cache = self._cache
        missing = [t for t in set(tokens) if t not in cache]
        if missing:
            cache.update(zip(missing, self.stemmer.stemWords(missing)))
        return [cache[t] for t in tokens]


class BM25Retriever(Retriever):
    """BM25 over chunk texts (title + text)."""

    name = "bm25"

    def __init__(self, config: BM25Config | None = None) -> None:
        self.config = config or BM25Config()
        self.tokenize = BM25Tokenizer(self.config)
        self.ids: list[str] = []
        self.doc_tokens: list[np.ndarray] = []   # token ids per chunk
        self.vocab: dict[str, int] = {}
        self._model: bm25s.BM25 | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self) -> dict:
        return {"type": "bm25", **asdict(self.config), "vocabulary": len(self.vocab)}

    # -- building -------------------------------------------------------------------------------
    def add(self, chunks: Sequence[Chunk], progress: Callable[[int], None] | None = None) -> None:
        known = set(self.ids)
        vocab = self.vocab
        for c in chunks:
            if c.id in known:
                raise ValueError(f"chunk {c.id!r} is already indexed")
            toks = self.tokenize(c.indexed_text)
            ids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in toks), dtype=np.int32, count=len(toks))
            self.ids.append(c.id)
            self.doc_tokens.append(ids)
            known.add(c.id)
            if progress:
                progress(1)
        self._rebuild()

    def delete(self, chunk_ids: Iterable[str]) -> int:
        drop = set(chunk_ids)
        keep = [i for i, cid in enumerate(self.ids) if cid not in drop]
        removed = len(self.ids) - len(keep)
        if removed:
            self.ids = [self.ids[i] for i in keep]
            self.doc_tokens = [self.doc_tokens[i] for i in keep]
            self._rebuild()
        return removed

    def _rebuild(self) -> None:
        c = self.config
        if not self.ids:
            self._model = None
            return
        method, idf_method = (c.method, None) if c.method != "okapi" else ("atire", "lucene")
        model = bm25s.BM25(k1=c.k1, b=c.b, delta=c.delta, method=method, idf_method=idf_method)
        n_vocab = max(len(self.vocab), 1)
        corpus = [d.tolist() for d in self.doc_tokens]
        model.scores = model.build_index_from_ids(list(range(n_vocab)), corpus, show_progress=False)
        model.vocab_dict = self.vocab
        if c.method == "okapi":
            self._rescale_to_okapi(model, n_vocab)
        self._model = model

    def _rescale_to_okapi(self, model: bm25s.BM25, n_vocab: int) -> None:
        """Turn the matrix built with lucene idf into rank-bm25 BM25Okapi scores, column by column."""
        n = len(self.ids)
        df = np.zeros(n_vocab, dtype=np.int64)
        for toks in self.doc_tokens:
            df[np.unique(toks)] += 1
        present = df > 0
        idf = np.zeros(n_vocab)
        idf[present] = np.log(n - df[present] + 0.5) - np.log(df[present] + 0.5)
        mean_idf = idf[present].sum() / max(present.sum(), 1)
        idf[present & (idf < 0)] = self.config.epsilon * mean_idf
        lucene = np.ones(n_vocab)
        lucene[present] = np.log(1 + (n - df[present] + 0.5) / (df[present] + 0.5))
        indptr = model.scores["indptr"]
        factor = np.repeat(idf / lucene, np.diff(indptr))
        model.scores["data"] = (model.scores["data"] * factor).astype(model.dtype)

    # -- searching ------------------------------------------------------------------------------
    def query_ids(self, query: str) -> np.ndarray:
        vocab = self.vocab
        return np.array([vocab[t] for t in self.tokenize(query) if t in vocab], dtype=np.int32)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every indexed chunk for `query` (repeated query terms count again, as in rank-bm25)."""
        if self._model is None:
            return np.zeros(0, dtype=np.float32)
        qids = self.query_ids(query)
        if len(qids) == 0:
            return np.zeros(len(self.ids), dtype=np.float32)
        return self._model.get_scores_from_ids(qids)

    def search(self, query: str, k: int = 10) -> Ranking:
        s = self.scores(query)
        cand = np.flatnonzero(s)  # chunks sharing no term with the query are not results
        if len(cand) > k:
            cand = cand[np.argpartition(-s[cand], k - 1)[:k]]
        cand = cand[np.argsort(-s[cand], kind="stable")]
        ids = self.ids
        return [(ids[i], float(s[i])) for i in cand]

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lengths = np.array([len(t) for t in self.doc_tokens], dtype=np.int64)
        flat = np.concatenate(self.doc_tokens) if self.doc_tokens else np.zeros(0, np.int32)
        np.savez(path / "tokens.npz", flat=flat.astype(np.int32), lengths=lengths)
        vocab = sorted(self.vocab, key=self.vocab.__getitem__)
        (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (path / "ids.json").write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")
        (path / "config.json").write_text(json.dumps(asdict(self.config), indent=2), encoding="utf-8")
        if self._model is not None:
            s = self._model.scores
            np.savez(path / "scores.npz", data=s["data"], indices=s["indices"], indptr=s["indptr"],
                     num_docs=np.array(s["num_docs"]))

    @classmethod
    def load(cls, path: Path) -> "BM25Retriever":
        path = Path(path)
        try:
            config = BM25Config(**json.loads((path / "config.json").read_text(encoding="utf-8")))
            vocab_list = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
            ids = json.loads((path / "ids.json").read_text(encoding="utf-8"))
            with np.load(path / "tokens.npz", allow_pickle=False) as z:
                flat, lengths = z["flat"], z["lengths"]
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise IndexFormatError(f"BM25 index in {path} is missing or damaged: {e}") from e
        r = cls(config)
        r.ids = ids
        r.vocab = {t: i for i, t in enumerate(vocab_list)}
        r.doc_tokens = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
        scores_file = path / "scores.npz"
        if ids and scores_file.exists():
            method, idf_method = (config.method, None) if config.method != "okapi" else ("atire", "lucene")
            model = bm25s.BM25(k1=config.k1, b=config.b, delta=config.delta, method=method, idf_method=idf_method)
            with np.load(scores_file, allow_pickle=False) as z:
                model.scores = {"data": z["data"], "indices": z["indices"], "indptr": z["indptr"],
                                "num_docs": int(z["num_docs"])}
            model.vocab_dict = r.vocab
            model.nonoccurrence_array = None
            if config.method in ("bm25l", "bm25+"):
                r._rebuild()  # these variants also need the non-occurrence array: recompute
            else:
                r._model = model
        else:
            r._rebuild()
        return r


