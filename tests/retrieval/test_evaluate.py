import subprocess
import sys

import pytest

from ragkit.errors import ModelLoadError
from ragkit.retrieval.evaluate import best_chunk_per_document, evaluate_beir
from ragkit.retrieval.encoder import Encoder, SentenceEncoder, resolve_model_path


def test_best_chunk_per_document_keeps_first_k_documents():
    ranking = [("a#1", 0.9), ("b#0", 0.8), ("a#0", 0.7), ("c#0", 0.6), ("d#0", 0.5)]
    docs = best_chunk_per_document(ranking, {c: c.split("#")[0] for c, _ in ranking}, k=3)
    assert docs == {"a": 0.9, "b": 0.8, "c": 0.6}


def test_unknown_retriever_and_missing_qrels(tmp_path):
    with pytest.raises(ValueError, match="unknown retrievers"):
        evaluate_beir(tmp_path, ["splade"])
    (tmp_path / "corpus.jsonl").write_text('{"_id": "1", "text": "x"}\n')
    with pytest.raises(Exception, match="missing qrels file"):
        evaluate_beir(tmp_path, ["bm25"])


def test_default_encoder_resolves_to_the_packaged_model(encoder):
    model_id, target = resolve_model_path("default")
    assert model_id == "sentence-transformers/all-MiniLM-L6-v2" and target.endswith("model")
    assert isinstance(encoder, Encoder) and encoder.dim == 384 and encoder.fingerprint


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load encoder"):
        SentenceEncoder.from_pretrained(str(tmp_path / "no-model-here"))


@pytest.mark.slow
def test_example_script_runs(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "tea.md").write_text("# Tea\n\nGreen tea is steamed; black tea is oxidised.")
    (tmp_path / "docs" / "bikes.txt").write_text("Bicycle gears and chains need oil.")
    out = subprocess.run([sys.executable, "examples/search_docs.py", str(tmp_path / "docs"), "how is black tea made",
                          str(tmp_path / "idx")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("1. Tea [tea.md#0]")
