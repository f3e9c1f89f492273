"""The PostgreSQL + pgvector store against a real server (the `postgres` fixture starts one)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ragkit import Document, Index, IndexFormatError
from ragkit.errors import IndexLockedError, OutputPathError
from ragkit.retrieval.stores.postgres import PostgresStore, StoreURLError, parse_store_url

pytestmark = pytest.mark.postgres

QUERIES = ["try statement except clause", "how are keyword arguments bound", "integer division and modulo",
           "with statement context manager", "class definition and inheritance"]


def ranked(index, retriever, k=10):
    return [[(h.chunk_id, round(h.score, 4)) for h in index.search(q, k, retriever)] for q in QUERIES]


def test_round_trip_searches_as_the_folder_store(built, postgres, encoder, tmp_path):
    url = postgres("roundtrip")
    built.save(url)
    back = Index.load(url, encoder=encoder)
    assert back.info()["counts"] == built.info()["counts"]
    for name in ("bm25", "dense", "hybrid"):
        assert [[c for c, _ in r] for r in ranked(back, name)] == [[c for c, _ in r] for r in ranked(built, name)], name
    assert ranked(back, "bm25") == ranked(built, "bm25")  # BM25 scores: the same bm25s state
    dense_pg, dense_mem = ranked(back, "dense"), ranked(built, "dense")
    assert all(abs(a[1] - b[1]) < 1e-3 for ra, rb in zip(dense_pg, dense_mem) for a, b in zip(ra, rb))
    hit = back.search(QUERIES[0], 1)[0]
    chunk = built.chunks[hit.chunk_id]
    assert (hit.text, hit.doc_id, hit.start, hit.end, hit.source) == (chunk.text, chunk.doc_id, chunk.start,
                                                                      chunk.end, chunk.source)
    # and back into a folder: the same index
    folder = Index.load(back.save(tmp_path / "from-pg"), encoder=encoder)
    assert ranked(folder, "hybrid") == ranked(built, "hybrid")
    m = back.info()
    assert "store" not in json.dumps(m["config"]) and m["counts"]["chunks"] == len(built.chunks)


def test_hnsw_search_is_close_to_exact(built, postgres, encoder):
    url = postgres("hnsw", hnsw="on", ef_search=40)
    built.save(url)
    back = Index.load(url, encoder=encoder)
    assert Index.load(url, encoder=encoder)._store.read_manifest()["store"]["hnsw"] is True
    exact = Index.load(postgres("hnsw", exact="true"), encoder=encoder)
    overlap = [len({c for c, _ in a} & {c for c, _ in b}) / 10
               for a, b in zip(ranked(back, "dense"), ranked(exact, "dense"))]
    assert sum(overlap) / len(overlap) >= 0.9
    assert [r[0][0] for r in ranked(exact, "dense")] == [r[0][0] for r in ranked(built, "dense")]


def test_add_delete_replace_in_one_transaction(built, docs, postgres, encoder):
    url = postgres("changes")
    built.save(url)
    idx = Index.load(url, encoder=encoder)
    reader = Index.load(url, encoder=encoder)
    n = len(idx.chunks)
    added = idx.add([Document("zebra", "Zebras are striped mammals of the African savanna.", "Zebras")])
    assert idx.search("striped african mammals", 1, "bm25")[0].doc_id == "zebra"  # the writer sees its change
    assert not reader.chunks.has_document("zebra")  # ... others only after save (one transaction)
    idx.delete([docs[0].id])
    with pytest.raises(Exception):
        idx.add([Document("zebra", "again")])  # an existing id without replace
    new_text = "The try statement now explains unicorn handling."
    idx.add([Document(docs[1].id, new_text, docs[1].title)], replace=True)  # upsert: same id, new text
    idx.save(url)
    back = Index.load(url, encoder=encoder)
    assert len(back.chunks) == n + added - len(built.chunks.chunk_ids(docs[0].id)) \
        - len(built.chunks.chunk_ids(docs[1].id)) + 1
    assert back.chunks.chunk_ids(docs[1].id) == [f"{docs[1].id}#0"]  # stable chunk ids
    assert back.chunks[f"{docs[1].id}#0"].text == new_text
    assert back.search("unicorn handling", 1, "bm25")[0].doc_id == docs[1].id
    assert back.search("unicorn handling", 1, "dense")[0].doc_id == docs[1].id
    assert not back.chunks.has_document(docs[0].id)
    assert back.info()["counts"]["documents"] == len(docs)  # one deleted, one added
    # a fresh process-level reader: BM25 state from the database matches the writer's
    assert ranked(back, "bm25") == ranked(idx, "bm25")


def test_second_writer_gets_a_clear_error(built, postgres, encoder):
    import psycopg

    url = postgres("locked")
    built.save(url)
    idx = Index.load(url, encoder=encoder)
    conninfo, options, _ = parse_store_url(url)
    with psycopg.connect(conninfo, autocommit=True) as other:  # another writer holds the schema's lock
        other.execute("SELECT pg_advisory_lock(hashtext('ragkit-index'), hashtext(%s))", (options.schema,))
        with pytest.raises(IndexLockedError, match="another writer"):
            built.save(url)
        with pytest.raises(IndexLockedError):
            idx.add([Document("x", "some text")])
        with pytest.raises(IndexLockedError):
            with Index.writer_lock(url):
                pass
    with Index.writer_lock(url):  # released with the other session
        idx.add([Document("x", "some text")])
        idx.save(url)
    assert Index.load(url, encoder=encoder).chunks.has_document("x")


def test_encoder_fingerprint_is_checked(built, postgres, encoder):
    url = postgres("fingerprint")
    built.save(url)
    store = PostgresStore(url)
    manifest = store.read_manifest()
    manifest["encoder"]["fingerprint"] = "0" * 16
    from psycopg.types.json import Jsonb

    store.conn.execute(store.q("UPDATE {s}.meta SET value = %s WHERE key = 'manifest'"), (Jsonb(manifest),))
    with pytest.raises(IndexFormatError, match="another encoder"):
        Index.load(url, encoder=encoder)


def test_no_credentials_in_urls_manifests_or_output(built, postgres, encoder, monkeypatch):
    with pytest.raises(StoreURLError, match="PGPASSWORD"):
        parse_store_url("postgresql://app:hunter2@db.example:5432/rag?schema=x")
    with pytest.raises(StoreURLError, match="PGPASSWORD"):
        Index.load("postgresql://app@db.example/rag?schema=x&password=hunter2")
    monkeypatch.setenv("PGPASSWORD", "s3cret-from-env")  # taken by libpq; the local server trusts anyway
    url = postgres("creds")
    built.save(url)
    manifest = PostgresStore(url).read_manifest()
    assert "s3cret-from-env" not in json.dumps(manifest)
    assert manifest["store"]["schema"] == "creds" and "host" not in manifest["store"]
    with pytest.raises(StoreURLError, match="schema"):
        PostgresStore("postgresql://app@db.example/rag?schema=Robert'); DROP TABLE x;--")


def test_foreign_schema_is_not_replaced(built, postgres):
    url = postgres("foreign")
    store = PostgresStore(url)
    store.conn.execute('CREATE SCHEMA "foreign"')
    store.conn.execute('CREATE TABLE "foreign".accounts (id int)')
    with pytest.raises(OutputPathError, match="not a ragkit index"):
        built.save(url)
    assert store.conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'foreign'").fetchone()[0] == 1
    with pytest.raises(IndexFormatError, match="not a ragkit index"):
        Index.load(url)
    with pytest.raises(IndexFormatError, match="does not exist"):
        Index.load(postgres("absent"))


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from ragkit import Document, Index, IndexConfig
    from ragkit.retrieval.stores import postgres as pg
    docs = [Document(f"n{i}", f"new document number {i} about topic {i % 7}") for i in range(300)]
    idx = Index.build(docs, config=IndexConfig(retrievers=["bm25"]))
    real = pg.PostgresStore._write_manifest
    def slow(self, conn, schema, index):
        real(self, conn, schema, index)  # everything written, the swap not yet committed
        print("READY", flush=True); time.sleep(120)
    pg.PostgresStore._write_manifest = slow
    idx.save(sys.argv[1])
""")


def test_killed_build_leaves_previous_index_searchable(built, postgres, encoder, tmp_path):
    url = postgres("killed")
    built.save(url)
    before = ranked(Index.load(url, encoder=encoder), "hybrid")
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), url], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout.readline().strip() == "READY"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = PostgresStore(url)
    deadline = time.time() + 30  # the server notices the dropped connection and rolls back
    while store.conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'killed__build'").fetchone()[0]:
        assert time.time() < deadline, "the killed build's schema outlived its transaction"
        time.sleep(0.2)
    back = Index.load(url, encoder=encoder)
    assert back.info()["counts"]["documents"] == 60
    assert ranked(back, "hybrid") == before
    with Index.writer_lock(url):  # and its lock died with it
        pass


def test_cli_index_search_info_on_a_store(postgres, tmp_path, docs):
    from typer.testing import CliRunner

    from ragkit.cli import app

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs[:20]))
    url = postgres("cli")
    runner = CliRunner()
    r = runner.invoke(app, ["index", str(corpus), "--store", url, "--retrievers", "bm25"])
    assert r.exit_code == 0, r.output
    assert "schema=cli" in r.output
    r = runner.invoke(app, ["search", "assert statement", "--index", url, "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    hits = [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]
    folder = tmp_path / "idx"
    assert runner.invoke(app, ["index", str(corpus), "--out", str(folder), "--retrievers", "bm25"]).exit_code == 0
    r2 = runner.invoke(app, ["search", "assert statement", "--index", str(folder), "-k", "3", "--json"])
    assert hits == [json.loads(line) for line in r2.output.splitlines() if line.startswith("{")]
    r = runner.invoke(app, ["info", url])
    assert r.exit_code == 0 and "PostgreSQL schema cli" in r.output, r.output
    r = runner.invoke(app, ["index", str(corpus), "--store", url, "--out", str(folder)])
    assert r.exit_code != 0 and "one of the two" in r.output


def test_a_change_that_fails_midway_is_rolled_back_and_not_saved(built, postgres, encoder, monkeypatch):
    from ragkit.errors import RagkitError
    from ragkit.retrieval.stores.postgres import PgVectorStore

    url = postgres("midway")
    built.save(url)
    idx = Index.load(url, encoder=encoder)

    def boom(self, ids, vectors):
        raise OSError("disk full while writing vectors")

    monkeypatch.setattr(PgVectorStore, "add", boom)
    with pytest.raises(OSError):
        idx.add([Document("late", "a late document about owls")])  # BM25 took it, the vectors failed
    with pytest.raises(RagkitError, match="failed midway"):
        idx.save(url)
    back = Index.load(url, encoder=encoder)
    assert not back.chunks.has_document("late") and len(back.chunks) == len(built.chunks)
    with Index.writer_lock(url):  # the rollback released the lock
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does the server run as another user ('nobody')")
def test_local_server_runs_from_a_copy_when_nobody_cannot_read_the_install(monkeypatch):
    import psycopg

    from ragkit.retrieval.stores.pg_server import LocalPostgres

    real, calls = LocalPostgres._runs_as_user, []

    def first_refused(self):  # as when ragkit is installed under /root (mode 700)
        calls.append(self.bin)
        return len(calls) > 1 and real(self)

    monkeypatch.setattr(LocalPostgres, "_runs_as_user", first_refused)
    with LocalPostgres() as pg:
        assert str(pg.bin).startswith(str(pg.root))
        with psycopg.connect(pg.conninfo) as conn:
            conn.execute("CREATE EXTENSION vector")
            assert conn.execute("SELECT '[1,2]'::vector <#> '[3,4]'::vector").fetchone()[0] == -11
