"""Atomic index folders and the JSON manifest.

A save writes everything into a temporary sibling folder, fsyncs every file and the folder, then
swaps it into place: with Linux `renameat2(RENAME_EXCHANGE)` the swap is one atomic step; elsewhere
the old folder is first renamed aside and restored by the next load if the process died in between.
An interrupted or failed save therefore always leaves the previous index loadable.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import IndexFormatError

MANIFEST = "manifest.json"
FORMAT = "ragkit-index"
FORMAT_VERSION = 1  # bump when a saved index can no longer be read by older code

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            _fsync_file(Path(dirpath) / name)
        _fsync_file(Path(dirpath))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the call is unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False


def _siblings(target: Path, kind: str) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.{kind}-*"))


def recover(target: Path) -> None:
    """Finish or undo a swap that a killed process left half done, and drop stale temp folders."""
    target = Path(target)
    if not target.exists():
        olds = _siblings(target, "old")
        if olds:
            os.rename(olds[-1], target)
    for stale in _siblings(target, "old") + _siblings(target, "tmp"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `target` atomically, on failure it is removed."""
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            if _exchange(tmp, target):
                shutil.rmtree(tmp)  # tmp now holds the previous index
            else:
                old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
                os.rename(target, old)
                os.rename(tmp, target)
                shutil.rmtree(old)
        else:
            os.rename(tmp, target)
        _fsync_file(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, obj: dict) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an index folder, with clear errors for a missing, foreign or newer index."""
    folder = Path(folder)
    recover(folder)
    if not folder.exists():
        raise IndexFormatError(f"no index at {folder} (the folder does not exist)")
    path = folder / MANIFEST
    if not path.is_file():
        raise IndexFormatError(f"{folder} is not a ragkit index: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{folder} is not a ragkit index: {MANIFEST} has format "
                               f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFormatError(f"{folder} was written by ragkit {manifest.get('ragkit_version', '?')} in index format "
                               f"{version}; this ragkit reads format {FORMAT_VERSION} or older: upgrade ragkit or rebuild the index")
    return manifest
