"""QA evaluation on a tiny BEIR folder with the real packaged models."""
import json

import pytest
from typer.testing import CliRunner

from ragkit.cli import app
from ragkit.config import PipelineConfig
from ragkit.errors import CorpusError
from ragkit.generation.evaluate import evaluate_qa, groundedness, normalize, token_f1
from ragkit.generation.pipeline import Pipeline

DOCS = [("1", "Aspirin reduced the risk of heart attack by 20 percent in the trial of 5000 adults."),
        ("2", "Vitamin C supplements showed no effect on the duration of the common cold."),
        ("3", "Regular exercise lowered blood pressure in older patients over six months.")]
QUESTIONS = [("q1", "Does aspirin reduce the risk of heart attack?", "1", "yes"),
             ("q2", "Do vitamin C supplements shorten colds?", "2", "no"),
             ("q3", "Does exercise lower blood pressure in older patients?", "3", "yes")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    (d / "qrels").mkdir()
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in DOCS))
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t, _, _ in QUESTIONS))
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{doc}\t1\n" for q, _, doc, _ in QUESTIONS))
    (d / "answers.jsonl").write_text("".join(json.dumps({"_id": q, "answers": ["x"], "final_decision": lab}) + "\n"
                                             for q, _, _, lab in QUESTIONS))
    return d


def test_normalisation_and_token_f1():
    assert normalize("The  Answer, is: Paris!") == "answer is paris"
    assert token_f1("Paris is the capital", "the capital is Paris") == 1.0
    assert token_f1("Paris", "London") == 0.0
    assert token_f1("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_groundedness_prefers_supported_sentences(encoder):
    passage = ["Aspirin reduced the risk of heart attack by 20 percent."]
    supported = groundedness(encoder, "Aspirin lowers heart attack risk [1].", passage)
    unsupported = groundedness(encoder, "The stock market closed higher on Friday.", passage)
    assert supported > unsupported + 0.3
    assert groundedness(encoder, "", passage) is None


@pytest.mark.slow
def test_evaluate_qa_three_conditions(folder, encoder, llm):
    pipe = Pipeline(None, llm, PipelineConfig())
    pipe.config.retrieval.k = 1
    res = evaluate_qa(folder, pipe, explain_tokens=8)
    assert set(res) == {"closed", "retrieval", "gold"}
    for m in res.values():
        assert m["questions"] == 3 and 0.0 <= m["accuracy"] <= 1.0 and sum(m["predicted"].values()) == 3
    assert "groundedness" not in res["closed"] and -1 <= res["gold"]["groundedness"] <= 1  # a mean cosine
    assert pipe.index is not None and pipe.index.search("aspirin heart attack", 1)[0].doc_id == "1"


def test_missing_answers_is_a_clear_error(tmp_path):
    (tmp_path / "corpus.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    with pytest.raises(CorpusError, match="missing answers.jsonl"):
        evaluate_qa(tmp_path, Pipeline(None, None, PipelineConfig()))


def test_cli_eval_qa_writes_json(folder, tmp_path):
    out = tmp_path / "qa.json"
    r = CliRunner().invoke(app, ["eval-qa", str(folder), "--conditions", "closed,gold", "--explain-tokens", "0",
                                 "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["llm"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and set(res["conditions"]) == {"closed", "gold"}
