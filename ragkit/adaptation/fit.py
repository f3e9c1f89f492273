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
total is lowest. With `gate`, a logistic gate over five features of the neighbours and the LLM's
distribution (`logits.GATE_FEATURES`) is fitted too, by L-BFGS on the validation log-likelihood.
The best of the three on the validation text goes into `params` (λ = 0 stays reachable: the
single-λ grid holds it); all three results are kept in the manifest's metrics.

`stack_on`: adapters (with their own fitted params) applied before this one while fitting, so the
weight is fitted for use in that stack; the result is then recorded under `params_stacked`
(keyed by the stack's names) and `params` is left alone.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Any, Sequence

from ragkit.adaptation.base import update_manifest
from ragkit.adaptation.evaluate import ATTRS, WindowScorer, as_adapter, combine_chain, slice_side, target_nll
from ragkit.generation.loader import load_llm

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
        threads: int | None = 2, write: bool = True, progress: bool | None = None, bins: int = KNN_BINS,
        gate: bool = True) -> dict:
    """Pick the adapter's weight(s) by validation perplexity; returns {params, ppl, base_ppl, grid}.
    kNN-LM only: `bins`, distance bins with their own λ (1: one λ); `gate`, also fit a logistic gate
    (the best of one λ, bins and gate on the validation text is kept)."""
    from ragkit.progress import progress_bar

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
                        progress, bins, gate)
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
    if write:
        _record(a, before, params, result)
    return result


def _record(a: Any, before: Sequence[Any], params: dict, result: dict) -> None:
    """Write the fitted params into the adapter's manifest: `params`, or `params_stacked` under the
    stack's name when fitted on top of other adapters."""
    if a.path is None:
        return
    if before:
        key = "+".join([b.name for b in before] + [a.name])
        update_manifest(a.path, params_stacked={key: params}, metrics={f"fit_stacked:{key}": result})
    else:
        update_manifest(a.path, params=params, metrics={"fit": result})


def _fit_gate(lp, lk, d, v, entropy, temperature: float, l2: float = 1e-3) -> tuple[dict, float]:
    """Logistic gate λ = sigmoid(w·z + b) over the standardised gate features, fitted by L-BFGS to
    the mixture's validation log-likelihood (small L2 penalty); returns (params, validation ppl)."""
    import torch
    import torch.nn.functional as F

    from ragkit.adaptation.logits import GATE_FEATURES, gate_features

    x = gate_features(d, v, entropy, temperature)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def nll():
        g = z @ w + b
        return -torch.logaddexp(F.logsigmoid(-g) + lp, F.logsigmoid(g) + lk).mean()

    def closure():
        opt.zero_grad()
        loss = nll() + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        ppl = math.exp(float(nll()))
    return ({"features": list(GATE_FEATURES),
             "mean": [round(float(x), 6) for x in mean], "std": [round(float(x), 6) for x in std],
             "weights": [round(float(x), 6) for x in w.detach()], "bias": round(float(b.detach()), 6)}, ppl)


def _fit_knn(a, proc, before, before_procs, llm, text, grid, window, stride, max_tokens, threads, write, progress,
             bins: int, gate: bool = True) -> dict:
    import torch

    from ragkit.progress import progress_bar
    from ragkit.adaptation.logits import knn_target_logprob, llm_entropy

    lams = sorted(set(float(x) for x in grid.get("lambda", GRIDS["knn"]["lambda"])) | {0.0})
    temps = [float(x) for x in grid.get("temperature", GRIDS["knn"]["temperature"])]
    lp_all, d_all, v_all, t_all, ent_all = [], [], [], [], []
    scorer = WindowScorer(llm, text, window, stride, max_tokens, threads)
    t0 = time.perf_counter()
    proc.lam, proc.lam_bins = 1.0, None  # not identity: the search runs
    with progress_bar(f"fit {a.name}", len(scorer.windows), progress) as advance:
        def cb(x, logits, hidden, lo, targets):
            hi = x.shape[1] - 1
            pre_sides = [slice_side(b.batched_side(x, hidden), lo, hi) for b in before_procs]
            scores = combine_chain(before_procs, logits[lo:hi], pre_sides)
            full = torch.log_softmax(scores.float(), -1)
            lp_all.append(full.gather(1, targets.view(-1, 1))[:, 0].double())
            ent_all.append(llm_entropy(full))
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
    binned = {"temperature": best_binned[1], "lambda": best_single[2],
              "lambda_bins": {"edges": [round(float(e), 4) for e in edges], "lambdas": best_binned[2]}}
    result_bins = {"params": binned, "ppl": round(best_binned[0], 4)}
    # the logistic gate, at the binned fit's temperature
    result_gate = None
    if gate:
        gate_params, gate_ppl = _fit_gate(lp, knn_target_logprob(d, v, t, best_binned[1]).double(), d, v,
                                          torch.cat(ent_all), best_binned[1])
        result_gate = {"params": {"temperature": best_binned[1], "lambda": best_single[2], "lambda_gate": gate_params},
                       "ppl": round(gate_ppl, 4)}
    # lambda_gate / lambda_bins replace lambda (kept: the best single λ, used when both are null)
    options = [(best_single[0], {**single, "lambda_bins": None, "lambda_gate": None})]
    if bins > 1:
        options.append((best_binned[0], {**binned, "lambda_gate": None}))
    if result_gate:
        options.append((result_gate["ppl"], {**result_gate["params"], "lambda_bins": None}))
    ppl, params = min(options, key=lambda o: o[0])
    result = {"params": params, "ppl": round(ppl, 4), "base_ppl": round(base_ppl, 4), "single_lambda": result_single,
              "lambda_bins": result_bins, "lambda_gate": result_gate,
              "bins": bins, "tokens": n, "stack_on": [b.name for b in before],
              "seconds": round(time.perf_counter() - t0, 1), "grid": rows}
    if write:
        _record(a, before, params, result)
    return result
