"""Token-aware chunking with overlap, by the encoder's tokenizer.

Chunk ids are stable (`docid#n`) for the same text and parameters; each chunk keeps its character
offsets in the source document so answers can cite them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from .corpus import Document


@dataclass
class Chunk:
    """A piece of a document, the unit every retriever indexes and returns."""

    id: str
    doc_id: str
    n: int
    text: str
    title: str = ""
    source: str = ""
    start: int = 0
    end: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def indexed_text(self) -> str:
        """What retrievers see: the title, then the chunk text."""
        return f"{self.title} {self.text}" if self.title else self.text

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Chunk":
        return cls(**d)


@dataclass(frozen=True)
class ChunkingConfig:
    """`chunk_tokens` counts the title and the encoder's special tokens, so a chunk fits the model."""

    chunk_tokens: int = 256
    overlap: int = 32

    def __post_init__(self) -> None:
        if self.chunk_tokens < 16:
            raise ValueError(f"chunk_tokens must be at least 16, got {self.chunk_tokens}")
        if not 0 <= self.overlap < self.chunk_tokens // 2:
            raise ValueError(f"overlap must be in [0, chunk_tokens/2), got {self.overlap}")


class Chunker:
    """Split documents into windows of at most `chunk_tokens` tokens, `overlap` tokens shared."""

    def __init__(self, tokenizer, config: ChunkingConfig = ChunkingConfig()) -> None:
        from tokenizers import Tokenizer

        # A private copy of the fast (Rust) tokenizer without the truncation/padding that model
        # tokenizers often carry: batch encoding with offsets over whole documents.
        backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.config = config
        self.n_special = self.backend.num_special_tokens_to_add(False)

    def _budget(self, title_tokens: int) -> int:
        c = self.config
        return max(c.chunk_tokens - self.n_special - title_tokens, c.chunk_tokens // 2)

    def chunk(self, docs: Iterable[Document], batch_size: int = 256) -> list[Chunk]:
        docs = list(docs)
        out: list[Chunk] = []
        for start in range(0, len(docs), batch_size):
            batch = docs[start:start + batch_size]
            bodies = self.backend.encode_batch([d.text for d in batch], add_special_tokens=False)
            titles = self.backend.encode_batch([d.title for d in batch], add_special_tokens=False)
            for doc, enc, tenc in zip(batch, bodies, titles):
                out.extend(self._split(doc, enc.offsets, len(tenc.ids)))
        return out

    def _split(self, doc: Document, offsets: list[tuple[int, int]], title_tokens: int) -> list[Chunk]:
        size = self._budget(title_tokens)
        step = size - self.config.overlap
        n_tok = len(offsets)
        if n_tok <= size:
            return [Chunk(f"{doc.id}#0", doc.id, 0, doc.text, doc.title, doc.source, 0, len(doc.text), doc.metadata)]
        chunks = []
        for n, i in enumerate(range(0, n_tok, step)):
            j = min(i + size, n_tok)
            s, e = offsets[i][0], offsets[j - 1][1]
            chunks.append(Chunk(f"{doc.id}#{n}", doc.id, n, doc.text[s:e], doc.title, doc.source, s, e, doc.metadata))
            if j == n_tok:
                break
        return chunks
