import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest

from ragkit import CorpusError, Document, Index, IndexConfig, IndexFormatError
from ragkit import fs as store


def test_search_every_retriever_returns_cited_chunks(built, docs):
    texts = {d.id: d.text for d in docs}
    for name in ("bm25", "dense", "hybrid"):
        hits = built.search("try statement except clause", k=5, retriever=name)
        assert 0 < len(hits) <= 5 and [h.rank for h in hits] == list(range(1, len(hits) + 1))
        for h in hits:
            assert texts[h.doc_id][h.start:h.end] == h.text and h.chunk_id.startswith(h.doc_id + "#")
        assert hits[0].score >= hits[-1].score
    assert built.default_retriever == "hybrid"
    with pytest.raises(ValueError, match="no 'colbert' retriever"):
        built.search("x", retriever="colbert")
    with pytest.raises(ValueError, match="empty"):
        built.search("  ")


def test_save_load_roundtrip_and_manifest(built, tmp_path, encoder):
    path = built.save(tmp_path / "idx")
    m = json.loads((path / "manifest.json").read_text())
    assert m["format"] == "ragkit-index" and m["ragkit_version"] and m["created"]
    assert m["encoder"]["id"] == "sentence-transformers/all-MiniLM-L6-v2" and m["encoder"]["dimension"] == 384
    assert m["chunking"]["chunk_tokens"] == 256 and m["counts"]["documents"] == 60
    assert not [p for p in path.rglob("*") if p.suffix in (".pkl", ".pickle")]
    back = Index.load(path, encoder=encoder)
    for name in ("bm25", "dense", "hybrid"):
        q = "function definitions and default arguments"
        assert [h.to_dict() for h in back.search(q, 5, name)] == [h.to_dict() for h in built.search(q, 5, name)]


def test_add_and_delete_documents(encoder, docs, tmp_path):
    idx = Index.build(docs[:40], encoder=encoder)
    n = idx.add(docs[40:50])
    assert n >= 10 and idx.chunks.n_documents == 50
    with pytest.raises(CorpusError, match="already in the index"):
        idx.add(docs[45:46])
    changed = replace(docs[45], text="Completely different text about giraffes and savannah animals.")
    idx.add([changed], replace=True)
    assert idx.search("giraffes savannah", 1, "bm25")[0].doc_id == docs[45].id
    removed = idx.delete([docs[0].id, docs[1].id])
    assert removed >= 2 and idx.chunks.n_documents == 48
    assert all(h.doc_id not in (docs[0].id, docs[1].id) for h in idx.search(docs[0].title, 48, "dense"))
    with pytest.raises(KeyError, match="not in the index"):
        idx.delete(["no-such-doc"])
    idx.save(tmp_path / "i")
    assert Index.load(tmp_path / "i", encoder=encoder).info()["counts"]["documents"] == 48


def test_empty_corpus_and_duplicates(encoder):
    with pytest.raises(CorpusError, match="empty"):
        Index.build([], encoder=encoder)
    with pytest.raises(CorpusError, match="duplicate document id"):
        Index.build([Document("a", "x"), Document("a", "y")], encoder=encoder)


def test_missing_and_foreign_folders(tmp_path):
    with pytest.raises(IndexFormatError, match="does not exist"):
        Index.load(tmp_path / "nothing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "data.bin").write_bytes(b"x")
    with pytest.raises(IndexFormatError, match="not a ragkit index: it has no manifest.json"):
        Index.load(tmp_path / "foreign")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"format": "someone-else"}')
    with pytest.raises(IndexFormatError, match="has format 'someone-else'"):
        Index.load(tmp_path / "other")


def test_newer_format_and_other_encoder_are_refused(built, tmp_path, encoder):
    path = built.save(tmp_path / "idx")
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = store.FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="upgrade ragkit or rebuild"):
        Index.load(path, encoder=encoder)
    path = built.save(tmp_path / "idx2")
    m = json.loads((path / "manifest.json").read_text())
    m["encoder"].update(id="BAAI/bge-small-en-v1.5", dimension=768)
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="built with another encoder.*dimension 768 vs 384"):
        Index.load(path, encoder=encoder)


def test_failed_save_leaves_previous_index(built, encoder, tmp_path, monkeypatch):
    path = built.save(tmp_path / "idx")
    before = (path / "manifest.json").read_text()
    small = Index.build([Document("only", "one small document")], config=IndexConfig(retrievers=["bm25"]))

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(store, "_fsync_tree", boom)
    with pytest.raises(OSError, match="disk full"):
        small.save(path)
    monkeypatch.undo()
    assert (path / "manifest.json").read_text() == before
    assert not list(tmp_path.glob(".idx.tmp-*"))
    assert Index.load(path, encoder=encoder).info()["counts"]["documents"] == 60


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from ragkit import Document, Index, IndexConfig
    from ragkit import fs as store
    phase = sys.argv[2]
    docs = [Document(f"n{i}", f"new document number {i} about topic {i % 7}") for i in range(200)]
    idx = Index.build(docs, config=IndexConfig(retrievers=["bm25"]))
    if phase == "build":
        print("READY", flush=True); time.sleep(60)
    real = store._fsync_file
    def slow(p):
        real(p); print("READY", flush=True); time.sleep(60)
    store._fsync_file = slow
    idx.save(sys.argv[1])
""")


@pytest.mark.parametrize("phase", ["build", "save"])
def test_killed_build_leaves_previous_index_intact(phase, tmp_path, encoder, built):
    path = built.save(tmp_path / "idx")
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(path), phase], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    deadline = time.time() + 120
    line = proc.stdout.readline()
    assert line.strip() == "READY" and time.time() < deadline
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    back = Index.load(path, encoder=encoder)  # also cleans the killed save's temporary folder
    assert back.info()["counts"]["documents"] == 60
    assert back.search("new document number 5", 3, "bm25")[0].doc_id.startswith("topic:")
    assert not list(tmp_path.glob(".idx.tmp-*"))


def test_bm25_only_index_needs_no_encoder(tmp_path):
    idx = Index.build([Document("a", "alpha beta"), Document("b", "gamma delta")], config=IndexConfig(retrievers=["bm25"]))
    assert idx.encoder is None and idx.retriever_names == ["bm25"]
    idx.save(tmp_path / "b")
    assert Index.load(tmp_path / "b").search("gamma", 1)[0].doc_id == "b"


def test_a_change_that_fails_midway_is_not_saved(built, encoder, tmp_path, monkeypatch):
    from ragkit.errors import RagkitError
    from ragkit.retrieval.stores.vectors import FaissVectorStore

    path = built.save(tmp_path / "idx")
    idx = Index.load(path, encoder=encoder)

    def boom(self, ids, vectors):
        raise MemoryError("out of memory while storing vectors")

    monkeypatch.setattr(FaissVectorStore, "add", boom)
    with pytest.raises(MemoryError):
        idx.add([Document("late", "a late document about owls")])  # BM25 took it, the vectors failed
    with pytest.raises(RagkitError, match="failed midway"):
        idx.save(path)
    with pytest.raises(RagkitError, match="load the index again"):
        idx.add([Document("later", "another one")])
    assert not Index.load(path, encoder=encoder).chunks.has_document("late")
