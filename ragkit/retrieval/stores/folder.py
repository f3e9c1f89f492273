"""The folder store: an index as one folder (chunks.jsonl, one sub-folder per retriever, manifest.json),
replaced atomically on save and guarded by an flock writer lock (`ragkit.fs`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

from ragkit.errors import IndexFormatError
from ragkit.fs import FORMAT, MANIFEST, atomic_dir, check_output_dir, read_manifest, write_json, writer_lock
from ragkit.integrity import FILES, seal, verify_files
from ragkit.retrieval.stores.base import IndexStore
from ragkit.retrieval.stores.chunks import ChunkStore


class FolderStore(IndexStore):
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.display = str(self.path)

    def read_manifest(self) -> dict:
        manifest = read_manifest(self.path)
        verify_files(self.path, manifest)  # sizes always, sha256 of small files (ragkit.integrity)
        return manifest

    def load_chunks(self) -> ChunkStore:
        return ChunkStore.load(self.path / "chunks.jsonl")

    def load_retriever(self, name: str, cls: type, config, encoder, colbert):
        return cls.load_for_index(self.path / name, config, encoder, colbert)

    def check_loaded(self, index) -> None:
        for name, r in index.retrievers.items():
            if len(r) != len(index.chunks):
                raise IndexFormatError(f"{self.path} is damaged: {name} holds {len(r)} chunks, chunks.jsonl "
                                       f"{len(index.chunks)}")
            ids = getattr(r, "ids", None)
            if ids is None:
                ids = getattr(getattr(r, "store", None), "ids", None)
            unknown = [cid for cid in ids if cid not in index.chunks] if ids is not None else []
            if unknown:  # same counts, distinct ids: the two id sets differ, so searches would hit unknown ids
                raise IndexFormatError(f"{self.path / 'chunks.jsonl'} is damaged: {len(unknown)} chunk id(s) that "
                                       f"{name} indexes are not in it, e.g. {unknown[:3]} (a chunk id was changed or a "
                                       "line replaced); restore the index or rebuild it")

    def save(self, index, protect: Iterable[str | os.PathLike] = (), wait: bool = False) -> None:
        with writer_lock(self.path, wait=wait), \
                atomic_dir(self.path, manifest_format=FORMAT, protect=list(protect)) as tmp:
            index.chunks.save(tmp / "chunks.jsonl")
            for name, r in index.retrievers.items():
                (tmp / name).mkdir()
                r.save(tmp / name)
            manifest = index.manifest()
            manifest[FILES] = seal(tmp)  # sizes + sha256, read back from the disk before the swap
            write_json(tmp / MANIFEST, manifest)  # last: a folder with a manifest is complete

    def writer_lock(self, wait: bool = False, on_wait: Callable[[int | None], None] | None = None):
        return writer_lock(self.path, wait=wait, on_wait=on_wait)

    def check_output(self, protect: Iterable[str | os.PathLike] = ()) -> None:
        check_output_dir(self.path, FORMAT, protect)
