"""`ragkit tune`: question synthesis (filter, cache/resume), the leak guard, pseudo-labels, and a tuned
encoder that round-trips through an index."""
import json

import pytest

from ragkit import Index, IndexConfig
from ragkit.errors import CorpusError, IndexFormatError
from ragkit.generation.llm.base import Generation
from ragkit.retrieval.tune import (TuneConfig, check_corpus_input, clean_question, filter_questions, parse_questions,
                                   pseudo_label, split_by_chunk, synthesize_questions, train_dense)


@pytest.fixture(scope="module")
def docs(short_topic_docs):
    return short_topic_docs[:40]


@pytest.fixture(scope="module")
def index(docs, encoder):
    return Index.build(docs, encoder=encoder)


class ScriptedLLM:
    """Answers each question prompt from a table keyed by the passage's first words; counts calls."""

    model_id = "scripted"

    def __init__(self, answers):
        self.answers, self.calls = answers, 0

    def generate(self, prompt, config=None):
        self.calls += 1
        passage = prompt[-1]["content"]
        for key, text in self.answers.items():
            if key in passage:
                return Generation(text, 10, 5, "stop")
        return Generation("I do not know.", 10, 4, "stop")


def test_clean_question():
    assert clean_question('Question: What does the "try" statement do? It handles...') == 'What does the "try" statement do?'
    assert clean_question("1. How are exceptions raised?\n2. Why?") == "How are exceptions raised?"
    assert clean_question("The passage explains loops.") == ""


def test_parse_questions_reads_one_per_line():
    reply = "1. What does a loop do?\n2. What does a loop do?\n\n- Why use a generator? Because...\nNo question here.\n3) How?"
    assert parse_questions(reply, 3) == ["What does a loop do?", "Why use a generator?", "How?"]
    assert parse_questions(reply, 2) == ["What does a loop do?", "Why use a generator?"]
    assert parse_questions(reply, 1) == ["What does a loop do?"]
    assert parse_questions("Loops repeat.", 3) == []


def test_held_out_questions_share_no_chunk_with_training():
    import random

    records = [{"chunk_id": f"c{i // 3}", "question": f"q{i}?"} for i in range(30)]  # 10 chunks, 3 questions each
    held, rest = split_by_chunk(records, 0.2, random.Random(0))
    assert len(held) == 6 and len(held) + len(rest) == 30
    assert not {r["chunk_id"] for r in held} & {r["chunk_id"] for r in rest}


def test_leak_guard_refuses_queries_and_qrels(tmp_path):
    beir = tmp_path / "set"
    (beir / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (beir / name).write_text('{"_id": "1", "text": "x"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t1\t1\n")
    assert check_corpus_input(beir) == beir
    from ragkit.data.corpus import load_corpus

    assert [d.id for d in load_corpus(check_corpus_input(beir))] == ["1"]  # the corpus, not the queries
    with pytest.raises(CorpusError, match="queries or relevance judgements"):
        check_corpus_input(beir / "queries.jsonl")
    with pytest.raises(CorpusError, match="queries or relevance judgements"):
        check_corpus_input(beir / "qrels" / "test.tsv")


def test_synthesis_is_cached_and_resumes(index, tmp_path):
    chunks = list(index.chunks)[:6]
    llm = ScriptedLLM({c.text.split()[0]: f"1. What is said about {c.title}?\n2. Why {c.id}?" for c in chunks})
    out = tmp_path / "queries.jsonl"
    config = TuneConfig(workers=2, questions_per_chunk=2)
    first = synthesize_questions(chunks[:4], llm, out, config)
    assert llm.calls == 4 and len(out.read_text().splitlines()) == 4  # one reply per chunk
    assert [r["question"] for r in first[:2]] == [f"What is said about {chunks[0].title}?", f"Why {chunks[0].id}?"]
    again = synthesize_questions(chunks, llm, out, config)  # 4 cached, 2 new
    assert llm.calls == 6 and [r["chunk_id"] for r in again] == [c.id for c in chunks for _ in range(2)]
    assert again[:8] == first
    synthesize_questions(chunks[:1], llm, out, TuneConfig(workers=2, questions_per_chunk=3))
    assert llm.calls == 7  # asked for another number of questions: asked again


def test_a_one_question_cache_of_an_earlier_version_is_read(index, tmp_path):
    c = list(index.chunks)[0]
    out = tmp_path / "queries.jsonl"
    out.write_text(json.dumps({"chunk_id": c.id, "doc_id": c.doc_id, "raw": "Why?", "question": "Why is it so?"}) + "\n")
    llm = ScriptedLLM({})
    got = synthesize_questions([c], llm, out, TuneConfig(workers=1, questions_per_chunk=1))
    assert llm.calls == 0 and [r["question"] for r in got] == ["Why is it so?"]


def test_filter_counts_every_reason(index):
    chunks = list(index.chunks)
    good = [c for c in chunks if c.title][:3]
    source, sentence = next((c, s) for c in chunks for s in c.text.split(". ") if 8 < len(s.split()) <= 25)
    records = [
        {"chunk_id": good[0].id, "doc_id": good[0].doc_id, "raw": "", "question": f"What is the {good[0].title} statement?"},
        {"chunk_id": good[1].id, "doc_id": good[1].doc_id, "raw": "", "question": f"What is the {good[0].title} statement?"},
        {"chunk_id": good[1].id, "doc_id": good[1].doc_id, "raw": "", "question": "Why?"},
        {"chunk_id": good[2].id, "doc_id": good[2].doc_id, "raw": "", "question": ""},
        {"chunk_id": good[2].id, "doc_id": good[2].doc_id, "raw": "", "question": "What is the purpose of this passage?"},
        {"chunk_id": source.id, "doc_id": source.doc_id, "raw": "", "question": sentence + "?"},
        {"chunk_id": chunks[-1].id, "doc_id": chunks[-1].doc_id, "raw": "",
         "question": f"How does the {good[0].title} statement work in Python?"},
    ]
    kept, counts = filter_questions(records, index, TuneConfig(round_trip_k=3))
    assert counts["duplicate"] == 1 and counts["length"] == 1 and counts["no_question"] == 1
    assert counts["copied"] == 1 and counts["generic"] == 1
    assert counts["round_trip"] == 1  # a question about another chunk's topic: its own chunk is not found
    assert [r["chunk_id"] for r in kept] == [good[0].id] and kept[0]["round_trip_rank"] <= 3


def test_pseudo_labels_put_the_source_first(index):
    c = next(c for c in index.chunks if c.title)
    labelled = pseudo_label([{"question": f"What does the {c.title} statement do?", "chunk_id": c.id,
                              "doc_id": c.doc_id}], index, TuneConfig(candidates=6))
    e = labelled[0]
    assert e["candidates"][0] == c.id and len(e["candidates"]) == 6 and len(set(e["candidates"])) == 6
    assert e["scores"][0] >= max(e["scores"][1:]) + 1.0 - 1e-6


@pytest.mark.slow
def test_tuned_encoder_round_trips_through_an_index(index, docs, tmp_path, encoder):
    texts = {c.id: c.indexed_text for c in index.chunks}
    questions = [{"question": f"What does the {c.title} statement do?", "chunk_id": c.id, "doc_id": c.doc_id}
                 for c in list(index.chunks)[:16] if c.title]
    examples = pseudo_label(questions, index, TuneConfig(candidates=4))
    summary = train_dense(examples, texts, "default", tmp_path / "dense", TuneConfig(dense_steps=3, dense_batch=4))
    assert summary["steps"] == 3 and (tmp_path / "dense" / "modules.json").is_file()
    assert not (tmp_path / "dense" / "train_state").exists()
    again = train_dense(examples, texts, "default", tmp_path / "dense", TuneConfig(dense_steps=3, dense_batch=4))
    assert again["reused"] and again["steps"] == 3  # a finished run with the same data is not trained again
    assert not train_dense(examples, texts, "default", tmp_path / "d2", TuneConfig(dense_steps=2, dense_batch=4)).get("reused")
    built = Index.build(docs[:10], config=IndexConfig(encoder=str(tmp_path / "dense")))
    path = built.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["config"]["encoder"] == str(tmp_path / "dense") and manifest["encoder"]["fingerprint"]
    assert manifest["encoder"]["fingerprint"] != encoder.fingerprint  # the weights changed
    back = Index.load(path)  # loads the tuned encoder the manifest names
    q = "exception handling"
    assert [h.chunk_id for h in back.search(q, 3, "dense")] == [h.chunk_id for h in built.search(q, 3, "dense")]
    with pytest.raises(IndexFormatError, match="another encoder"):
        Index.load(path, encoder=encoder)


def test_fusion_is_chosen_on_synthetic_questions_and_a_small_lead_keeps_the_default(index):
    from ragkit.retrieval.tune import FUSION_GRID, choose_fusion

    chunks = [c for c in index.chunks if c.title][:12]
    questions = [{"question": f"{c.title} statement", "chunk_id": c.id, "doc_id": c.doc_id} for c in chunks]
    res = choose_fusion(index, questions)
    assert len(res["candidates"]) == len(FUSION_GRID) + 2 and res["questions"] == 12
    mrr = {json.dumps(r["setting"], sort_keys=True): r["mrr@10"] for r in res["candidates"]}
    assert res["chosen_mrr@10"] == mrr[json.dumps(res["chosen"], sort_keys=True)]
    assert res["best"]["members"] and mrr[json.dumps(res["best"], sort_keys=True)] == max(mrr.values())
    if res["chosen"] != FUSION_GRID[0]:  # another setting is chosen only with a clear lead
        assert res["chosen_mrr@10"] > mrr[json.dumps(FUSION_GRID[0], sort_keys=True)]
    assert FUSION_GRID[0] == {"members": ["bm25", "dense"], "method": "rrf", "rrf_k": 60,
                              "weights": {"bm25": 0.5, "dense": 0.5}}


def test_a_lead_counts_only_beyond_its_noise():
    import numpy as np

    from ragkit.retrieval.tune import clearly_better

    base = np.array([0.0, 0.5, 1.0, 0.0, 1.0, 0.5] * 5)
    assert not clearly_better(base, base)
    noisy = base.copy()
    noisy[:2] = [1.0, 1.0]  # two of 30 questions better: a lead of 0.05, within noise
    assert noisy.mean() > base.mean() and not clearly_better(noisy, base)
    better = np.minimum(1.0, base + 0.5)  # every question at least as good, most much better
    assert clearly_better(better, base) and not clearly_better(base, better)


@pytest.mark.slow
def test_heldout_check_keeps_a_student_only_when_it_does_not_lose(index, encoder, tmp_path):
    """The untuned model saved as the "tuned" one ties with itself (kept); a damaged encoder loses to
    the untuned one on held-out synthetic questions (reported, so the tuned index keeps the untuned)."""
    import torch

    from ragkit.retrieval.colbert.model import ColBERTModel
    from ragkit.retrieval.tune import heldout_check

    texts = {c.id: c.indexed_text for c in index.chunks}
    questions = [{"question": f"What does the {c.title} statement do?", "chunk_id": c.id, "doc_id": c.doc_id}
                 for c in list(index.chunks) if c.title][:10]
    encoder.model.save(str(tmp_path / "same"))
    ColBERTModel.from_pretrained("default").save_pretrained(tmp_path / "colbert")
    same = heldout_check(questions, index, tmp_path / "same", tmp_path / "colbert", texts)
    assert same["dense"]["tuned"] == same["dense"]["untuned"] > 0.3 and same["dense"]["kept"] == "tuned"
    assert same["colbert"]["tuned"] == same["colbert"]["untuned"] > 0.3 and same["colbert"]["kept"] == "tuned"
    from sentence_transformers import SentenceTransformer

    bad = SentenceTransformer(str(tmp_path / "same"), device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, w in bad.named_parameters():
            if "encoder.layer" in name:
                w.copy_(torch.randn(w.shape, generator=g) * w.std())
    bad.save(str(tmp_path / "bad"))
    worse = heldout_check(questions, index, tmp_path / "bad", None, texts)
    assert worse["dense"]["tuned"] < worse["dense"]["untuned"] and worse["dense"]["kept"] == "untuned"
    assert "colbert" not in worse


@pytest.mark.slow
def test_tune_end_to_end_reuses_what_did_not_change(docs, encoder, tmp_path):
    """The whole run with a scripted question writer: every file of the contract is written, the
    summary counts add up, and the tuned index takes BM25 (and any student kept untuned) from the
    untuned index instead of indexing it again, over the very same chunks."""
    from ragkit.retrieval.tune import tune

    untuned = Index.build(docs[:30], config=IndexConfig(retrievers=["bm25", "dense", "colbert"]), encoder=encoder)
    answers = {" ".join(c.text.split()[:8]): "What about " + " ".join(c.text.split()[2:6]) + "?" for c in untuned.chunks}
    config = TuneConfig(queries=24, dense_steps=2, colbert_steps=2, dense_batch=4, candidates=4, heldout=0.3,
                        workers=1, threads=1)
    summary, tuned = tune(docs[:30], tmp_path / "t", config, llm=ScriptedLLM(answers), index=untuned,
                          return_index=True)
    for f in ("queries.jsonl", "examples.jsonl", "fusion.json", "tune.json", "dense/modules.json"):
        assert (tmp_path / "t" / f).is_file(), f
    assert (tmp_path / "t" / "colbert").is_dir()
    counts = summary["filter"]
    assert counts["generated"] == 24 and counts["kept"] + counts["heldout"] <= 24 and counts["heldout"] > 0
    assert set(summary["use"]) == {"dense", "colbert"} and summary["heldout_check"]["questions"] == counts["heldout"]
    assert tuned.retrievers["bm25"] is untuned.retrievers["bm25"]
    for name, verdict in summary["use"].items():
        assert (tuned.retrievers[name] is untuned.retrievers[name]) == (verdict == "untuned")
    assert [c.id for c in tuned.chunks] == [c.id for c in untuned.chunks]
    for name in ("bm25", "dense", "colbert", "hybrid"):
        assert tuned.search("exception handling", 3, name)
    assert set(tuned.timings) >= {"chunking", "bm25", "dense", "colbert"}  # ragkit eval reads every member's
