"""One pipeline configuration, read from YAML by the CLI, the Python API and (later) the server.

    index: indexes/pydocs
    retrieval: {retriever: hybrid, k: 5}
    llm: {backend: hf, model: default, threads: 1}        # or backend: openai, base_url: ..., model: ...
    generation: {max_new_tokens: 256, temperature: 0.0}
    prompt: {system: "...", template: "..."}
    server: {api_key_env: RAGKIT_API_KEY, max_tokens: 1024}   # ragkit serve
    adapters: [pubmedqa-knowledge, {adapter: pydocs-proxy, alpha: 0.2}]   # domain adapters, stacked
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ragkit.errors import RagkitError
from ragkit.generation.llm.base import GenerationConfig

DEFAULT_SYSTEM = ("You answer questions using only the numbered sources. Cite every source you use with its "
                  "number in square brackets, like [1]. If the sources do not contain the answer, say so.")
DEFAULT_TEMPLATE = "Sources:\n\n{sources}\n\nQuestion: {question}"
SOURCE_TEMPLATE = "[{n}] {title} ({source})\n{text}"
KNOWLEDGE_HEADER = "Background knowledge (from a domain model; may be wrong):"


class ConfigError(RagkitError):
    """A configuration file or value is wrong; the message names the field."""


@dataclass
class RetrievalConfig:
    retriever: str | None = None  # bm25, dense, hybrid; None: the index's default
    k: int = 5
    rerank: str | None = None     # None, "maxsim" or "maxsim:MODEL" (see ragkit.retrieval.rerank)
    rerank_candidates: int = 30   # hits the reranker reorders before the top k are kept


@dataclass
class LLMConfig:
    backend: str = "hf"           # hf (local transformers) or openai (an OpenAI-compatible endpoint)
    model: str = "default"
    dtype: str = "auto"           # auto (float32 under 300M parameters, else int8), float32, bfloat16, int8
    threads: int | None = 1       # torch threads while decoding (one: see ragkit.generation.llm.hf)
    prefill_threads: int | None = 2  # torch threads for the prompt's forward pass
    base_url: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0
    retries: int = 2
    context_window: int | None = None  # override the model's own
    draft: str | None = None      # a smaller sibling (same tokenizer) for speculative decoding, e.g. qwen2.5-coder-0.5b
    draft_lookup: int = 0         # with a draft: n-gram size of prompt lookup tried before drafting (0: off)


@dataclass
class CascadeConfig:
    """Small-to-large: the pipeline's LLM answers first; when it is unsure the answer comes from
    `model` instead (see ragkit.generation.cascade)."""

    model: str | None = None      # the larger LLM to escalate to (a local model, loaded like llm.model); None: off
    min_confidence: float = 0.5   # escalate when the first answer's mean token probability is below this


@dataclass
class PromptConfig:
    system: str = DEFAULT_SYSTEM
    template: str = DEFAULT_TEMPLATE
    source_template: str = SOURCE_TEMPLATE
    min_source_tokens: int = 48   # a source cut to fewer tokens than this is dropped instead
    # Small LLMs often write no [n] markers. Then each answer sentence without one is attributed to
    # its most similar source (the index's encoder, cosine >= attribute_min_similarity) and those
    # source numbers are appended to the answer; Answer.attributions says which. 0 or less: off.
    attribute_min_similarity: float = 0.5
    # Black-box domain adapters (ragkit.adaptation.PromptAdapter) write a knowledge section, put
    # before the sources under this header (or where the template says {knowledge}); it takes at
    # most knowledge_max_tokens of the context budget (cut at a token boundary).
    knowledge_header: str = KNOWLEDGE_HEADER
    knowledge_max_tokens: int = 256


@dataclass
class ServerConfig:
    """`ragkit serve` settings (the host and port come from the command line)."""

    api_key_env: str = "RAGKIT_API_KEY"  # when this variable is set, requests need "Authorization: Bearer <key>"
    max_request_bytes: int = 1_000_000   # larger request bodies get HTTP 413
    max_tokens: int = 1024               # largest max_tokens a request may ask for
    max_embedding_inputs: int = 256      # texts per /v1/embeddings request
    model_name: str | None = None        # the model name clients use; default: the LLM's id
    stall_seconds: float = 120.0         # /healthz says "wedged" (503) when decoding made no step for this long
    docs: bool = False                   # serve /docs, /redoc and /openapi.json (behind the API key when one is set)
    shutdown_seconds: float = 3.0        # on SIGTERM: generations are cancelled, connections get this long to close
    max_batch: int = 8                   # generations decoded together in one shared batch (1: one at a time)
    max_queue: int = 32                  # generations waiting for a batch row; more get HTTP 503 with Retry-After


@dataclass
class PipelineConfig:
    index: str | None = None
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    # domain adapters, applied in order: a name under adapters/ or a folder path, or a mapping
    # {adapter: NAME, <param>: value} whose other keys override the adapter's fitted params
    adapters: list = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "PipelineConfig":
        config = from_dict(cls, data or {}, where)
        adapter_specs(config.adapters, f"{where}.adapters")
        return config

    def adapter_specs(self) -> list[tuple[str, dict]]:
        """The `adapters` entries as (name or path, param overrides)."""
        return adapter_specs(self.adapters)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PipelineConfig":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from e
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        return cls.from_dict(data or {}, str(path))  # a relative index path is taken from the working directory

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def adapter_specs(entries: Any, where: str = "adapters") -> list[tuple[str, dict]]:
    """Check and normalise an `adapters:` list: each entry a non-empty string, or a mapping with an
    `adapter` key (the name or path) and parameter overrides."""
    if entries is None:
        return []
    if isinstance(entries, (str, dict)):
        entries = [entries]
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected a list of adapter names or mappings, got {type(entries).__name__}")
    out = []
    for i, e in enumerate(entries):
        if isinstance(e, str) and e.strip():
            out.append((e.strip(), {}))
        elif isinstance(e, dict):
            name = e.get("adapter")
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{where}[{i}]: a mapping entry needs 'adapter: NAME_OR_PATH' "
                                  f"(got keys {', '.join(map(str, e)) or 'none'})")
            bad = [k for k in e if not isinstance(k, str)]
            if bad:
                raise ConfigError(f"{where}[{i}]: parameter names must be strings, got {bad}")
            out.append((name.strip(), {k: v for k, v in e.items() if k != "adapter"}))
        else:
            raise ConfigError(f"{where}[{i}]: expected an adapter name or a mapping "
                              f"{{adapter: NAME, param: value}}, got {e!r}")
    return out


def from_dict(cls, data: dict, where: str, ignore: Iterable[str] = ()):
    """The dataclass `cls` from a mapping — ragkit's one config builder: nested dataclass fields are
    built the same way, and an unknown key is a `ConfigError` naming its path (`where.field`), except
    the keys in `ignore` (extra descriptive keys a saved file may carry)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if k not in set(ignore)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub) and isinstance(sub, type):
            kwargs[name] = from_dict(sub, value or {}, f"{where}.{name}")
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
