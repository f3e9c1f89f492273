"""Issue 12 (store side): output folders that never delete what ragkit did not write, one writer per
index (no lost update, no reader deleting a live writer's temporary folder), a BEIR folder without
its corpus refused, control characters escaped on the terminal, a full disk a clean error."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import ragkit
from ragkit import Document, Index, IndexConfig
from ragkit.cli import app
from ragkit.data.corpus import detect_format, load_corpus
from ragkit.errors import CorpusError, RagkitError
from ragkit import fs as store

runner = CliRunner()
BM25 = ["--retrievers", "bm25"]
# subprocesses import the same ragkit as this test run
ENV = {**os.environ, "PYTHONPATH": str(Path(ragkit.__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def docs(prefix: str, n: int, words: int = 12) -> list[dict]:
    return [{"id": f"{prefix}{i}", "title": f"{prefix} document {i}",
             "text": " ".join(f"{prefix}word{(i * 7 + j) % 97} topic{j % 13}" for j in range(words))}
            for i in range(n)]


def n_docs(path: Path) -> int:
    return json.loads((path / "manifest.json").read_text())["counts"]["documents"]


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_jsonl(tmp_path / "c.jsonl", docs("base", 5))


@pytest.fixture
def built(tmp_path, corpus) -> Path:
    r = runner.invoke(app, ["index", str(corpus), "--out", str(tmp_path / "idx"), *BM25])
    assert r.exit_code == 0, r.output
    return tmp_path / "idx"


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


# -- 1. --out never deletes what ragkit did not write ------------------------------------------------
def test_out_folder_with_user_files_is_refused_and_left_alone(tmp_path, corpus):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("x\n")
    r = runner.invoke(app, ["index", str(corpus), "--out", str(d), *BM25])
    assert r.exit_code == 2, r.output
    assert "not a ragkit-index folder" in r.output and str(d) in r.output.replace("\n", "")
    assert (d / "thesis.txt").read_text() == "x\n" and sorted(os.listdir(d)) == ["thesis.txt"]
    assert siblings(d) == []
    idx = Index.build([Document("a", "alpha beta")], config=IndexConfig(retrievers=["bm25"]))
    with pytest.raises(RagkitError, match="not a ragkit-index folder"):  # the check is in the core
        idx.save(d)
    assert sorted(os.listdir(d)) == ["thesis.txt"]


def test_out_empty_folder_or_existing_index_is_fine(tmp_path, corpus, built):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["index", str(corpus), "--out", str(empty), *BM25])
    assert r.exit_code == 0, r.output and n_docs(empty) == 5
    r = runner.invoke(app, ["index", str(corpus), "--out", str(built), *BM25])  # replacing an index
    assert r.exit_code == 0, r.output
    assert n_docs(built) == 5 and siblings(built) == []


def test_out_is_never_the_corpus_or_a_folder_containing_it(tmp_path, built):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("# A\nalpha beta gamma\n")
    (folder / "b.md").write_text("# B\ndelta epsilon\n")
    r = runner.invoke(app, ["index", str(folder), "--out", str(folder), *BM25])
    assert r.exit_code == 2 and "corpus" in r.output, r.output
    assert sorted(os.listdir(folder)) == ["a.md", "b.md"]
    # a corpus file kept inside an index folder: writing that index would delete it
    inside = write_jsonl(built / "more.jsonl", docs("more", 3))
    r = runner.invoke(app, ["index", str(inside), "--out", str(built), *BM25])
    assert r.exit_code == 2 and "contains the corpus" in r.output, r.output
    assert inside.exists() and n_docs(built) == 5
    r = runner.invoke(app, ["add", str(built), str(inside)])
    assert r.exit_code == 2 and "contains the corpus" in r.output, r.output
    assert inside.exists() and n_docs(built) == 5
    # Index.build remembers its corpus path
    idx = Index.build(folder, config=IndexConfig(retrievers=["bm25"]))
    with pytest.raises(RagkitError, match="is the corpus"):
        idx.save(folder)
    with pytest.raises(RagkitError, match="contains the corpus"):
        idx.save(tmp_path)
    assert sorted(os.listdir(folder)) == ["a.md", "b.md"]


def test_out_an_existing_file_is_a_clean_error(tmp_path, corpus):
    f = tmp_path / "report.pdf"
    f.write_bytes(b"%PDF precious")
    r = runner.invoke(app, ["index", str(corpus), "--out", str(f), *BM25])
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit)  # no traceback
    assert "not a folder" in r.output
    assert f.read_bytes() == b"%PDF precious" and siblings(f) == []
    with pytest.raises(RagkitError, match="not a folder"):  # atomic_dir (adapters, models) refuses it too
        with store.atomic_dir(f):
            pass
    assert f.read_bytes() == b"%PDF precious" and siblings(f) == []


# -- 2. one writer per index -------------------------------------------------------------------------
GATED_CLI = textwrap.dedent("""
    import os, sys, time
    from ragkit.cli import app
    go = sys.argv[1]
    while not os.path.exists(go):
        time.sleep(0.001)
    app(sys.argv[2:], prog_name="ragkit")
""")


@pytest.mark.parametrize("wait", [False, True])
@pytest.mark.slow
def test_concurrent_adds_never_lose_documents(tmp_path, built, wait):
    a = write_jsonl(tmp_path / "a.jsonl", docs("alpha", 40, 150))
    b = write_jsonl(tmp_path / "b.jsonl", docs("bravo", 40, 150))
    script = tmp_path / "gated.py"
    script.write_text(GATED_CLI)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, str(script), str(go), "add", str(built), str(c)]
                              + (["--wait"] if wait else []), env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in (a, b)]
    time.sleep(3)  # both have imported ragkit and are polling for the go file
    go.touch()
    results = [p.communicate(timeout=240) + (p.returncode,) for p in procs]
    landed = 0
    for stdout, stderr, rc in results:
        if rc == 0:
            assert "added" in stdout
            landed += 40
        else:
            assert rc == 2 and not wait, (stdout, stderr)
            assert "is being written by process" in stderr and "--wait" in stderr, stderr
            assert "Traceback" not in stderr
    assert landed >= 40
    assert n_docs(built) == 5 + landed  # what the commands reported is what the index holds
    if wait:
        assert landed == 80
    loaded = Index.load(built)
    assert len({h.doc_id for h in loaded.search("alphaword3 bravoword3", 200)}) >= landed
    assert siblings(built) == []


HOLD_LOCK = textwrap.dedent("""
    import os, sys, time
    from ragkit.fs import writer_lock
    with writer_lock(sys.argv[1]):
        print("LOCKED", flush=True)
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.01)
""")


def test_second_writer_is_refused_or_waits(tmp_path, built):
    extra = write_jsonl(tmp_path / "extra.jsonl", docs("extra", 3))
    script = tmp_path / "hold.py"
    script.write_text(HOLD_LOCK)
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, str(script), str(built), str(release)], env=ENV, text=True,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        for args in (["add", str(built), str(extra)], ["delete", str(built), "base0"],
                     ["index", str(extra), "--out", str(built), *BM25]):
            r = runner.invoke(app, args)
            assert r.exit_code == 2, r.output
            assert f"is being written by process {holder.pid}" in r.output and "--wait" in r.output
        assert n_docs(built) == 5
        waiter = subprocess.Popen([sys.executable, "-m", "ragkit.cli", "add", str(built), str(extra), "--wait"],
                                  env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(3)
        assert waiter.poll() is None and n_docs(built) == 5  # still waiting
        release.touch()
        stdout, stderr = waiter.communicate(timeout=120)
        assert waiter.returncode == 0, stderr
        assert f"waiting for process {holder.pid}" in stderr
        assert n_docs(built) == 8
    finally:
        release.touch()
        holder.wait(timeout=30)
    assert siblings(built) == []


LIVE_WRITER = textwrap.dedent("""
    import os, shutil, sys, time
    from ragkit.fs import atomic_dir
    with atomic_dir(sys.argv[1]) as tmp:
        shutil.copytree(sys.argv[1], tmp, dirs_exist_ok=True)
        print(tmp, flush=True)
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.01)
""")


def test_readers_leave_a_live_writers_temporary_folder_alone(tmp_path, built):
    script = tmp_path / "writer.py"
    script.write_text(LIVE_WRITER)
    go = tmp_path / "go"
    writer = subprocess.Popen([sys.executable, str(script), str(built), str(go)], env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        tmp = Path(writer.stdout.readline().strip())
        assert tmp.name.startswith(".idx.tmp-") and (tmp / "manifest.json").exists()
        assert Index.load(built).info()["counts"]["documents"] == 5
        store.read_manifest(built)
        assert runner.invoke(app, ["info", str(built)]).exit_code == 0
        assert tmp.is_dir() and (tmp / "manifest.json").exists()  # the live writer's folder survived
    finally:
        go.touch()
        _, stderr = writer.communicate(timeout=60)
    assert writer.returncode == 0, stderr
    assert not tmp.exists() and Index.load(built).info()["counts"]["documents"] == 5


def test_a_dead_writers_temporary_folder_is_cleaned_by_readers(tmp_path, built):
    stale = built.parent / ".idx.tmp-999999-deadbeef"
    stale.mkdir()
    (stale / "chunks.jsonl").write_text("")
    (built.parent / ".idx.lock").write_text("999999\n")  # left by a killed writer: the flock died with it
    assert Index.load(built).info()["counts"]["documents"] == 5
    assert siblings(built) == []


def test_writer_lock_is_reentrant_and_excludes_other_threads(tmp_path):
    import threading

    target = tmp_path / "x"
    errors = []
    with store.writer_lock(target):
        with store.writer_lock(target):  # the same thread: re-entrant
            pass
        t = threading.Thread(target=lambda: errors.append(_try_lock(target)))
        t.start()
        t.join()
    assert errors and "is being written by process" in errors[0]
    assert not (tmp_path / ".x.lock").exists()


def _try_lock(target):
    try:
        with store.writer_lock(target):
            return "acquired"
    except RagkitError as e:
        return str(e)


# -- 3. a BEIR folder without its corpus -------------------------------------------------------------
def test_beir_folder_without_corpus_is_refused(tmp_path, built):
    beir = tmp_path / "scifact"
    (beir / "qrels").mkdir(parents=True)
    (beir / "SOURCE.md").write_text("# SciFact\nDownloaded from the BEIR benchmark.\n")
    (beir / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a question"}) + "\n")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tbase0\t1\n")
    with pytest.raises(CorpusError, match="no corpus.jsonl"):
        detect_format(beir)
    with pytest.raises(CorpusError, match="BEIR"):
        load_corpus(beir)
    r = runner.invoke(app, ["index", str(beir), "--out", str(built), *BM25])
    assert r.exit_code == 2 and "corpus.jsonl" in r.output, r.output
    assert n_docs(built) == 5 and Index.load(built).info()["counts"]["documents"] == 5
    (beir / "queries.jsonl").unlink()  # qrels/ alone says the same
    with pytest.raises(CorpusError, match="qrels"):
        detect_format(beir)
    assert len(load_corpus(beir, "folder")) == 1  # asked for explicitly, it is read as a folder


# -- 4. control characters never reach the terminal --------------------------------------------------
def test_control_characters_are_escaped_in_terminal_output(tmp_path):
    evil = "\x1b]0;pwned\x07\x1b[31m"
    c = write_jsonl(tmp_path / "evil.jsonl", [
        {"id": f"doc{evil}", "title": f"Title {evil} here", "text": f"zebra crossing {evil} \x9b2J text",
         "source": f"src{evil}"}])
    out = tmp_path / "idx"
    r = runner.invoke(app, ["index", str(c), "--out", str(out), *BM25])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["search", "zebra crossing", "--index", str(out)])
    assert r.exit_code == 0, r.output
    for raw in ("\x1b", "\x07", "\x9b"):
        assert raw not in r.output
    assert "\\x1b]0;pwned\\x07\\x1b[31m" in r.output  # visible instead
    r = runner.invoke(app, ["search", "zebra crossing", "--index", str(out), "--json"])
    hit = json.loads(r.stdout.splitlines()[0])
    assert hit["title"] == f"Title {evil} here" and "\x1b" not in r.stdout  # JSON escapes it, exactly
    r = runner.invoke(app, ["delete", str(out), "nope\x1b[2J"])
    assert r.exit_code == 2 and "\x1b" not in r.output


# -- 5. a full disk ----------------------------------------------------------------------------------
def test_disk_full_is_a_clean_error_and_the_previous_index_loads(tmp_path, built, monkeypatch):
    from ragkit.retrieval.stores.chunks import ChunkStore

    def full(self, path, *a, **k):
        Path(path).write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ChunkStore, "save", full)
    idx = Index.build([Document("a", "alpha beta")], config=IndexConfig(retrievers=["bm25"]))
    with pytest.raises(RagkitError, match="disk is full") as e:
        idx.save(built)
    assert str(built) in str(e.value) and e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    extra = write_jsonl(tmp_path / "extra.jsonl", docs("extra", 2))
    r = runner.invoke(app, ["add", str(built), str(extra)])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), r.output
    assert "disk is full" in r.output and str(built) in r.output.replace("\n", "")
    monkeypatch.undo()
    assert Index.load(built).info()["counts"]["documents"] == 5
    assert siblings(built) == []
