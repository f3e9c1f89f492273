"""`ragkit.Index`: a corpus chunked and indexed by one or more retrievers, saved as one folder.

    index = Index.build("corpus.jsonl")                 # BM25 + dense, hybrid search
    index.search("how do I read a file", k=5)
    index.save("indexes/docs"); Index.load("indexes/docs")
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ragkit.runtime import import_object, utc_now
from ragkit._version import __version__
from ragkit.data.chunking import Chunk, Chunker, ChunkingConfig
from ragkit.data.corpus import Document, LoadReport, check_unique_ids, load_corpus
from ragkit.errors import CorpusError, IndexFormatError, RagkitError, UnknownRetrieverError
from ragkit.retrieval.stores.base import open_store
from ragkit.retrieval.stores.chunks import ChunkStore
from ragkit.fs import FORMAT, FORMAT_VERSION, MANIFEST
from ragkit.retrieval.encoder import DEFAULT_ENCODER, SentenceEncoder, resolve_model_path
from ragkit.progress import progress_bar
from ragkit.retrieval.base import Ranking, Retriever
from ragkit.retrieval.bm25 import BM25Config
from ragkit.retrieval.colbert.exact import ColBERTConfig
from ragkit.retrieval.dense import DenseConfig
from ragkit.retrieval.hybrid import FusionConfig, HybridRetriever

RETRIEVERS = ("bm25", "dense", "colbert")
# retriever name (ColBERT: and engine) -> "module:Class", imported on demand; each class is made by
# `for_index(config, encoder, model)` and read back by `load_for_index(path, config, encoder, model)`
RETRIEVER_CLASSES = {
    "bm25": "ragkit.retrieval.bm25:BM25Retriever",
    "dense": "ragkit.retrieval.dense:DenseRetriever",
    "colbert": "ragkit.retrieval.colbert.exact:ColBERTRetriever",
    "colbert:plaid": "ragkit.retrieval.colbert.plaid:PlaidRetriever",
}
_LOADED_LATER = object()  # Index.load fills the retrievers from the folder


def retriever_class(name: str, config: "IndexConfig"):
    """The class of retriever `name` in an index with `config` (colbert: by its engine)."""
    key = f"colbert:{config.colbert.engine}" if name == "colbert" and config.colbert.engine != "exact" else name
    return import_object(RETRIEVER_CLASSES[key])


@dataclass
class IndexConfig:
    """Everything that decides what an index contains; recorded in its manifest."""

    retrievers: list[str] = field(default_factory=lambda: ["bm25", "dense"])
    encoder: str = DEFAULT_ENCODER
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    bm25: BM25Config = field(default_factory=BM25Config)
    dense: DenseConfig = field(default_factory=DenseConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    colbert: ColBERTConfig = field(default_factory=ColBERTConfig)

    def __post_init__(self) -> None:
        unknown = [r for r in self.retrievers if r not in RETRIEVERS]
        if unknown or not self.retrievers:
            raise ValueError(f"unknown retrievers {unknown}; choose from {', '.join(RETRIEVERS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "index config") -> "IndexConfig":
        """From a manifest's `config` (unknown keys are a ConfigError naming their path)."""
        from ragkit.config import from_dict

        return from_dict(cls, d, where)


@dataclass
class Hit:
    """One search result: a chunk with its score and what a citation needs."""

    rank: int
    score: float
    chunk_id: str
    doc_id: str
    title: str
    text: str
    source: str
    start: int
    end: int
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _load_tokenizer(encoder_name: str):
    """The encoder's tokenizer without loading the model: its tokenizer.json when the model is a
    local folder (no transformers import), else transformers' AutoTokenizer."""
    _, target = resolve_model_path(encoder_name)
    tokenizer_file = Path(target) / "tokenizer.json"
    if tokenizer_file.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tokenizer_file))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(target)


class Index:
    """Chunks plus their retrievers; searched by name (`bm25`, `dense`, `colbert`, `hybrid`)."""

    def __init__(self, config: IndexConfig | None = None, encoder: SentenceEncoder | None = None,
                 colbert=None) -> None:
        self.config = config or IndexConfig()
        self.encoder = encoder
        if self.encoder is None and "dense" in self.config.retrievers:
            self.encoder = SentenceEncoder.from_pretrained(self.config.encoder)
        self._chunker: Chunker | None = None
        self.chunks = ChunkStore()
        self.retrievers: dict[str, Retriever] = {}
        if colbert is not _LOADED_LATER:
            for name in self.config.retrievers:
                self.retrievers[name] = retriever_class(name, self.config).for_index(self.config, self.encoder, colbert)
        self.created = utc_now()
        self.updated = self.created
        self.timings: dict[str, float] = {}
        self._corpus_paths: list[Path] = []
        self._store = None           # the database store a loaded index keeps writing into (folder: None)
        self._failed_change = ""     # why this index may not be saved (a change failed midway)

    @property
    def chunker(self) -> Chunker:
        """The chunker (the encoder's tokenizer), made on first use: searching needs none."""
        if self._chunker is None:
            tokenizer = self.encoder.tokenizer if self.encoder else _load_tokenizer(self.config.encoder)
            self._chunker = Chunker(tokenizer, self.config.chunking)
        return self._chunker

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def build(cls, corpus: str | Path | Sequence[Document], config: IndexConfig | None = None,
              encoder: SentenceEncoder | None = None, show_progress: bool | None = None,
              report: LoadReport | None = None) -> "Index":
        """Load (if a path), chunk and index a corpus."""
        docs = load_corpus(corpus, report=report) if isinstance(corpus, (str, Path)) else list(corpus)
        if not docs:
            raise CorpusError("corpus is empty: nothing to index")
        index = cls(config, encoder)
        index.add(docs, show_progress=show_progress)
        if isinstance(corpus, (str, Path)):
            index._corpus_paths.append(Path(corpus))  # save() refuses to write over it
        return index

    def add(self, docs: Sequence[Document], replace: bool = False, show_progress: bool | None = None) -> int:
        """Chunk and index new documents; returns the number of chunks added.

        Existing document ids are an error unless `replace`, which deletes them first. Chunks already
        indexed are never re-encoded.
        """
        docs = list(docs)
        check_unique_ids(docs)
        existing = [d.id for d in docs if self.chunks.has_document(d.id)]
        if existing and not replace:
            raise CorpusError(f"{len(existing)} document id(s) already in the index, e.g. {existing[:3]}; "
                              "delete them first or add with replace=True")
        t0 = time.perf_counter()
        with progress_bar("chunking", len(docs), show_progress) as advance:
            chunks: list[Chunk] = []
            step = getattr(self.chunker, "docs_per_call", 512) or max(1, len(docs))  # RayChunker: all at once
            for start in range(0, len(docs), step):
                batch = docs[start:start + step]
                chunks.extend(self.chunker.chunk(batch))
                advance(len(batch))
        self.timings["chunking"] = self.timings.get("chunking", 0.0) + time.perf_counter() - t0
        with self._changing():
            if existing:
                self.delete(existing)
            self._index_chunks(chunks, show_progress)
        self.updated = utc_now()
        return len(chunks)

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Around every change: a database store opens its write transaction first (so a second writer
        is refused before anything changes); a change that fails midway leaves retrievers out of step,
        so the index is marked and `save` refuses it (the saved index stays as it was)."""
        if self._failed_change:
            raise RagkitError(self._failed_change)
        if self._store is not None:
            self._store.begin()
        try:
            yield
        except BaseException as e:
            self._failed_change = (f"an earlier change to this index failed midway ({type(e).__name__}: {e}); "
                                   "its retrievers may be out of step: load the index again")
            if self._store is not None:
                self._store.rollback()
            raise

    def _index_chunks(self, chunks: list[Chunk], show_progress: bool | None) -> None:
        shared = self._shared_pass()
        for name, r in self.retrievers.items():
            if shared and name == "dense":
                continue  # encoded by colbert's pass below
            t0 = time.perf_counter()
            label = f"encoding ({name})" if name in ("dense", "colbert") else f"indexing ({name})"
            if shared and name == "colbert":
                label = "encoding (colbert + dense, one pass)"
            with progress_bar(label, len(chunks), show_progress) as advance:
                if shared and name == "colbert":
                    arrays, vectors = r.model.encode_docs([c.indexed_text for c in chunks], r.config.batch_size,
                                                          advance, pooled=True)
                    r.add_embeddings([c.id for c in chunks], arrays)
                    self.retrievers["dense"].store.add([c.id for c in chunks], vectors)
                else:
                    r.add(chunks, progress=advance)
            dt = time.perf_counter() - t0
            self.timings[name] = self.timings.get(name, 0.0) + dt
            if shared and name == "colbert":  # one pass served both: each is charged all of it
                self.timings["dense"] = self.timings.get("dense", 0.0) + dt
        self.chunks.add(chunks)

    def _shared_pass(self) -> bool:
        """Dense and ColBERT both present and the untrained MiniLM ColBERT over the dense encoder's
        model: one forward pass gives both the token vectors and the sentence embeddings."""
        dense, colbert = self.retrievers.get("dense"), self.retrievers.get("colbert")
        return (dense is not None and colbert is not None and hasattr(colbert, "add_embeddings")
                and colbert.model.pools_like(dense.encoder) and hasattr(dense.store, "add"))

    def delete(self, doc_ids: Iterable[str]) -> int:
        """Remove documents (all their chunks) from every retriever; returns chunks removed."""
        doc_ids = list(doc_ids)
        missing = [d for d in doc_ids if not self.chunks.has_document(d)]
        if missing:
            raise KeyError(f"{len(missing)} document id(s) not in the index, e.g. {missing[:3]}")
        with self._changing():
            chunk_ids = self.chunks.delete_documents(doc_ids)
            for r in self.retrievers.values():
                r.delete(chunk_ids)
        self.updated = utc_now()
        return len(chunk_ids)

    # -- searching ------------------------------------------------------------------------------
    @property
    def retriever_names(self) -> list[str]:
        return list(self.retrievers) + (["hybrid"] if len(self.retrievers) > 1 else [])

    @property
    def default_retriever(self) -> str:
        return "hybrid" if len(self.retrievers) > 1 else next(iter(self.retrievers))

    def needs_torch(self, name: str | None = None) -> bool:
        """Whether searching with retriever `name` (default: the index's) runs a torch model."""
        name = name or self.default_retriever
        names = list(self.retrievers) if name == "hybrid" else [name]
        return any(n != "bm25" for n in names)

    def check_retriever(self, name: str | None = None) -> str:
        """The retriever name a search with `name` uses (None: the index's default); an
        `UnknownRetrieverError` (a ValueError) naming the ones this index has otherwise."""
        name = name or self.default_retriever
        if name not in self.retriever_names:
            raise UnknownRetrieverError(f"unknown retriever {name!r}: this index has no {name!r} retriever, only "
                                        f"{', '.join(self.retriever_names)}")
        return name

    def retriever(self, name: str | None = None) -> Retriever:
        name = self.check_retriever(name)
        if name == "hybrid":
            return HybridRetriever(self.retrievers, self.config.fusion)
        return self.retrievers[name]

    def _hits(self, ranking: Ranking) -> list[Hit]:
        out = []
        chunks = self.chunks.get_many([cid for cid, _ in ranking])
        for rank, (cid, score) in enumerate(ranking, start=1):
            c = chunks[cid]
            out.append(Hit(rank, score, cid, c.doc_id, c.title, c.text, c.source, c.start, c.end, c.metadata))
        return out

    def search(self, query: str, k: int = 10, retriever: str | None = None) -> list[Hit]:
        """The k best chunks for `query` from one retriever or the hybrid."""
        if not query or not query.strip():
            raise ValueError("the query is empty")
        return self._hits(self.retriever(retriever).search(query, k))

    def search_batch(self, queries: Sequence[str], k: int = 10, retriever: str | None = None) -> list[list[Hit]]:
        return [self._hits(r) for r in self.retriever(retriever).search_batch(list(queries), k)]

    # -- persistence ----------------------------------------------------------------------------
    def manifest(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "ragkit_version": __version__,
            "created": self.created,
            "updated": self.updated,
            "encoder": self.encoder.describe() if self.encoder else {"id": self.config.encoder},
            "chunking": {"tokenizer": self.config.encoder, **asdict(self.config.chunking)},
            "counts": {"documents": self.chunks.n_documents, "chunks": len(self.chunks)},
            "retrievers": {n: r.describe() for n, r in self.retrievers.items()},
            "config": self.config.to_dict(),
        }

    @staticmethod
    def writer_lock(location: str | Path, wait: bool = False, on_wait=None):
        """Context manager holding the writer lock of `location` (a folder: `ragkit.fs.writer_lock`; a
        `postgresql://` store: an advisory lock); take it before loading when you load, change and save
        an index, so that no other writer's change is lost in between. Another writer is an
        `IndexLockedError` unless `wait`."""
        return open_store(location).writer_lock(wait=wait, on_wait=on_wait)

    @staticmethod
    def check_output(location: str | Path, protect: Iterable[str | Path] = ()) -> None:
        """`OutputPathError` unless `location` is absent, empty or a ragkit index (a folder: and neither
        is nor contains a path of `protect`, the corpus). `save` checks this itself; callers may check
        early, before a long build."""
        open_store(location).check_output(protect)

    def save(self, location: str | Path, protect: Iterable[str | Path] = (), wait: bool = False) -> str | Path:
        """Write the index atomically: a failed or interrupted save leaves the old one intact.

        `location` is a folder or a `postgresql://` URL (`ragkit.retrieval.stores`). A folder must be
        absent, empty or a ragkit index (`OutputPathError` otherwise), and neither be nor contain the
        corpus it was built from or a path in `protect`. The writer lock is held while writing
        (`IndexLockedError` if another writer holds it, unless `wait`); an OSError such as a full disk
        is a `WriteError` naming the path, the previous index left intact.
        """
        if self._failed_change:
            raise RagkitError(f"not saved: {self._failed_change}")
        if getattr(self, "_partial", False):
            raise RagkitError("this index was loaded with only some of its retrievers (Index.load(only=...)); "
                              "load it whole to change and save it")
        open_store(location).save(self, protect=[*self._corpus_paths, *protect], wait=wait)
        return location

    @classmethod
    def load(cls, location: str | Path, encoder: SentenceEncoder | str | None = None, colbert=None,
             only: Sequence[str] | None = None) -> "Index":
        """Load an index from a folder or a `postgresql://` store; a different encoder (or ColBERT
        checkpoint: a ColBERTModel or its path in `colbert`) than the one it was built with is an error.

        `only` loads just the named retrievers (e.g. `["bm25"]`: no encoder, no torch) for a
        read-only use such as one search; such an index cannot be saved."""
        store = open_store(location)
        where = store.display
        manifest = store.read_manifest()
        try:
            config = IndexConfig.from_dict(manifest["config"], f"{where}/{MANIFEST}: config")
        except (AttributeError, KeyError, TypeError, ValueError, RagkitError) as e:
            raise IndexFormatError(f"{where}/{MANIFEST} has an unreadable config: {e}") from e
        if only is not None:
            unknown = [r for r in only if r not in config.retrievers]
            if unknown:
                raise ValueError(f"this index has no {unknown[0]!r} retriever; it has: "
                                 f"{', '.join(config.retrievers + (['hybrid'] if len(config.retrievers) > 1 else []))}")
            config.retrievers = [r for r in config.retrievers if r in only]
        built = manifest.get("encoder", {})
        if not isinstance(built, dict):
            raise IndexFormatError(f"{where}/{MANIFEST} is damaged: 'encoder' is not an object")
        if "dense" in config.retrievers:
            if isinstance(encoder, str) or encoder is None:
                encoder = SentenceEncoder.from_pretrained(encoder or config.encoder)
            _check_encoder(where, built, encoder.describe())
        elif isinstance(encoder, str):
            encoder = SentenceEncoder.from_pretrained(encoder)
        index = cls(config, encoder, colbert=_LOADED_LATER)
        index.chunks = store.load_chunks()
        for name in config.retrievers:
            index.retrievers[name] = store.load_retriever(name, retriever_class(name, config), config, encoder, colbert)
        store.check_loaded(index)
        index.created, index.updated = manifest.get("created", ""), manifest.get("updated", "")
        index._partial = only is not None
        store.bind(index)
        return index

    def info(self) -> dict:
        """The manifest as it would be saved now."""
        return self.manifest()


def _check_encoder(path: str | Path, built: dict, given: dict) -> None:
    problems = []
    if built.get("id") != given.get("id"):
        problems.append(f"id {built.get('id')!r} vs {given.get('id')!r}")
    if built.get("dimension") != given.get("dimension"):
        problems.append(f"dimension {built.get('dimension')} vs {given.get('dimension')}")
    if built.get("fingerprint") and given.get("fingerprint") and built["fingerprint"] != given["fingerprint"]:
        problems.append(f"weights fingerprint {built['fingerprint']} vs {given['fingerprint']}")
    if problems:
        raise IndexFormatError(f"{path} was built with another encoder ({'; '.join(problems)}); "
                               "load it with the encoder it was built with, or rebuild the index")
