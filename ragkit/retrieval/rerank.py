"""Rerankers: reorder a retriever's candidates with a finer model before they reach the prompt.

Anything with `rerank(query, hits, k)` is a reranker (the pipeline, `ragkit eval` and the
llama-index postprocessor call only that). `MaxSimReranker` is late interaction (ColBERT-style
MaxSim) over a sentence-transformers model's own token embeddings: every query token finds its most
similar passage token, and the similarities are summed. With the packaged all-MiniLM-L6-v2 it runs
offline with no training; candidates are encoded at rerank time (no stored token embeddings).
`ColBERTReranker` uses a ColBERT checkpoint and, when the index has a `colbert` retriever, the
token vectors it stored.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Protocol, Sequence, runtime_checkable

from ragkit.retrieval.index import Hit


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        """`hits` reordered best first (at most `k`), with `score` the reranker's and `rank` renumbered."""


class MaxSimReranker:
    """Late-interaction reranking with a sentence-transformers model's token embeddings."""

    def __init__(self, model_name: str = "default", batch_size: int = 32, max_length: int = 512) -> None:
        from ragkit.retrieval.encoder import SentenceEncoder

        # its own copy of the model: the sequence limit set here must not change the index's encoder
        self.encoder = SentenceEncoder.from_pretrained(model_name)
        self.st = self.encoder.model
        limit = getattr(getattr(self.st, "tokenizer", None), "model_max_length", max_length) or max_length
        self.st.max_seq_length = min(max_length, limit)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, name_or_path: str = "default", **kw) -> "MaxSimReranker":
        return cls(name_or_path, **kw)

    def token_embeddings(self, texts: Sequence[str]) -> list:
        """One (tokens × dim) L2-normalised float32 tensor per text, padding and [CLS]/[SEP] left out."""
        import torch

        out = self.st.encode(list(texts), output_value="token_embeddings", batch_size=self.batch_size,
                             convert_to_numpy=False, show_progress_bar=False)
        embs = []
        for e in out:
            e = e[1:-1] if e.shape[0] > 2 else e  # [CLS] ... [SEP]
            embs.append(torch.nn.functional.normalize(e.float(), dim=-1))
        return embs

    def scores(self, query: str, passages: Sequence[str]) -> list[float]:
        q = self.token_embeddings([query])[0]
        return [float((q @ p.T).max(dim=1).values.sum()) for p in self.token_embeddings(passages)]

    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        import torch

        if not hits:
            return []
        with torch.inference_mode():
            scores = self.scores(query, [h.text if not h.title or h.text.startswith(h.title) else f"{h.title}\n{h.text}"
                                         for h in hits])
        order = sorted(range(len(hits)), key=lambda i: -scores[i])[: k or len(hits)]
        return [replace(hits[i], rank=r, score=scores[i]) for r, i in enumerate(order, start=1)]


class ColBERTReranker:
    """Late-interaction reranking with a ColBERT checkpoint (default: the untrained MiniLM ColBERT).

    When the searched index holds a `colbert` retriever built with the same checkpoint, the hits'
    stored token vectors are scored (only the query is encoded: ~ms for 100 candidates); otherwise
    the hits' texts are encoded at rerank time."""

    def __init__(self, checkpoint: str = "default", index=None, model=None) -> None:
        stored = index.retrievers.get("colbert") if index is not None else None
        if model is None and stored is not None and hasattr(stored, "score") and checkpoint in ("default", ""):
            model = stored.model  # "colbert" with an index that has one: its own checkpoint
        if model is None:
            from ragkit.retrieval.colbert.model import ColBERTModel

            model = ColBERTModel.from_pretrained(checkpoint or "default")
        self.model = model
        self.stored = stored if (stored is not None and hasattr(stored, "score")
                                 and stored.model.fingerprint == model.fingerprint) else None

    @classmethod
    def from_pretrained(cls, name_or_path: str = "default", **kw) -> "ColBERTReranker":
        return cls(name_or_path, **kw)

    def scores(self, query: str, hits: Sequence[Hit]) -> list[float]:
        import numpy as np

        from ragkit.retrieval.colbert.exact import segment_maxsim

        if self.stored is not None and all(self.stored.has(h.chunk_id) for h in hits):
            return self.stored.score(query, [h.chunk_id for h in hits])
        import torch

        q, mask = self.model.encode_queries([query])
        docs = self.model.encode_docs([f"{h.title} {h.text}" if h.title else h.text for h in hits])
        tokens = torch.from_numpy(np.concatenate(docs).astype(np.float32))
        return segment_maxsim(q[0][mask[0]].float(), tokens, np.array([len(d) for d in docs])).tolist()

    def rerank(self, query: str, hits: Sequence[Hit], k: int | None = None) -> list[Hit]:
        if not hits:
            return []
        scores = self.scores(query, hits)
        order = sorted(range(len(hits)), key=lambda i: -scores[i])[: k or len(hits)]
        return [replace(hits[i], rank=r, score=float(scores[i])) for r, i in enumerate(order, start=1)]
