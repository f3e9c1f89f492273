"""ColBERT engine `plaid` (colbert-ai's PLAID index). The checks marked `plaid` need colbert-ai and
compile its C++ extensions the first time (~2-4 min, cached under $RAGKIT_CACHE); they run by default
(CI budgets the compile) and are skipped with a reason when colbert-ai is not installed."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from ragkit.errors import IndexFormatError, ModelLoadError
from ragkit.retrieval.colbert.exact import ColBERTConfig

QUERIES = [("assert statement for debugging", "topic:assert"), ("break out of the nearest enclosing loop", "topic:break"),
           ("the del statement deletes names", "topic:del"), ("declare global variables in a function", "topic:global"),
           ("await suspends a coroutine", "topic:await"), ("floating point literals", "topic:floating"),
           ("continue with the next cycle of the loop", "topic:continue"), ("dictionary displays", "topic:dict"),
           ("bitwise and, or and xor operators", "topic:bitwise"), ("class definition syntax", "topic:class")]


# -- without colbert-ai's compile ------------------------------------------------------------------
def test_config_accepts_plaid_and_checks_nbits():
    assert ColBERTConfig(engine="plaid", nbits=4).nbits == 4
    with pytest.raises(ValueError, match="nbits must be 1, 2 or 4"):
        ColBERTConfig(engine="plaid", nbits=3)
    with pytest.raises(ValueError, match="unknown ColBERT engine"):
        ColBERTConfig(engine="nope")


def test_missing_colbert_ai_is_a_clear_error(monkeypatch):
    from ragkit.retrieval.colbert import plaid as colbert_plaid

    monkeypatch.setitem(sys.modules, "colbert", None)  # import colbert -> ImportError
    with pytest.raises(ModelLoadError, match=r"pip install 'ragkit\[colbert\]'"):
        colbert_plaid._require_colbert_ai()


def test_extensions_are_cached_in_a_folder_ragkit_controls(monkeypatch, tmp_path):
    from ragkit.retrieval.colbert.plaid import extensions_dir

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path))
    assert extensions_dir().parent == tmp_path / "torch-extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "mine"))
    assert extensions_dir() == tmp_path / "mine"  # the user's choice wins


def test_exact_loader_refuses_a_plaid_folder(tmp_path):
    from ragkit.retrieval.colbert.exact import ColBERTRetriever

    (tmp_path / "config.json").write_text(json.dumps({"engine": "plaid", "model": {}}))
    with pytest.raises(IndexFormatError, match="'plaid' index"):
        ColBERTRetriever.load(tmp_path, model="unused")


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(topic_docs, colbert_default):
    """32 pydoc topics (the first 40 less the 8 longest: encoding is this test's main cost) encoded
    once by the default ColBERT; an exact retriever and a PLAID Index (2-bit residuals) over the
    same token vectors."""
    pytest.importorskip("colbert", reason="colbert-ai not installed (pip install 'ragkit[colbert]')")
    from ragkit.retrieval.index import Index, IndexConfig
    from ragkit.retrieval.colbert.exact import ColBERTRetriever

    model = colbert_default
    index = Index(IndexConfig(retrievers=["colbert"], colbert=ColBERTConfig(engine="plaid", nbits=2)), colbert=model)
    chunks = index.chunker.chunk([d for d in topic_docs[:40] if len(d.text) < 9000])
    arrays = model.encode_docs([c.indexed_text for c in chunks])
    exact = ColBERTRetriever(model)
    exact.add_embeddings([c.id for c in chunks], arrays)
    index.retrievers["colbert"].add_embeddings([c.id for c in chunks], arrays)
    index.chunks.add(chunks)
    return model, exact, index


@pytest.mark.plaid
@pytest.mark.slow
def test_plaid_end_to_end(built, topic_docs, tmp_path):
    from ragkit.retrieval.index import Index
    from ragkit.retrieval.colbert.model import ColBERTModel
    from ragkit.retrieval.rerank import ColBERTReranker
    from ragkit.retrieval.colbert.plaid import PlaidRetriever

    model, exact, index = built
    plaid = index.retrievers["colbert"]
    assert isinstance(plaid, PlaidRetriever) and plaid.describe()["centroids"] > 0
    # sensible against the exact engine on the same vectors
    top1_doc, overlap = 0, []
    for q, _ in QUERIES:
        a, b = exact.search(q, 10), plaid.search(q, 10)
        assert len(b) == 10 and all(b[i][1] >= b[i + 1][1] for i in range(9))
        top1_doc += index.chunks[a[0][0]].doc_id == index.chunks[b[0][0]].doc_id
        overlap.append(len({c for c, _ in a} & {c for c, _ in b}) / 10)
    assert top1_doc >= 8 and np.mean(overlap) >= 0.7, (top1_doc, overlap)
    hits = index.search("assert statement for debugging", k=3, retriever="colbert")
    assert hits[0].doc_id == "topic:assert"
    # stored (decompressed) vectors score close to the exact ones; the reranker uses them
    ids = [c for c, _ in exact.search(QUERIES[0][0], 5)]
    assert np.allclose(plaid.score(QUERIES[0][0], ids), exact.score(QUERIES[0][0], ids), rtol=0.05)
    reranked = ColBERTReranker(index=index).rerank(QUERIES[0][0], hits)
    assert {h.chunk_id for h in reranked} == {h.chunk_id for h in hits}

    # save, reload: the same results; numpy files only (no torch pickles)
    path = index.save(tmp_path / "idx")
    names = {p.name for p in (path / "colbert").iterdir()}
    assert names == {"codec.npz", "codes.npy", "residuals.npy", "lengths.npy", "ids.json", "config.json"}
    loaded = Index.load(path, colbert=model)
    assert isinstance(loaded.retrievers["colbert"], PlaidRetriever)
    for q, _ in QUERIES:
        assert loaded.retrievers["colbert"].search(q, 10) == plaid.search(q, 10)

    # incremental add (the existing codec compresses the new chunks) and delete, then save again
    before = len(loaded.chunks)
    assert loaded.add(topic_docs[40:46]) > 0 and len(loaded.retrievers["colbert"]) == len(loaded.chunks) > before
    assert "topic:import" in [h.doc_id for h in loaded.search("the import statement loads modules", k=3)]
    loaded.delete(["topic:assert"])
    assert "topic:assert" not in [h.doc_id for h in loaded.search("assert statement for debugging", k=10)]
    loaded.save(path)
    again = Index.load(path, colbert=model)
    assert again.retrievers["colbert"].search("floating point literals", 5) == \
        loaded.retrievers["colbert"].search("floating point literals", 5)

    # another checkpoint than the one the index was built with: a clear error
    with pytest.raises(IndexFormatError, match="built with ColBERT checkpoint"):
        Index.load(path, colbert=ColBERTModel.from_pretrained("default", dim=128))


@pytest.mark.plaid
@pytest.mark.slow
def test_plaid_from_the_command_line(topic_docs, tmp_path):
    pytest.importorskip("colbert", reason="colbert-ai not installed (pip install 'ragkit[colbert]')")
    from typer.testing import CliRunner

    from ragkit.cli import app

    runner = CliRunner()
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in topic_docs[:8]))
    r = runner.invoke(app, ["index", str(corpus), "--out", str(tmp_path / "idx"), "--retrievers", "colbert",
                            "--colbert-engine", "plaid", "--colbert-nbits", "4"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["search", "assert statement for debugging", "-i", str(tmp_path / "idx"), "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[0])["doc_id"] == "topic:assert"  # stdout holds only the JSON
    r = runner.invoke(app, ["info", str(tmp_path / "idx")])
    assert r.exit_code == 0 and "plaid 4-bit" in r.output
