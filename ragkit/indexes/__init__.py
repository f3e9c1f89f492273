"""Index storage: atomic folders, manifests, chunk and vector stores."""
from .chunks import ChunkStore
from .store import atomic_dir, check_output_dir, read_manifest, writer_lock
from .vectors import FaissConfig, FaissVectorStore, VectorStore

__all__ = ["ChunkStore", "atomic_dir", "check_output_dir", "read_manifest", "writer_lock", "FaissConfig", "FaissVectorStore", "VectorStore"]
