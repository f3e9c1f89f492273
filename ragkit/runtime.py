"""Process-wide policies in one place: torch thread counts, ragkit's cache folder, the clock.

Thread policy: on 2 shared cores two OpenMP threads made decoding and query encoding 5-10x slower
than one, so queries and decoding run on one torch thread; large matrix work (indexing, prompt
prefill, training) asks for more. Every change goes through `torch_threads`, which restores the
previous count when the block ends.
"""
from __future__ import annotations

import datetime as _dt
import functools
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

QUERY_THREADS = 1  # queries and decoding


@contextmanager
def torch_threads(n: int | None, faiss: bool = False) -> Iterator[None]:
    """Run the block on `n` torch threads (and faiss OpenMP threads with `faiss=True`), then restore
    the previous counts. `None` or 0 leaves them alone. When torch has not been imported yet, it is
    imported only if `n` is set."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    faiss_before = None
    if faiss and "faiss" in sys.modules:
        faiss_mod = sys.modules["faiss"]
        faiss_before = faiss_mod.omp_get_max_threads()
        faiss_mod.omp_set_num_threads(n)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if faiss_before is not None:
            sys.modules["faiss"].omp_set_num_threads(faiss_before)


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX; asked once: every int8
    layer of a model asks). Without it torch emulates bf16 matrix products: on an AVX2 EPYC a 64-row
    bf16 product of a 1536x8960 layer took 206 ms against 61 ms in float32, so ragkit keeps many-row
    work in float32 there."""
    import torch

    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def import_object(spec: str):
    """The object a "module:Name" string names, imported on demand (ragkit's extension tables)."""
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def cache_dir() -> Path:
    """ragkit's cache: `$RAGKIT_CACHE`, default `~/.cache/ragkit` (converted models, compiled extensions)."""
    return Path(os.environ.get("RAGKIT_CACHE", Path.home() / ".cache" / "ragkit"))


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (manifest dates)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
