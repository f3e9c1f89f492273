"""Dynamic batching (`ragkit.generation.llm.batching`) on the packaged SmolLM2: concurrent
generations share one batch and give exactly what each gives alone."""
from __future__ import annotations

import threading
import time

import pytest

from ragkit.errors import ServerBusyError
from ragkit.generation.llm import GenerationConfig
from ragkit.generation.llm.batching import supports_batching

QUESTIONS = ["How do I read a text file line by line in Python?", "What is a generator?",
             "Explain the with statement in Python, with an example of opening a file and what happens "
             "when the block raises an exception."]


def chat(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


@pytest.fixture
def batched(llm):
    llm.enable_batching(max_batch=8, max_queue=4)
    return llm


def run_concurrently(llm, jobs: list[tuple[list[dict], GenerationConfig, float]]) -> list[tuple[str, str, int]]:
    """Each job (prompt, config, start delay) streamed in its own thread: (text, finish, tokens)."""
    results: list = [None] * len(jobs)

    def run(i: int) -> None:
        prompt, config, delay = jobs[i]
        time.sleep(delay)
        stream = llm.stream(prompt, config)
        results[i] = ("".join(stream), stream.finish_reason, stream.completion_tokens)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_greedy_generations_equal_serial_ones(llm):
    config = GenerationConfig(max_new_tokens=24)
    serial = [llm.generate(chat(q), config) for q in QUESTIONS]
    llm.enable_batching(max_batch=8, max_queue=4)
    # the third arrives while the first two decode: it joins their batch mid-way
    got = run_concurrently(llm, [(chat(QUESTIONS[0]), config, 0.0), (chat(QUESTIONS[1]), config, 0.0),
                                 (chat(QUESTIONS[2]), config, 0.6)])
    assert llm.batcher.peak_batch >= 2, "the generations never shared a batch"
    for alone, (text, finish, tokens) in zip(serial, got):
        assert text == alone.text and finish == alone.finish_reason and tokens == alone.completion_tokens


def test_rows_with_different_limits_stop_strings_and_eos_leave_without_disturbing_others(llm):
    short = GenerationConfig(max_new_tokens=5)
    stop = GenerationConfig(max_new_tokens=40, stop=["file"])
    long = GenerationConfig(max_new_tokens=30)
    jobs = [(chat(QUESTIONS[0]), short, 0.0), (chat(QUESTIONS[0]), stop, 0.0), (chat(QUESTIONS[2]), long, 0.0),
            (chat("Hi!"), GenerationConfig(max_new_tokens=60), 0.0)]
    serial = [llm.generate(p, c) for p, c, _ in jobs]
    llm.enable_batching(max_batch=8, max_queue=4)
    got = run_concurrently(llm, jobs)
    assert got[0][1] == "length" and got[0][2] == 5
    assert got[1][1] == "stop" and "file" not in got[1][0]
    assert serial[3].finish_reason == "stop" and serial[3].completion_tokens < 60  # ends by end-of-text
    for alone, (text, finish, tokens) in zip(serial, got):
        assert (text, finish) == (alone.text, alone.finish_reason)
    # the batch stops decoding a row at its stop string (the serial path decodes on, then cuts)
    assert got[1][2] < serial[1].completion_tokens
    assert [g[2] for g in got[::2]] + [got[3][2]] == [s.completion_tokens for s in serial[::2]] + [serial[3].completion_tokens]


def test_a_cancelled_row_leaves_and_the_others_finish_unchanged(batched):
    config = GenerationConfig(max_new_tokens=24)
    alone = batched.generate(chat(QUESTIONS[1]), config)
    dropped = batched.stream(chat(QUESTIONS[0]), GenerationConfig(max_new_tokens=200))
    kept = batched.stream(chat(QUESTIONS[1]), config)
    first = next(iter(dropped))
    assert first
    dropped.cancel()
    assert "".join(kept) == alone.text
    rest = "".join(dropped)  # what was already produced, then the end
    assert dropped.finish_reason == "cancelled" and dropped.completion_tokens < 200, rest
    deadline = time.time() + 10
    while batched.batcher.status()["decoding"] and time.time() < deadline:
        time.sleep(0.05)
    assert batched.batcher.status() | {"steps": 0, "peak_batch": 0} == {"decoding": 0, "waiting": 0, "steps": 0,
                                                                       "peak_batch": 0}


def test_seeded_sampling_is_reproducible_inside_a_batch(batched):
    config = GenerationConfig(max_new_tokens=16, temperature=0.9, top_p=0.9, seed=7)
    got = run_concurrently(batched, [(chat(QUESTIONS[0]), config, 0.0), (chat(QUESTIONS[0]), config, 0.0),
                                     (chat(QUESTIONS[1]), GenerationConfig(max_new_tokens=16), 0.0)])
    assert got[0] == got[1] and got[0][2] == 16


def test_a_full_batch_and_queue_answer_busy_at_once_never_wait(llm):
    llm.enable_batching(max_batch=2, max_queue=1)
    running = [llm.stream(chat(q), GenerationConfig(max_new_tokens=200)) for q in QUESTIONS[:2]]
    for stream in running:
        assert next(iter(stream))  # decoding: both rows are taken
    waiting = llm.stream(chat(QUESTIONS[1]), GenerationConfig(max_new_tokens=4))  # the one queue place
    t0 = time.perf_counter()
    with pytest.raises(ServerBusyError, match="busy") as busy:
        llm.stream(chat(QUESTIONS[2]), GenerationConfig(max_new_tokens=4))
    assert time.perf_counter() - t0 < 1.0 and busy.value.retry_after >= 1
    for stream in running:
        stream.cancel()
    assert "".join(waiting) and waiting.finish_reason == "length"  # the queued one then gets its turn


def test_the_serial_path_caps_its_queue_too(llm):
    llm.enable_batching(max_batch=1, max_queue=1)
    assert llm.batching()["mode"] == "serial"
    running = llm.stream(chat(QUESTIONS[0]), GenerationConfig(max_new_tokens=200))
    assert next(iter(running))  # holds the model
    waiting = llm.stream(chat(QUESTIONS[1]), GenerationConfig(max_new_tokens=4))
    text: list[str] = []
    reader = threading.Thread(target=lambda: text.append("".join(waiting)))
    reader.start()
    deadline = time.time() + 10
    while llm.activity.waiting < 1 and time.time() < deadline:
        time.sleep(0.02)
    with pytest.raises(ServerBusyError, match="busy"):
        llm.stream(chat(QUESTIONS[2]), GenerationConfig(max_new_tokens=4))
    running.cancel()
    reader.join(60)
    assert text and text[0] and waiting.finish_reason == "length"


def test_white_box_adapters_and_sliding_window_models_use_the_serial_path(batched):
    class Identity:
        name = "identity"

        def logits_processor(self, llm):
            return lambda ids, scores: scores

    assert batched.batching()["mode"] == "batched"
    batched.logits_adapters.append(Identity())
    info = batched.batching()
    assert info["mode"] == "serial" and "white-box" in info["reason"]
    before = batched.batcher.steps
    out = batched.generate(chat(QUESTIONS[1]), GenerationConfig(max_new_tokens=4))
    assert out.completion_tokens == 4 and batched.batcher.steps == before  # not through the batch

    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    tiny = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1)
    assert supports_batching(LlamaForCausalLM(LlamaConfig(**tiny)))
    assert not supports_batching(Gemma3ForCausalLM(Gemma3TextConfig(**tiny, head_dim=8, sliding_window=4)))
