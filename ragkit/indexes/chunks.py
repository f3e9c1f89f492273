"""Chunk storage: the texts and citation metadata behind every retriever's ids (JSON Lines on disk)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from ..chunking import Chunk
from ..errors import IndexFormatError


class ChunkStore:
    """Chunks by id, in insertion order, with a document → chunk ids map."""

    def __init__(self) -> None:
        self._chunks: dict[str, Chunk] = {}
        self._by_doc: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._chunks)

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self._chunks.values())

    def __getitem__(self, chunk_id: str) -> Chunk:
        return self._chunks[chunk_id]

    @property
    def n_documents(self) -> int:
        return len(self._by_doc)

    def has_document(self, doc_id: str) -> bool:
        return doc_id in self._by_doc

    def chunk_ids(self, doc_id: str) -> list[str]:
        return self._by_doc.get(doc_id, [])

    def add(self, chunks: Iterable[Chunk]) -> None:
        for c in chunks:
            self._chunks[c.id] = c
            self._by_doc.setdefault(c.doc_id, []).append(c.id)

    def delete_documents(self, doc_ids: Iterable[str]) -> list[str]:
        """Remove documents; returns the ids of their chunks."""
        removed: list[str] = []
        for d in doc_ids:
            for cid in self._by_doc.pop(d, []):
                del self._chunks[cid]
                removed.append(cid)
        return removed

    def save(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for c in self._chunks.values():
                f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: Path) -> "ChunkStore":
        store = cls()
        try:
            with open(path, encoding="utf-8") as f:
                store.add(Chunk.from_dict(json.loads(line)) for line in f if line.strip())
        except (OSError, ValueError, TypeError) as e:
            raise IndexFormatError(f"chunk store {path} is missing or damaged: {e}") from e
        return store
