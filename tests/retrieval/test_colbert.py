"""ColBERT: model checkpoints, the exact MaxSim engine, Index persistence and updates, reranking,
training, evaluation and the CLI — with the real packaged MiniLM on Python's pydoc topics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragkit.errors import IndexFormatError
from ragkit.retrieval.index import Index, IndexConfig
from ragkit.retrieval.colbert.model import ColBERTModel
from ragkit.retrieval.colbert.exact import ColBERTConfig, ColBERTRetriever

QUERY = "assert statement for debugging"


@pytest.fixture(scope="module")
def model(colbert_default):
    return colbert_default


@pytest.fixture(scope="module")
def docs(topic_docs):
    from ragkit.data.corpus import Document

    return [Document(d.id, d.text[:1000], d.title, d.source) for d in topic_docs[:40]]


@pytest.fixture(scope="module")
def index(docs, model, encoder):
    idx = Index(IndexConfig(retrievers=["bm25", "dense", "colbert"]), encoder=encoder, colbert=model)
    idx.add(docs, show_progress=False)
    return idx


def brute_force(model, query: str, texts: list[str]) -> list[float]:
    """Reference MaxSim: every document encoded alone, every query token against every token."""
    q, mask = model.encode_queries([query])
    q = q[0][mask[0]]
    out = []
    for t in texts:
        d = torch.from_numpy(model.encode_docs([t])[0].astype(np.float32))
        out.append(sum(max(float(qi @ dj) for dj in d) for qi in q))
    return out


def test_exact_maxsim_equals_brute_force(index, model):
    colbert = index.retrievers["colbert"]
    hits = colbert.search(QUERY, k=len(colbert))
    assert hits[0][0].startswith("topic:assert")
    ids = [cid for cid, _ in hits[:8]]
    ref = brute_force(model, QUERY, [index.chunks[c].indexed_text for c in ids])
    assert np.allclose([s for _, s in hits[:8]], ref, atol=2e-2)  # fp16 storage
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


def test_centroid_candidates_find_the_exact_top_hits(docs, model, index):
    colbert = index.retrievers["colbert"]
    small = ColBERTRetriever(model, ColBERTConfig(centroid_min_tokens=100, n_centroids=64, candidates=20))
    small.add_embeddings(colbert.ids, [np.asarray(colbert.emb[s:e]) for s, e in zip(colbert.offsets[:-1],
                                                                                     colbert.offsets[1:])])
    assert small.centroids is not None and len(small.codes) == len(small.emb)
    exact, approx = colbert.search(QUERY, 5), small.search(QUERY, 5)
    assert approx[0] == pytest.approx(exact[0]) and len({c for c, _ in approx} & {c for c, _ in exact}) >= 4


def test_shared_pass_gives_the_dense_encoder_vectors(index, encoder):
    assert index._shared_pass()
    dense = index.retrievers["dense"].store
    texts = [index.chunks[c].indexed_text for c in dense.ids[:6]]
    assert np.allclose(dense.vectors[:6], encoder.encode(texts), atol=1e-5)


def test_save_load_round_trip_and_checkpoint_mismatch(index, tmp_path, model):
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["retrievers"]["colbert"]["model"]["fingerprint"] == model.fingerprint
    loaded = Index.load(tmp_path / "idx", encoder=index.encoder, colbert=model)
    assert isinstance(loaded.retrievers["colbert"].emb, np.memmap)
    assert loaded.search(QUERY, 5, "colbert") == index.search(QUERY, 5, "colbert")
    other = ColBERTModel.from_pretrained("default", dim=32)
    with pytest.raises(IndexFormatError, match="ColBERT checkpoint"):
        Index.load(tmp_path / "idx", encoder=index.encoder, colbert=other)
    assert len(loaded.search(QUERY, 3)) == 3  # hybrid over all three


def test_add_and_delete_encode_only_new_chunks(docs, model, monkeypatch, encoder):
    idx = Index(IndexConfig(retrievers=["bm25", "colbert"]), encoder=encoder, colbert=model)
    idx.add(docs[:10], show_progress=False)
    calls = []
    real = model.encode_docs
    monkeypatch.setattr(model, "encode_docs", lambda texts, *a, **k: calls.append(len(texts)) or real(texts, *a, **k))
    n = idx.add(docs[10:12], show_progress=False)
    assert calls == [n]
    before = len(idx.retrievers["colbert"])
    idx.delete([docs[10].id])
    assert calls == [n] and len(idx.retrievers["colbert"]) < before
    assert all(not c.startswith(docs[10].id + "#") for c, _ in idx.retrievers["colbert"].search(docs[10].title, 50))
    colbert = idx.retrievers["colbert"]
    assert int(colbert.lengths.sum()) == len(colbert.emb) == colbert.offsets[-1]


def test_colbert_reranker_reorders_with_stored_vectors(index, model):
    from ragkit.generation.pipeline import load_reranker
    from ragkit.retrieval.rerank import ColBERTReranker

    hits = index.search(QUERY, 10, "bm25")[::-1]  # worst first
    rr = load_reranker("colbert", index)
    assert isinstance(rr, ColBERTReranker) and rr.stored is index.retrievers["colbert"]
    out = rr.rerank(QUERY, hits, 5)
    assert len(out) == 5 and [h.rank for h in out] == [1, 2, 3, 4, 5]
    assert out[0].doc_id == "topic:assert" and out[0].score >= out[1].score
    fresh = ColBERTReranker(model=model).rerank(QUERY, hits, 5)  # texts encoded at rerank time
    assert [h.chunk_id for h in fresh] == [h.chunk_id for h in out]


def test_checkpoint_layout_round_trip(tmp_path, model):
    from safetensors import safe_open

    m = ColBERTModel.from_pretrained("default", dim=32, seed=1)
    m.save_pretrained(tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "artifact.metadata").read_text())
    assert meta["dim"] == 32 and meta["query_token_id"] == "[unused0]" and meta["doc_token_id"] == "[unused1]"
    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "linear.weight" in keys and any(k.startswith("bert.encoder.") for k in keys)
    back = ColBERTModel.from_pretrained(str(tmp_path / "ck"))
    assert back.dim == 32 and back.settings.markers and back.settings.query_augmentation
    a, b = m.encode_docs(["late interaction on a CPU"]), back.encode_docs(["late interaction on a CPU"])
    assert np.allclose(a[0].astype(np.float32), b[0].astype(np.float32), atol=1e-3)
    q, mask = back.encode_queries(["what is late interaction"])
    assert q.shape[1] == 32 and bool(mask.all())  # [MASK] query augmentation fills query_maxlen


def test_training_lowers_the_loss_resumes_and_reloads(tmp_path, docs, monkeypatch, colbert_default):
    import ragkit.retrieval.colbert.train as tc

    triples = tc.synthesize_triples(docs, 8, seed=0)
    assert all(q and p and n and q not in p for q, p, n in triples[:4])
    config = tc.TrainConfig(dim=32, steps=6, batch_size=4, lr=2e-4, projection_lr=2e-3, warmup=0.0,
                            doc_maxlen=48, query_maxlen=16, freeze_layers=4, save_every=3, threads=1)
    real, calls = tc.contrastive_loss, []

    def crash_at_five(model, batch):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("simulated interruption")
        return real(model, batch)

    monkeypatch.setattr(tc, "contrastive_loss", crash_at_five)
    with pytest.raises(KeyboardInterrupt):
        tc.train_colbert(triples, tmp_path / "ck", config)
    assert (tmp_path / "ck" / tc.STATE / "optimizer.safetensors").is_file()
    monkeypatch.setattr(tc, "contrastive_loss", real)
    res = tc.train_colbert(triples, tmp_path / "ck", config)  # resumes at step 3
    assert res["steps"] == 6 and len(res["losses"]) == 6 and not (tmp_path / "ck" / tc.STATE).exists()
    trained = ColBERTModel.from_pretrained(str(tmp_path / "ck"))
    start = colbert_default
    with torch.no_grad():
        after = float(tc.contrastive_loss(trained, triples[:4]))
    assert after < res["losses"][0]
    assert trained.dim == 32 and start.dim == 384


def test_eval_with_colbert_and_rerank(tmp_path, docs):
    from ragkit.retrieval.evaluate import evaluate_beir

    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    with (beir / "corpus.jsonl").open("w") as f:
        for d in docs[:20]:
            f.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    picks = docs[:20:5]
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": f"{d.title} statement"}) + "\n"
                                                for i, d in enumerate(picks)))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                             "".join(f"q{i}\t{d.id}\t1\n" for i, d in enumerate(picks)))
    res = evaluate_beir(beir, ["bm25", "colbert", "bm25+colbert_rerank"], show_progress=False)
    assert set(res) == {"bm25", "colbert", "bm25+colbert_rerank"}
    assert all(0 < res[r]["nDCG@10"] <= 1 for r in res) and res["colbert"]["ms_per_query"] > 0


def test_cli_index_search_info_and_colbert_info(tmp_path, docs):
    from ragkit.cli import app

    runner = CliRunner()
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs[:15]))
    r = runner.invoke(app, ["index", str(corpus), "--out", str(tmp_path / "idx"), "--retrievers", "bm25,colbert"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["search", "assert debugging", "-i", str(tmp_path / "idx"), "--retriever", "colbert",
                            "-k", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.splitlines()[0])["doc_id"] == "topic:assert"
    r = runner.invoke(app, ["info", str(tmp_path / "idx")])
    assert r.exit_code == 0 and "colbert-minilm-untrained" in r.output
    r = runner.invoke(app, ["colbert", "info", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["dim"] == 384
    r = runner.invoke(app, ["index", str(corpus), "--out", str(tmp_path / "x"), "--retrievers", "colbert",
                            "--colbert-engine", "nope"])
    assert r.exit_code == 2 and "unknown ColBERT engine" in r.output
    r = runner.invoke(app, ["index", str(corpus), "--out", str(tmp_path / "x"), "--retrievers", "colbert",
                            "--colbert-engine", "plaid", "--colbert-nbits", "3"])
    assert r.exit_code == 2 and "nbits must be 1, 2 or 4" in r.output and not (tmp_path / "x").exists()


def test_colbert_ai_loads_the_checkpoint_and_encodes_the_same(tmp_path):
    pytest.importorskip("colbert", reason="colbert-ai not installed (pip install 'ragkit[colbert]')")
    from colbert.modeling.tokenization import DocTokenizer, QueryTokenizer

    from ragkit.retrieval.colbert.model import load_with_colbert_ai

    ours = ColBERTModel.from_pretrained("default", dim=32, seed=2)
    ours.save_pretrained(tmp_path / "ck")
    theirs, config = load_with_colbert_ai(tmp_path / "ck")
    assert config.dim == 32 and config.query_maxlen == 32
    with torch.no_grad():
        ids, mask = QueryTokenizer(config, verbose=0).tensorize(["what is late interaction"])
        assert torch.equal(ids, ours.tokenize_queries(["what is late interaction"])[0])
        q = torch.nn.functional.normalize(theirs.linear(theirs.LM(ids, attention_mask=mask)[0]), dim=-1)
        assert torch.allclose(q, ours.encode_queries(["what is late interaction"])[0], atol=1e-5)
        ids, mask = DocTokenizer(config).tensorize(["Late interaction, on a CPU."])
        d = torch.nn.functional.normalize(theirs.linear(theirs.LM(ids, attention_mask=mask)[0]), dim=-1)
        mine, keep = ours.doc_tensors(*ours.tokenize_docs(["Late interaction, on a CPU."]))
        assert torch.allclose(d[0][keep[0]], mine[0][keep[0]], atol=1e-5) and int((~keep).sum()) == 2  # "," "."


def test_index_config_needs_no_torch_and_agrees_with_the_model_default():
    import subprocess
    import sys

    from ragkit.retrieval.colbert.model import DEFAULT_COLBERT as model_default
    from ragkit.retrieval.colbert.exact import DEFAULT_COLBERT

    assert DEFAULT_COLBERT == model_default
    code = "import sys, ragkit.cli, ragkit.retrieval.index; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "importing the CLI pulled in torch"


def test_distillation_from_identity_with_a_frozen_encoder(tmp_path, docs, encoder):
    import ragkit.retrieval.colbert.train as tc

    examples = tc.synthesize_distillation(docs, 8, seed=0, candidates=4, encoder=encoder)
    assert len(examples) == 8 and all(len(p) == len(s) == 4 for _, p, s in examples)
    assert all(np.isfinite(sc).all() for _, _, sc in examples)
    config = tc.TrainConfig(init="identity", freeze_layers=-1, steps=4, batch_size=4, projection_lr=1e-2,
                            warmup=0.0, doc_maxlen=48, save_every=0, threads=1)
    start = ColBERTModel.from_pretrained("default")
    start.settings.doc_maxlen = 48
    with torch.no_grad():
        before = float(tc.distillation_loss(start, examples[:4]))
        cached = float(tc.distillation_loss(start, examples[:4], cache=tc.StateCache()))
    assert abs(before - cached) < 1e-3  # cached states score as the model does
    res = tc.train_colbert(examples, tmp_path / "ck", config)
    trained = ColBERTModel.from_pretrained(str(tmp_path / "ck"))
    assert trained.dim == 384 and not trained.settings.markers and not trained.settings.query_augmentation
    assert torch.equal(trained.bert.embeddings.word_embeddings.weight, start.bert.embeddings.word_embeddings.weight)
    with torch.no_grad():
        after = float(tc.distillation_loss(trained, examples[:4]))
    assert after < before and res["steps"] == 4


def test_cli_colbert_train_distils_the_hybrid_teacher(tmp_path, docs):
    from ragkit.cli import app

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs[:12]))
    r = CliRunner().invoke(app, ["colbert", "train", str(corpus), "--out", str(tmp_path / "ck"), "--teacher", "hybrid",
                                 "--candidates", "4", "--init", "identity", "--freeze-layers", "-1", "--steps", "2",
                                 "--batch-size", "2", "--doc-maxlen", "32", "--threads", "1", "--save-every", "0"])
    assert r.exit_code == 0, r.output
    assert "hybrid teacher" in r.output and json.loads((tmp_path / "ck" / "training.json").read_text())["steps"] == 2
    r = CliRunner().invoke(app, ["colbert", "train", str(corpus), "--out", str(tmp_path / "x"), "--teacher", "oracle",
                                 "--steps", "1"])
    assert r.exit_code != 0 and "unknown teacher" in r.output
