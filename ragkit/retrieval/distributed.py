"""Chunking and encoding on a Ray cluster (Ray Data), for corpora too large for one machine.

    index = Index(config)
    with ray_cluster(address=None), on_ray(index):        # address None: a local in-process cluster
        index.add(docs)                                   # chunks and dense vectors computed on Ray

`RayEncoder` runs `map_batches` with one encoder actor per worker (each loads the same model, by the
hub id or the folder path the index records, and uses one torch thread); `RayChunker` runs the
chunker's tokenizer on the workers. Results equal local encoding (same ids, vectors within float
tolerance): rows carry their position and are put back in order. On a real cluster every node must
reach the model (a hub id, or the same path on shared storage).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ragkit.data.chunking import Chunk, Chunker
from ragkit.data.corpus import Document
from ragkit.errors import RagkitError

INSTALL_HINT = "pip install 'ragkit[ray]' (Ray Data)"


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RagkitError(f"--ray needs Ray: {INSTALL_HINT} ({e})") from e
    return ray


@contextmanager
def ray_cluster(address: str | None = None, num_cpus: int | None = None) -> Iterator[object]:
    """Connect to the Ray cluster at `address`, or start a local one (offline: no dashboard, no
    usage stats, a temp dir of its own) when it is None; shut it down after."""
    ray = _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():  # the caller's own session: use it, leave it running
        yield ray
        return
    tmp = None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        tmp = tempfile.mkdtemp(prefix="ragkit-ray-")
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 _temp_dir=tmp, configure_logging=False)
    quiet = [logging.getLogger(name) for name in ("ray", "ray.data")]
    levels = [log.level for log in quiet]
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        for log in quiet:
            log.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors.*")
            yield ray
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
        ray.shutdown()
        if tmp:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _blocks(n: int, rows_per_block: int, workers: int) -> int:
    """Enough blocks to keep every worker busy, few enough that each is worth a task."""
    return max(1, min(n, max(workers, min(n // rows_per_block + 1, 4 * workers))))


class _EncodeBatch:
    """Ray Data actor: one sentence encoder per worker."""

    def __init__(self, model: str, batch_size: int) -> None:
        import torch

        from ragkit.retrieval.encoder import SentenceEncoder

        torch.set_num_threads(1)  # one worker per CPU: the thread policy of ragkit.runtime
        self.encoder = SentenceEncoder.from_pretrained(model)
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        vectors = self.encoder.encode(list(batch["text"]), batch_size=self.batch_size)
        return {"i": batch["i"], "vector": vectors}


class RayEncoder:
    """A `SentenceEncoder` whose `encode` runs on Ray; queries are still encoded locally."""

    def __init__(self, encoder, workers: int | None = None, rows_per_task: int = 512) -> None:
        self.encoder = encoder
        self.workers = workers
        self.rows_per_task = rows_per_task

    def __getattr__(self, name: str):  # dim, tokenizer, describe, encode_query, model ...
        return getattr(self.encoder, name)

    def encode(self, texts: Sequence[str], batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
        ray = _ray()
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        workers = self.workers or max(1, int(ray.available_resources().get("CPU", 1)))
        ds = ray.data.from_items([{"i": i, "text": t} for i, t in enumerate(texts)],
                                 override_num_blocks=_blocks(len(texts), self.rows_per_task, workers))
        model = self.encoder.model_id  # what the index records: a hub id, a packaged model or a folder
        ds = ds.map_batches(_EncodeBatch, fn_constructor_kwargs={"model": model, "batch_size": batch_size},
                            batch_size=self.rows_per_task, compute=ray.data.ActorPoolStrategy(size=workers),
                            num_cpus=1, batch_format="numpy")
        out = np.zeros((len(texts), self.encoder.dim), dtype=np.float32)
        for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
            out[batch["i"]] = batch["vector"]
            if progress is not None:
                progress(len(batch["i"]))
        return out


class _ChunkBatch:
    def __init__(self, tokenizer_json: str, chunk_tokens: int, overlap: int) -> None:
        from tokenizers import Tokenizer

        from ragkit.data.chunking import ChunkingConfig

        self.chunker = Chunker(Tokenizer.from_str(tokenizer_json), ChunkingConfig(chunk_tokens, overlap))

    def __call__(self, batch: dict) -> dict:
        rows: dict[str, list] = {k: [] for k in ("i", "chunk")}
        for i, d in zip(batch["i"], batch["doc"]):
            for c in self.chunker.chunk([Document(**json.loads(d))]):
                rows["i"].append(int(i))
                rows["chunk"].append(json.dumps(c.to_dict(), ensure_ascii=False))
        return rows


class RayChunker:
    """A `Chunker` whose work runs on Ray (the same tokenizer and settings: the same chunks)."""

    docs_per_call = None  # Index.add hands it every document at once: one Ray job

    def __init__(self, chunker: Chunker, workers: int | None = None) -> None:
        self.chunker = chunker
        self.config = chunker.config
        self.workers = workers

    def chunk(self, docs: Iterable[Document], batch_size: int = 256) -> list[Chunk]:
        ray = _ray()
        docs = list(docs)
        if not docs:
            return []
        workers = self.workers or max(1, int(ray.available_resources().get("CPU", 1)))
        # JSON strings, not nested columns: metadata of varying shape would not fit one Arrow schema
        items = [{"i": i, "doc": json.dumps({"id": d.id, "text": d.text, "title": d.title, "source": d.source,
                                             "metadata": d.metadata}, ensure_ascii=False)} for i, d in enumerate(docs)]
        ds = ray.data.from_items(items, override_num_blocks=_blocks(len(docs), batch_size, workers))
        ds = ds.map_batches(_ChunkBatch, fn_constructor_kwargs={
            "tokenizer_json": self.chunker.backend.to_str(), "chunk_tokens": self.config.chunk_tokens,
            "overlap": self.config.overlap}, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1, batch_format="pandas")
        rows = [(int(r["i"]), json.loads(r["chunk"])) for r in ds.iter_rows()]
        rows.sort(key=lambda r: (r[0], r[1]["n"]))
        return [Chunk.from_dict(c) for _, c in rows]


@contextmanager
def on_ray(index, workers: int | None = None) -> Iterator[object]:
    """Within the block, `index.add` chunks and dense-encodes on Ray (call inside `ray_cluster()`);
    the index's own chunker and encoder are back afterwards (queries are encoded locally)."""
    chunker, dense = index.chunker, index.retrievers.get("dense")
    index._chunker = RayChunker(chunker, workers)
    if dense is not None:
        dense.encoder = RayEncoder(dense.encoder, workers)
    try:
        yield index
    finally:
        index._chunker = chunker
        if dense is not None:
            dense.encoder = dense.encoder.encoder
