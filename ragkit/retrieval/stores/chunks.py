"""Chunk storage: the texts and citation metadata behind every retriever's ids (JSON Lines on disk)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from ragkit.data.chunking import Chunk
from ragkit.errors import IndexFormatError


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

    def get_many(self, chunk_ids: Iterable[str]) -> dict[str, Chunk]:
        """The chunks with these ids (all must exist), by id: one lookup for a page of hits."""
        return {cid: self._chunks[cid] for cid in chunk_ids}

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._chunks

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
        """Read chunks.jsonl; a missing file, a bad line (not JSON, not a chunk, a field of the wrong
        type) or a repeated chunk id is an IndexFormatError naming the file and line."""
        store = cls()
        try:
            f = open(path, encoding="utf-8")
        except OSError as e:
            raise IndexFormatError(f"chunk store {path} is missing or unreadable: {e.strerror or e}") from e
        lineno = 0
        try:
            with f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    d = json.loads(line)
                    if not isinstance(d, dict):
                        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
                    c = Chunk.from_dict(d)
                    bad = [k for k in ("id", "doc_id", "text", "title", "source") if not isinstance(getattr(c, k), str)]
                    bad += [k for k in ("n", "start", "end") if not isinstance(getattr(c, k), int)]
                    if bad or not isinstance(c.metadata, dict):
                        raise ValueError(f"field(s) of the wrong type: {', '.join(bad or ['metadata'])}")
                    if c.id in store._chunks:
                        raise ValueError(f"chunk id {c.id!r} appears twice")
                    store.add([c])
        except (OSError, ValueError, TypeError) as e:
            where = f"{path}:{lineno}" if lineno else str(path)
            raise IndexFormatError(f"chunk store {where} is damaged: {e}") from e
        return store
