"""Index storage: atomic folders, manifests, chunk and vector stores."""
from ragkit.retrieval.stores.chunks import ChunkStore
from ragkit.fs import atomic_dir, check_output_dir, read_manifest, writer_lock
from ragkit.retrieval.stores.vectors import FaissConfig, FaissVectorStore, VectorStore

__all__ = ["ChunkStore", "atomic_dir", "check_output_dir", "read_manifest", "writer_lock", "FaissConfig", "FaissVectorStore", "VectorStore"]
