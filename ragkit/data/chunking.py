"""Token-aware chunking with overlap, by the encoder's tokenizer.

Chunk ids are stable (`docid#n`) for the same text and parameters; each chunk keeps its character
offsets in the source document so answers can cite them.

Memory: encoding a whole document at once costs the Rust tokenizer (and the Python offsets) over
100 bytes per character: one 50 MB document peaked at 8.3 GB RSS in a BM25-only `ragkit index`.
Documents longer than `WINDOW_CHARS` characters are therefore encoded window by window, each window
cut just before a space or newline, and chunks are cut from the stream of token offsets (only the
tokens not yet cut into a chunk are held, as a small numpy array); batches of short documents are
bounded by the same character budget. The same document then peaks at 0.63 GB, with identical
chunks: cutting at whitespace gives the same tokens as encoding the whole text for pre-tokenizers
that split on whitespace (BERT WordPiece, as the default MiniLM; checked by a test). A window with
no whitespace in its second half is cut hard (a token may be split there).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import numpy as np

from ragkit.data.corpus import Document

WINDOW_CHARS = 262_144  # characters encoded at once (~40 MB of tokenizer memory)


def text_windows(text: str, size: int | None = None) -> Iterator[tuple[int, str]]:
    """(start, piece) of `text` in pieces of at most `size` characters, each but the last cut just
    before a space or newline when there is one in its second half (so no word is split);
    `size` defaults to WINDOW_CHARS (read at call time)."""
    size = size or WINDOW_CHARS
    n, start = len(text), 0
    while start < n:
        end = min(start + size, n)
        if end < n:
            cut = max(text.rfind(" ", start + size // 2, end), text.rfind("\n", start + size // 2, end))
            if cut > start:
                end = cut
        yield start, text[start:end]
        start = end


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
        """Chunks of every document, in order; memory stays bounded whatever the documents' sizes
        (batches hold at most `batch_size` documents and about `WINDOW_CHARS` characters; a longer
        document is encoded window by window)."""
        out: list[Chunk] = []
        batch: list[Document] = []
        chars = 0
        for doc in docs:
            if len(doc.text) > WINDOW_CHARS:
                out.extend(self._encode_batch(batch))
                batch, chars = [], 0
                out.extend(self._split_long(doc))
                continue
            if batch and (len(batch) >= batch_size or chars + len(doc.text) > WINDOW_CHARS):
                out.extend(self._encode_batch(batch))
                batch, chars = [], 0
            batch.append(doc)
            chars += len(doc.text)
        out.extend(self._encode_batch(batch))
        return out

    def _encode_batch(self, batch: list[Document]) -> list[Chunk]:
        if not batch:
            return []
        out: list[Chunk] = []
        bodies = self.backend.encode_batch([d.text for d in batch], add_special_tokens=False)
        titles = self.backend.encode_batch([d.title for d in batch], add_special_tokens=False)
        for doc, enc, tenc in zip(batch, bodies, titles):
            out.extend(self._split(doc, enc.offsets, len(tenc.ids)))
        return out

    def _title_tokens(self, title: str) -> int:
        return len(self.backend.encode(title, add_special_tokens=False).ids) if title else 0

    def _split_long(self, doc: Document) -> list[Chunk]:
        """`_split` over a document encoded window by window: the same chunks, with only the
        tokens not yet cut into a chunk held (as an int64 array of character offsets)."""
        size = self._budget(self._title_tokens(doc.title))
        step = size - self.config.overlap
        buf = np.zeros((0, 2), dtype=np.int64)  # offsets of tokens base, base+1, ...
        base = i = 0  # i: first token of the next chunk
        chunks: list[Chunk] = []
        windows = text_windows(doc.text)
        pending = next(windows, None)
        while pending is not None:
            start, piece = pending
            pending = next(windows, None)
            last = pending is None
            enc = self.backend.encode(piece, add_special_tokens=False)
            new = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2) + start
            buf = np.concatenate([buf[i - base:], new])
            base = i
            avail = base + len(buf)
            # a chunk is cut once the tokens after it are known (or the text is done), so the last
            # chunk is recognised exactly as `_split` does
            while i + size < avail or (last and avail > size):
                j = min(i + size, avail)
                s, e = int(buf[i - base, 0]), int(buf[j - 1 - base, 1])
                chunks.append(Chunk(f"{doc.id}#{len(chunks)}", doc.id, len(chunks), doc.text[s:e], doc.title,
                                    doc.source, s, e, doc.metadata))
                if j == avail and last:
                    break
                i += step
        if not chunks:  # the whole text fits one chunk
            return [Chunk(f"{doc.id}#0", doc.id, 0, doc.text, doc.title, doc.source, 0, len(doc.text), doc.metadata)]
        return chunks

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
