"""White-box domain adapters: exactness of the logits processors (identity cases, cached steps ==
full recompute == the batched evaluation path), kNN-LM datastores, tokenizer / vocabulary checks,
adapter folders, training loops (resume) and fitting. Tiny random models for plumbing, the real
SmolLM2 where behaviour matters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ragkit.adaptation import AdapterError, load_adapter
from ragkit.adaptation.evaluate import combine_chain, perplexities
from ragkit.adaptation.logits import (ContrastiveProcessor, KNNLMProcessor, ProductOfExpertsProcessor,
                                    ProxyTuningProcessor, capture_lm_head_input, create)
from tests.helpers import V, tiny_llm_folder, tiny_model, tiny_text, tiny_tokenizer  # noqa: F401 - test_training imports them from here


class FakeLLM:
    def __init__(self, model, tokenizer=None, model_id="tiny-llm"):
        self.model, self.tokenizer, self.model_id = model, tokenizer or tiny_tokenizer(), model_id


def step_scores(llm_model, processor, ids: torch.Tensor, start: int) -> list[torch.Tensor]:
    """The generation path: for each prefix ids[:, :t] (t = start..T), the LLM's last-position
    logits and the processor's cached one-token step."""
    outs = []
    with torch.no_grad():
        for t in range(start, ids.shape[1] + 1):
            scores = llm_model(input_ids=ids[:, :t]).logits[:, -1].float()
            outs.append(processor(ids[:, :t], scores.clone()))
    return outs


def batched_scores(llm_model, processor, ids: torch.Tensor) -> torch.Tensor:
    head = capture_lm_head_input(llm_model)
    with torch.no_grad():
        logits = llm_model(input_ids=ids).logits[0].float()
        hidden = head._ragkit_lm_head_input[0]
        return combine_chain([processor], logits, [processor.batched_side(ids, hidden)])


def random_knn(llm_model, n_keys: int = 200, seed: int = 0, key: str = "lm_head_input"):
    import faiss

    from ragkit.adaptation.logits import capture_key

    latest = capture_key(llm_model, key)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (1, n_keys + 1), generator=g)
    with torch.no_grad():
        llm_model(input_ids=ids)
    keys = latest()[0, :-1].float().contiguous().numpy()
    index = faiss.IndexFlatL2(keys.shape[1])
    index.add(keys)
    return index, ids[0, 1:].clone()


def same_head_sibling(model, seed: int = 7):
    """A copy of `model` with the same (tied) head and a perturbed body: a pair like a domain-tuned
    expert and its anti-expert trained from one small model with frozen embeddings."""
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in other.named_parameters():
            if "embed" not in name and "lm_head" not in name:
                w.add_(0.2 * torch.randn(w.shape, generator=g))
    return other


@pytest.fixture(scope="module")
def tiny():
    return {"llm": tiny_model(0), "expert": tiny_model(1), "anti": tiny_model(2), "wide": tiny_model(3, vocab=V + 16),
            "sibling": same_head_sibling(tiny_model(1)),
            "ids": torch.randint(3, V, (1, 14), generator=torch.Generator().manual_seed(5))}


def median_nearest_distance(llm_model, index, ids) -> float:
    head = capture_lm_head_input(llm_model)
    with torch.no_grad():
        llm_model(input_ids=ids)
    d, _ = index.search(head._ragkit_lm_head_input[0].float().contiguous().numpy(), 1)
    return float(torch.tensor(d[:, 0]).median())


def make_processors(t):
    index, values = random_knn(t["llm"])
    ffn_index, ffn_values = random_knn(t["llm"], key="ffn_input")
    edge = median_nearest_distance(t["llm"], index, t["ids"])
    return {"proxy": ProxyTuningProcessor(t["expert"], t["anti"], alpha=0.7),
            "poe": ProductOfExpertsProcessor(t["expert"], w=0.3),
            "mixture": ProductOfExpertsProcessor(t["expert"], w=0.3, mode="mixture"),
            "contrastive": ContrastiveProcessor(t["anti"], beta=0.5, alpha=0.1),
            "knn": KNNLMProcessor(index, values, t["llm"], k=8, temperature=5.0, lam=0.3),
            "proxy_padded": ProxyTuningProcessor(t["wide"], t["wide"], alpha=1.0),
            "proxy_shared": ProxyTuningProcessor(t["expert"], t["sibling"], alpha=0.7),
            "knn_ffn": KNNLMProcessor(ffn_index, ffn_values, t["llm"], k=8, temperature=5.0, lam=0.3, key="ffn_input"),
            "knn_bins": KNNLMProcessor(index, values, t["llm"], k=8, temperature=5.0, lam=0.3,
                                       lambda_bins={"edges": [edge], "lambdas": [0.8, 0.1]})}


# --- exactness -------------------------------------------------------------------------------

def test_proxy_with_expert_equal_to_anti_expert_returns_the_base_scores(tiny):
    p = ProxyTuningProcessor(tiny["expert"], tiny["expert"], alpha=1.0)
    scores = torch.randn(1, V)
    assert torch.equal(p(tiny["ids"], scores.clone()), scores)
    # also with distinct objects holding the same weights (two loads of one folder)
    import copy
    p2 = ProxyTuningProcessor(tiny["expert"], copy.deepcopy(tiny["expert"]), alpha=2.0)
    assert p2.shared_head
    assert torch.equal(p2(tiny["ids"], scores.clone()), scores)


@pytest.mark.parametrize("shared", [False, True])
def test_proxy_equals_the_log_probability_formula_after_softmax(tiny, shared):
    """scores + α·(z_e − z_a), one head row when the heads are shared, is the proxy-tuning formula
    scores + α·(log p_e − log p_a) up to a constant per position: equal log-probabilities."""
    anti = tiny["sibling"] if shared else tiny["anti"]
    p = ProxyTuningProcessor(tiny["expert"], anti, alpha=0.7)
    assert p.shared_head is shared
    ids = tiny["ids"]
    scores = torch.randn(1, V)
    with torch.no_grad():
        got = torch.log_softmax(p(ids, scores.clone()), -1)
        e = torch.log_softmax(tiny["expert"](input_ids=ids).logits[:, -1].float(), -1)
        a = torch.log_softmax(anti(input_ids=ids).logits[:, -1].float(), -1)
    want = torch.log_softmax(scores + 0.7 * (e - a), -1)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, torch.log_softmax(scores, -1), atol=1e-3)  # the adjustment is not a no-op


@pytest.mark.parametrize("name", ["proxy", "poe", "mixture", "contrastive", "knn", "proxy_padded", "proxy_shared",
                                  "knn_ffn", "knn_bins"])
def test_cached_steps_equal_full_recompute_and_batched_path(tiny, name):
    p = make_processors(tiny)[name]
    ids, start = tiny["ids"], 6
    steps = step_scores(tiny["llm"], p, ids, start)
    # full recompute: a fresh processor (no cache) on each prefix
    for t, got in zip(range(start, ids.shape[1] + 1), steps):
        fresh = make_processors(tiny)[name]
        with torch.no_grad():
            want = fresh(ids[:, :t], tiny["llm"](input_ids=ids[:, :t]).logits[:, -1].float())
        assert torch.allclose(got, want, atol=1e-4, equal_nan=True), (name, t)
    batched = batched_scores(tiny["llm"], make_processors(tiny)[name], ids)
    for t, got in zip(range(start, ids.shape[1] + 1), steps):
        assert torch.allclose(got[0], batched[t - 1], atol=1e-4), (name, t)
    side = getattr(p, "expert", None) or getattr(p, "small", None) or getattr(p, "amateur", None)
    if side is not None:  # the cache grew one token per step and holds the whole sequence
        assert side.cache.get_seq_length() == ids.shape[1]


def test_knn_target_logprob_fast_path_equals_combine(tiny):
    p = make_processors(tiny)["knn"]
    ids = tiny["ids"]
    head = capture_lm_head_input(tiny["llm"])
    with torch.no_grad():
        logits = tiny["llm"](input_ids=ids).logits[0, :-1].float()
        side = p.batched_side(ids, head._ragkit_lm_head_input[0, :-1])
    targets = ids[0, 1:]
    for lam, temp in [(0.3, 5.0), (0.9, 0.5), (1.0, 2.0)]:
        p.lam, p.temperature = lam, temp
        full = torch.log_softmax(p.combine(logits, side), -1).gather(1, targets.view(-1, 1))[:, 0]
        assert torch.allclose(p.target_logprob(logits, side, targets), full, atol=1e-4)


def test_knn_lambda_bins_pick_lambda_by_nearest_distance(tiny):
    p = make_processors(tiny)["knn_bins"]
    ids = tiny["ids"]
    head = capture_lm_head_input(tiny["llm"])
    with torch.no_grad():
        logits = tiny["llm"](input_ids=ids).logits[0].float()
        side = p.batched_side(ids, head._ragkit_lm_head_input[0])
    d = side[0]
    near = d[:, 0] < p.lam_bins["edges"][0]
    assert near.any() and (~near).any()  # both bins occur
    got = torch.log_softmax(p.combine(logits, side), -1)
    lp, lk = torch.log_softmax(logits, -1), p.knn_logprobs(side, V)
    lam = torch.where(near, 0.8, 0.1).view(-1, 1)
    want = torch.log(lam * lk.exp() + (1 - lam) * lp.exp())
    assert torch.allclose(got, want, atol=1e-4)
    targets = ids[0, 1:]
    fast = p.target_logprob(logits[:-1], (d[:-1], side[1][:-1]), targets)
    assert torch.allclose(fast, got[:-1].gather(1, targets.view(-1, 1))[:, 0], atol=1e-4)
    # all-zero bins: an exact identity
    p.lam_bins = {"edges": [1.0], "lambdas": [0.0, 0.0]}
    assert p.is_identity() and torch.equal(p(ids, logits[-1:].clone()), logits[-1:])
    with pytest.raises(AdapterError, match="lambda_bins"):
        KNNLMProcessor(p.index, p.values, tiny["llm"], lambda_bins={"edges": [1.0], "lambdas": [0.5]})


def test_knn_lambda_gate_is_a_logistic_function_of_the_gate_features(tiny):
    from ragkit.adaptation.logits import GATE_FEATURES, gate_features, llm_entropy

    base = make_processors(tiny)["knn"]
    gate = {"mean": [0.0] * 5, "std": [1.0] * 5, "weights": [-0.01, 0.3, 0.2, 1.5, 0.5], "bias": -1.0}
    p = KNNLMProcessor(base.index, base.values, tiny["llm"], k=8, temperature=5.0, lam=0.0, lambda_gate=gate)
    assert not p.is_identity()  # the gate wins over lam = 0
    ids = tiny["ids"]
    head = capture_lm_head_input(tiny["llm"])
    with torch.no_grad():
        logits = tiny["llm"](input_ids=ids).logits[0].float()
        side = p.batched_side(ids, head._ragkit_lm_head_input[0])
    lp = torch.log_softmax(logits, -1)
    x = gate_features(*side, llm_entropy(lp), 5.0)
    assert x.shape == (ids.shape[1], len(GATE_FEATURES))
    assert torch.allclose(x[:, 2], -(lp.exp() * lp).sum(-1).double(), atol=1e-5)  # the LLM's entropy
    assert ((x[:, 3] > 0) & (x[:, 3] <= 1 + 1e-9)).all() and ((x[:, 4] > 0) & (x[:, 4] <= 1)).all()
    lam = torch.sigmoid(x @ torch.tensor(gate["weights"], dtype=torch.float64) - 1.0).view(-1, 1).float()
    want = torch.log(lam * p.knn_logprobs(side, V).exp() + (1 - lam) * lp.exp())
    assert torch.allclose(torch.log_softmax(p.combine(logits, side), -1), want, atol=1e-4)
    with pytest.raises(AdapterError, match="lambda_gate"):
        KNNLMProcessor(base.index, base.values, tiny["llm"], lambda_gate={"mean": [0.0], "bias": 0.0})


def test_knn_ffn_input_key_is_the_last_feed_forward_input(tiny):
    from ragkit.adaptation.logits import capture_key

    seen = {}
    mlp = tiny["llm"].model.layers[-1].mlp
    h = mlp.register_forward_hook(lambda m, args, out: seen.__setitem__("x", args[0]))
    try:
        latest = capture_key(tiny["llm"], "ffn_input")
        with torch.no_grad():
            tiny["llm"](input_ids=tiny["ids"])
        assert torch.equal(latest(), seen["x"])
        assert not torch.allclose(latest(), capture_lm_head_input(tiny["llm"])._ragkit_lm_head_input)
    finally:
        h.remove()
    with pytest.raises(AdapterError, match="unknown kNN-LM key"):
        capture_key(tiny["llm"], "attention")


def test_side_cache_resets_for_a_new_sequence(tiny):
    p = make_processors(tiny)["proxy"]
    ids = tiny["ids"]
    with torch.no_grad():
        s = tiny["llm"](input_ids=ids).logits[:, -1]
        a = p(ids, s.clone())
        p(ids[:, :5], s.clone())  # an unrelated, shorter sequence
        b = p(ids, s.clone())
    assert torch.allclose(a, b, atol=1e-5)


def test_batch_size_above_one_is_refused(tiny):
    p = make_processors(tiny)["poe"]
    with pytest.raises(AdapterError, match="batch size 1"):
        p(tiny["ids"].repeat(2, 1), torch.zeros(2, V))


def test_padded_vocabulary_truncates_to_the_common_width(tiny):
    ids = tiny["ids"]
    narrow_llm_scores = torch.randn(1, V)
    p = ProxyTuningProcessor(tiny["wide"], tiny["anti"].__class__(tiny["wide"].config).eval(), alpha=1.0)
    out = p(ids, narrow_llm_scores.clone())
    assert out.shape == (1, V)  # the LLM's score width
    wide_scores = torch.randn(1, V + 16)  # an LLM wider than the small model
    q = ProductOfExpertsProcessor(tiny["expert"], w=0.5)
    out = q(ids, wide_scores.clone())
    assert out.shape == (1, V + 16)
    lp = torch.log_softmax(wide_scores, -1)
    assert torch.allclose(out[0, V:], lp[0, V:])  # padding columns keep the LLM's score


def test_zero_weights_are_exact_identities(tiny):
    ids = tiny["ids"]
    index, values = random_knn(tiny["llm"])
    procs = [ProxyTuningProcessor(tiny["expert"], tiny["anti"], alpha=0.0),
             ProductOfExpertsProcessor(tiny["expert"], w=0.0), KNNLMProcessor(index, values, tiny["llm"], lam=0.0)]
    with torch.no_grad():
        s = tiny["llm"](input_ids=ids).logits[:, -1].float()
    for p in procs:
        assert torch.equal(p(ids, s.clone()), s)


# --- the real model ---------------------------------------------------------------------------

@pytest.fixture
def smollm(llm):
    """The shared SmolLM2 (conftest), restored after each test."""
    return llm


@pytest.fixture(scope="module")
def small_sibling(smollm2):
    from ragkit.adaptation.train import layer_dropped_copy

    return layer_dropped_copy(smollm2.model, [0, 29]).eval()


def _greedy(llm, prompt, n=8, adapters=()):
    from ragkit.generation.llm import GenerationConfig

    llm.logits_adapters = list(adapters)
    try:
        return llm.generate(prompt, GenerationConfig(max_new_tokens=n)).text
    finally:
        llm.logits_adapters = []


class _Fixed:
    """A LogitsAdapter stand-in that returns a given processor factory."""

    def __init__(self, make):
        self.make = make

    def logits_processor(self, llm):
        return self.make()


def test_zero_weight_adapters_leave_real_greedy_generation_unchanged(smollm, small_sibling):
    import faiss

    prompt = [{"role": "user", "content": "What does the Python assert statement do?"}]
    base = _greedy(smollm, prompt)
    index = faiss.IndexFlatL2(smollm.model.config.hidden_size)
    index.add(torch.randn(50, smollm.model.config.hidden_size).numpy())
    values = torch.randint(0, 1000, (50,))
    adapters = [_Fixed(lambda: ProxyTuningProcessor(small_sibling, smollm.model, alpha=0.0)),
                _Fixed(lambda: ProductOfExpertsProcessor(small_sibling, w=0.0)),
                _Fixed(lambda: KNNLMProcessor(index, values, smollm.model, lam=0.0)),
                _Fixed(lambda: ContrastiveProcessor(small_sibling, beta=0.0, alpha=0.0))]
    assert _greedy(smollm, prompt, adapters=adapters) == base
    # expert == anti-expert at any alpha: also unchanged
    assert _greedy(smollm, prompt, adapters=[_Fixed(lambda: ProxyTuningProcessor(small_sibling, small_sibling, 1.0))]) == base


def test_knn_datastore_retrieves_the_memorised_next_token(smollm, tmp_path):
    from ragkit.adaptation.knn import build_datastore

    text = "The vault password is zebra crossing forty two. " * 3
    path = build_datastore("smollm2", text, tmp_path / "kv", k=4, temperature=1.0, lam=1.0,
                           window=64, stride=32, threads=1)
    a = load_adapter(path)
    assert a.kind == "knn" and a.manifest["training"]["build_tokens_per_s"] > 0
    tok = smollm.tokenizer
    ctx = tok("The vault password is zebra crossing", add_special_tokens=False, return_tensors="pt")["input_ids"]
    want = tok(" forty", add_special_tokens=False)["input_ids"][0]
    proc = a.logits_processor(smollm)
    with torch.no_grad():
        scores = smollm.model(input_ids=ctx).logits[:, -1].float()
    d, v = proc.search(proc.latest_key()[:, -1])
    assert float(d[0, 0]) < 1e-3 and int(v[0, 0]) == want
    assert int(proc(ctx, scores).argmax()) == want
    # label scoring (eval-qa) on a freshly loaded model: the hook must be in place before its first forward
    from ragkit.generation.llm.hf import HFCausalLM

    fresh = HFCausalLM.from_pretrained("smollm2")
    fresh.logits_adapters = [a]
    assert int(fresh.next_token_logits("The vault password is zebra crossing").argmax()) == want


def test_vocabulary_mismatch_names_both_tokenizers(smollm, tmp_path):
    other = tiny_llm_folder(tmp_path)
    path = create("poe", tmp_path / "mismatch", {"small": str(other)}, "smollm2", {"w": 0.2})
    a = load_adapter(path)
    with pytest.raises(AdapterError) as e:
        a.logits_processor(smollm)
    msg = str(e.value)
    assert "SmolLM2-135M-Instruct" in msg and "tiny-llm" in msg and "do not share a tokenizer" in msg


# --- folders, manifests, training, fitting ----------------------------------------------------

def test_adapter_folder_round_trip_and_manifest_errors(tmp_path):
    llm_dir = tiny_llm_folder(tmp_path)
    path = create("proxy", tmp_path / "ad" / "px", {"expert": str(llm_dir), "anti_expert": str(llm_dir)},
                  str(llm_dir), {"alpha": 0.3})
    a = load_adapter(path)
    assert a.kind == "proxy" and a.manifest["params"]["alpha"] == 0.3
    assert load_adapter(path, alpha=0.0).manifest["params"]["alpha"] == 0.0
    llm = FakeLLM(tiny_model(0))
    p = a.logits_processor(llm)
    assert isinstance(p, ProxyTuningProcessor) and p.alpha == 0.3
    with pytest.raises(AdapterError, match="no manifest.json"):
        load_adapter(llm_dir)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"format": "ragkit-adapter", "kind": "nope"}))
    with pytest.raises(AdapterError, match="unknown adapter kind 'nope'"):
        load_adapter(bad)
    (bad / "manifest.json").write_text(json.dumps({"format": "something-else", "kind": "knn"}))
    with pytest.raises(AdapterError, match="not a ragkit adapter manifest"):
        load_adapter(bad)
    (bad / "manifest.json").write_text(json.dumps({"format": "ragkit-adapter", "kind": "knn"}))
    with pytest.raises(AdapterError, match="keys.faiss is missing"):
        load_adapter(bad).logits_processor(llm)
    with pytest.raises(AdapterError, match="needs the model"):
        create("proxy", tmp_path / "x", {"expert": str(llm_dir)}, "tiny")


def test_training_distill_full_lora_resume_and_fit(tmp_path):
    from ragkit.adaptation.fit import fit
    from ragkit.adaptation.train import distill, finetune, load_causal_lm

    llm_dir = tiny_llm_folder(tmp_path)
    text = tiny_text()
    small = distill(str(llm_dir), text, tmp_path / "small", layers=1, steps=4, block=16, batch=2, threads=1,
                    save_every=2, progress=False)
    m = load_adapter(small).manifest
    assert m["kind"] == "distill" and m["training"]["layers"] == [1] and (small / "model.safetensors").is_file()
    ck = finetune(str(small), text, tmp_path / "exp3", kind="full", steps=3, block=16, batch=2, threads=1,
                  save_every=2, progress=False)
    assert not (ck / "checkpoint").exists() and load_adapter(ck).manifest["training"]["train_embeddings"] is False
    out = tmp_path / "exp4"
    # an interrupted run (the final write fails after step 3, checkpoint at step 2) resumes from step 2
    from ragkit.adaptation import train as tr
    orig = tr.write_adapter
    tr.write_adapter = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt())
    try:
        with pytest.raises(KeyboardInterrupt):
            finetune(str(small), text, out, kind="full", steps=3, block=16, batch=2, threads=1, save_every=2,
                     progress=False)
    finally:
        tr.write_adapter = orig
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    resumed = finetune(str(small), text, out, kind="full", steps=3, block=16, batch=2, threads=1, save_every=2,
                       progress=False)
    assert load_adapter(resumed).manifest["training"]["resumed_from_step"] == 2
    a3, a4 = load_causal_lm(tmp_path / "exp3")[0], load_causal_lm(resumed)[0]
    for (n, p3), (_, p4) in zip(a3.named_parameters(), a4.named_parameters()):
        assert torch.allclose(p3, p4, atol=1e-6), n  # resumed == uninterrupted
    lora = finetune(str(llm_dir), text, tmp_path / "lora", kind="lora", steps=2, block=16, batch=2, lora_r=2,
                    threads=1, progress=False)
    assert load_causal_lm(lora)[0].config.vocab_size == V
    # fit: the grid includes 0, so the fitted adapter is never worse than the LLM on the slice
    px = create("proxy", tmp_path / "px", {"expert": str(ck), "anti_expert": str(small)}, str(llm_dir))
    from ragkit.generation.llm.hf import HFCausalLM
    llm = HFCausalLM.from_pretrained(str(llm_dir))
    r = fit(px, text[:800], llm=llm, window=32, stride=16)
    assert r["ppl"] <= r["base_ppl"] + 1e-6 and 0.0 in [g["alpha"] for g in r["grid"]]
    assert load_adapter(px).manifest["params"]["alpha"] == r["params"]["alpha"]
    ppl = perplexities(llm, text[:800], {"base": [], "px": [load_adapter(px).logits_processor(llm)]}, 32, 16)
    assert abs(ppl["px"] - r["ppl"]) < 1e-3 * r["ppl"]
    # kNN-LM over ffn_input keys, fitted with distance bins: never worse than one λ, never worse than
    # the LLM, and the evaluation path reproduces the fitted perplexity
    from ragkit.adaptation.knn import build_datastore
    kv = build_datastore(str(llm_dir), text, tmp_path / "kv", window=32, stride=16, threads=1, key="ffn_input")
    assert load_adapter(kv).manifest["training"]["key"] == "ffn_input"
    rk = fit(kv, text[:800], llm=llm, window=32, stride=16, bins=4)
    assert rk["ppl"] <= rk["single_lambda"]["ppl"] + 1e-6 and rk["ppl"] <= rk["base_ppl"] + 1e-6
    assert rk["ppl"] <= rk["lambda_gate"]["ppl"] + 1e-6 and rk["ppl"] <= rk["lambda_bins"]["ppl"] + 1e-6
    assert rk["ppl"] < rk["base_ppl"]  # the datastore holds this very text: it must help
    m = load_adapter(kv).manifest["params"]
    assert m.get("lambda_bins") is None or len(m["lambda_bins"]["lambdas"]) == 4
    assert m.get("lambda_bins") is None or m.get("lambda_gate") is None  # the one chosen, not both
    ppl = perplexities(llm, text[:800], {"base": [], "kv": [load_adapter(kv).logits_processor(llm)]}, 32, 16)
    assert abs(ppl["kv"] - rk["ppl"]) < 1e-3 * rk["ppl"]


def test_domain_split_has_no_leaks():
    from ragkit.data.splits import overlap_report, python_docs_topics, split_docs

    docs = python_docs_topics()
    s = split_docs(docs)
    assert not set(s["train"]) & set(s["test"]) and not set(s["valid"]) & set(s["test"])
    join = lambda names: "\n\n".join(docs[n] for n in names)  # noqa: E731
    rep = overlap_report(join(s["train"]), join(s["test"]))
    assert rep["long_lines_in_train"] == 0 and rep["shared_ngram_share"] < 0.01


@pytest.mark.datasets
def test_pubmedqa_domain_split_keeps_the_test_passages_out_of_training(dataset, tmp_path):
    """corpora/pubmedqa_lm.py: train/valid from the train questions' passages, test from the official
    test split's; no passage of test.txt is in train.txt or valid.txt."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pubmedqa_lm", Path(__file__).parents[2] / "corpora" / "pubmedqa_lm.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    report = recipe.main(dataset("pubmedqa_labeled"), tmp_path / "lm")
    parts = {n: set((tmp_path / "lm" / f"{n}.txt").read_text().strip().split("\n\n")) for n in ("train", "valid", "test")}
    assert report["splits"]["train"]["passages"] + report["splits"]["valid"]["passages"] == 500
    assert len(parts["test"]) == 500 and not parts["test"] & (parts["train"] | parts["valid"])
    assert not parts["train"] & parts["valid"] and report["overlap_train_test"]["shared_ids"] == 0


def test_proxy_with_a_lora_expert_runs_expert_and_anti_expert_as_one_batch(tmp_path):
    """An expert that is a LoRA on the anti-expert: one model, a batch of two rows (the LoRA on row 0
    only), gives the same adjusted scores as the merged expert and the anti-expert run apart, on the
    cached step path and the batched (evaluation) path; `paired: false` and a non-LoRA expert fall
    back to two models."""
    from ragkit.adaptation.lora_pair import RowLoRALinear
    from ragkit.adaptation.train import finetune, load_causal_lm
    from ragkit.generation.llm.hf import HFCausalLM

    small_dir, llm_dir = tiny_llm_folder(tmp_path, seed=3, name="small"), tiny_llm_folder(tmp_path)
    lora = finetune(str(small_dir), tiny_text(), tmp_path / "lora", kind="lora", steps=3, block=16, batch=2,
                    lora_r=4, lr=5e-2, threads=1, progress=False)
    px = create("proxy", tmp_path / "px", {"expert": str(lora), "anti_expert": str(small_dir)}, str(llm_dir))
    llm = HFCausalLM.from_pretrained(str(llm_dir))
    adapter = load_adapter(px, alpha=1.0)
    paired = adapter.logits_processor(llm)
    assert paired.pair is not None, adapter.paired_reason
    model = paired.pair.model
    assert sum(isinstance(m, RowLoRALinear) for m in model.modules()) == 2 * 7  # 2 layers x 7 projections
    expert, anti = load_causal_lm(lora)[0], load_causal_lm(small_dir)[0]
    apart = ProxyTuningProcessor(expert, anti, alpha=1.0)
    ids = torch.randint(3, V, (1, 12), generator=torch.Generator().manual_seed(4))
    got, want = step_scores(llm.model, paired, ids, 4), step_scores(llm.model, apart, ids, 4)
    delta = max((g - w).abs().max().item() for g, w in zip(got, want))
    moved = max((w - llm.model(input_ids=ids[:, :4 + i]).logits[:, -1].float()).abs().max().item()
                for i, w in enumerate(want[:3]))
    assert delta < 1e-4 and moved > 1e-2  # equal, and the LoRA did change the scores
    assert torch.allclose(batched_scores(llm.model, paired, ids), batched_scores(llm.model, apart, ids), atol=1e-4)
    # between calls the shared model is its plain base (the LoRA rows are off)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, anti(input_ids=ids).logits, atol=1e-5)
    assert load_adapter(px, alpha=1.0, paired=False).logits_processor(llm).pair is None
    full = create("proxy", tmp_path / "px2", {"expert": str(small_dir), "anti_expert": str(small_dir)}, str(llm_dir))
    a2 = load_adapter(full, alpha=1.0)
    assert a2.logits_processor(llm).pair is None and "not a LoRA" in a2.paired_reason


@pytest.mark.parametrize("paired", [True, False])
def test_small_model_steps_run_ahead_on_the_second_core_with_the_same_scores(tmp_path, monkeypatch, paired):
    """With one decode thread, each next small-model step starts on the side thread as soon as the
    token is chosen (beside the LLM's own step); the adjusted scores are the same as run in line,
    for the paired proxy (one shared model) and for two models."""
    import os
    import threading

    from ragkit.generation.llm.base import GenerationConfig
    from ragkit.adaptation.train import finetune
    from ragkit.generation.llm.hf import HFCausalLM

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    small_dir, llm_dir = tiny_llm_folder(tmp_path, seed=3, name="small"), tiny_llm_folder(tmp_path)
    lora = finetune(str(small_dir), tiny_text(), tmp_path / "lora", kind="lora", steps=3, block=16, batch=2,
                    lora_r=4, lr=5e-2, threads=1, progress=False)
    px = create("proxy", tmp_path / "px", {"expert": str(lora), "anti_expert": str(small_dir)}, str(llm_dir))
    llm = HFCausalLM.from_pretrained(str(llm_dir))
    llm.logits_adapters = [load_adapter(px, alpha=1.0, paired=paired)]
    seen: list = []
    step_side, combine = ProxyTuningProcessor.step_side, ProxyTuningProcessor.combine
    monkeypatch.setattr(ProxyTuningProcessor, "step_side",
                        lambda self, ids: (seen.append(("step", threading.current_thread().name)), step_side(self, ids))[1])
    monkeypatch.setattr(ProxyTuningProcessor, "combine",
                        lambda self, s, d: (out := combine(self, s, d), seen.append(("scores", out.clone())))[0])
    runs = {}
    for overlap in (False, True):
        llm.overlap_side_models = overlap
        seen.clear()
        text = llm.generate("w1 w2 w3 w4", GenerationConfig(max_new_tokens=10, temperature=0.0)).text
        runs[overlap] = (text, [t for k, t in seen if k == "step"], [s for k, s in seen if k == "scores"])
    (text_off, threads_off, scores_off), (text_on, threads_on, scores_on) = runs[False], runs[True]
    assert text_on == text_off and len(scores_on) == len(scores_off) >= 2
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(scores_on, scores_off))
    assert "ragkit-side" not in " ".join(threads_off)
    # the first step (the prompt) runs in line; every later one ran ahead on the side thread
    assert not threads_on[0].startswith("ragkit-side")
    assert all(t.startswith("ragkit-side") for t in threads_on[1:len(scores_on)])
