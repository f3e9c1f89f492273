"""Black-box knowledge injection and the wiring of domain adapters into the pipeline, with the real
packaged MiniLM (filter) and SmolLM2 (LLM and small model; short greedy generations)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from ragkit import Index
from ragkit.adaptation import AdapterError, LogitsAdapter, PromptAdapter, load_adapter
from ragkit.adaptation.knowledge import (KnowledgeAdapter, background_corpus, clean_candidate, make_knowledge_adapter,
                                       split_overlap)
from ragkit.cli import app
from ragkit.config import KNOWLEDGE_HEADER, ConfigError, PipelineConfig
from ragkit.generation.evaluate import evaluate_qa
from ragkit.generation.llm import GenerationConfig
from ragkit.generation.llm.openai_compat import OpenAICompatLLM
from ragkit.generation.pipeline import Pipeline

SHORT = GenerationConfig(max_new_tokens=12)
QUESTION = "Does aspirin reduce the risk of heart attack?"
HITS_TEXT = ["Aspirin reduced the risk of heart attack by 20 percent in a trial of 5000 adults.",
             "Low-dose aspirin therapy lowers myocardial infarction rates in patients with cardiovascular disease."]


@pytest.fixture(scope="module")
def index(encoder):
    from ragkit.data.corpus import Document

    docs = [Document(str(i), t, "", f"doc{i}") for i, t in enumerate(HITS_TEXT + [
        "The stock market closed higher on Friday after strong earnings reports.",
        "Vitamin C supplements showed no effect on the duration of the common cold."])]
    return Index.build(docs, encoder=encoder)


class StaticKnowledge(PromptAdapter):
    """A prompt adapter with a fixed text (no model)."""

    kind = "static"

    def __init__(self, text: str, name: str = "static") -> None:
        super().__init__({"params": {}})
        self.text, self._name, self.calls = text, name, 0

    @property
    def name(self) -> str:
        return self._name

    def knowledge(self, question, hits=None):
        self.calls += 1
        return self.text


class BanToken(LogitsAdapter):
    """A white-box test adapter: the banned token id never wins."""

    kind = "ban"

    def __init__(self, token_id: int) -> None:
        super().__init__({"params": {"token_id": token_id}})
        self.token_id = token_id

    def logits_processor(self, llm):
        ban = self.token_id

        def process(input_ids, scores):
            scores = scores.clone()
            scores[:, ban] = float("-inf")
            return scores
        return process


# -- the filter --------------------------------------------------------------------------------------
def test_filter_drops_irrelevant_inconsistent_degenerate_and_duplicate_candidates(encoder, index):
    adapter = KnowledgeAdapter(sm=object(), encoder=encoder)  # the SM is not used by select()
    candidates = [
        "Aspirin lowers the risk of a heart attack by inhibiting platelet aggregation in the blood.",
        "Aspirin lowers the risk of heart attacks by inhibiting platelet aggregation in the blood.",  # near-duplicate
        "The football team won the championship after a dramatic penalty shootout in extra time.",    # irrelevant
        "aspirin aspirin aspirin aspirin aspirin aspirin aspirin aspirin aspirin",                    # degenerate loop
        "Heart attack risk in adults is studied in cardiology trials of aspirin and statin therapy.",
    ]
    hits = index.search(QUESTION, 2)
    kept = adapter.select(QUESTION, candidates, hits)
    reasons = {r["text"][:30]: r["reason"] for r in adapter.last}
    assert candidates[4] in kept and candidates[2] not in kept and candidates[3] not in kept
    assert not (candidates[0] in kept and candidates[1] in kept)  # one of the near-duplicates only
    assert reasons[candidates[2][:30]] == "irrelevant" and reasons[candidates[3][:30]] == "degenerate"
    assert "duplicate" in reasons.values() and len(kept) == 2
    assert all(r["relevance"] is not None and r["consistency"] is not None for r in adapter.last)
    # consistency: a relevant-sounding candidate far from the retrieved evidence is rejected
    strict = KnowledgeAdapter(sm=object(), encoder=encoder)
    strict.params.update(min_relevance=0.0, min_consistency=0.5)
    off_topic = "Questions about risk can be answered by asking whether something reduces it or not, in general."
    assert strict.select(QUESTION, [off_topic], hits) == [] and strict.last[0]["reason"] == "inconsistent"
    assert strict.select(QUESTION, [off_topic], None) == [off_topic]  # no hits (closed book): no consistency check
    # unfiltered: the first max_passages distinct candidates in generation order
    with adapter.filtering(False):
        assert adapter.select(QUESTION, candidates + [candidates[0]], hits) == candidates[:2]
    assert adapter.params["filter"] is True


def test_clean_candidate_cuts_at_sentences_and_next_question():
    assert clean_candidate(" Aspirin helps. It also thins blood and the\nQuestion: next?") == "Aspirin helps."
    assert clean_candidate("Aspirin helps the heart. More text without end") == "Aspirin helps the heart."
    assert clean_candidate("no sentence end") == "no sentence end"


# -- packing ------------------------------------------------------------------------------------------
def test_knowledge_section_is_packed_before_sources_within_the_budget_and_reported(index, llm):
    long = "- " + " ".join(["Aspirin irreversibly inhibits cyclooxygenase in platelets."] * 120)
    static = StaticKnowledge(long)
    pipe = Pipeline(index, llm, PipelineConfig(generation=SHORT), adapters=[static])
    hits = index.search(QUESTION, 3)
    packed = pipe.prepare(QUESTION, hits)
    user = packed.messages[-1]["content"]
    assert user.startswith(KNOWLEDGE_HEADER) and user.index(KNOWLEDGE_HEADER) < user.index("Sources:")
    assert packed.knowledge and long.startswith(packed.knowledge) and len(packed.knowledge) < len(long)
    assert llm.count_tokens(packed.knowledge) <= pipe.config.prompt.knowledge_max_tokens
    assert len(packed.sources) == 3  # the sources still fit
    # a tight context: knowledge takes at most half of what is left, sources are cut, nothing overflows
    saved = llm.context_window
    try:
        llm.context_window = 520
        tight = pipe.prepare(QUESTION, hits)
    finally:
        llm.context_window = saved
    assert llm.count_tokens(llm.render(tight.messages)) <= 520 - SHORT.max_new_tokens + 8
    assert 0 < llm.count_tokens(tight.knowledge) < llm.count_tokens(packed.knowledge)
    # no section when asked for none, and "{knowledge}" in the template places it
    assert KNOWLEDGE_HEADER not in pipe.prepare(QUESTION, hits, knowledge="").messages[-1]["content"]
    pipe.config.prompt.template = "Question: {question}\n\n{knowledge}\n\nSources:\n\n{sources}"
    user = pipe.prepare(QUESTION, hits).messages[-1]["content"]
    assert user.startswith("Question:") and user.index(KNOWLEDGE_HEADER) < user.index("Sources:")


# -- config ---------------------------------------------------------------------------------------
def test_adapters_config_parsing_and_errors_name_the_field(tmp_path):
    c = PipelineConfig.from_dict({"adapters": ["a", {"adapter": "b", "alpha": 0.2}]})
    assert c.adapter_specs() == [("a", {}), ("b", {"alpha": 0.2})]
    with pytest.raises(ConfigError, match=r"config\.adapters\[1\]: a mapping entry needs 'adapter: NAME_OR_PATH'"):
        PipelineConfig.from_dict({"adapters": ["a", {"alpha": 0.2}]})
    with pytest.raises(ConfigError, match=r"p\.yaml\.adapters\[0\]: expected an adapter name or a mapping"):
        (tmp_path / "p.yaml").write_text("adapters: [3]\n")
        PipelineConfig.from_yaml(tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match=r"config\.adapters: expected a list"):
        PipelineConfig.from_dict({"adapters": 7})
    # a knowledge adapter folder named in YAML, with a parameter override
    make_knowledge_adapter(tmp_path / "kn", "default", samples=1, max_new_tokens=16)
    (tmp_path / "p.yaml").write_text(f"adapters:\n  - {{adapter: {tmp_path / 'kn'}, min_relevance: 0.5}}\n")
    from ragkit.generation.pipeline import load_adapters

    (a,) = load_adapters(PipelineConfig.from_yaml(tmp_path / "p.yaml"))
    assert isinstance(a, KnowledgeAdapter) and a.params["min_relevance"] == 0.5 and a.params["samples"] == 1
    with pytest.raises(AdapterError, match="unknown parameter"):
        load_adapter(tmp_path / "kn", alhpa=1)
    with pytest.raises(AdapterError, match="no adapter 'missing-adapter'"):
        load_adapters(PipelineConfig.from_dict({"adapters": ["missing-adapter"]}))


# -- stacking with the real models -------------------------------------------------------------------
@pytest.mark.slow
def test_logits_and_prompt_adapters_stack_in_one_pipeline(index, llm, tmp_path, encoder):
    free = Pipeline(index, llm, PipelineConfig(generation=SHORT)).ask(QUESTION)
    first = llm.tokenizer(free.text, add_special_tokens=False)["input_ids"][0]
    kn = load_adapter(make_knowledge_adapter(tmp_path / "kn", "default", samples=1, max_new_tokens=24,
                                             min_relevance=0.0, min_consistency=0.0, min_words=1))
    kn._sm, kn._encoder = llm, encoder  # the packaged SmolLM2 as the SM, loaded once
    ban = BanToken(first)
    pipe = Pipeline(index, llm, PipelineConfig(generation=SHORT), adapters=[ban, kn])
    try:
        assert llm.logits_adapters == [ban]
        answer = pipe.ask(QUESTION)
        assert answer.knowledge and answer.knowledge.startswith("- ") and answer.adapters == ["ban", "kn"]
        assert "knowledge_s" in answer.timings
        ids = llm.tokenizer(answer.text, add_special_tokens=False)["input_ids"]
        assert ids and ids[0] != first and answer.text != free.text  # the processor ran during generation
        assert float(llm.next_token_logits("Hello")[first]) == float("-inf")  # and on label scoring's logits
        assert kn.candidates(QUESTION) == kn.candidates(QUESTION) and len(kn._cache) == 1  # cached per question
    finally:
        llm.logits_adapters.clear()
    assert answer.to_dict()["knowledge"] == answer.knowledge


class _Remote(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that answers whether it saw a knowledge section."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        saw = any(KNOWLEDGE_HEADER in m["content"] for m in req["messages"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in ["saw knowledge: ", "yes" if saw else "no"]:
            self.wfile.write(f"data: {json.dumps({'choices': [{'delta': {'content': piece}}]})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


def test_remote_backend_takes_prompt_adapters_and_refuses_logits_adapters(index):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Remote)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = OpenAICompatLLM(f"http://127.0.0.1:{server.server_address[1]}/v1", "remote-model", retries=0)
        with pytest.raises(AdapterError, match=r"adapter 'ban' \(kind ban\) adjusts the LLM's logits.*needs a local "
                                               r"transformers model.*remote-model"):
            Pipeline(index, remote, PipelineConfig(generation=SHORT), adapters=[BanToken(5)])
        pipe = Pipeline(index, remote, PipelineConfig(generation=SHORT), adapters=[StaticKnowledge("- Aspirin helps.")])
        answer = pipe.ask(QUESTION)
        assert answer.text == "saw knowledge: yes" and answer.knowledge == "- Aspirin helps."
        # ragkit serve over that pipeline lists the adapter and reports the knowledge section
        pytest.importorskip("fastapi")
        from fastapi.testclient import TestClient

        from ragkit.server import create_app

        client = TestClient(create_app(pipe))
        models = client.get("/v1/models").json()["data"]
        assert models[0]["ragkit"]["adapters"][0]["name"] == "static"
        r = client.post("/v1/chat/completions", json={"model": "ragkit", "max_tokens": 8,
                                                      "messages": [{"role": "user", "content": QUESTION}]}).json()
        assert r["choices"][0]["message"]["content"] == "saw knowledge: yes"
        assert r["ragkit"]["knowledge"] == "- Aspirin helps." and r["ragkit"]["adapters"] == ["static"]
    finally:
        server.shutdown()


# -- eval-qa and the CLI -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qa_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    (d / "qrels").mkdir()
    docs = [("1", HITS_TEXT[0]), ("2", "Vitamin C supplements showed no effect on the duration of the common cold."),
            ("3", "Regular exercise lowered blood pressure in older patients over six months.")]
    qs = [("q1", QUESTION, "1", "yes"), ("q2", "Do vitamin C supplements shorten colds?", "2", "no"),
          ("q3", "Does exercise lower blood pressure in older patients?", "3", "yes")]
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs))
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t, _, _ in qs))
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + f"{qs[0][0]}\t1\t1\n{qs[1][0]}\t2\t1\n")
    (d / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + f"{qs[2][0]}\t3\t1\n")
    (d / "answers.jsonl").write_text("".join(json.dumps({"_id": q, "answers": ["x"], "final_decision": lab}) + "\n"
                                             for q, _, _, lab in qs))
    return d


def test_eval_qa_knowledge_conditions(qa_folder, llm, encoder):
    static = StaticKnowledge("- Aspirin reduces heart attack risk.")
    static.filtering = lambda on: __import__("contextlib").nullcontext()
    pipe = Pipeline(None, llm, PipelineConfig(), adapters=[static])
    pipe.config.retrieval.k = 1
    res = evaluate_qa(qa_folder, pipe, explain_tokens=0, keep_predictions=True,
                      conditions=["retrieval", "knowledge", "knowledge_unfiltered", "closed_knowledge"])
    assert set(res) == {"retrieval", "knowledge", "knowledge_unfiltered", "closed_knowledge"}
    assert res["knowledge"]["with_knowledge"] == 2 and "knowledge_s" in res["knowledge"]
    assert "with_knowledge" not in res["retrieval"] and set(res["retrieval"]["by_question"]) == {"q1", "q2"}
    assert static.calls == 6  # asked only by the knowledge conditions
    with pytest.raises(ValueError, match="need a black-box adapter"):
        evaluate_qa(qa_folder, Pipeline(None, llm, PipelineConfig()), conditions=["knowledge"])
    # leak check and SM training text from the train split only
    assert split_overlap(qa_folder)["shared_ids"] == 0
    assert [r["id"] for r in background_corpus(qa_folder, "train")] == ["q3:3"]


@pytest.mark.slow
def test_cli_eval_qa_and_ask_with_an_adapter(qa_folder, tmp_path):
    make_knowledge_adapter(tmp_path / "kn", "default", samples=1, max_new_tokens=16, min_relevance=0.0,
                           min_consistency=0.0, min_words=1)
    r = CliRunner().invoke(app, ["eval-qa", str(qa_folder), "--adapter", str(tmp_path / "kn"), "--limit", "1",
                                 "--explain-tokens", "0", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "r.json").read_text())
    assert list(res["conditions"]) == ["closed", "retrieval", "knowledge", "knowledge_unfiltered"]
    assert res["adapters"][0]["kind"] == "knowledge" and res["conditions"]["knowledge"]["questions"] == 1
    r = CliRunner().invoke(app, ["ask", QUESTION, "--adapter", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "no adapter" in r.output


def test_llama_index_knowledge_postprocessor_adds_one_labelled_node(index):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import QueryBundle

    from ragkit.integrations.llama_index import RagkitKnowledgePostprocessor, RagkitRetriever

    nodes = RagkitRetriever(index, k=2).retrieve(QUESTION)
    static = StaticKnowledge("- Aspirin inhibits platelets.", name="kn")
    out = RagkitKnowledgePostprocessor(static).postprocess_nodes(nodes, QueryBundle(QUESTION))
    assert len(out) == 3 and out[1:] == nodes and out[0].node.metadata["ragkit_knowledge"] is True
    assert out[0].node.get_content().startswith(KNOWLEDGE_HEADER) and "platelets" in out[0].node.get_content()
    assert RagkitKnowledgePostprocessor(StaticKnowledge("")).postprocess_nodes(nodes, QueryBundle(QUESTION)) == nodes
    with pytest.raises(ValueError, match="not a black-box"):
        RagkitKnowledgePostprocessor(BanToken(1))
