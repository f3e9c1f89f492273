"""Index storage: atomic folders, manifests, chunk and vector stores."""
from .chunks import ChunkStore
from .store import atomic_dir, read_manifest
from .vectors import FaissConfig, FaissVectorStore, VectorStore

__all__ = ["ChunkStore", "atomic_dir", "read_manifest", "FaissConfig", "FaissVectorStore", "VectorStore"]
