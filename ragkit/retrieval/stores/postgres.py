"""The PostgreSQL store: an index as tables in one schema of a PostgreSQL database with pgvector.

    ragkit index corpus.jsonl --store "postgresql://app@db.internal:5432/rag?schema=docs"
    ragkit search "..." --index "postgresql://app@db.internal:5432/rag?schema=docs"

Tables (schema `docs` above):
- `chunks`: one row per chunk (id, doc_id, text, title, source, offsets, metadata), in insertion order;
- `dense`: one `vector(d)` per chunk; searched in SQL by inner product (= cosine: vectors are
  normalised), exactly below `exact_below` chunks, through an HNSW index from there (`hnsw=on|off`
  forces it; `ef_search` is the query-time beam);
- `blobs`: the saved state of every other retriever, as ragkit's own files (BM25's sparse matrix and
  token ids, ColBERT's vectors): every process that opens the store runs ragkit's bm25s scoring on
  exactly the same state, so BM25 ranks as in a folder index (PostgreSQL's `ts_rank` is not BM25);
- `meta`: the manifest (as a folder index's, plus a `store` section) and a generation counter.

Atomicity: a build fills a new schema and swaps it in by rename inside one transaction, so a failed
or killed build leaves the previous index searchable; changes to a loaded index (add, delete,
replace) go into one open transaction that `save()` commits. One writer at a time: a PostgreSQL
advisory lock per schema (`IndexLockedError` for a second writer). Credentials come from the
environment (PGPASSWORD, ~/.pgpass, PGSERVICE, ...): a URL with a password is refused, and
nothing ragkit writes or prints names more than user, host, port, database and schema.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import numpy as np

from ragkit.data.chunking import Chunk
from ragkit.errors import IndexFormatError, IndexLockedError, OutputPathError, RagkitError, WriteError
from ragkit.fs import FORMAT, FORMAT_VERSION
from ragkit.progress import progress_bar
from ragkit.retrieval.stores.base import IndexStore
from ragkit.retrieval.stores.vectors import FaissConfig, FaissVectorStore, checked_vectors

INSTALL_HINT = "pip install 'ragkit[postgres]' (psycopg and pgvector)"
BLOB_PART = 256 * 2**20  # bytea values are split: PostgreSQL caps one value at 1 GB
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,46}$")
_CHUNK_COLUMNS = "id, doc_id, n, text, title, source, start_char, end_char, metadata"


class StoreURLError(RagkitError, ValueError):
    """A `postgresql://` store URL that ragkit cannot use."""


@dataclass
class PostgresOptions:
    """Store options, given as URL query parameters (`?schema=docs&hnsw=on&ef_search=200`)."""

    schema: str = "ragkit"
    hnsw: str = "auto"          # build an HNSW index: auto (from exact_below chunks), on, off
    exact_below: int = 20000
    m: int = 16                 # HNSW graph degree
    ef_construction: int = 64
    ef_search: int = 100        # query time: candidates the HNSW search keeps (at least k)
    exact: bool = False         # query time: scan exactly even where an HNSW index exists

    def __post_init__(self) -> None:
        if not _SCHEMA_NAME.match(self.schema):
            raise StoreURLError(f"schema {self.schema!r}: use lower-case letters, digits and _ (at most 47), "
                                "starting with a letter or _")
        if self.hnsw not in ("auto", "on", "off"):
            raise StoreURLError(f"hnsw={self.hnsw!r}: choose auto, on or off")
        for name in ("exact_below", "m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise StoreURLError(f"{name} must be a positive whole number, got {getattr(self, name)}")

    def use_hnsw(self, n: int) -> bool:
        return self.hnsw == "on" or (self.hnsw == "auto" and n >= self.exact_below)


def parse_store_url(url: str) -> tuple[str, PostgresOptions, str]:
    """(libpq URL without ragkit's options, the options, the URL to show). A password is refused."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise StoreURLError(f"not a PostgreSQL URL: {parts.scheme}://...")
    if parts.password is not None:
        raise StoreURLError("the store URL holds a password: ragkit takes credentials only from the environment; "
                            "remove it from the URL and set PGPASSWORD (or use ~/.pgpass or PGSERVICE)")
    query = parse_qsl(parts.query, keep_blank_values=True)
    libpq = [(k, v) for k, v in query if k not in PostgresOptions.__dataclass_fields__]
    if any(k == "password" for k, _ in libpq):
        raise StoreURLError("the store URL holds a password parameter: set PGPASSWORD instead")
    given = {k: v for k, v in query if k in PostgresOptions.__dataclass_fields__}
    try:
        kwargs = {k: (v.lower() in ("1", "true", "on", "yes")) if k == "exact"
                  else int(v) if isinstance(PostgresOptions.__dataclass_fields__[k].default, int) else v
                  for k, v in given.items()}
    except ValueError as e:
        raise StoreURLError(f"bad store option in the URL: {e}") from e
    options = PostgresOptions(**kwargs)
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(libpq), ""))
    host = parts.hostname or dict(libpq).get("host", "local socket")
    shown = f"postgresql://{quote(parts.username or '')}{'@' if parts.username else ''}" \
            f"{parts.hostname or ''}{':%d' % parts.port if parts.port else ''}{parts.path}?schema={options.schema}"
    if not parts.hostname and host != "local socket":
        shown += f" (socket {host})"
    return conninfo, options, shown


def _psycopg():
    try:
        import psycopg
        from pgvector.psycopg import register_vector
    except ImportError as e:
        raise RagkitError(f"the PostgreSQL store needs psycopg and pgvector: {INSTALL_HINT} ({e})") from e
    return psycopg, register_vector


# (conninfo, schema) -> [connection holding the advisory lock, depth], for this process's writer_lock
_HELD: dict[tuple[str, str], list] = {}
_HELD_LOCK = threading.Lock()


class PostgresStore(IndexStore):
    def __init__(self, url: str) -> None:
        self.conninfo, self.options, self.display = parse_store_url(url)
        self.schema = self.options.schema
        self._conn = None
        self._writing = False   # a write transaction is open on self._conn
        self._own_lock = False  # ... and this object took the advisory lock for it

    # -- connections ---------------------------------------------------------------------------------
    def connect(self, autocommit: bool = True):
        """A new connection (pgvector types registered when the extension exists)."""
        psycopg, register_vector = _psycopg()
        try:
            conn = psycopg.connect(self.conninfo, autocommit=autocommit, application_name="ragkit")
        except psycopg.OperationalError as e:
            raise RagkitError(f"cannot connect to {self.display}: {str(e).strip().splitlines()[-1]}") from e
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
            register_vector(conn)
        if not autocommit:
            conn.commit()
        return conn

    @property
    def conn(self):
        """This store's own connection (autocommit; explicit transactions for writes)."""
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
            self._conn.execute(f"SET hnsw.ef_search = {int(self.options.ef_search)}")
            if self.options.exact:
                self._conn.execute("SET enable_indexscan = off")
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            if self._writing:
                self.rollback()
            self._conn.close()

    def q(self, sql: str) -> str:
        """`sql` with `{s}` replaced by the quoted schema name."""
        return sql.replace("{s}", f'"{self.schema}"')

    def _schema_exists(self, conn, schema: str) -> bool:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None

    # -- reading -------------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        conn = self.conn
        if not self._schema_exists(conn, self.schema):
            raise IndexFormatError(f"no index at {self.display} (the schema does not exist)")
        try:
            row = conn.execute(self.q("SELECT value FROM {s}.meta WHERE key = 'manifest'")).fetchone()
        except Exception as e:  # noqa: BLE001 - psycopg.errors.UndefinedTable and kin
            raise IndexFormatError(f"{self.display} is not a ragkit index: {str(e).splitlines()[0]}") from e
        if row is None or not isinstance(row[0], dict) or row[0].get("format") != FORMAT:
            raise IndexFormatError(f"{self.display} is not a ragkit index: it has no ragkit manifest")
        manifest = row[0]
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise IndexFormatError(f"{self.display} was written in index format {manifest['format_version']}; this "
                                   f"ragkit reads format {FORMAT_VERSION} or older: upgrade ragkit or rebuild it")
        return manifest

    def load_chunks(self) -> "PgChunkStore":
        return PgChunkStore(self)

    def load_retriever(self, name: str, cls: type, config, encoder, colbert):
        if name == "dense":
            from ragkit.retrieval.dense import DenseRetriever

            return DenseRetriever(encoder, config.dense, PgVectorStore(self, encoder.dim))
        with tempfile.TemporaryDirectory(prefix="ragkit-pg-") as tmp:
            self._read_blobs(name, Path(tmp))
            return cls.load_for_index(Path(tmp), config, encoder, colbert)

    def _read_blobs(self, retriever: str, folder: Path) -> None:
        rows = self.conn.execute(self.q("SELECT name, data FROM {s}.blobs WHERE retriever = %s ORDER BY name, part"),
                                 (retriever,))
        n = 0
        handles: dict[str, io.BufferedWriter] = {}
        try:
            for name, data in rows:
                if name not in handles:
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    handles[name] = open(folder / name, "wb")
                handles[name].write(data)
                n += 1
        finally:
            for h in handles.values():
                h.close()
        if not n:
            raise IndexFormatError(f"{self.display} is damaged: no saved state for retriever {retriever!r}")

    def check_loaded(self, index) -> None:
        for name, r in index.retrievers.items():
            if len(r) != len(index.chunks):
                raise IndexFormatError(f"{self.display} is damaged: {name} holds {len(r)} chunks, the chunks table "
                                       f"{len(index.chunks)}")

    def bind(self, index) -> None:
        index._store = self

    # -- writing -------------------------------------------------------------------------------------
    def _lock_key(self) -> tuple[str, str]:
        return (self.conninfo, self.schema)

    def _try_lock(self, conn, wait: bool, on_wait) -> None:
        sql = "SELECT pg_try_advisory_lock(hashtext('ragkit-index'), hashtext(%s))"
        if conn.execute(sql, (self.schema,)).fetchone()[0]:
            return
        holder = conn.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                              "classid = hashtext('ragkit-index')::oid AND objid = hashtext(%s)::oid LIMIT 1",
                              (self.schema,)).fetchone()
        if not wait:
            raise IndexLockedError(f"{self.display} is being written by another writer (PostgreSQL backend pid "
                                   f"{holder[0] if holder else '?'} holds its advisory lock); wait for it to finish "
                                   "(--wait) or try again later")
        if on_wait is not None:
            on_wait(holder[0] if holder else None)
        conn.execute("SELECT pg_advisory_lock(hashtext('ragkit-index'), hashtext(%s))", (self.schema,))

    @contextmanager
    def writer_lock(self, wait: bool = False, on_wait: Callable[[int | None], None] | None = None) -> Iterator[str]:
        key = self._lock_key()
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is not None:
                held[1] += 1
        if held is not None:
            try:
                yield self.display
            finally:
                held[1] -= 1
            return
        conn = self.connect()
        try:
            self._try_lock(conn, wait, on_wait)
            with _HELD_LOCK:
                _HELD[key] = [conn, 1]
            try:
                yield self.display
            finally:
                with _HELD_LOCK:
                    del _HELD[key]
        finally:
            conn.close()  # ends the session: the advisory lock goes with it

    def _held_here(self) -> bool:
        with _HELD_LOCK:
            return self._lock_key() in _HELD

    def begin(self) -> None:
        """Open the write transaction of a loaded index (first change after a load or a save)."""
        if self._writing:
            return
        conn = self.conn
        if not self._held_here():
            self._try_lock(conn, wait=False, on_wait=None)
            self._own_lock = True
        conn.execute("BEGIN")
        self._writing = True

    def rollback(self) -> None:
        if self._writing:
            self.conn.execute("ROLLBACK")
            self._writing = False
        self._release()

    def _release(self) -> None:
        if self._own_lock:
            self.conn.execute("SELECT pg_advisory_unlock(hashtext('ragkit-index'), hashtext(%s))", (self.schema,))
            self._own_lock = False

    def check_output(self, protect: Iterable[str | os.PathLike] = ()) -> None:
        conn = self.conn
        if not self._schema_exists(conn, self.schema):
            return
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (self.schema,)).fetchone()[0]
        if not tables:
            return
        try:
            self.read_manifest()
        except IndexFormatError as e:
            raise OutputPathError(f"refusing to replace schema {self.schema!r} of {self.display}: it holds {tables} "
                                  f"table(s) and is not a ragkit index ({e}); choose another schema") from e

    def save(self, index, protect: Iterable[str | os.PathLike] = (), wait: bool = False) -> None:
        store = getattr(index, "_store", None)
        if isinstance(store, PostgresStore) and store._lock_key() == self._lock_key():
            store.commit(index)  # a loaded index: commit its open transaction
            return
        self.build(index, wait=wait)

    def commit(self, index) -> None:
        """Write the changed retrievers' state and the manifest, then commit (no change: nothing)."""
        if not self._writing:
            return
        conn = self.conn
        try:
            for name, r in index.retrievers.items():
                if name != "dense":
                    conn.execute(self.q("DELETE FROM {s}.blobs WHERE retriever = %s"), (name,))
                    self._write_blobs(conn, self.schema, name, r)
            self._write_manifest(conn, self.schema, index)
            conn.execute("COMMIT")
        except BaseException:
            self.rollback()
            raise
        self._writing = False
        self._release()

    def build(self, index, wait: bool = False, show_progress: bool | None = None) -> None:
        """Write `index` into a new schema and swap it in, all in one transaction."""
        with self.writer_lock(wait=wait):
            self.check_output()
            conn = self.connect(autocommit=False)
            build = f"{self.schema}__build"[:63]
            try:
                with conn.transaction():
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                _, register_vector = _psycopg()
                register_vector(conn)
                with conn.transaction():
                    conn.execute(f'DROP SCHEMA IF EXISTS "{build}" CASCADE')
                    conn.execute(f'CREATE SCHEMA "{build}"')
                    self._create_tables(conn, build, index)
                    self._copy_chunks(conn, build, index.chunks, show_progress)
                    dense = index.retrievers.get("dense")
                    if dense is not None:
                        self._copy_vectors(conn, build, dense.store, show_progress)
                    for name, r in index.retrievers.items():
                        if name != "dense":
                            self._write_blobs(conn, build, name, r)
                    self._write_manifest(conn, build, index)
                    conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
                    conn.execute(f'ALTER SCHEMA "{build}" RENAME TO "{self.schema}"')
            except RagkitError:
                raise
            except Exception as e:  # noqa: BLE001 - psycopg errors: the transaction rolled back
                raise WriteError(f"cannot write the index to {self.display}: {str(e).strip().splitlines()[0]}; "
                                 "the previous index there is unchanged") from e
            finally:
                conn.close()

    def _create_tables(self, conn, schema: str, index) -> None:
        s = f'"{schema}"'
        conn.execute(f"CREATE TABLE {s}.meta (key text PRIMARY KEY, value jsonb NOT NULL)")
        conn.execute(f"CREATE TABLE {s}.chunks (seq bigserial PRIMARY KEY, id text NOT NULL UNIQUE, "
                     "doc_id text NOT NULL, n integer NOT NULL, text text NOT NULL, title text NOT NULL, "
                     "source text NOT NULL, start_char integer NOT NULL, end_char integer NOT NULL, "
                     "metadata jsonb NOT NULL)")
        conn.execute(f"CREATE INDEX ON {s}.chunks (doc_id)")
        conn.execute(f"CREATE TABLE {s}.blobs (retriever text, name text, part integer, data bytea NOT NULL, "
                     "PRIMARY KEY (retriever, name, part))")
        if "dense" in index.retrievers:
            dim = int(index.retrievers["dense"].encoder.dim)
            conn.execute(f"CREATE TABLE {s}.dense (id text PRIMARY KEY, embedding vector({dim}) NOT NULL)")

    def _copy_chunks(self, conn, schema: str, chunks, show_progress) -> None:
        with progress_bar("writing chunks", len(chunks), show_progress) as advance, conn.cursor() as cur:
            with cur.copy(f'COPY "{schema}".chunks ({_CHUNK_COLUMNS}) FROM STDIN') as copy:
                for i, c in enumerate(chunks, start=1):
                    copy.write_row((c.id, c.doc_id, c.n, c.text, c.title, c.source, c.start, c.end,
                                    json.dumps(c.metadata, ensure_ascii=False)))
                    if i % 10000 == 0:
                        advance(10000)
            advance(len(chunks) % 10000)

    def _copy_vectors(self, conn, schema: str, store, show_progress) -> None:
        ids, vectors = store.export()
        with progress_bar("writing vectors", len(ids), show_progress) as advance, conn.cursor() as cur:
            with cur.copy(f'COPY "{schema}".dense (id, embedding) FROM STDIN WITH (FORMAT BINARY)') as copy:
                copy.set_types(["text", "vector"])
                for i, (cid, v) in enumerate(zip(ids, vectors), start=1):
                    copy.write_row((cid, v))
                    if i % 10000 == 0:
                        advance(10000)
            advance(len(ids) % 10000)
        if self.options.use_hnsw(len(ids)):
            with progress_bar("building the HNSW index (PostgreSQL)", 1, show_progress) as advance:
                # the graph is built fastest in memory: raise maintenance_work_mem for this build when the
                # server's is smaller than the graph (vectors + neighbour lists), up to 8 GB; never lower it
                need = int(len(ids) * (4 * store.dim + 16 * self.options.m) * 1.3)
                have = conn.execute("SELECT pg_size_bytes(current_setting('maintenance_work_mem'))").fetchone()[0]
                if need > have:
                    conn.execute(f"SET LOCAL maintenance_work_mem = '{min(need, 8 * 2**30) // 2**20}MB'")
                conn.execute(f'CREATE INDEX dense_hnsw ON "{schema}".dense USING hnsw (embedding vector_ip_ops) '
                             f"WITH (m = {self.options.m}, ef_construction = {self.options.ef_construction})")
                advance(1)

    def _write_blobs(self, conn, schema: str, name: str, retriever) -> None:
        with tempfile.TemporaryDirectory(prefix="ragkit-pg-") as tmp:
            retriever.save(Path(tmp))
            for f in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
                rel = f.relative_to(tmp).as_posix()
                with open(f, "rb") as fh:
                    part = 0
                    while True:
                        data = fh.read(BLOB_PART)
                        if not data and part:
                            break
                        conn.execute(f'INSERT INTO "{schema}".blobs VALUES (%s, %s, %s, %s)', (name, rel, part, data))
                        part += 1
                        if len(data) < BLOB_PART:
                            break

    def _write_manifest(self, conn, schema: str, index) -> None:
        from psycopg.types.json import Jsonb

        manifest = index.manifest()
        n_dense = len(index.retrievers["dense"]) if "dense" in index.retrievers else 0
        manifest["store"] = {"kind": "postgresql", "schema": self.schema,
                             "hnsw": bool(n_dense) and self._has_hnsw(conn, schema),
                             **{k: v for k, v in asdict(self.options).items() if k in ("m", "ef_construction",
                                                                                       "exact_below")}}
        conn.execute(f'INSERT INTO "{schema}".meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = '
                     "EXCLUDED.value", ("manifest", Jsonb(manifest)))
        conn.execute(f'INSERT INTO "{schema}".meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = '
                     f'to_jsonb(("{schema}".meta.value)::int + 1)', ("generation", Jsonb(1)))

    def _has_hnsw(self, conn, schema: str) -> bool:
        return conn.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = 'dense_hnsw'",
                            (schema,)).fetchone() is not None

    def generation(self) -> int:
        """Changes committed so far (a reader compares it to see that another process wrote)."""
        row = self.conn.execute(self.q("SELECT value FROM {s}.meta WHERE key = 'generation'")).fetchone()
        return int(row[0]) if row else 0


class PgChunkStore:
    """The chunks table, read on demand: `ChunkStore`'s interface without holding every chunk."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self._n, self._n_docs = store.conn.execute(
            store.q("SELECT count(*), count(DISTINCT doc_id) FROM {s}.chunks")).fetchone()

    def __len__(self) -> int:
        return self._n

    @property
    def n_documents(self) -> int:
        return self._n_docs

    def _row(self, r) -> Chunk:
        return Chunk(id=r[0], doc_id=r[1], n=r[2], text=r[3], title=r[4], source=r[5], start=r[6], end=r[7],
                     metadata=r[8])

    def __getitem__(self, chunk_id: str) -> Chunk:
        return self.get_many([chunk_id])[chunk_id]

    def get_many(self, chunk_ids: Iterable[str]) -> dict[str, Chunk]:
        ids = list(chunk_ids)
        rows = self.store.conn.execute(self.store.q(f"SELECT {_CHUNK_COLUMNS} FROM {{s}}.chunks WHERE id = ANY(%s)"),
                                       (ids,)).fetchall()
        found = {r[0]: self._row(r) for r in rows}
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(missing[0])
        return found

    def __contains__(self, chunk_id: object) -> bool:
        return self.store.conn.execute(self.store.q("SELECT 1 FROM {s}.chunks WHERE id = %s"),
                                       (chunk_id,)).fetchone() is not None

    def __iter__(self) -> Iterator[Chunk]:
        with self.store.conn.cursor(name=None) as cur:
            for r in cur.execute(self.store.q(f"SELECT {_CHUNK_COLUMNS} FROM {{s}}.chunks ORDER BY seq")):
                yield self._row(r)

    def has_document(self, doc_id: str) -> bool:
        return self.store.conn.execute(self.store.q("SELECT 1 FROM {s}.chunks WHERE doc_id = %s LIMIT 1"),
                                       (doc_id,)).fetchone() is not None

    def chunk_ids(self, doc_id: str) -> list[str]:
        rows = self.store.conn.execute(self.store.q("SELECT id FROM {s}.chunks WHERE doc_id = %s ORDER BY seq"),
                                       (doc_id,)).fetchall()
        return [r[0] for r in rows]

    def add(self, chunks: Iterable[Chunk]) -> None:
        chunks = list(chunks)
        self.store.begin()
        docs = {c.doc_id for c in chunks}
        known = self.store.conn.execute(self.store.q("SELECT count(DISTINCT doc_id) FROM {s}.chunks WHERE doc_id = ANY(%s)"),
                                        (list(docs),)).fetchone()[0]
        self.store._copy_chunks(self.store.conn, self.store.schema, chunks, False)
        self._n += len(chunks)
        self._n_docs += len(docs) - known

    def delete_documents(self, doc_ids: Iterable[str]) -> list[str]:
        self.store.begin()
        doc_ids = list(doc_ids)
        rows = self.store.conn.execute(self.store.q("DELETE FROM {s}.chunks WHERE doc_id = ANY(%s) RETURNING id, doc_id"),
                                       (doc_ids,)).fetchall()
        self._n -= len(rows)
        self._n_docs -= len({r[1] for r in rows})
        return [r[0] for r in rows]

    def save(self, path: Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for c in self:
                f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")


class PgVectorStore:
    """The dense table: pgvector inner-product search in SQL (exact, or HNSW where the index exists)."""

    def __init__(self, store: PostgresStore, dim: int) -> None:
        self.store = store
        self.dim = dim
        self._n = store.conn.execute(store.q("SELECT count(*) FROM {s}.dense")).fetchone()[0]

    def __len__(self) -> int:
        return self._n

    @property
    def ids(self) -> list[str]:
        return [r[0] for r in self.store.conn.execute(self.store.q(
            "SELECT d.id FROM {s}.dense d JOIN {s}.chunks c USING (id) ORDER BY c.seq"))]

    def existing(self, ids: Sequence[str]) -> list[str]:
        rows = self.store.conn.execute(self.store.q("SELECT id FROM {s}.dense WHERE id = ANY(%s)"), (list(ids),))
        return [r[0] for r in rows]

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        vectors = checked_vectors(ids, vectors, self.dim)
        dup = self.existing(ids)
        if dup:
            raise ValueError(f"ids already stored: {sorted(dup)[:5]}")
        self.store.begin()
        with self.store.conn.cursor() as cur:
            with cur.copy(self.store.q("COPY {s}.dense (id, embedding) FROM STDIN WITH (FORMAT BINARY)")) as copy:
                copy.set_types(["text", "vector"])
                for cid, v in zip(ids, vectors):
                    copy.write_row((cid, v))
        self._n += len(ids)

    def remove(self, ids: Iterable[str]) -> int:
        self.store.begin()
        n = self.store.conn.execute(self.store.q("DELETE FROM {s}.dense WHERE id = ANY(%s)"), (list(ids),)).rowcount
        self._n -= n
        return n

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        conn, out = self.store.conn, []
        queries = np.asarray(queries, dtype=np.float32).reshape(-1, self.dim)
        wider = k > self.store.options.ef_search
        if wider:
            conn.execute(f"SET hnsw.ef_search = {min(int(k), 1000)}")
        try:
            sql = self.store.q("SELECT id, (embedding <#> %s) * -1 FROM {s}.dense ORDER BY embedding <#> %s LIMIT %s")
            for q in queries:
                out.append([(cid, float(s)) for cid, s in conn.execute(sql, (q, q, int(k)))])
        finally:
            if wider:
                conn.execute(f"SET hnsw.ef_search = {int(self.store.options.ef_search)}")
        return out

    def export(self) -> tuple[list[str], np.ndarray]:
        """Every (id, vector), in chunk order."""
        ids, rows = [], []
        for cid, v in self.store.conn.execute(self.store.q(
                "SELECT d.id, d.embedding FROM {s}.dense d JOIN {s}.chunks c USING (id) ORDER BY c.seq")):
            ids.append(cid)
            rows.append(np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32))
        return ids, (np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32))

    def save(self, path: Path) -> None:
        """As a folder index's exact faiss store (saving a PostgreSQL index into a folder)."""
        faiss_store = FaissVectorStore(self.dim, FaissConfig())
        faiss_store.ids, faiss_store.vectors = self.export()
        faiss_store.save(path)
