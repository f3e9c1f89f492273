"""Fit a white-box adapter's weight (proxy α, product-of-experts w, contrastive β, kNN-LM λ and
temperature) on a validation text - never the test text - by held-out perplexity over a grid that
always includes the "off" value (0), so a fitted adapter is never worse than the LLM alone on the
validation slice. The LLM and the side models run once per window; only `combine` runs per grid
point. The chosen values go into the manifest's `params`, the whole grid into `metrics.fit`.

kNN-LM: the LLM's log-probability of each target and the k neighbours' distances and values are
kept for every validation position, then every (temperature, λ) pair is scored exactly from them.
With `bins` > 1, λ also depends on the distance to the nearest key: the positions are cut into
`bins` equal-count bins of that distance (edges from the validation text) and each bin gets its
own λ from the grid (0 included, so no bin is made worse); the temperature is the one whose binned
total is lowest. The single-λ result is kept in the manifest's metrics for comparison.

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
    "knn": {"lambda": [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
            "temperature": [0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]},
}
KNN_BINS = 8


def fit(adapter: Any, text: str, llm: Any = "smollm2", grid: dict[str, Sequence[float]] | None = None,
        stack_on: Sequence[Any] = (), window: int = 512, stride: int = 256, max_tokens: int | None = None,
        threads: int | None = 2, write: bool = True, progress: bool | None = None, bins: int = KNN_BINS) -> dict:
    """Pick the adapter's weight(s) by validation perplexity; returns {params, ppl, base_ppl, grid}.
    `bins`: kNN-LM only, distance bins with their own λ (1: one λ)."""
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
    if a.kind == "knn":
        return _fit_knn(a, proc, before, before_procs, llm, text, grid, window, stride, max_tokens, threads, write,
                        progress, bins)
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


def _fit_knn(a, proc, before, before_procs, llm, text, grid, window, stride, max_tokens, threads, write, progress,
             bins: int) -> dict:
    import torch

    from ..progress import progress_bar
    from .logits import knn_target_logprob

    lams = sorted(set(float(x) for x in grid.get("lambda", GRIDS["knn"]["lambda"])) | {0.0})
    temps = [float(x) for x in grid.get("temperature", GRIDS["knn"]["temperature"])]
    lp_all, d_all, v_all, t_all = [], [], [], []
    scorer = WindowScorer(llm, text, window, stride, max_tokens, threads)
    t0 = time.perf_counter()
    proc.lam, proc.lam_bins = 1.0, None  # not identity: the search runs
    with progress_bar(f"fit {a.name}", len(scorer.windows), progress) as advance:
        def cb(x, logits, hidden, lo, targets):
            hi = x.shape[1] - 1
            pre_sides = [slice_side(b.batched_side(x, hidden), lo, hi) for b in before_procs]
            scores = combine_chain(before_procs, logits[lo:hi], pre_sides)
            lp_all.append(torch.log_softmax(scores.float(), -1).gather(1, targets.view(-1, 1))[:, 0].double())
            d, v = slice_side(proc.batched_side(x, hidden), lo, hi)
            d_all.append(d), v_all.append(v), t_all.append(targets)
            advance(1)
        scorer.run(cb)
    lp, d, v, t = torch.cat(lp_all), torch.cat(d_all), torch.cat(v_all), torch.cat(t_all)
    n = len(lp)
    bins = max(1, min(int(bins), n // 50 or 1))
    edges = torch.quantile(d[:, 0].double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1]).float()
    which = torch.bucketize(d[:, 0].contiguous(), edges, right=True)

    def nll(lk: torch.Tensor, lam: float, mask=None) -> float:
        lpm, lkm = (lp, lk) if mask is None else (lp[mask], lk[mask])
        if lam == 0.0:
            return float(-lpm.sum())
        mixed = torch.logaddexp(math.log1p(-lam) + lpm, math.log(lam) + lkm) if lam < 1 else lkm
        return float(-mixed.sum())

    rows, best_single, best_binned = [], None, None
    for temp in temps:
        lk = knn_target_logprob(d, v, t, temp).double()
        for lam in lams:
            ppl = math.exp(nll(lk, lam) / n)
            rows.append({"lambda": lam, "temperature": temp, "ppl": round(ppl, 4)})
            if best_single is None or ppl < best_single[0]:
                best_single = (ppl, temp, lam)
        per_bin = [min(lams, key=lambda lam: (nll(lk, lam, which == b), lam)) for b in range(bins)]
        total = sum(nll(lk, per_bin[b], which == b) for b in range(bins))
        ppl_b = math.exp(total / n)
        if best_binned is None or ppl_b < best_binned[0]:
            best_binned = (ppl_b, temp, per_bin)
    base_ppl = math.exp(float(-lp.sum()) / n)
    single = {"temperature": best_single[1], "lambda": best_single[2]}
    if best_single[2] == 0.0:
        single.pop("temperature")
    result_single = {"params": single, "ppl": round(best_single[0], 4)}
    if bins > 1 and best_binned[0] < best_single[0]:
        # lambda_bins replace lambda (kept: the best single λ, used when lambda_bins is set to null)
        params = {"temperature": best_binned[1], "lambda": best_single[2],
                  "lambda_bins": {"edges": [round(float(e), 4) for e in edges], "lambdas": best_binned[2]}}
        ppl = best_binned[0]
    else:
        params, ppl = dict(single), best_single[0]
        if bins > 1:
            params["lambda_bins"] = None
    result = {"params": params, "ppl": round(ppl, 4), "base_ppl": round(base_ppl, 4), "single_lambda": result_single,
              "bins": bins, "tokens": n, "stack_on": [b.name for b in before],
              "seconds": round(time.perf_counter() - t0, 1), "grid": rows}
    if write and a.path is not None:
        if before:
            key = "+".join([b.name for b in before] + [a.name])
            update_manifest(a.path, params_stacked={key: params}, metrics={f"fit_stacked:{key}": result})
        else:
            update_manifest(a.path, params=params, metrics={"fit": result})
    return result
