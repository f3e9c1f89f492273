"""Dense retrieval: a sentence encoder + a vector store (faiss by default), cosine by normalisation."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ragkit.data.chunking import Chunk
from ragkit.config import from_dict
from ragkit.errors import IndexFormatError, RagkitError
from ragkit.integrity import read_json
from ragkit.retrieval.stores.vectors import FaissConfig, FaissVectorStore, VectorStore
from ragkit.retrieval.encoder import SentenceEncoder
from ragkit.retrieval.base import Ranking, Retriever


@dataclass
class DenseConfig:
    batch_size: int = 64
    index: FaissConfig = field(default_factory=FaissConfig)

    @classmethod
    def from_dict(cls, d: dict, where: str = "dense config") -> "DenseConfig":
        """From a saved `describe()` (its descriptive keys are skipped; others must be known)."""
        return from_dict(cls, d, where, ignore=("type", "encoder"))


class DenseRetriever(Retriever):
    """Embeds chunk texts (title + text) once; queries are embedded at search time."""

    name = "dense"

    def __init__(self, encoder: SentenceEncoder, config: DenseConfig | None = None,
                 store: VectorStore | None = None) -> None:
        self.encoder = encoder
        self.config = config or DenseConfig()
        self.store: VectorStore = store if store is not None else FaissVectorStore(encoder.dim, self.config.index)

    def __len__(self) -> int:
        return len(self.store)

    def describe(self) -> dict:
        return {"type": "dense", "encoder": self.encoder.describe(), **asdict(self.config)}

    def add(self, chunks: Sequence[Chunk], progress: Callable[[int], None] | None = None) -> None:
        dup = self.store.existing([c.id for c in chunks])
        if dup:
            raise ValueError(f"chunks already indexed: {dup[:5]}")
        vectors = self.encoder.encode([c.indexed_text for c in chunks], batch_size=self.config.batch_size,
                                      progress=progress)
        self.store.add([c.id for c in chunks], vectors)

    def delete(self, chunk_ids: Iterable[str]) -> int:
        return self.store.remove(chunk_ids)

    def search(self, query: str, k: int = 10) -> Ranking:
        return self.store.search(self.encoder.encode_query(query), k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[Ranking]:
        return self.store.search(self.encoder.encode(list(queries), batch_size=self.config.batch_size), k)

    def save(self, path: Path) -> None:
        path = Path(path)
        self.store.save(path)
        (path / "config.json").write_text(json.dumps(self.describe(), indent=2))

    @classmethod
    def for_index(cls, config, encoder=None, model=None) -> "DenseRetriever":
        return cls(encoder, config.dense)

    @classmethod
    def load_for_index(cls, path: Path, config, encoder=None, model=None) -> "DenseRetriever":
        return cls.load(path, encoder)

    @classmethod
    def load(cls, path: Path, encoder: SentenceEncoder) -> "DenseRetriever":
        path = Path(path)
        cfg = read_json(path / "config.json")
        try:
            config = DenseConfig.from_dict(cfg, str(path / "config.json"))
        except (AttributeError, TypeError, ValueError, RagkitError) as e:
            raise IndexFormatError(f"{path / 'config.json'} is damaged: {e}") from e
        return cls(encoder, config, FaissVectorStore.load(path))
