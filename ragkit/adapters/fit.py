"""Fit a white-box adapter's weight (proxy α, product-of-experts w, contrastive β, kNN-LM λ and
temperature) on a validation text - never the test text - by held-out perplexity over a grid that
always includes the "off" value (0), so a fitted adapter is never worse than the LLM alone on the
validation slice. The LLM and the side models run once per window; only `combine` runs per grid
point. The chosen values go into the manifest's `params`, the whole grid into `metrics.fit`.

`stack_on`: adapters (with their own fitted params) applied before this one while fitting, so the
weight is fitted for use in that stack; the result is then recorded under `params_stacked`
(keyed by the stack's names) and `params` is left alone.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Any, Sequence

from .base import update_manifest
from .evaluate import ATTRS, WindowScorer, as_adapter, combine_chain, load_llm, slice_side, target_nll

GRIDS: dict[str, dict[str, list[float]]] = {
    "proxy": {"alpha": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]},
    "poe": {"w": [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5]},
    "contrastive": {"beta": [0.0, 0.05, 0.1, 0.2, 0.3, 0.5]},
    "knn": {"lambda": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5],
            "temperature": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]},
}


def fit(adapter: Any, text: str, llm: Any = "smollm2", grid: dict[str, Sequence[float]] | None = None,
        stack_on: Sequence[Any] = (), window: int = 512, stride: int = 256, max_tokens: int | None = None,
        threads: int | None = 2, write: bool = True, progress: bool | None = None) -> dict:
    """Pick the adapter's weight(s) by validation perplexity; returns {params, ppl, base_ppl, grid}."""
    from ..progress import progress_bar

    llm = load_llm(llm)
    a = as_adapter(adapter)
    grid = dict(grid or GRIDS.get(a.kind, {}))
    if not grid:
        raise ValueError(f"no grid to fit for adapter kind {a.kind!r}")
    for name, values in grid.items():  # the "off" value is always a candidate
        if name in ("alpha", "w", "beta", "lambda") and 0.0 not in values:
            grid[name] = [0.0, *values]
    proc = a.logits_processor(llm)
    before = [as_adapter(b) for b in stack_on]
    before_procs = [b.logits_processor(llm) for b in before]
    keys = list(grid)
    points = list(itertools.product(*(grid[k] for k in keys)))
    off = [p for p in points if any(k in ("alpha", "w", "beta", "lambda") and v == 0.0 for k, v in zip(keys, p))]
    points = [p for p in points if p not in off] + off[:1]  # one "off" point is enough
    nll = {p: 0.0 for p in points}
    base_nll = [0.0]
    scorer = WindowScorer(llm, text, window, stride, max_tokens, threads)
    t0 = time.perf_counter()
    with progress_bar(f"fit {a.name}", len(scorer.windows), progress) as advance:
        def cb(x, logits, hidden, lo, targets):
            hi = x.shape[1] - 1
            pre_sides = [slice_side(b.batched_side(x, hidden), lo, hi) for b in before_procs]
            scores = combine_chain(before_procs, logits[lo:hi], pre_sides)
            base_nll[0] += target_nll(logits[lo:hi], targets)
            side = slice_side(proc.batched_side(x, hidden), lo, hi)
            for p in points:
                for k, v in zip(keys, p):
                    setattr(proc, ATTRS[k], float(v))
                if proc.is_identity():
                    nll[p] += target_nll(scores, targets)
                elif hasattr(proc, "target_logprob"):  # kNN-LM: O(k) per position, same value as combine
                    nll[p] += float(-proc.target_logprob(scores, side, targets).sum())
                else:
                    nll[p] += target_nll(proc.combine(scores, side), targets)
            advance(1)
        scorer.run(cb)
    n = scorer.n_targets
    ppl = {p: math.exp(v / n) for p, v in nll.items()}
    best = min(points, key=lambda p: (ppl[p], p))
    params = {k: float(v) for k, v in zip(keys, best)}
    if "lambda" in params and params["lambda"] == 0.0:
        params.pop("temperature", None)  # any temperature is the same when kNN is off
    result = {"params": params, "ppl": round(ppl[best], 4), "base_ppl": round(math.exp(base_nll[0] / n), 4),
              "stack_ppl_before": round(ppl[off[0]], 4) if off else None, "tokens": n,
              "stack_on": [b.name for b in before], "seconds": round(time.perf_counter() - t0, 1),
              "grid": [{**{k: v for k, v in zip(keys, p)}, "ppl": round(ppl[p], 4)} for p in points]}
    if write and a.path is not None:
        if before:
            key = "+".join([b.name for b in before] + [a.name])
            update_manifest(a.path, params_stacked={key: params}, metrics={f"fit_stacked:{key}": result})
        else:
            update_manifest(a.path, params=params, metrics={"fit": result})
    return result
