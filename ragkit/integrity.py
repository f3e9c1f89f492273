"""Checksums of the files of an index (or adapter) folder, recorded in its manifest and verified.

A save records every file it wrote in the manifest, `files: {relpath: {"bytes": N, "sha256": hex}}`,
after re-reading them from the disk (`seal`). Verification policy (sha256 runs at ~0.8-1 GB/s here,
about what reading the file costs anyway):

- on every load: each recorded file must exist with its recorded size (free: one stat), and files of
  at most `hash_on_load_limit()` bytes (64 MiB by default, `$RAGKIT_HASH_ON_LOAD_MB`; 0: sizes only)
  are hashed too, so flipped bytes in any file of a small or medium index are caught before they
  change a ranking (64 MiB: about 70 ms). Larger files (the vectors of a big corpus, memory-mapped
  ColBERT token vectors) are size-checked only on load;
- `ragkit info --verify` (`verify_index`) hashes every file, whatever its size;
- right after every write (`seal`): the files are hashed, flushed to the disk, dropped from the page
  cache where the OS allows (`posix_fadvise(DONTNEED)`) and hashed again from the disk; a difference
  fails the save before the new folder replaces the old one.

Folders written before checksums existed (no `files` in the manifest) load without these checks.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from ragkit.errors import IndexFormatError

MANIFEST = "manifest.json"
FILES = "files"
HASH_ON_LOAD_MB = 64
_CHUNK = 1 << 20


def hash_on_load_limit() -> int:
    """Files up to this many bytes are hashed on every load (`$RAGKIT_HASH_ON_LOAD_MB`, default 64)."""
    raw = os.environ.get("RAGKIT_HASH_ON_LOAD_MB", "")
    try:
        mb = float(raw) if raw.strip() else HASH_ON_LOAD_MB
    except ValueError:
        mb = HASH_ON_LOAD_MB
    return int(max(mb, 0) * (1 << 20))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(_CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, names in os.walk(folder):
        dirnames.sort()
        for name in sorted(names):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink() and p.relative_to(folder).as_posix() != MANIFEST:
                out.append(p)
    return out


def _evict(path: Path) -> None:
    """Flush a file to the disk and drop it from the page cache (where the OS allows), so the next
    read comes from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def seal(folder: str | os.PathLike, error: Callable[[str], Exception] = IndexFormatError) -> dict:
    """`{relpath: {"bytes", "sha256"}}` of every file in `folder` (the manifest excepted), each hashed,
    written to the disk and hashed again from it; a file that reads back differently is an error
    (`error(message)`) naming it. Call it when every file but the manifest is written, and record the
    result in the manifest under `files`."""
    folder = Path(folder)
    files: dict[str, dict] = {}
    for p in _files(folder):
        rel = p.relative_to(folder).as_posix()
        digest = sha256_file(p)
        _evict(p)
        size = p.stat().st_size
        again = sha256_file(p)
        if again != digest:
            raise error(f"{p} reads back differently from what was written (sha256 {again[:16]}... after "
                        f"writing, {digest[:16]}... while writing): the disk or filesystem is damaging data; "
                        "nothing was replaced")
        files[rel] = {"bytes": size, "sha256": digest}
    return files


def check_files(folder: str | os.PathLike, manifest: dict, full: bool = False,
                hash_limit: int | None = None) -> list[str]:
    """Problems with the files recorded in `manifest["files"]` (empty list: all fine; also when the
    manifest records none). Sizes always; sha256 of every file when `full`, else of files up to
    `hash_limit` bytes (default `hash_on_load_limit()`). Each problem names its file."""
    folder = Path(folder)
    files = manifest.get(FILES)
    if files is None:
        return []
    if not isinstance(files, dict):
        return [f"{folder / MANIFEST}: 'files' must be an object of relpath -> {{bytes, sha256}}, "
                f"got {type(files).__name__}"]
    limit = hash_on_load_limit() if hash_limit is None else hash_limit
    problems = []
    for rel, want in files.items():
        p = folder / rel
        if (not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts or not isinstance(want, dict)
                or not isinstance(want.get("bytes"), int) or not isinstance(want.get("sha256"), str)):
            problems.append(f"{folder / MANIFEST}: entry {rel!r} of 'files' is malformed: {want!r}")
            continue
        try:
            size = p.stat().st_size if p.is_file() else None
        except OSError:
            size = None
        if size is None:
            problems.append(f"{p} is missing (recorded in {MANIFEST} with {want['bytes']} bytes)")
            continue
        if size != want["bytes"]:
            problems.append(f"{p} is damaged: {size} bytes, {MANIFEST} records {want['bytes']} "
                            f"({'truncated' if size < want['bytes'] else 'grown'} since it was written)")
            continue
        if full or size <= limit:
            try:
                digest = sha256_file(p)
            except OSError as e:
                problems.append(f"{p} cannot be read: {e.strerror or e}")
                continue
            if digest != want["sha256"]:
                problems.append(f"{p} is damaged: its sha256 {digest[:16]}... differs from the "
                                f"{want['sha256'][:16]}... recorded in {MANIFEST} (same size: bytes changed in place)")
    return problems


def verify_files(folder: str | os.PathLike, manifest: dict, full: bool = False,
                 error: Callable[[str], Exception] = IndexFormatError) -> None:
    """Raise `error` (IndexFormatError by default) listing every problem `check_files` finds."""
    problems = check_files(folder, manifest, full=full)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:4])})" if len(problems) > 1 else ""
        raise error(problems[0] + more)


def verify_index(path: str | os.PathLike) -> list[str]:
    """Every problem with an index folder's files, each naming its file; [] when all are intact.

    Reads the manifest (a missing, foreign or unreadable one is an IndexFormatError), then checks
    the size and full sha256 of every file it records. An index written before checksums existed
    records none, so there is nothing to check: [] (`has_checksums` tells the two apart)."""
    from ragkit.fs import read_manifest

    path = Path(path)
    return check_files(path, read_manifest(path), full=True)


def has_checksums(manifest: dict) -> bool:
    return FILES in manifest


# -- readers whose every failure is a clean error naming the file ---------------------------------
def read_json(path: str | os.PathLike, error: Callable[[str], Exception] = IndexFormatError):
    """The JSON value in file `path`; a missing, unreadable, non-UTF-8 or invalid file is `error`."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path} is missing") from None
    except OSError as e:
        raise error(f"{path} cannot be read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise error(f"{path} is damaged: not UTF-8 text (byte {e.start})") from e
    except ValueError as e:
        raise error(f"{path} is damaged: not valid JSON ({e})") from e


def read_npy(path: str | os.PathLike, error: Callable[[str], Exception] = IndexFormatError, mmap: bool = False):
    """The array in `.npy` file `path` (no pickles); a missing, truncated or corrupt file is `error`."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise error(f"{path} is missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises many kinds for a damaged file
        raise error(f"{path} is damaged or truncated: {e}") from e


def read_npz(path: str | os.PathLike, keys: tuple[str, ...], error: Callable[[str], Exception] = IndexFormatError):
    """Arrays `keys` of `.npz` file `path` (no pickles); a missing, truncated or corrupt file (bad zip,
    bad CRC, missing member) is `error`."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise error(f"{path} is missing")
    try:
        with np.load(path, allow_pickle=False) as z:
            return tuple(z[k] for k in keys)
    except KeyError as e:
        raise error(f"{path} is damaged: it has no array {e.args[0]!r}") from e
    except Exception as e:  # noqa: BLE001 - zipfile/zlib/numpy raise many kinds for a damaged file
        raise error(f"{path} is damaged or truncated: {e}") from e
