"""Damaged files (issue 12): every damaged index or adapter file gives a clean IndexFormatError /
AdapterError naming the file, never a raw traceback or a silently wrong load; NaN/inf vectors are
refused at write and at load; checksums are recorded by every save, checked on load (sizes, and
sha256 of small files) and in full by `verify_index` / `ragkit info --verify`; chunking a huge
document gives the same chunks window by window as whole.

Each damage case runs twice: `checksummed` (the index as saved: the manifest's `files` catch it
first) and `unchecked` (the `files` entry removed, as in an index written before checksums existed:
then the file's own reader must give the clean error). Damage that keeps a file valid and its
size (bytes changed in place) can only be caught by the checksums: those cases run checksummed only.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ragkit.errors import IndexFormatError, RagkitError
from ragkit.retrieval.index import Index, IndexConfig
from ragkit.integrity import FILES, verify_index
from ragkit.retrieval.stores.vectors import FaissConfig, FaissVectorStore, InvalidVectorsError
from ragkit.retrieval.dense import DenseConfig

QUERIES = ("assert statement for debugging", "class definition and inheritance", "how do for loops work")


# -- one small index (BM25 + dense HNSW + ColBERT exact) built once --------------------------------
@pytest.fixture(scope="module")
def colbert_model(colbert_default):
    return colbert_default


@pytest.fixture(scope="module")
def built(tmp_path_factory, encoder, topic_docs, colbert_model):
    from ragkit.data.corpus import Document

    docs = [Document(d.id, d.text[:1500], d.title, d.source) for d in topic_docs[:16]]
    config = IndexConfig(retrievers=["bm25", "dense", "colbert"], dense=DenseConfig(index=FaissConfig(kind="hnsw")))
    idx = Index(config, encoder=encoder, colbert=colbert_model)
    idx.add(docs, show_progress=False)
    path = tmp_path_factory.mktemp("reliability") / "idx"
    idx.save(path)
    return path


def _copy(src: Path, dst: Path, mode: str) -> Path:
    shutil.copytree(src, dst)
    if mode == "unchecked":
        m = json.loads((dst / "manifest.json").read_text())
        m.pop(FILES, None)
        (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def load_and_search(path: Path, encoder, colbert_model) -> None:
    idx = Index.load(path, encoder=encoder, colbert=colbert_model)
    for name in idx.retriever_names:
        for q in QUERIES:
            idx.search(q, k=50, retriever=name)


# -- damage -----------------------------------------------------------------------------------------
def truncate(f: Path) -> None:
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def flip_middle(n: int = 4096):
    def damage(f: Path) -> None:
        data = bytearray(f.read_bytes())
        mid = len(data) // 2
        n_ = min(n, len(data) // 4)
        data[mid:mid + n_] = bytes(b ^ 0xFF for b in data[mid:mid + n_])
        f.write_bytes(bytes(data))
    return damage


def garble_head(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[:16] = b"\x00NOT-A-FAISS-IDX"
    f.write_bytes(bytes(data))


def edit_json(fn):
    def damage(f: Path) -> None:
        f.write_text(json.dumps(fn(json.loads(f.read_text()))))
    return damage


def edit_npy(fn):
    def damage(f: Path) -> None:
        np.save(f, fn(np.load(f)), allow_pickle=False)
    return damage


def edit_lines(fn):
    def damage(f: Path) -> None:
        f.write_text("".join(fn(f.read_text().splitlines(keepends=True))))
    return damage


def rename_chunk_id(lines: list[str]) -> list[str]:
    c = json.loads(lines[2])
    c["id"] = c["id"].replace("#", "#renamed-")
    lines[2] = json.dumps(c) + "\n"
    return lines


def swap_rows(a: np.ndarray) -> np.ndarray:
    """Same shape, type and size, every value finite: only a checksum can tell."""
    a = np.array(a)
    mid = len(a) // 2
    a[[0, mid]] = a[[mid, 0]]
    a[1] = a[2]
    return a


def delete(f: Path) -> None:
    f.unlink()


def lengths_off_by_one(a: np.ndarray) -> np.ndarray:
    a = np.array(a)
    a[0] += 1
    return a


BOTH, CHECKSUMMED = ("checksummed", "unchecked"), ("checksummed",)

# (case id, damaged file, damage, modes)
INDEX_CASES = [
    ("chunks-truncated", "chunks.jsonl", truncate, BOTH),
    ("chunks-bad-line", "chunks.jsonl", edit_lines(lambda ls: ls[:3] + ["{not json\n"] + ls[4:]), BOTH),
    ("chunks-not-an-object", "chunks.jsonl", edit_lines(lambda ls: ls[:3] + ["[1, 2]\n"] + ls[4:]), BOTH),
    ("chunks-renamed-id", "chunks.jsonl", edit_lines(rename_chunk_id), BOTH),
    ("chunks-duplicated-line", "chunks.jsonl", edit_lines(lambda ls: ls + ls[-1:]), BOTH),
    ("bm25-tokens-truncated", "bm25/tokens.npz", truncate, BOTH),
    ("bm25-tokens-flipped", "bm25/tokens.npz", flip_middle(256), BOTH),
    ("bm25-doc-tokens-truncated", "bm25/doc_tokens.npz", truncate, BOTH),
    ("bm25-vocab-short", "bm25/vocab.json", edit_json(lambda v: v[: len(v) // 2]), BOTH),
    ("bm25-vocab-truncated", "bm25/vocab.json", truncate, BOTH),
    ("bm25-vocab-missing", "bm25/vocab.json", delete, BOTH),
    ("bm25-ids-short", "bm25/ids.json", edit_json(lambda v: v[:-1]), BOTH),
    ("bm25-documents-wrong", "bm25/documents.json", edit_json(lambda d: {"ids": 5, "chunks": d["chunks"]}), BOTH),
    ("bm25-config-wrong", "bm25/config.json", edit_json(lambda c: {**c, "k1": {"x": 1}, "surprise": 1}), BOTH),
    ("dense-vectors-wrong-width", "dense/vectors.npy", edit_npy(lambda a: a[:, :-1]), BOTH),
    ("dense-vectors-nan", "dense/vectors.npy", edit_npy(lambda a: np.full_like(a, np.nan)), BOTH),
    ("dense-vectors-inf", "dense/vectors.npy", edit_npy(lambda a: np.where(np.arange(a.shape[1]) == 3, np.inf, a)
                                                        .astype(a.dtype)), BOTH),
    ("dense-vectors-truncated", "dense/vectors.npy", truncate, BOTH),
    ("dense-vectors-rows-changed", "dense/vectors.npy", edit_npy(swap_rows), CHECKSUMMED),
    ("dense-ids-short", "dense/ids.json", edit_json(lambda v: v[:-1]), BOTH),
    ("dense-store-json-wrong", "dense/store.json", edit_json(lambda m: {**m, "dim": "wide"}), BOTH),
    ("dense-config-invalid", "dense/config.json", truncate, BOTH),
    ("faiss-header-corrupt", "dense/faiss.index", garble_head, BOTH),
    ("faiss-truncated", "dense/faiss.index", truncate, BOTH),
    ("faiss-4k-flipped-in-the-middle", "dense/faiss.index", flip_middle(4096), CHECKSUMMED),
    ("colbert-embeddings-truncated", "colbert/embeddings.npy", truncate, BOTH),
    ("colbert-embeddings-rows-changed", "colbert/embeddings.npy", edit_npy(swap_rows), CHECKSUMMED),
    ("colbert-lengths-wrong", "colbert/lengths.npy", edit_npy(lengths_off_by_one), BOTH),
    ("colbert-ids-invalid", "colbert/ids.json", truncate, BOTH),
    ("colbert-config-wrong", "colbert/config.json", edit_json(lambda c: {**c, "model": "x"}), BOTH),
    ("manifest-format-version-string", "manifest.json", edit_json(lambda m: {**m, "format_version": "one"}), BOTH),
    ("manifest-format-version-bool", "manifest.json", edit_json(lambda m: {**m, "format_version": True}), BOTH),
    ("manifest-config-not-an-object", "manifest.json", edit_json(lambda m: {**m, "config": "bm25"}), BOTH),
    ("manifest-encoder-not-an-object", "manifest.json", edit_json(lambda m: {**m, "encoder": ["x"]}), BOTH),
]


def _with_modes(cases):
    """One run per (case, mode) the case applies to: same-size, still-valid damage only checksummed."""
    return [pytest.param(*c[1:-1], mode, id=f"{c[0]}-{mode}") for c in cases for mode in c[-1]]


@pytest.mark.parametrize("rel,damage,mode", _with_modes(INDEX_CASES))
def test_damaged_index_file_is_a_clean_error_naming_it(built, tmp_path, encoder, colbert_model, rel, damage, mode):
    path = _copy(built, tmp_path / "idx", mode)
    damage(path / rel)
    with pytest.raises(IndexFormatError) as e:
        load_and_search(path, encoder, colbert_model)
    assert rel in str(e.value), str(e.value)


@pytest.mark.parametrize("rel,damage", [pytest.param(c[1], c[2], id=c[0]) for c in INDEX_CASES
                                        if c[1] != "manifest.json"])  # the manifest's damage: read_manifest's
def test_verify_index_names_every_damaged_file(built, tmp_path, rel, damage):
    path = _copy(built, tmp_path / "idx", "checksummed")
    damage(path / rel)
    problems = verify_index(path)
    assert len(problems) == 1 and rel in problems[0], problems


def test_intact_index_records_and_passes_its_checksums(built, tmp_path, encoder, colbert_model):
    m = json.loads((built / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file())
    assert sorted(m[FILES]) == [f for f in on_disk if f != "manifest.json"]
    assert all(m[FILES][f]["bytes"] == (built / f).stat().st_size for f in m[FILES])
    assert verify_index(built) == []
    load_and_search(built, encoder, colbert_model)
    old = _copy(built, tmp_path / "old", "unchecked")  # written before checksums existed: loads unchecked
    assert verify_index(old) == []
    load_and_search(old, encoder, colbert_model)


def test_hash_on_load_policy_big_files_are_size_checked_only(built, tmp_path, encoder, colbert_model, monkeypatch):
    """Files over the hash-on-load limit are only size-checked on load; verify hashes them all."""
    path = _copy(built, tmp_path / "idx", "checksummed")
    edit_npy(swap_rows)(path / "dense/vectors.npy")
    monkeypatch.setenv("RAGKIT_HASH_ON_LOAD_MB", "0")
    Index.load(path, encoder=encoder, colbert=colbert_model)  # same size: not noticed with hashing off
    assert "dense/vectors.npy" in verify_index(path)[0]
    monkeypatch.delenv("RAGKIT_HASH_ON_LOAD_MB")
    with pytest.raises(IndexFormatError, match="dense/vectors.npy"):
        Index.load(path, encoder=encoder, colbert=colbert_model)


def test_cli_info_verify(built, tmp_path):
    from typer.testing import CliRunner

    from ragkit.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["info", str(built), "--verify"])
    assert r.exit_code == 0 and "verified" in r.output and "sha256" in r.output, r.output
    path = _copy(built, tmp_path / "idx", "checksummed")
    flip_middle(4096)(path / "dense/faiss.index")
    r = runner.invoke(app, ["info", str(path), "--verify"])
    assert r.exit_code == 2 and "dense/faiss.index" in r.output and "Traceback" not in r.output, r.output
    r = runner.invoke(app, ["info", str(path)])  # without --verify: no hashing, the manifest as before
    assert r.exit_code == 0
    broken = _copy(built, tmp_path / "broken", "checksummed")
    edit_json(lambda m: {k: v for k, v in m.items() if k != "counts"})(broken / "manifest.json")
    r = runner.invoke(app, ["info", str(broken)])
    assert r.exit_code == 2 and "manifest.json" in r.output and "Traceback" not in r.output, r.output


def test_save_reads_back_what_it_wrote_before_swapping(built, tmp_path, encoder, colbert_model, monkeypatch):
    """A file that reads back from the disk differently from what was hashed while writing fails the
    save, naming the file, and leaves the previous index in place."""
    from ragkit import integrity

    path = _copy(built, tmp_path / "idx", "checksummed")
    idx = Index.load(path, encoder=encoder, colbert=colbert_model)
    before = (path / "manifest.json").read_text()
    real, calls = integrity.sha256_file, []

    def flaky(p):
        calls.append(p)
        digest = real(p)
        return digest if len(calls) != 2 else "0" * 64  # the read-back of the first file differs
    monkeypatch.setattr(integrity, "sha256_file", flaky)
    with pytest.raises(IndexFormatError, match="reads back differently") as e:
        idx.save(path)
    assert str(calls[0]) in str(e.value)
    assert (path / "manifest.json").read_text() == before
    monkeypatch.setattr(integrity, "sha256_file", real)
    assert verify_index(path) == []


# -- NaN / inf refused at write ---------------------------------------------------------------------
def test_nonfinite_vectors_are_refused_at_write(encoder, topic_docs, monkeypatch, colbert_model):
    store = FaissVectorStore(4)
    with pytest.raises(InvalidVectorsError, match="NaN or infinite") as e:
        store.add(["a", "b"], np.array([[1, 0, 0, 0], [np.nan, 0, 0, 0]], dtype=np.float32))
    assert isinstance(e.value, RagkitError) and isinstance(e.value, ValueError) and "'b'" in str(e.value)
    assert len(store) == 0
    with pytest.raises(InvalidVectorsError):
        store.add(["c"], np.array([[np.inf, 0, 0, 0]], dtype=np.float32))

    idx = Index(IndexConfig(retrievers=["bm25", "dense"]), encoder=encoder)
    monkeypatch.setattr(encoder, "encode", lambda texts, **kw: np.full((len(texts), encoder.dim), np.nan, np.float32))
    with pytest.raises(InvalidVectorsError):
        idx.add(topic_docs[:2], show_progress=False)
    assert len(idx.retrievers["dense"]) == 0

    from ragkit.retrieval.colbert.exact import ColBERTRetriever

    r = ColBERTRetriever(colbert_model)
    with pytest.raises(InvalidVectorsError):
        r.add_embeddings(["x"], [np.full((3, colbert_model.dim), np.nan, np.float32)])
    assert len(r) == 0


# -- huge documents: chunked window by window, same chunks --------------------------------------------
def test_long_document_chunked_in_windows_gives_the_same_chunks(encoder, topic_docs, monkeypatch):
    import ragkit.data.chunking as chunking
    from ragkit.data.chunking import Chunker, ChunkingConfig
    from ragkit.data.corpus import Document

    text = "\n\n".join(d.text for d in topic_docs[:60])
    doc = Document("big", text, "A title", "src")
    chunker = Chunker(encoder.tokenizer, ChunkingConfig(64, 8))
    whole = chunker._split(doc, chunker.backend.encode(text, add_special_tokens=False).offsets,
                           chunker._title_tokens(doc.title))
    monkeypatch.setattr(chunking, "WINDOW_CHARS", 5000)  # every window far smaller than the document
    windows = list(chunking.text_windows(text))
    assert len(windows) > 10 and "".join(p for _, p in windows) == text
    seen = []  # the longest text the tokenizer is given at once: bounded, whatever the document

    class Recording:
        def __init__(self, backend):
            self.backend = backend

        def encode(self, text, **kw):
            seen.append(len(text))
            return self.backend.encode(text, **kw)

        def encode_batch(self, texts, **kw):
            seen.append(sum(len(t) for t in texts))
            return self.backend.encode_batch(texts, **kw)

    chunker.backend = Recording(chunker.backend)
    got = chunker.chunk([Document("small", "a short one"), doc, Document("small2", "another")])
    assert [c.to_dict() for c in got[1:-1]] == [c.to_dict() for c in whole]
    assert got[0].id == "small#0" and got[-1].id == "small2#0"
    assert max(seen) <= 5000 < len(text)

    from ragkit.retrieval import bm25
    from ragkit.retrieval.bm25 import BM25Retriever

    whole_ids = BM25Retriever()._token_ids(text)
    monkeypatch.setattr(bm25, "WINDOW_CHARS", 5000)
    assert np.array_equal(BM25Retriever()._token_ids(text), whole_ids)


# -- adapters -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapters_built(tmp_path_factory):
    """A kNN datastore, a `full` model adapter, a proxy over it and a knowledge adapter, all tiny."""
    from tests.helpers import tiny_llm_folder, tiny_model, tiny_text, tiny_tokenizer

    from ragkit.adaptation import new_manifest
    from ragkit.adaptation.knn import build_datastore
    from ragkit.adaptation.knowledge import make_knowledge_adapter
    from ragkit.adaptation.logits import create
    from ragkit.adaptation.train import _save_model_adapter

    root = tmp_path_factory.mktemp("adapters") / "ad"
    root.mkdir()
    llm = tiny_llm_folder(root)
    build_datastore(str(llm), tiny_text(300), root / "knn", window=32, stride=16, threads=1)
    tok = tiny_tokenizer()
    _save_model_adapter(root / "full", new_manifest("full", str(llm), tok),
                        lambda d: tiny_model(1).save_pretrained(d, safe_serialization=True), tok)
    create("proxy", root / "proxy", {"expert": str(root / "full"), "anti_expert": str(root / "full")}, str(llm))
    make_knowledge_adapter(root / "knowledge", sm=str(llm))
    return root


def open_adapter(path: Path):
    from ragkit.adaptation import load_adapter
    from ragkit.generation.loader import load_causal_lm

    a = load_adapter(path)
    if a.kind == "knn":
        a.store()
    elif a.kind in ("full", "lora", "distill"):
        load_causal_lm(path)
    elif a.kind == "proxy":
        a.model("expert")
    return a


def manifest_edit(fn):
    return edit_json(fn)


def bad_utf8(f: Path) -> None:
    f.write_bytes(b"\xff\xfe{" + f.read_bytes())


# (case id, adapter, damaged file (relative to the adapters root), damage, modes)
ADAPTER_CASES = [
    ("knn-keys-truncated", "knn", "knn/keys.faiss", truncate, BOTH),
    ("knn-keys-header-corrupt", "knn", "knn/keys.faiss", garble_head, BOTH),
    ("knn-keys-flipped", "knn", "knn/keys.faiss", flip_middle(1024), CHECKSUMMED),
    ("knn-values-truncated", "knn", "knn/values.npy", truncate, BOTH),
    ("knn-values-wrong-type", "knn", "knn/values.npy", edit_npy(lambda a: a.astype(np.float64) + 0.5), BOTH),
    ("knn-values-short", "knn", "knn/values.npy", edit_npy(lambda a: a[:-3]), BOTH),
    ("knn-manifest-version-string", "knn", "knn/manifest.json",
     manifest_edit(lambda m: {**m, "format_version": "x"}), BOTH),
    ("knn-manifest-not-utf8", "knn", "knn/manifest.json", bad_utf8, BOTH),
    ("knn-param-k-string", "knn", "knn/manifest.json",
     manifest_edit(lambda m: {**m, "params": {**m["params"], "k": "many"}}), BOTH),
    ("full-weights-truncated", "full", "full/model.safetensors", truncate, BOTH),
    ("full-weights-flipped", "full", "full/model.safetensors", flip_middle(4096), CHECKSUMMED),
    ("full-config-invalid", "full", "full/config.json", truncate, BOTH),
    ("proxy-expert-weights-truncated", "proxy", "full/model.safetensors", truncate, BOTH),
    ("proxy-model-ref-not-a-string", "proxy", "proxy/manifest.json",
     manifest_edit(lambda m: {**m, "models": {**m["models"], "expert": 5}}), BOTH),
    ("proxy-alpha-string", "proxy", "proxy/manifest.json",
     manifest_edit(lambda m: {**m, "params": {"alpha": "high"}}), BOTH),
    ("knowledge-samples-string", "knowledge", "knowledge/manifest.json",
     manifest_edit(lambda m: {**m, "params": {**m["params"], "samples": "three"}}), BOTH),
    ("knowledge-filter-not-bool", "knowledge", "knowledge/manifest.json",
     manifest_edit(lambda m: {**m, "params": {**m["params"], "filter": "yes"}}), BOTH),
]


@pytest.mark.parametrize("adapter,rel,damage,mode", _with_modes(ADAPTER_CASES))
def test_damaged_adapter_file_is_a_clean_error_naming_it(adapters_built, tmp_path, adapter, rel, damage, mode):
    from ragkit.adaptation import AdapterError

    root = tmp_path / "ad"
    shutil.copytree(adapters_built, root)
    if mode == "unchecked":
        for m in root.glob("*/manifest.json"):
            d = json.loads(m.read_text())
            d.pop(FILES, None)
            m.write_text(json.dumps(d))
    open_adapter(root / adapter)  # intact: opens
    damage(root / rel)
    with pytest.raises(AdapterError) as e:
        open_adapter(root / adapter)
    assert rel in str(e.value), str(e.value)


def test_adapter_manifests_record_checksums(adapters_built):
    for name in ("knn", "full", "proxy", "knowledge"):
        folder = adapters_built / name
        files = json.loads((folder / "manifest.json").read_text())[FILES]
        on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert sorted(files) == [f for f in on_disk if f != "manifest.json"], name
