"""The one interface every retriever implements: add, delete, search, save, load."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ragkit.data.chunking import Chunk

Ranking = list[tuple[str, float]]  # (chunk id, score), best first


class Retriever(ABC):
    """Indexes chunks and returns the best chunk ids for a query."""

    name: str = "retriever"

    @abstractmethod
    def add(self, chunks: Sequence[Chunk], progress: Callable[[int], None] | None = None) -> None:
        """Index new chunks (ids must not be indexed yet); what is indexed already is not redone."""

    @abstractmethod
    def delete(self, chunk_ids: Iterable[str]) -> int:
        """Remove chunks by id; returns how many were removed."""

    @abstractmethod
    def search(self, query: str, k: int = 10) -> Ranking:
        """Top-k (chunk id, score) pairs, best first."""

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[Ranking]:
        return [self.search(q, k) for q in queries]

    @abstractmethod
    def save(self, path: Path) -> None:
        """Write the retriever's state into folder `path` (created by the caller)."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of indexed chunks."""

    @abstractmethod
    def describe(self) -> dict:
        """Settings recorded in the index manifest."""

    # Retrievers an index stores (its `RETRIEVER_CLASSES` table) implement these two:
    @classmethod
    def for_index(cls, config, encoder=None, model=None) -> "Retriever":
        """A new, empty retriever for an index with `config` (an `IndexConfig`)."""
        raise NotImplementedError(f"{cls.__name__} is not stored in an index")

    @classmethod
    def load_for_index(cls, path: Path, config, encoder=None, model=None) -> "Retriever":
        """The retriever saved in folder `path` of an index with `config`."""
        raise NotImplementedError(f"{cls.__name__} is not stored in an index")
