"""Grounded generation with the real packaged SmolLM2 and MiniLM (short greedy answers)."""
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from ragkit import Index
from ragkit.cli import app
from ragkit.config import ConfigError, PipelineConfig
from ragkit.generation.llm import GenerationConfig
from ragkit.generation.pipeline import Pipeline, PromptTooLongError, parse_citations

SHORT = GenerationConfig(max_new_tokens=24)


@pytest.fixture(scope="module")
def index(encoder, topic_docs):
    return Index.build([replace(d, text=d.text[:2000]) for d in topic_docs[:40]], encoder=encoder)


def test_parse_citations():
    assert parse_citations("A [2] and B [1, 3][2] and [9].", 3) == ([2, 1, 3], [9])
    assert parse_citations("no markers", 3) == ([], [])


def test_sources_are_numbered_hits_and_citations_map_back(index, llm, topic_docs):
    pipe = Pipeline(index, llm, PipelineConfig(generation=SHORT))
    answer = pipe.ask("What does the assert statement do?")
    texts = {d.id: d.text for d in topic_docs}
    assert [s.n for s in answer.sources] == list(range(1, len(answer.sources) + 1)) and len(answer.sources) == 5
    assert answer.sources[0].doc_id == "topic:assert"
    for s in answer.sources:
        assert texts[s.doc_id][s.start:s.end] == s.text  # every source cites real characters of the document
    assert answer.text and answer.completion_tokens > 0 and answer.prompt_tokens > 500
    assert all(1 <= n <= len(answer.sources) for n in answer.citations)
    assert [s.n for s in answer.cited_sources] == answer.citations + answer.attributed
    # the model sees exactly these numbered sources
    prompt = llm.render(pipe.pack("What does the assert statement do?", index.search("What does the assert statement do?", 5))[0])
    assert all(f"[{s.n}] {s.title}" in prompt for s in answer.sources)


@pytest.mark.slow
def test_streaming_gives_the_same_answer_as_ask(index, llm):
    pipe = Pipeline(index, llm, PipelineConfig(generation=SHORT))
    stream = pipe.stream("How do for loops work?")
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == stream.answer.text == pipe.ask("How do for loops work?").text
    assert stream.answer.timings["first_token_s"] > 0


def test_context_budget_cuts_at_a_token_boundary_and_reports_drops(index, llm):
    pipe = Pipeline(index, llm, PipelineConfig(generation=SHORT))
    hits = index.search("class definitions and inheritance", 5)
    full = sum(llm.count_tokens(h.text) for h in hits)
    llm_context = llm.context_window
    try:
        llm.context_window = 24 + 160 + full // 3  # room for about a third of the sources
        messages, sources, dropped = pipe.pack("class definitions and inheritance", hits)
    finally:
        llm.context_window = llm_context
    kept = {s.chunk_id for s in sources}
    assert 0 < len(sources) and sum(len(s.text) for s in sources) < sum(len(h.text) for h in hits)
    assert dropped == [h.chunk_id for h in hits if h.chunk_id not in kept]  # every left-out source is reported
    assert len(llm.render(messages)) > 0 and llm.count_tokens(llm.render(messages)) <= 24 + 160 + full // 3 + 8
    by_id = {h.chunk_id: h for h in hits}
    for s in sources:
        h = by_id[s.chunk_id]
        assert h.text.startswith(s.text)
        if s.truncated:  # the cut falls on the end of a token of the full text
            ends = {e for _, e in llm.tokenizer(h.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]}
            assert len(s.text) in ends and len(s.text) < len(h.text)


def test_over_long_question_is_a_clear_error(index, llm):
    pipe = Pipeline(index, llm, PipelineConfig(generation=SHORT))
    with pytest.raises(PromptTooLongError, match="the question is too long"):
        pipe.ask("why " * 9000)


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("llm:\n  modle: x\n")
    with pytest.raises(ConfigError, match=r"p\.yaml\.llm: unknown field\(s\) modle"):
        PipelineConfig.from_yaml(bad)
    bad.write_text("retrieval: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        PipelineConfig.from_yaml(bad)


def test_cli_ask_streams_answer_and_sources(index, tmp_path):
    index.save(tmp_path / "idx")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"index: {tmp_path / 'idx'}\nretrieval:\n  k: 2\ngeneration:\n  max_new_tokens: 16\n")
    r = CliRunner().invoke(app, ["ask", "What does the assert statement do?", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "Sources" in r.output and "[1] assert" in r.output and "topic:assert#0" in r.output


def test_chat_history_is_in_the_prompt_and_the_cli_keeps_it(index, llm, tmp_path):
    pipe = Pipeline(index, llm, PipelineConfig(generation=SHORT))
    history = [{"role": "user", "content": "Tell me about assert."}, {"role": "assistant", "content": "It checks a condition."}]
    messages, _, _ = pipe.pack("When is it disabled?", index.search("assert disabled", 2), SHORT, history)
    assert messages[1:3] == history and messages[-1]["content"].endswith("Question: When is it disabled?")
    index.save(tmp_path / "idx")
    r = CliRunner().invoke(app, ["chat", "-i", str(tmp_path / "idx"), "-k", "1", "--max-new-tokens", "8"],
                           input="What does assert do?\nAnd raise?\nexit\n")
    assert r.exit_code == 0, r.output
    assert r.output.count("ragkit> ") == 2 and r.output.count("Sources") == 2


def test_attribution_matches_unmarked_sentences_to_their_source(encoder, index):
    from ragkit.generation.pipeline import Source, attribute

    hits = index.search("What does the assert statement do?", 3)
    sources = [Source(i, h.chunk_id, h.doc_id, h.title, h.source, h.start, h.end, h.text, h.score)
               for i, h in enumerate(hits, start=1)]
    copied = " ".join(sources[1].text.split()[:25]) + "."
    text = f"Something unrelated about cooking pasta in salted water. {copied} This one is cited [1]."
    got = attribute(encoder, text, sources, 0.5)
    assert [a["n"] for a in got] == [2] and got[0]["similarity"] > 0.55  # the cited and the unrelated one are left
    assert attribute(encoder, text, sources, 0.99) == []


@pytest.mark.slow
def test_answers_without_markers_get_attributed_sources_appended(index, llm):
    pipe = Pipeline(index, llm, PipelineConfig(generation=SHORT))
    stream = pipe.stream("What does the assert statement do?")
    streamed = "".join(stream)
    answer = stream.answer
    assert streamed == answer.text
    for a in answer.attributions:
        assert a["similarity"] >= 0.5 and a["sentence"] in answer.text and 1 <= a["n"] <= len(answer.sources)
    if answer.attributed:  # appended markers, after the model's own text
        assert answer.text.endswith("".join(f"[{n}]" for n in answer.attributed))
        assert [s.n for s in answer.cited_sources] == answer.citations + answer.attributed
    off = Pipeline(index, llm, PipelineConfig(generation=SHORT))
    off.config.prompt.attribute_min_similarity = 0
    plain = off.ask("What does the assert statement do?")
    assert plain.attributions == [] and answer.text.startswith(plain.text)
    assert plain.completion_tokens == answer.completion_tokens  # appended markers are not model tokens
