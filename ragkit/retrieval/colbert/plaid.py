"""ColBERT engine `plaid`: colbert-ai's PLAID index (centroids + 1/2/4-bit residuals) in-process.

What comes from colbert-ai (`pip install 'ragkit[colbert]'`, imported only when this engine is used):
its residual codec (`ResidualCodec`: centroid codes, residual buckets and bit packing), its PLAID
search (`IndexScorer`: centroid candidate generation, centroid-interaction pruning with its C++
`filter_pids`, decompression with its C++ `decompress_residuals`, MaxSim with `segmented_maxsim`)
and `Searcher.dense_search`'s k-dependent defaults (ncells, centroid_score_threshold, ndocs). The
codec is trained as colbert-ai's `CollectionIndexer` trains it (number of centroids
2^floor(log2(16·sqrt(tokens))), faiss k-means with 4 iterations, bucket cutoffs and weights from
the quantiles of a 5 % held-out sample's residuals).

What ragkit does differently from colbert-ai's `Indexer`/`Searcher`, and why:

- Token vectors come from ragkit's `ColBERTModel` (the same vectors as the `exact` engine). colbert-ai
  always inserts the `[Q]`/`[D]` markers and pads queries with `[MASK]`; ragkit's untrained MiniLM
  default has neither, so colbert-ai's encoder would index different vectors. It also lets one
  encoding pass serve `dense` and `colbert` and needs no colbert-ai checkpoint load (for which
  `ragkit.retrieval.colbert.model.load_with_colbert_ai` holds the transformers-5 shim).
- No `Indexer` run: it forks a process unless told not to, writes `.pt` files into an experiment
  folder, and `overwrite=True` sleeps 20 s. ragkit trains the codec and compresses in memory and
  saves with the rest of the index (atomic folder swap, see `ragkit.fs`).
- Storage is numpy, not torch pickles: `codec.npz` (centroids float16 as colbert-ai stores them,
  bucket cutoffs/weights, average residual), `codes.npy` (int32 centroid id per token),
  `residuals.npy` (uint8, dim·nbits/8 bytes per token), `lengths.npy`, `ids.json`, `config.json`.
  Everything loads with `allow_pickle=False`; the IVF (centroid → chunk lists) is rebuilt on load
  (well under a second at npl's 570k tokens). Nothing is ever passed to `torch.load`.
- When colbert-ai's settings for k yield fewer than k candidates (small corpora), the search runs
  again with 8× the cells per query token and no centroid pruning, so k results come back.
- Adding chunks compresses them with the existing codec (the centroids are not retrained: build with
  the bulk of the corpus); deleting drops their rows. Neither re-encodes anything.

colbert-ai compiles four small C++ extensions with torch's JIT loader the first time (~2 min; needs
a C++ compiler). ragkit points `TORCH_EXTENSIONS_DIR` at `$RAGKIT_CACHE/torch-extensions/torch-VERSION-pyXY`
(default `~/.cache/ragkit`) unless the variable is already set, so later runs load them in
milliseconds. Searching runs on `ColBERTConfig.threads` torch threads (default 1: query-time policy).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from ragkit.config import from_dict
from ragkit.runtime import cache_dir, torch_threads
from ragkit.errors import IndexFormatError, ModelLoadError, RagkitError
from ragkit.progress import progress_bar
from ragkit.retrieval.base import Ranking
from ragkit.retrieval.colbert.exact import ColBERTConfig, TokenVectorRetriever, check_checkpoint

if TYPE_CHECKING:
    import torch

    from ragkit.retrieval.colbert.model import ColBERTModel

FILES = ("codec.npz", "codes.npy", "residuals.npy", "lengths.npy", "ids.json", "config.json")
_PAD = 512  # rows of zeros after the codes/residuals (colbert-ai's load_chunks pads the same way)


def extensions_dir() -> Path:
    """Where colbert-ai's compiled C++ extensions are cached (TORCH_EXTENSIONS_DIR if the user set it)."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    import torch

    return cache_dir() / "torch-extensions" / f"torch-{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}"


def _require_colbert_ai() -> None:
    try:
        import colbert
    except ImportError as e:
        raise ModelLoadError("ColBERT engine 'plaid' needs colbert-ai: pip install 'ragkit[colbert]' "
                             f"({type(e).__name__}: {e})") from e
    if not hasattr(colbert, "__path__"):
        raise ModelLoadError(f"ColBERT engine 'plaid' needs colbert-ai, but 'colbert' is {colbert.__file__}, which "
                             "shadows it (a colbert.py on sys.path); rename it or run from another folder")


@contextlib.contextmanager
def _stdout_to_stderr():
    """colbert-ai prints progress to stdout; keep stdout clean for `--json` output."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


_EXTENSIONS_READY = False


def load_extensions() -> None:
    """Compile (first time, ~2 min) or load colbert-ai's four CPU extensions, cached in `extensions_dir()`."""
    global _EXTENSIONS_READY
    if _EXTENSIONS_READY:
        return
    _require_colbert_ai()
    target = extensions_dir()
    target.mkdir(parents=True, exist_ok=True)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(target)
    try:  # torch's JIT loader runs `ninja`; the pip package's binary is not on PATH in an unactivated venv
        import ninja

        if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except (ImportError, AttributeError):
        pass
    names = ("filter_pids_cpp", "decompress_residuals_cpp", "segmented_lookup_cpp", "segmented_maxsim_cpp")
    missing = [n for n in names if not list((target / n).glob("*.so"))]
    if missing:
        print(f"ragkit: compiling colbert-ai's C++ extensions ({', '.join(missing)}) once, ~2 min; cached in "
              f"{target}", file=sys.stderr, flush=True)
    with _stdout_to_stderr():
        from colbert.modeling.colbert import ColBERT
        from colbert.search.index_storage import IndexScorer
        from colbert.search.strided_tensor import StridedTensor

        try:
            IndexScorer.try_load_torch_extensions(False)
            StridedTensor.try_load_torch_extensions(False)
            ColBERT.try_load_torch_extensions(False)
        except Exception as e:  # noqa: BLE001 - compiler errors come as many types
            raise ModelLoadError(f"could not compile or load colbert-ai's C++ extensions in {target}: "
                                 f"{type(e).__name__}: {e}. A C++ compiler (g++) and ninja are needed the "
                                 "first time; set TORCH_EXTENSIONS_DIR to use another folder") from e
    _EXTENSIONS_READY = True


class PlaidRetriever(TokenVectorRetriever):
    """ColBERT token vectors compressed by colbert-ai's residual codec and searched with PLAID."""

    name = "colbert"

    def __init__(self, model: ColBERTModel, config: ColBERTConfig | None = None) -> None:
        self.model = model
        self.config = config or ColBERTConfig(engine="plaid")
        if model.dim % (self.config.nbits * 8):
            raise ValueError(f"PLAID with nbits={self.config.nbits} needs a dimension divisible by "
                             f"{self.config.nbits * 8}; this checkpoint's is {model.dim}")
        _require_colbert_ai()
        self.ids: list[str] = []
        self.lengths = np.zeros(0, dtype=np.int64)
        self.codes = np.zeros(0, dtype=np.int32)
        self.residuals = np.zeros((0, model.dim * self.config.nbits // 8), dtype=np.uint8)
        self.codec_arrays: dict[str, np.ndarray] | None = None  # centroids, bucket_cutoffs, bucket_weights, avg_residual
        self._codec = None
        self._scorer = None
        self._reindex()

    def describe(self) -> dict:
        from dataclasses import asdict

        return {"type": "colbert", **asdict(self.config), "model": self.model.describe(),
                "tokens": int(self.lengths.sum()),
                "centroids": 0 if self.codec_arrays is None else len(self.codec_arrays["centroids"])}

    def _reindex(self) -> None:
        self._row = {cid: i for i, cid in enumerate(self.ids)}
        self._scorer = None  # rebuilt on the next search

    # -- colbert-ai objects ---------------------------------------------------------------------
    def _ai_config(self, k: int = 10):
        """colbert-ai's ColBERTConfig for the codec and for search with `k` results (Searcher's defaults)."""
        from colbert.infra import ColBERTConfig as AIConfig

        c = self.config
        if k <= 10:
            auto = (1, 0.5, 256)
        elif k <= 100:
            auto = (2, 0.45, 1024)
        else:
            auto = (4, 0.4, max(k * 4, 4096))
        cfg = AIConfig(dim=self.model.dim, nbits=c.nbits, query_maxlen=self.model.settings.query_maxlen,
                       doc_maxlen=self.model.settings.doc_maxlen, interaction="colbert", gpus=0,
                       ncells=c.ncells or auto[0],
                       centroid_score_threshold=c.centroid_score_threshold if c.centroid_score_threshold is not None
                       else auto[1], ndocs=c.ndocs or auto[2])
        with contextlib.suppress(AttributeError, TypeError):
            cfg.total_visible_gpus = 0  # ragkit runs the CPU paths
        return cfg

    def _get_codec(self):
        if self._codec is None:
            import torch
            from colbert.indexing.codecs.residual import ResidualCodec

            a = self.codec_arrays
            with _stdout_to_stderr():
                self._codec = ResidualCodec(config=self._ai_config(), centroids=torch.from_numpy(a["centroids"]).float(),
                                            avg_residual=torch.from_numpy(a["avg_residual"]),
                                            bucket_cutoffs=torch.from_numpy(a["bucket_cutoffs"]),
                                            bucket_weights=torch.from_numpy(a["bucket_weights"]))
        return self._codec

    def _get_scorer(self):
        """colbert-ai's IndexScorer over the arrays in memory (its file loading skipped)."""
        if self._scorer is None:
            import torch
            from colbert.indexing.codecs.residual_embeddings import ResidualEmbeddings
            from colbert.search.index_storage import IndexScorer
            from colbert.search.strided_tensor import StridedTensor

            load_extensions()
            pad = max(_PAD, int(self.lengths.max()) if len(self.lengths) else 0)
            codes = np.concatenate([self.codes, np.zeros(pad, np.int32)])
            residuals = np.concatenate([self.residuals, np.zeros((pad, self.residuals.shape[1]), np.uint8)])
            ivf, ivf_lengths = self._ivf()
            with _stdout_to_stderr():
                s = IndexScorer.__new__(IndexScorer)
                s.index_path, s.use_gpu, s.load_index_with_mmap = None, False, False
                s.codec = self._get_codec()
                s.ivf = StridedTensor(torch.from_numpy(ivf), torch.from_numpy(ivf_lengths), use_gpu=False)
                s.doclens = torch.from_numpy(self.lengths.astype(np.int64))
                s.embeddings = ResidualEmbeddings(torch.from_numpy(codes), torch.from_numpy(residuals))
                s.set_embeddings_strided()
            self._scorer = s
        return self._scorer

    def _ivf(self) -> tuple[np.ndarray, np.ndarray]:
        """Centroid → chunk rows (each once, sorted), as colbert-ai's optimize_ivf builds ivf.pid.pt."""
        k = len(self.codec_arrays["centroids"])
        n = max(len(self.ids), 1)
        pid = np.repeat(np.arange(len(self.ids), dtype=np.int64), self.lengths)
        pairs = np.unique(self.codes.astype(np.int64) * n + pid)
        ivf = (pairs % n).astype(np.int32)
        lengths = np.bincount(pairs // n, minlength=k).astype(np.int64)
        stride = int(lengths.max()) if len(lengths) else 0
        return np.concatenate([ivf, np.zeros(stride, np.int32)]), lengths

    # -- building -------------------------------------------------------------------------------
    def add_embeddings(self, ids: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        """Compress already-encoded chunks (one tokens × dim array each); the first call trains the codec."""
        self._check_new(ids)
        if not len(ids):
            return
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        emb = np.concatenate([np.asarray(a, dtype=np.float16) for a in arrays])
        if self.codec_arrays is None:
            self._train_codec(emb, lengths)
        codes, residuals = self._compress(emb)
        self.ids.extend(ids)
        self.lengths = np.concatenate([self.lengths, lengths])
        self.codes = np.concatenate([self.codes, codes])
        self.residuals = np.concatenate([self.residuals, residuals])
        self._reindex()

    def _train_codec(self, emb: np.ndarray, lengths: np.ndarray) -> None:
        """colbert-ai's CollectionIndexer.setup + train: sample, k-means, residual buckets (seeded)."""
        import torch

        _require_colbert_ai()
        rng = np.random.default_rng(0)
        n_docs = len(lengths)
        n_sample_docs = min(1 + int(16 * np.sqrt(120 * n_docs)), n_docs)
        picked = np.zeros(n_docs, dtype=bool)
        picked[rng.choice(n_docs, size=n_sample_docs, replace=False)] = True
        sample = emb[np.repeat(picked, lengths)]
        avg_doclen = len(sample) / n_sample_docs
        k = self.config.n_centroids or int(2 ** np.floor(np.log2(16 * np.sqrt(n_docs * avg_doclen))))
        sample = sample[rng.permutation(len(sample))]
        heldout_n = int(min(0.05 * len(sample), 50_000))
        train, heldout = sample[: len(sample) - heldout_n], sample[len(sample) - heldout_n:]
        if len(heldout) == 0:
            heldout = train
        k = max(1, min(k, len(train)))
        with progress_bar(f"PLAID k-means ({k:,} centroids, {len(train):,} vectors)", 1) as advance:
            centroids = self._kmeans(train, k)
            advance(1)
        centroids = torch.nn.functional.normalize(torch.from_numpy(centroids), dim=-1).half().float()
        # the held-out residuals' quantiles (colbert-ai's _compute_avg_residual)
        from colbert.indexing.codecs.residual import ResidualCodec

        with _stdout_to_stderr():
            plain = ResidualCodec(config=self._ai_config(), centroids=centroids, avg_residual=None)
        held = torch.from_numpy(heldout.astype(np.float32))
        codes = torch.cat([plain.compress_into_codes(b, out_device="cpu") for b in held.split(8192)])
        resid = held - centroids[codes.long()]
        nopt = 2 ** self.config.nbits
        q = torch.arange(0, nopt, dtype=torch.float32) / nopt
        self.codec_arrays = {
            "centroids": centroids.half().numpy(),
            "bucket_cutoffs": _quantile(resid, q[1:]),
            "bucket_weights": _quantile(resid, q + 0.5 / nopt),
            "avg_residual": np.asarray(resid.abs().mean(), dtype=np.float32),
        }
        self._codec = None

    def _kmeans(self, train: np.ndarray, k: int) -> np.ndarray:
        """colbert-ai's compute_faiss_kmeans: 4 iterations, seed 123 (float32 k × dim, not normalised)."""
        import faiss

        km = faiss.Kmeans(self.model.dim, k, niter=4, seed=123, verbose=False)
        km.train(np.ascontiguousarray(train, dtype=np.float32))
        return km.centroids

    def _compress(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        codec = self._get_codec()
        codes = np.empty(len(emb), dtype=np.int32)
        residuals = np.empty((len(emb), self.model.dim * self.config.nbits // 8), dtype=np.uint8)
        step = max(1024, (1 << 26) // max(1, len(self.codec_arrays["centroids"])))  # ≤ 256 MB of scores
        with progress_bar(f"PLAID compression ({self.config.nbits}-bit residuals)", len(emb)) as advance:
            for start in range(0, len(emb), step):
                block = torch.from_numpy(emb[start:start + step])
                with _stdout_to_stderr():
                    c = codec.compress(block)
                codes[start:start + len(block)] = c.codes.numpy()
                residuals[start:start + len(block)] = c.residuals.numpy()
                advance(len(block))
        return codes, residuals

    def delete(self, chunk_ids: Iterable[str]) -> int:
        dropped, keep_tokens = self._drop_rows(chunk_ids)
        if dropped:
            self.codes = np.ascontiguousarray(self.codes[keep_tokens])
            self.residuals = np.ascontiguousarray(self.residuals[keep_tokens])
        return dropped

    # -- searching ------------------------------------------------------------------------------
    def search(self, query: str, k: int = 10) -> Ranking:
        if not self.ids:
            return []
        with torch_threads(self.config.threads):
            Q = self.query_vectors(query).unsqueeze(0)
            scorer = self._get_scorer()
            cfg = self._ai_config(k)
            with _stdout_to_stderr():
                pids, scores = scorer.rank(cfg, Q)
                if len(pids) < min(k, len(self.ids)):  # too few candidates (small corpora): probe wider
                    cfg.configure(ncells=min(8 * cfg.ncells, len(self.codec_arrays["centroids"])),
                                  centroid_score_threshold=-1.0, ndocs=max(cfg.ndocs, 4 * k))
                    pids, scores = scorer.rank(cfg, Q)
        return [(self.ids[p], float(s)) for p, s in zip(pids[:k], scores[:k])]

    def score_rows(self, q: torch.Tensor, rows: np.ndarray) -> np.ndarray:
        """MaxSim of the query vectors against stored chunks `rows`, from their decompressed vectors."""
        import torch

        rows = np.asarray(rows, dtype=np.int32)
        if not len(rows):
            return np.zeros(0, dtype=np.float32)
        scorer = self._get_scorer()
        with torch.inference_mode():
            scores, _ = scorer.score_pids(self._ai_config(), q.unsqueeze(0), torch.from_numpy(rows), None)
        return scores.float().numpy()

    def score(self, query: str, chunk_ids: Sequence[str]) -> list[float]:
        """MaxSim scores of stored chunks (used by reranking); a chunk not stored is a KeyError."""
        rows = np.array([self._row[c] for c in chunk_ids], dtype=np.int32)
        with torch_threads(self.config.threads):
            return self.score_rows(self.query_vectors(query), rows).tolist()

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.codec_arrays is not None:
            np.savez(path / "codec.npz", **self.codec_arrays)
        np.save(path / "codes.npy", self.codes, allow_pickle=False)
        np.save(path / "residuals.npy", self.residuals, allow_pickle=False)
        np.save(path / "lengths.npy", self.lengths, allow_pickle=False)
        (path / "ids.json").write_text(json.dumps(self.ids, ensure_ascii=False), encoding="utf-8")
        (path / "config.json").write_text(json.dumps(self.describe(), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, path: Path, model: ColBERTModel | str | None = None) -> "PlaidRetriever":
        """Load a saved PLAID retriever; its checkpoint is loaded from the recorded id unless `model` is
        given. A model other than the one the chunks were encoded with is an IndexFormatError."""
        path = Path(path)
        try:
            meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
            built = meta.pop("model")
            config = from_dict(ColBERTConfig, meta, str(path / "config.json"),
                               ignore=("type", "model", "tokens", "centroids", "chunks", "partitions", "embeddings"))
        except (OSError, ValueError, TypeError, KeyError, RagkitError) as e:
            raise IndexFormatError(f"ColBERT index in {path} is missing or damaged: {e}") from e
        if config.engine != "plaid":
            raise IndexFormatError(f"{path} holds a ColBERT {config.engine!r} index, not a PLAID one")
        if model is None or isinstance(model, str):
            from ragkit.retrieval.colbert.model import ColBERTModel

            model = ColBERTModel.from_pretrained(model or config.checkpoint)
        check_checkpoint(path, built, model.describe())
        r = cls(model, config)
        try:
            r.ids = json.loads((path / "ids.json").read_text(encoding="utf-8"))
            r.lengths = np.load(path / "lengths.npy", allow_pickle=False)
            r.codes = np.load(path / "codes.npy", allow_pickle=False)
            r.residuals = np.load(path / "residuals.npy", allow_pickle=False)
            if (path / "codec.npz").is_file():
                with np.load(path / "codec.npz", allow_pickle=False) as z:
                    r.codec_arrays = {k: z[k] for k in ("centroids", "bucket_cutoffs", "bucket_weights",
                                                        "avg_residual")}
        except (OSError, ValueError, KeyError) as e:
            raise IndexFormatError(f"ColBERT PLAID index in {path} is missing or damaged: {e}") from e
        width = model.dim * config.nbits // 8
        ok = (len(r.ids) == len(r.lengths) and int(r.lengths.sum()) == len(r.codes) == len(r.residuals)
              and r.residuals.shape[1:] == (width,) and (r.codec_arrays is not None or not r.ids))
        if ok and r.codec_arrays is not None:
            c = r.codec_arrays["centroids"]
            ok = (c.ndim == 2 and c.shape[1] == model.dim and len(r.codec_arrays["bucket_weights"]) == 2 ** config.nbits
                  and (not len(r.codes) or int(r.codes.max()) < len(c)))
        if not ok:
            raise IndexFormatError(f"ColBERT PLAID index in {path} is damaged: {len(r.ids)} ids, {len(r.lengths)} "
                                   f"lengths, {len(r.codes)} codes, residuals {r.residuals.shape} (expected "
                                   f"{width} bytes per token for dim {model.dim}, nbits {config.nbits})")
        r._reindex()
        return r


def _quantile(x: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """Quantiles of all residual values (numpy: torch.quantile refuses inputs over 2^24 elements, which
    colbert-ai's 50k held-out vectors exceed at 384 dimensions)."""
    return np.quantile(x.numpy().ravel(), q.numpy()).astype(np.float32)
