"""ragkit: small models that make a large language model good at a domain.

The public API, imported on first use so that `import ragkit` (and `ragkit --help`) stays fast:

    from ragkit import Index, Pipeline, PipelineConfig, load_adapter, train_adapter

Retrieval half: `Index`, `IndexConfig`, `Hit`, `load_corpus`, `Document`.
Adaptation half: `load_adapter`, `train_adapter`.
Where they meet: `Pipeline`, `PipelineConfig`, `Answer`, `load_llm`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ragkit._version import __version__
from ragkit.errors import AdapterError, CorpusError, IndexFormatError, ModelLoadError, RagkitError

_API: dict[str, str] = {
    # retrieval
    "Index": "ragkit.retrieval.index:Index",
    "IndexConfig": "ragkit.retrieval.index:IndexConfig",
    "Hit": "ragkit.retrieval.index:Hit",
    "Document": "ragkit.data.corpus:Document",
    "load_corpus": "ragkit.data.corpus:load_corpus",
    "Chunk": "ragkit.data.chunking:Chunk",
    "ChunkingConfig": "ragkit.data.chunking:ChunkingConfig",
    # generation (the junction)
    "Pipeline": "ragkit.generation.pipeline:Pipeline",
    "PipelineConfig": "ragkit.config:PipelineConfig",
    "Answer": "ragkit.generation.pipeline:Answer",
    "GenerationConfig": "ragkit.generation.llm.base:GenerationConfig",
    "load_llm": "ragkit.generation.loader:load_llm",
    # adaptation
    "load_adapter": "ragkit.adaptation.base:load_adapter",
    "train_adapter": "ragkit.adaptation.train:train_adapter",
}

__all__ = ["__version__", "AdapterError", "CorpusError", "IndexFormatError", "ModelLoadError", "RagkitError",
           *_API]


def __getattr__(name: str) -> Any:
    spec = _API.get(name)
    if spec is None:
        raise AttributeError(f"module 'ragkit' has no attribute {name!r}")
    module, _, attr = spec.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from ragkit.adaptation.base import load_adapter
    from ragkit.adaptation.train import train_adapter
    from ragkit.config import PipelineConfig
    from ragkit.data.chunking import Chunk, ChunkingConfig
    from ragkit.data.corpus import Document, load_corpus
    from ragkit.generation.llm.base import GenerationConfig
    from ragkit.generation.loader import load_llm
    from ragkit.generation.pipeline import Answer, Pipeline
    from ragkit.retrieval.index import Hit, Index, IndexConfig
