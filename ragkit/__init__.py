"""ragkit: small models that make a large language model good at a domain."""
__version__ = "0.1.0"

from .chunking import Chunk, ChunkingConfig  # noqa: E402
from .corpus import Document, load_corpus  # noqa: E402
from .errors import CorpusError, IndexFormatError, ModelLoadError, RagkitError  # noqa: E402
from .index import Hit, Index, IndexConfig  # noqa: E402

__all__ = ["__version__", "Chunk", "ChunkingConfig", "Document", "load_corpus", "CorpusError", "IndexFormatError",
           "ModelLoadError", "RagkitError", "Hit", "Index", "IndexConfig"]
