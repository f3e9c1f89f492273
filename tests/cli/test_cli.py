import json

import pytest
from typer.testing import CliRunner

from ragkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, topic_docs):
    path = tmp_path_factory.mktemp("c") / "docs.jsonl"
    with path.open("w") as f:
        for d in topic_docs[:30]:
            f.write(json.dumps({"id": d.id, "title": d.title, "text": d.text[:1200], "source": d.source}) + "\n")
    return path


def test_index_info_search_add_delete(corpus, tmp_path, topic_docs):
    out = tmp_path / "idx"
    r = runner.invoke(app, ["index", str(corpus), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "indexed 30 documents" in r.output
    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0 and "all-MiniLM-L6-v2" in r.output and "30 /" in r.output
    r = runner.invoke(app, ["search", "assert statement debugging", "--index", str(out), "-k", "3", "--json"])
    hits = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.exit_code == 0 and len(hits) == 3 and hits[0]["doc_id"] == "topic:assert"
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "new", "text": "zebra crossing rules for pedestrians"}) + "\n")
    r = runner.invoke(app, ["add", str(out), str(extra)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["search", "zebra pedestrians", "-i", str(out), "-k", "1", "--retriever", "bm25", "--json"])
    assert json.loads(r.stdout.splitlines()[0])["doc_id"] == "new"
    r = runner.invoke(app, ["delete", str(out), "new"])
    assert r.exit_code == 0 and "'documents': 30" in r.output


def test_malformed_corpus_fails_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": "fine"}\n{"id": "2", "text": oops}\n')
    r = runner.invoke(app, ["index", str(bad), "--out", str(tmp_path / "idx"), "--retrievers", "bm25"])
    assert r.exit_code == 2
    assert "bad.jsonl:2: invalid JSON" in r.output
    assert not (tmp_path / "idx").exists() and not list(tmp_path.glob(".idx.*"))


def test_clear_errors_for_missing_or_foreign_index(tmp_path):
    r = runner.invoke(app, ["search", "x", "--index", str(tmp_path / "none")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["info", str(tmp_path)])
    assert r.exit_code == 2 and "not a ragkit index" in r.output
    r = runner.invoke(app, ["index", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no such file or folder" in r.output


@pytest.mark.datasets
def test_eval_reproduces_the_adi_baselines(tmp_path, dataset):
    """ADI (82 docs): BM25 and dense within 0.005 of BASELINES.md (bm25s 0.4938, MiniLM 0.4975)."""
    data = dataset("adi")
    out = tmp_path / "adi.json"
    r = runner.invoke(app, ["eval", str(data), "--retrievers", "bm25,dense,hybrid", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert set(res) == {"bm25", "dense", "hybrid"}
    recalls = {f"R@{k}" for k in (1, 5, 10, 20, 50, 100)}
    assert set(res["bm25"]) == {"nDCG@10", "RR@10", "index_s", "ms_per_query", "latency_ms"} | recalls
    r_at = [res["bm25"][f"R@{k}"] for k in (1, 5, 10, 20, 50, 100)]
    assert r_at == sorted(r_at) and 0 < r_at[0] < r_at[-1] <= 1  # recall grows with k
    assert res["bm25"]["nDCG@10"] >= 0.4938 - 0.005
    assert res["dense"]["nDCG@10"] >= 0.4975 - 0.005
    assert res["hybrid"]["nDCG@10"] > max(res["bm25"]["nDCG@10"], res["dense"]["nDCG@10"])


def test_adapter_fit_and_eval_default_to_the_adapters_own_llm(tmp_path):
    """Without --llm the LLM comes from the adapter's manifest; a missing adapter is named."""
    text = tmp_path / "valid.txt"
    text.write_text("some validation text\n")
    for cmd in (["adapter", "fit", "no-such-adapter", "--text", str(text)],
                ["adapter", "eval", "no-such-adapter", "--text", str(text)]):
        r = runner.invoke(app, cmd)
        assert r.exit_code != 0 and "no adapter 'no-such-adapter'" in r.output
