"""Held-out perplexity and decode speed of an LLM with white-box adapters.

Perplexity: the text is tokenized once and scored in sliding windows (`window` tokens, `stride`
new scored tokens each, see `knn.window_positions`): every system - the LLM alone, each adapter,
the stack of all adapters in order, and the LoRA-tuned LLM - scores exactly the same target
tokens from the same left context. Adapters are scored through their processors' `combine`, the
function the generation path (`__call__`) uses; the side models run once over each window
(`batched_side`) instead of one cached step per token, which tests check gives the same scores.

Gap closed = (log ppl_base − log ppl_adapter) / (log ppl_base − log ppl_lora): the share of the
fine-tuning gain a decode-time adapter recovers without touching the LLM's weights.

Decode speed: greedy `generate` of `speed_tokens` new tokens after a prompt taken from the text,
on 1 torch thread (ragkit's decode policy), time from the first to the last new token; each
system is run `repeats` times in alternating order and the median is kept; ratio = adapter ÷ base.
"""
from __future__ import annotations

import copy
import math
import os
import statistics
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ragkit.generation.loader import load_llm
from ragkit.runtime import torch_threads
from ragkit.adaptation.base import Adapter, load_adapter
from ragkit.adaptation.knn import window_positions
from ragkit.adaptation.logits import capture_lm_head_input

# manifest param name -> processor attribute
ATTRS = {"alpha": "alpha", "w": "w", "beta": "beta", "lambda": "lam", "temperature": "temperature",
         "lambda_bins": "lam_bins", "lambda_gate": "lam_gate"}


def as_adapter(a: Any, **overrides: Any) -> Adapter:
    return a if isinstance(a, Adapter) else load_adapter(a, **overrides)


class WindowScorer:
    """Runs the LLM over the text's windows once; hands each window's base logits, lm_head inputs
    and targets to callbacks."""

    def __init__(self, llm: Any, text: str, window: int = 512, stride: int = 256, max_tokens: int | None = None,
                 threads: int | None = 2) -> None:
        self.llm = llm
        ids = llm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_tokens:
            ids = ids[:max_tokens]
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.windows = window_positions(len(self.ids), window, stride)
        self.window, self.stride, self.threads = window, stride, threads
        self.head = capture_lm_head_input(llm.model)

    @property
    def n_targets(self) -> int:
        return len(self.ids) - 1

    def run(self, callback) -> None:
        """callback(x [1, T], base_logits [T, V], hidden [T, H], lo, targets [n]) for each window:
        positions lo..T-2 of the window predict `targets`."""
        with torch_threads(self.threads), torch.inference_mode():
            for start, end, first in self.windows:
                x = self.ids[start:end].unsqueeze(0)
                logits = self.llm.model(input_ids=x, use_cache=False).logits[0].float()
                hidden = getattr(self.head, "_ragkit_lm_head_input")[0]
                lo = first - 1 - start
                callback(x, logits, hidden, lo, self.ids[first:end])


def target_nll(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed negative log-likelihood of `targets` under `scores` [n, V] (normalised here)."""
    lp = F.log_softmax(scores.float(), -1)
    return float(-lp.gather(1, targets.view(-1, 1)).sum())


def combine_chain(processors: Sequence[Any], scores: torch.Tensor, sides: Sequence[Any]) -> torch.Tensor:
    for p, side in zip(processors, sides):
        if not p.is_identity():
            scores = p.combine(scores, side)
    return scores


def side_key(p: Any) -> int:
    """Processors copied to hold other params share their side models: score those once."""
    return p.__dict__.setdefault("side_key", id(p))


def slice_side(side: Any, lo: int, hi: int) -> Any:
    if side is None:
        return None
    if isinstance(side, tuple):
        return tuple(slice_side(s, lo, hi) for s in side)
    return side[lo:hi]


def perplexities(llm: Any, text: str, systems: dict[str, list[Any]], window: int = 512, stride: int = 256,
                 max_tokens: int | None = None, threads: int | None = 2, extra_models: dict[str, Any] | None = None,
                 progress: bool | None = None) -> dict[str, float]:
    """Perplexity of each system (name → list of processors, [] = the LLM alone) and of each
    `extra_models` entry (name → a causal LM scored as is) on the same target tokens."""
    from ragkit.progress import progress_bar

    scorer = WindowScorer(llm, text, window, stride, max_tokens, threads)
    nll = {name: 0.0 for name in list(systems) + list(extra_models or {})}
    procs = {side_key(p): p for ps in systems.values() for p in ps}

    with progress_bar("perplexity", len(scorer.windows), progress) as advance:
        def cb(x, logits, hidden, lo, targets):
            sides = {k: p.batched_side(x, hidden) for k, p in procs.items()}
            hi = x.shape[1] - 1
            for name, ps in systems.items():
                s = combine_chain(ps, logits[lo:hi], [slice_side(sides[side_key(p)], lo, hi) for p in ps])
                nll[name] += target_nll(s, targets)
            for name, m in (extra_models or {}).items():
                nll[name] += target_nll(m(input_ids=x, use_cache=False).logits[0, lo:hi], targets)
            advance(1)

        scorer.run(cb)
    return {name: math.exp(v / scorer.n_targets) for name, v in nll.items()} | {"_tokens": scorer.n_targets}


class _FirstLast:
    """A generate() streamer recording the times of the first and last new tokens."""

    def __init__(self) -> None:
        self.calls, self.first, self.last = 0, None, None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls >= 2:
            now = time.perf_counter()
            self.first = self.first or now
            self.last = now

    def end(self) -> None:
        pass


def decode_speed(llm: Any, systems: dict[str, list[Adapter]], prompt_ids: torch.Tensor, new_tokens: int = 48,
                 repeats: int = 3, threads: int = 1, overlap: bool | None = None) -> dict[str, float]:
    """Decode tokens/s (median over `repeats`, alternating order) of each system; greedy, exactly
    `new_tokens` tokens, `threads` torch threads, processors fresh per generation. `overlap`: small
    models step on the second core beside the LLM (`side_prefetch`; default: the LLM's own setting)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    from ragkit.generation.llm.hf import finish_prefetch, side_prefetch

    overlap = getattr(llm, "overlap_side_models", True) if overlap is None else overlap

    times: dict[str, list[float]] = {k: [] for k in systems}
    with torch_threads(threads), torch.inference_mode():
        for r in range(repeats):
            order = list(systems) if r % 2 == 0 else list(systems)[::-1]
            for name in order:
                procs = LogitsProcessorList([a.logits_processor(llm) for a in systems[name]])
                st = _FirstLast()
                ahead = side_prefetch(procs, int(prompt_ids.shape[1]), new_tokens, threads) if overlap else None
                try:
                    llm.model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                       temperature=None, top_p=None, top_k=None, logits_processor=procs,
                                       stopping_criteria=StoppingCriteriaList([ahead] if ahead else []),
                                       streamer=st, pad_token_id=llm.tokenizer.eos_token_id)
                finally:
                    finish_prefetch(procs)
                times[name].append((new_tokens - 1) / max(1e-9, st.last - st.first))
    return {k: round(statistics.median(v), 2) for k, v in times.items()}


def gap_closed(ppl_base: float, ppl: float, ppl_lora: float | None) -> float | None:
    if ppl_lora is None or ppl_lora >= ppl_base:
        return None
    return (math.log(ppl_base) - math.log(ppl)) / (math.log(ppl_base) - math.log(ppl_lora))


def evaluate(adapters: Sequence[Any], text: str, llm: Any = "smollm2", lora: Any = None, stack: bool = True,
             window: int = 512, stride: int = 256, max_tokens: int | None = None, speed_tokens: int = 48,
             speed_repeats: int = 3, threads: int | None = 2, progress: bool | None = None) -> dict:
    """Held-out perplexity of the LLM alone, with each adapter, with all of them stacked in order
    (when more than one), and of the LoRA-tuned LLM (`lora`: a `lora`/`full` adapter folder);
    the share of the log-perplexity gap closed; decode tokens/s ratios (`speed_tokens=0`: skip)."""
    from ragkit.generation.loader import load_causal_lm

    llm = load_llm(llm)
    loaded = [as_adapter(a) for a in adapters]
    names = [a.name for a in loaded]
    procs = [a.logits_processor(llm) for a in loaded]
    for p in procs:
        side_key(p)
    systems: dict[str, list[Any]] = {"base": []}
    for n, p in zip(names, procs):
        systems[n] = [p]
    stacked_name = "+".join(names)
    stacked_adapters = list(loaded)
    if stack and len(loaded) > 1:
        # an adapter fitted for this stack (`fit --stack-on`) uses its params_stacked entry there
        stack_procs = list(procs)
        for i in range(1, len(loaded)):
            ps = loaded[i].manifest.get("params_stacked", {}).get("+".join(names[:i + 1]))
            if ps:
                q = copy.copy(procs[i])
                for k, v in ps.items():
                    setattr(q, ATTRS.get(k, k), v)
                stack_procs[i] = q
                stacked_adapters[i] = as_adapter(loaded[i].path, **ps)
        systems[stacked_name] = stack_procs
    extra = {}
    if lora is not None:
        lora_model = load_causal_lm(str(lora), "auto")[0]
        extra["lora"] = lora_model
    t0 = time.perf_counter()
    ppl = perplexities(llm, text, systems, window, stride, max_tokens, threads, extra, progress)
    eval_s = time.perf_counter() - t0
    base, lp = ppl["base"], ppl.get("lora")
    rows = {}
    for name in systems:
        rows[name] = {"ppl": round(ppl[name], 4), "ppl_reduction": round(1 - ppl[name] / base, 4),
                      "gap_closed": None if gap_closed(base, ppl[name], lp) is None else
                      round(gap_closed(base, ppl[name], lp), 4)}
    if lp is not None:
        rows["lora"] = {"ppl": round(lp, 4), "ppl_reduction": round(1 - lp / base, 4), "gap_closed": 1.0}
    if speed_tokens:
        prompt = WindowScorer(llm, text, max_tokens=64).ids.unsqueeze(0)
        speed_systems = {"base": []} | {n: [a] for n, a in zip(names, loaded)}
        if stack and len(loaded) > 1:
            speed_systems[stacked_name] = stacked_adapters
        tps = decode_speed(llm, speed_systems, prompt, speed_tokens, speed_repeats)
        for name, v in tps.items():
            rows[name]["decode_tokens_per_s"] = v
            rows[name]["speed_ratio"] = round(v / tps["base"], 4)
    return {"llm": getattr(llm, "model_id", str(llm)), "tokens": ppl["_tokens"], "window": window, "stride": stride,
            "adapters": [{"name": a.name, "kind": a.kind, "path": str(a.path), "params": a.manifest.get("params", {}),
                          "params_stacked": a.manifest.get("params_stacked", {})} for a in loaded],
            "lora": str(lora) if lora is not None else None, "systems": rows,
            "eval_seconds": round(eval_s, 1), "speed_tokens": speed_tokens, "speed_repeats": speed_repeats,
            "threads": {"perplexity": threads, "decode": 1, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
            "load1": round(os.getloadavg()[0], 2)}


def format_table(result: dict) -> str:
    head = ["system", "ppl", "ppl reduction", "gap closed", "decode tok/s", "speed ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in result["systems"].items():
        def f(v, pct=False):
            if v is None:
                return "-"
            return f"{100 * v:+.1f}%" if pct else f"{v:.2f}"
        lines.append(f"| {name} | {r['ppl']:.2f} | {f(r['ppl_reduction'], True)} | {f(r['gap_closed'], True)} | "
                     f"{f(r.get('decode_tokens_per_s'))} | {f(r.get('speed_ratio'))} |")
    return "\n".join(lines)
