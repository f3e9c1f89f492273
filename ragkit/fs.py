"""Atomic index folders and the JSON manifest.

A save writes everything into a temporary sibling folder, fsyncs every file and the folder, then
swaps it into place: with Linux `renameat2(RENAME_EXCHANGE)` the swap is one atomic step; elsewhere
the old folder is first renamed aside and restored by the next load if the process died in between.
An interrupted or failed save therefore always leaves the previous index loadable.

Integrity (`ragkit.integrity`): the manifest, written last, records every other file's size
and sha256 (`files`), hashed again from the disk before the swap. Every load checks each file's
size, and hashes the files of at most 64 MiB (`$RAGKIT_HASH_ON_LOAD_MB`; sha256 runs at ~0.8-1 GB/s,
so 64 MiB costs ~70 ms, about what reading the file costs anyway); `ragkit info --verify`
(`verify_index`) hashes every file. Indexes written before checksums existed load unchecked.

A writer holds the folder's writer lock (an flock on `.NAME.lock` beside it) for the whole write, so
two writers never interleave; readers only clean up the temporary folders of writers that are gone.
An output folder is replaced only when ragkit wrote it (or it is empty): see `check_output_dir`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

from ragkit.errors import IndexFormatError, IndexLockedError, OutputPathError, WriteError

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
    prefix = f".{target.name}.{kind}-"
    try:
        return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []


# -- the writer lock --------------------------------------------------------------------------------
# One writer per folder: an flock on `.NAME.lock` beside it (in the parent, so it survives the folder
# swap). The kernel drops it when the holder dies, so a killed writer never leaves the folder locked.
# The holder unlinks the file before closing it; a waiter that then gets the old inode sees that the
# path no longer names it and tries again, so two processes never both hold the lock. Within one
# process the lock is re-entrant for the thread holding it and excludes the other threads.
_REGISTRY = threading.Lock()
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_HELD: dict[str, list] = {}  # lock path -> [fd, depth], touched only by the thread holding its RLock


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of a folder: `.NAME.lock` beside it."""
    target = Path(target).absolute()
    return target.parent / f".{target.name}.lock"


def _holder(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


def _busy(target: Path, pid: int | None) -> IndexLockedError:
    who = f"process {pid}" if pid else "another process"
    return IndexLockedError(f"index {target} is being written by {who}; retry or pass --wait", pid)


def _flock(path: Path, target: Path, wait: bool, on_wait: Callable[[int | None], None] | None) -> int | None:
    """The fd of `path` locked exclusively (None where the platform has no flock)."""
    if fcntl is None:  # pragma: no cover - not POSIX: no inter-process lock
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _holder(path)
                if not wait:
                    raise _busy(target, pid) from None
                if on_wait is not None and not announced:
                    on_wait(pid)
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
                os.close(fd)  # the previous holder unlinked it: lock the new file instead
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        except BaseException:
            os.close(fd)
            raise


@contextmanager
def writer_lock(target: str | os.PathLike, wait: bool = False,
                on_wait: Callable[[int | None], None] | None = None) -> Iterator[Path]:
    """Hold the writer lock of folder `target` (which need not exist yet) for the `with` block.

    Another holder (another process, or another thread of this one) is an `IndexLockedError`
    naming its process id, unless `wait`: then this blocks until it is done (`on_wait(pid)` is called
    once first). Re-entrant within the thread that holds it. For load -> modify -> save, take it
    before the load: `with writer_lock(p): idx = Index.load(p); idx.add(docs); idx.save(p)`.
    """
    target = Path(target).absolute()
    path = lock_path(target)
    key = str(path)
    with _REGISTRY:
        rlock = _THREAD_LOCKS.setdefault(key, threading.RLock())
    if not rlock.acquire(blocking=False):
        if not wait:
            raise _busy(target, os.getpid())
        if on_wait is not None:
            on_wait(os.getpid())
        rlock.acquire()
    try:
        held = _HELD.get(key)
        if held is not None:  # this thread holds it already
            held[1] += 1
            try:
                yield target
            finally:
                held[1] -= 1
            return
        try:
            fd = _flock(path, target, wait, on_wait)
        except OSError as e:
            raise WriteError(f"cannot lock {target} for writing ({path}): {e.strerror or e}") from e
        _HELD[key] = [fd, 1]
        try:
            yield target
        finally:
            del _HELD[key]
            if fd is not None:
                try:
                    os.unlink(path)  # while still holding it: see above
                except OSError:
                    pass
                os.close(fd)
    finally:
        rlock.release()


def _recover_locked(target: Path) -> None:
    if not target.exists() and not target.is_symlink():
        olds = _siblings(target, "old")
        if olds:
            os.rename(olds[-1], target)
    for stale in _siblings(target, "old") + _siblings(target, "tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def recover(target: Path) -> None:
    """Finish or undo a swap that a killed writer left half done, and drop its temporary folders.

    Only when no writer is alive: the writer lock is tried without waiting, and a live writer's
    folders are left alone (as they are where the parent folder is read-only).
    """
    target = Path(target).absolute()
    if not target.parent.is_dir() or not (_siblings(target, "old") or _siblings(target, "tmp")):
        return
    try:
        with writer_lock(target, wait=False):
            _recover_locked(target)
    except (IndexLockedError, OSError):
        return


def check_output_dir(target: str | os.PathLike, manifest_format: str | None = None,
                     protect: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse an output folder whose replacement would delete what ragkit did not write.

    `target` may not be (or contain) a path in `protect` (the corpus being indexed), a symbolic link
    or an existing file. With `manifest_format`, an existing folder must also be empty or hold a
    manifest.json of that format (a folder ragkit wrote, of the same kind). Raises `OutputPathError`.
    """
    target = Path(target).absolute()
    real = target.resolve()
    for p in protect:
        p = Path(p).absolute().resolve()
        if p == real or real in p.parents:
            raise OutputPathError(f"refusing to write {target}: it {'is' if p == real else 'contains'} the corpus "
                                  f"{p}, which writing it would delete; choose another output folder")
    if target.is_symlink():
        raise OutputPathError(f"refusing to write {target}: it is a symbolic link; give the folder it points to, "
                              "or a new folder")
    if not target.exists():
        return
    if not target.is_dir():
        raise OutputPathError(f"refusing to write {target}: it exists and is not a folder; "
                              "choose a new or empty folder (the file was left untouched)")
    if manifest_format is None or not any(target.iterdir()):
        return
    found = None
    try:
        m = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
        found = m.get("format") if isinstance(m, dict) else None
    except (OSError, ValueError):
        pass
    if found != manifest_format:
        why = f"its {MANIFEST} has format {found!r}" if found is not None else f"it has no readable {MANIFEST}"
        raise OutputPathError(f"refusing to replace {target}: it is not empty and is not a {manifest_format} "
                              f"folder ({why}), so replacing it would delete files ragkit did not write; "
                              "choose a new or empty folder, or remove it yourself")


@contextmanager
def atomic_dir(target: str | os.PathLike, manifest_format: str | None = None,
               protect: Iterable[str | os.PathLike] = (), wait: bool = True) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `target` atomically, on failure it is removed.

    Holds `target`'s writer lock throughout (waiting for another writer unless `wait` is False) and
    first checks the target with `check_output_dir(target, manifest_format, protect)`. An OSError
    (disk full, ...) while writing or swapping becomes a `WriteError` naming `target`; the previous
    folder is then left as it was.
    """
    target = Path(target).absolute()
    protect = list(protect)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot write {target}: cannot create {target.parent}: {e.strerror or e}") from e
    with writer_lock(target, wait=wait):
        _recover_locked(target)
        check_output_dir(target, manifest_format, protect)
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        swapped = False
        try:
            tmp.mkdir()
            yield tmp
            _fsync_tree(tmp)
            if target.exists():
                if _exchange(tmp, target):
                    swapped = True
                    shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous folder
                else:
                    old = target.parent / f".{target.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                    os.rename(target, old)
                    try:
                        os.rename(tmp, target)
                    except BaseException:
                        os.rename(old, target)
                        raise
                    swapped = True
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, target)
                swapped = True
            _fsync_file(target.parent)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, WriteError):
                raise
            what = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            where = f" ({e.filename})" if e.filename else ""
            after = ("the new folder is in place but may not be on disk yet" if swapped
                     else f"the previous {target.name} is unchanged")
            err = WriteError(f"cannot write {target}: {what}{where}; {after}")
            err.errno, err.strerror, err.filename = e.errno, e.strerror, e.filename
            raise err from e
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
    except OSError as e:
        raise IndexFormatError(f"{path} cannot be read: {e.strerror or e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{folder} is not a ragkit index: {MANIFEST} has format "
                               f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise IndexFormatError(f"{path} is damaged: format_version must be a whole number from 1, "
                               f"got {version!r}; restore the index or rebuild it")
    if version > FORMAT_VERSION:
        raise IndexFormatError(f"{folder} was written by ragkit {manifest.get('ragkit_version', '?')} in index format "
                               f"{version}; this ragkit reads format {FORMAT_VERSION} or older: upgrade ragkit or rebuild the index")
    return manifest


from ragkit.integrity import verify_index  # noqa: E402,F401 - re-exported: `ragkit info --verify`
