"""Domain adapters: small models that make an LLM better at a domain without touching its weights.

Two families, both attachable to a `ragkit.Pipeline` and stackable:

- `PromptAdapter` (black-box): writes background text for a question (Knowledge Card / BLADE
  style); the pipeline puts the filtered text into the prompt as a labelled knowledge section.
  Works with every backend, remote OpenAI-compatible ones included.
- `LogitsAdapter` (white-box): a `transformers.LogitsProcessor` that adjusts the LLM's next-token
  scores at decode time (proxy-tuning, product of experts, contrastive decoding, kNN-LM). Needs a
  local model (`HFCausalLM`) whose tokenizer the adapter's models share.

On disk an adapter is a folder (by default under `adapters/`, or `$RAGKIT_ADAPTERS`) holding
`manifest.json` and safetensors / faiss / json files; never pickle. The manifest records the kind,
the base model, the tokenizer and corpus fingerprints, the training settings, fitted parameters
(alpha / w / lambda) and metrics. Writes are atomic (a temporary folder swapped into place), and
the manifest records every file's size and sha256 (`files`), checked as for indexes (see
`ragkit.integrity`): sizes and the hashes of files up to 64 MiB on every `load_adapter`
and whenever a model adapter folder is loaded; a damaged file is an `AdapterError` naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from ragkit.refs import adapters_dir, resolve_adapter  # noqa: F401 - adapters_dir is part of this module's API
from ragkit.runtime import utc_now
from ragkit._version import __version__
from ragkit.errors import AdapterError
from ragkit.integrity import FILES, seal, verify_files
from ragkit.fs import atomic_dir, write_json

ADAPTER_FORMAT = "ragkit-adapter"
ADAPTER_FORMAT_VERSION = 1
MANIFEST = "manifest.json"


resolve_adapter_path = resolve_adapter  # the one resolver lives in ragkit.refs


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of a tokenizer's vocabulary (token → id) and special tokens: two models whose
    fingerprints match score the same token ids."""
    vocab = tokenizer.get_vocab()
    h = hashlib.sha256()
    for token, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        h.update(f"{idx}\t{token}\n".encode("utf-8", "surrogatepass"))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        h.update(f"{name}={getattr(tokenizer, name, None)}\n".encode())
    return h.hexdigest()[:16]


def text_fingerprint(texts: Iterable[str]) -> str:
    """A short hash of a corpus (texts in order)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def check_same_tokenizer(a: Any, b: Any, name_a: str, name_b: str) -> None:
    """Fail with a message naming both models when their tokenizers differ (ids would not line up)."""
    fa, fb = tokenizer_fingerprint(a), tokenizer_fingerprint(b)
    if fa != fb:
        na, nb = len(a.get_vocab()), len(b.get_vocab())
        raise AdapterError(
            f"{name_a} and {name_b} do not share a tokenizer ({type(a).__name__} with {na} tokens, fingerprint {fa}; "
            f"{type(b).__name__} with {nb} tokens, fingerprint {fb}): decode-time adapters need the same vocabulary")


def new_manifest(kind: str, base_model: str, tokenizer: Any = None, corpus: Iterable[str] | None = None,
                 **fields: Any) -> dict:
    """The manifest of a new adapter; `fields` adds training / params / metrics / anything else."""
    m = {"format": ADAPTER_FORMAT, "format_version": ADAPTER_FORMAT_VERSION, "ragkit_version": __version__,
         "kind": kind, "base_model": base_model, "created": utc_now(),
         "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
         "corpus_fingerprint": text_fingerprint(corpus) if corpus is not None else None,
         "training": {}, "params": {}, "metrics": {}}
    m.update(fields)
    return m


def write_adapter(path: str | Path, manifest: dict, write_files: Callable[[Path], None]) -> Path:
    """Write an adapter folder atomically: `write_files(tmp)` fills a temporary folder, the manifest
    goes in last, then the folder is swapped into place (a failed write leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        write_files(tmp)
        manifest = {**manifest, FILES: seal(tmp, error=AdapterError)}  # read back from the disk
        write_json(tmp / MANIFEST, manifest)
    return path


def read_adapter_manifest(path: str | Path) -> dict:
    """The manifest of an adapter folder, with clear errors for anything that is not one."""
    path = resolve_adapter_path(path)
    f = path / MANIFEST
    if not f.is_file():
        raise AdapterError(f"{path} is not a ragkit adapter: it has no {MANIFEST}")
    try:
        m = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: invalid JSON or not UTF-8
        raise AdapterError(f"{f}: unreadable manifest: {e}") from e
    if not isinstance(m, dict) or m.get("format") != ADAPTER_FORMAT:
        raise AdapterError(f"{f}: not a ragkit adapter manifest (format {m.get('format') if isinstance(m, dict) else m!r})")
    version = m.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise AdapterError(f"{f} is damaged: format_version must be a whole number, got {version!r}")
    if version > ADAPTER_FORMAT_VERSION:
        raise AdapterError(f"{f}: adapter format {m['format_version']} is newer than this ragkit reads "
                           f"({ADAPTER_FORMAT_VERSION}); upgrade ragkit")
    if not isinstance(m.get("kind"), str):
        raise AdapterError(f"{f}: the manifest has no 'kind' field" if "kind" not in m
                           else f"{f} is damaged: 'kind' must be a string, got {m['kind']!r}")
    for key in ("params", "training", "metrics", "models"):
        if key in m and not isinstance(m[key], dict):
            raise AdapterError(f"{f} is damaged: {key!r} must be an object, got {type(m[key]).__name__}")
    return m


# numeric parameters of the built-in kinds: a manifest (or override) giving another type is refused at load
NUMERIC_PARAMS = ("alpha", "w", "beta", "k", "temperature", "lambda", "nprobe", "samples", "max_new_tokens",
                  "max_passages", "threads", "min_relevance", "min_consistency", "max_duplicate", "min_words",
                  "top_p", "seed")
BOOL_PARAMS = ("paired", "chat", "filter")
STRING_PARAMS = ("sm", "prompt", "mode")


def check_params(path: Path, m: dict) -> None:
    """AdapterError naming the manifest and the field for a parameter of the wrong type (a string
    `alpha`, a non-numeric `k`, ...) or a model reference that is not a string."""
    f = path / MANIFEST
    for key, value in m.get("params", {}).items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in NUMERIC_PARAMS and value is not None and not numeric:
            raise AdapterError(f"{f}: parameter {key!r} must be a number, got {value!r}")
        if isinstance(value, float) and value != value:
            raise AdapterError(f"{f}: parameter {key!r} is NaN")
        if key in BOOL_PARAMS and not isinstance(value, bool):
            raise AdapterError(f"{f}: parameter {key!r} must be true or false, got {value!r}")
        if key in STRING_PARAMS and not isinstance(value, str):
            raise AdapterError(f"{f}: parameter {key!r} must be a string, got {value!r}")
    for role, ref in m.get("models", {}).items():
        if not isinstance(ref, str) or not ref:
            raise AdapterError(f"{f}: model reference {role!r} must be a folder or model name, got {ref!r}")


def verify_adapter_files(path: str | Path, manifest: dict | None = None, full: bool = False) -> None:
    """AdapterError naming the first damaged file of an adapter folder (size, and sha256 of files up
    to 64 MiB unless `full`); folders written before checksums existed pass unchecked."""
    path = Path(path)
    verify_files(path, manifest if manifest is not None else read_adapter_manifest(path), full=full, error=AdapterError)


def update_manifest(path: str | Path, **fields: Any) -> dict:
    """Merge `fields` into an adapter's manifest (dict fields are merged one level deep), atomically."""
    path = resolve_adapter_path(path)
    m = read_adapter_manifest(path)
    for k, v in fields.items():
        if isinstance(v, dict) and isinstance(m.get(k), dict):
            m[k] = {**m[k], **v}
        else:
            m[k] = v
    tmp = path / f".{MANIFEST}.{os.getpid()}.tmp"
    write_json(tmp, m)
    os.replace(tmp, path / MANIFEST)
    return m


class Adapter:
    """An adapter loaded from a folder (or built in memory): its kind, manifest and path."""

    kind: str = "adapter"

    def __init__(self, manifest: dict | None = None, path: Path | None = None) -> None:
        self.manifest = manifest or {}
        self.path = path

    @property
    def name(self) -> str:
        return self.path.name if self.path else self.kind

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "params": self.manifest.get("params", {})}

    @classmethod
    def from_folder(cls, path: Path, manifest: dict) -> "Adapter":
        """The adapter a folder holds (its manifest already read and checked)."""
        adapter = cls(manifest, path)
        adapter.kind = manifest.get("kind", cls.kind)
        return adapter


class PromptAdapter(Adapter):
    """Black-box: text for the prompt's knowledge section (empty string: nothing to add)."""

    def knowledge(self, question: str, hits: list | None = None) -> str:
        raise NotImplementedError


class LogitsAdapter(Adapter):
    """White-box: a `transformers.LogitsProcessor` bound to a local LLM; fresh per generation
    (processors keep their own KV caches)."""

    def logits_processor(self, llm: Any) -> Any:
        raise NotImplementedError


def load_adapter(name_or_path: str | Path, **overrides: Any) -> Adapter:
    """Load an adapter folder (a path, or a name under `adapters/`) by the kind in its manifest.
    `overrides` replace fitted params for this load (e.g. alpha=0.2)."""
    path = resolve_adapter_path(name_or_path)
    m = read_adapter_manifest(path)
    verify_adapter_files(path, m)
    if overrides:
        m = {**m, "params": {**m.get("params", {}), **overrides}}
    check_params(path, m)
    from ragkit.adaptation.kinds import KINDS, adapter_class

    cls = adapter_class(m["kind"])
    if cls is None:
        raise AdapterError(f"{path}: unknown adapter kind {m['kind']!r}; this ragkit knows {', '.join(sorted(KINDS))}")
    return cls.from_folder(path, m)
