"""Where an index lives: one interface, two stores, chosen by the location's form.

    open_store("indexes/docs")                                   # FolderStore: one folder (the default)
    open_store("postgresql://app@db.internal/rag?schema=docs")   # PostgresStore: tables in a schema

`Index.save(location)` / `Index.load(location)` go through a store; so do `ragkit index --out/--store`,
`search`, `ask`, `serve` and `eval`. Both stores keep the same semantics: stable chunk ids, the encoder
fingerprint check, one manifest, an atomic save (a failed or killed one leaves the previous index
searchable) and one writer at a time (a second one gets an `IndexLockedError`).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from ragkit.retrieval.base import Retriever
    from ragkit.retrieval.index import Index

URL_SCHEMES = ("postgresql://", "postgres://")


def is_store_url(location: str | os.PathLike) -> bool:
    """Whether `location` names a database store (a URL) rather than a folder."""
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


class IndexStore(ABC):
    """Reads and writes one index: its manifest, chunks and each retriever's state."""

    #: how the location is shown in messages and manifests (never with credentials)
    display: str

    @abstractmethod
    def read_manifest(self) -> dict:
        """The saved manifest (an `IndexFormatError` naming the location if there is no index)."""

    @abstractmethod
    def load_chunks(self):
        """The chunk store (`ChunkStore` or a compatible one: `__getitem__`, `get_many`, ...)."""

    @abstractmethod
    def load_retriever(self, name: str, cls: type, config, encoder, colbert) -> "Retriever":
        """Retriever `name` (of class `cls`) as saved."""

    def check_loaded(self, index: "Index") -> None:
        """Consistency checks once everything is loaded (counts, ids)."""

    @abstractmethod
    def save(self, index: "Index", protect: Iterable[str | os.PathLike] = (), wait: bool = False) -> None:
        """Write `index` atomically (see the module docstring)."""

    @abstractmethod
    def writer_lock(self, wait: bool = False,
                    on_wait: Callable[[int | None], None] | None = None) -> AbstractContextManager:
        """Hold the location's writer lock; re-entrant within this process."""

    @abstractmethod
    def check_output(self, protect: Iterable[str | os.PathLike] = ()) -> None:
        """`OutputPathError` unless a save here replaces only what ragkit wrote."""

    def bind(self, index: "Index") -> None:
        """Called once `index` is loaded from this store (a database store keeps writing into it)."""


def open_store(location: str | os.PathLike) -> IndexStore:
    """The store for `location`: a `postgresql://` URL or a folder path."""
    if isinstance(location, IndexStore):
        return location
    if is_store_url(location):
        from ragkit.retrieval.stores.postgres import PostgresStore

        return PostgresStore(str(location))
    from ragkit.retrieval.stores.folder import FolderStore

    return FolderStore(Path(location))
