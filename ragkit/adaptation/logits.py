"""White-box decode-time adapters: `transformers.LogitsProcessor`s that adjust the LLM's next-token
scores, usable in plain `model.generate(logits_processor=...)` and through `HFCausalLM.logits_adapters`.

- `ProxyTuningProcessor`: `scores + α·(z_expert − z_anti)` on the small models' logits, which is
  `scores + α·(log p_expert − log p_anti)` up to a per-position constant that cancels in every
  softmax (sampling, greedy, perplexity, the next processor). When the expert and anti-expert share
  their (tied) output head - a pair trained from one small model with frozen embeddings - the
  difference is one product `W·(h_expert − h_anti)`: one head row per step instead of two. The
  base scores are left as they are, so expert == anti-expert returns them bit for bit.
- `ProductOfExpertsProcessor`: `(1−w)·log p_LLM + w·log p_SM` (`mode="product"`) or
  `log((1−w)·p_LLM + w·p_SM)` (`mode="mixture"`).
- `ContrastiveProcessor`: `log p_LLM − β·log p_amateur` inside the LLM's plausibility set
  (tokens with p ≥ α·max p), −inf elsewhere; the LLM is the expert.
- `KNNLMProcessor`: `log(λ·p_kNN + (1−λ)·p_LM)`, p_kNN = softmax(−d²/T) over the k nearest
  datastore keys, summed per next-token value; keys are the LLM's lm_head input or the input of
  its last feed-forward block (`capture_key`); λ may depend on the nearest key's distance.

Design choices (documented here once):
- Each small model keeps its own `DynamicCache`: its first call consumes the whole prompt, later
  calls feed only the tokens it has not seen (one per step). A sequence that is not an extension
  of what it saw (a new generation reusing the processor) resets the cache. Batch size 1 only
  (ragkit generates one sequence at a time): a batch raises `AdapterError`.
- kNN-LM needs the LLM's lm_head input at the current step. A forward pre-hook on the LLM's output
  embedding (installed once per model, `capture_lm_head_input`) keeps a reference to the tensor the
  lm_head received on its last call; during `generate` that is exactly the current step's hidden
  state, so no second LLM forward is run. In a batched forward (evaluation) it holds every position.
- Padded vocabularies: models over one tokenizer may have lm_heads of different widths; the
  adjustment is computed over the common width `min(V_LLM, V_SM)` and columns beyond it keep the
  incoming score (they are padding ids the tokenizer never produces).
- Tokenizers are compared with `check_same_tokenizer` when a processor is built: a mismatch fails
  with a message naming both models.
- The same `combine(scores, side)` function serves the step path (`__call__`, with cached
  one-token steps) and the batched path (`batched_side`, one forward over a whole window, used by
  perplexity evaluation and fitting); tests check that the two agree.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor

from ragkit.refs import resolve_folder_or_name
from ragkit.generation.llm.hf import cache_kwarg
from ragkit.adaptation.base import AdapterError, LogitsAdapter, check_same_tokenizer

# ---------------------------------------------------------------------------------------------
# helpers


def _batch1(input_ids: torch.Tensor) -> None:
    if input_ids.shape[0] != 1:
        raise AdapterError(f"ragkit's decode-time adapters handle one sequence at a time (batch size 1), "
                           f"got a batch of {input_ids.shape[0]}")


def _softcap(model) -> float | None:
    return getattr(model.config, "final_logit_softcapping", None)


class SideModel:
    """A small causal LM scored alongside the LLM, with its own KV cache (new tokens only)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self.head = model.get_output_embeddings()
        self.plain_head = _softcap(model) is None and self.head.bias is None
        self.reset()

    def reset(self) -> None:
        self.cache, self.ids = None, None

    def _new_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        _batch1(input_ids)
        if self.ids is not None and input_ids.shape[1] > self.ids.shape[1] and \
                torch.equal(input_ids[:, :self.ids.shape[1]], self.ids):
            new = input_ids[:, self.ids.shape[1]:]
        else:  # first call, or not an extension of what this cache holds
            from transformers import DynamicCache

            self.cache = DynamicCache(config=self.model.config)
            new = input_ids
        self.ids = input_ids
        return new

    def step_hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The last position's final hidden state [1, H] (lm_head input), feeding only new tokens."""
        new = self._new_tokens(input_ids)
        out = self.body(input_ids=new, use_cache=True, **{cache_kwarg(self.body): self.cache})
        return out.last_hidden_state[:, -1]

    def step_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits [1, V] after `input_ids`, feeding only new tokens."""
        if self.plain_head:
            return self.head(self.step_hidden(input_ids)).float()
        new = self._new_tokens(input_ids)
        return self.model(input_ids=new, use_cache=True, logits_to_keep=1,
                          **{cache_kwarg(self.model): self.cache}).logits[:, -1].float()

    def window_hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states [T, H] (lm_head inputs) for every position of [1, T], no cache."""
        _batch1(input_ids)
        return self.body(input_ids=input_ids, use_cache=False).last_hidden_state[0]

    def window_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [T, V] for every position of one sequence [1, T], no cache (the batched path)."""
        _batch1(input_ids)
        return self.model(input_ids=input_ids, use_cache=False).logits[0].float()


class PairedSide(SideModel):
    """Expert and anti-expert as one model run on a batch of two (row 0 the expert: its LoRA rows
    switched on by `state`; row 1 the anti-expert), one KV cache for both; see
    `ragkit.adaptation.lora_pair`. Its outputs are expert − anti-expert logit differences."""

    def __init__(self, model: Any, state: Any) -> None:
        super().__init__(model)
        from ragkit.adaptation.lora_pair import RowLoRALinear

        self.state = state
        self.plain_head = self.plain_head and not isinstance(self.head, RowLoRALinear)

    def _pair(self, module: Any, ids: torch.Tensor, **kw: Any) -> Any:
        self.state.rows = 1
        try:
            return module(input_ids=ids.expand(2, -1), **kw)
        finally:
            self.state.rows = None

    def step_diff(self, input_ids: torch.Tensor) -> torch.Tensor:
        """expert − anti-expert next-token logits [1, V] after `input_ids`, feeding only new tokens."""
        new = self._new_tokens(input_ids)
        if self.plain_head:
            h = self._pair(self.body, new, use_cache=True, **{cache_kwarg(self.body): self.cache}).last_hidden_state[:, -1]
            return self.head(h[:1] - h[1:]).float()
        z = self._pair(self.model, new, use_cache=True, logits_to_keep=1,
                       **{cache_kwarg(self.model): self.cache}).logits[:, -1].float()
        return z[:1] - z[1:]

    def window_diff(self, input_ids: torch.Tensor) -> torch.Tensor:
        """expert − anti-expert logits [T, V] for every position of one sequence [1, T], no cache."""
        _batch1(input_ids)
        if self.plain_head:
            h = self._pair(self.body, input_ids, use_cache=False).last_hidden_state
            return self.head(h[0] - h[1]).float()
        z = self._pair(self.model, input_ids, use_cache=False).logits.float()
        return z[0] - z[1]


def _shares_head(a: SideModel, b: SideModel) -> bool:
    wa, wb = a.head.weight, b.head.weight
    return a.plain_head and b.plain_head and wa.shape == wb.shape and (wa is wb or torch.equal(wa, wb))


def _check_tokenizers(llm: Any, tokenizer: Any, name: str) -> None:
    check_same_tokenizer(llm.tokenizer, tokenizer, f"LLM {getattr(llm, 'model_id', 'LLM')}", name)


def _width(scores: torch.Tensor, side: torch.Tensor) -> int:
    return min(scores.shape[-1], side.shape[-1])


@functools.cache
def _side_pool():
    """The one worker thread that runs prefetched small-model steps (made on first use)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragkit-side")


def _side_step(step_side: Any, input_ids: torch.Tensor) -> Any:
    with torch.inference_mode():  # grad mode is per thread: the worker does not inherit the caller's
        return step_side(input_ids)


class _Processor(LogitsProcessor):
    """Base: `__call__` = combine(scores, step_side(input_ids)); `batched_side` for whole windows.

    Overlap: a processor whose step runs only its own small models (`prefetchable`) can start the
    step for the next position as soon as the token is chosen (`prefetch`, on one side thread), so
    the small models' step runs on the second core while the LLM runs its own; `__call__` then takes
    the result. `finish()` waits for a step still running (call it when the generation ends)."""

    prefetchable = False
    _pending: tuple | None = None

    def step_side(self, input_ids: torch.Tensor) -> Any:
        raise NotImplementedError

    def batched_side(self, input_ids: torch.Tensor, hidden: torch.Tensor | None = None) -> Any:
        """Side information for every position of `input_ids` [1, T]; `hidden` [T, H] is the LLM's
        lm_head input at every position (needed by kNN-LM only)."""
        raise NotImplementedError

    def combine(self, scores: torch.Tensor, side: Any) -> torch.Tensor:
        raise NotImplementedError

    def is_identity(self) -> bool:
        return False

    def prefetch(self, input_ids: torch.LongTensor) -> None:
        """Start `step_side(input_ids)` on the side thread (no-op unless `prefetchable`)."""
        if self.prefetchable:
            self.finish()
            ids = input_ids.clone()
            self._pending = (ids, _side_pool().submit(_side_step, self.step_side, ids))

    def finish(self) -> tuple | None:
        """Wait for a prefetched step: (its input ids, its result), or None when there was none."""
        pending, self._pending = self._pending, None
        return None if pending is None else (pending[0], pending[1].result())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        _batch1(input_ids)
        done = self.finish()  # never two steps on one cache at once
        if done is not None and torch.equal(done[0], input_ids):
            side = done[1]
        else:
            side = self.step_side(input_ids)  # always advance the caches, even when the weight is 0
        if self.is_identity():
            return scores
        return self.combine(scores, side)


# ---------------------------------------------------------------------------------------------
# proxy-tuning


class ProxyTuningProcessor(_Processor):
    """`scores + α·(z_expert − z_anti)` over the common vocabulary (equal, after any softmax, to
    `scores + α·(log_softmax(expert) − log_softmax(anti_expert))`). `ProxyTuningProcessor.paired`:
    the expert a LoRA on the anti-expert's weights, both run as one batch of two."""

    prefetchable = True

    def __init__(self, expert: Any, anti_expert: Any, alpha: float = 0.1) -> None:
        self.expert, self.anti = SideModel(expert), SideModel(anti_expert)
        self.alpha = float(alpha)
        self.shared_head = _shares_head(self.expert, self.anti)
        self.pair: PairedSide | None = None

    @classmethod
    def paired(cls, model: Any, state: Any, alpha: float = 0.1) -> "ProxyTuningProcessor":
        """Expert and anti-expert as one model with row LoRA installed (`lora_pair.install_row_lora`)."""
        self = cls.__new__(cls)
        self.pair, self.alpha, self.shared_head = PairedSide(model, state), float(alpha), False
        return self

    def is_identity(self) -> bool:
        return self.alpha == 0.0

    def step_side(self, input_ids):
        if self.pair is not None:
            return self.pair.step_diff(input_ids)
        if self.shared_head:  # both bodies, then one head row for the difference
            return self.expert.head(self.expert.step_hidden(input_ids) - self.anti.step_hidden(input_ids)).float()
        e, a = self.expert.step_logits(input_ids), self.anti.step_logits(input_ids)
        n = _width(e, a)
        return e[..., :n] - a[..., :n]

    def batched_side(self, input_ids, hidden=None):
        if self.pair is not None:
            return self.pair.window_diff(input_ids)
        if self.shared_head:
            return self.expert.head(self.expert.window_hidden(input_ids) - self.anti.window_hidden(input_ids)).float()
        e, a = self.expert.window_logits(input_ids), self.anti.window_logits(input_ids)
        n = _width(e, a)
        return e[..., :n] - a[..., :n]

    def combine(self, scores, diff):
        n = _width(scores, diff)
        out = scores.clone()
        out[..., :n] = scores[..., :n] + self.alpha * diff[..., :n]
        return out


# ---------------------------------------------------------------------------------------------
# product of experts / mixture


class ProductOfExpertsProcessor(_Processor):
    """`(1−w)·log p_LLM + w·log p_SM` (mode "product") or `log((1−w)·p_LLM + w·p_SM)` ("mixture")."""

    prefetchable = True

    def __init__(self, small: Any, w: float = 0.2, mode: str = "product") -> None:
        if mode not in ("product", "mixture"):
            raise AdapterError(f"product-of-experts mode must be 'product' or 'mixture', not {mode!r}")
        self.small, self.w, self.mode = SideModel(small), float(w), mode

    def is_identity(self) -> bool:
        return self.w == 0.0

    def step_side(self, input_ids):
        return self.small.step_logits(input_ids)

    def batched_side(self, input_ids, hidden=None):
        return self.small.window_logits(input_ids)

    def combine(self, scores, side):
        n = _width(scores, side)
        lp = F.log_softmax(scores.float(), -1)
        ls = F.log_softmax(side[..., :n], -1)
        out = lp.clone()
        if self.mode == "product":
            out[..., :n] = (1 - self.w) * lp[..., :n] + self.w * ls
        else:
            w = min(max(self.w, 1e-12), 1.0)
            out[..., :n] = torch.logaddexp(math.log1p(-w) + lp[..., :n] if w < 1 else torch.full_like(ls, -math.inf),
                                           math.log(w) + ls)
        return out


# ---------------------------------------------------------------------------------------------
# contrastive decoding


class ContrastiveProcessor(_Processor):
    """`log p_LLM − β·log p_amateur` for tokens with p_LLM ≥ α·max p_LLM, −inf for the others."""

    prefetchable = True

    def __init__(self, amateur: Any, beta: float = 0.5, alpha: float = 0.1) -> None:
        self.amateur, self.beta, self.alpha = SideModel(amateur), float(beta), float(alpha)

    def is_identity(self) -> bool:
        return self.beta == 0.0 and self.alpha == 0.0

    def step_side(self, input_ids):
        return self.amateur.step_logits(input_ids)

    def batched_side(self, input_ids, hidden=None):
        return self.amateur.window_logits(input_ids)

    def combine(self, scores, side):
        n = _width(scores, side)
        lp = F.log_softmax(scores.float(), -1)
        out = lp.clone()
        out[..., :n] = lp[..., :n] - self.beta * F.log_softmax(side[..., :n], -1)
        if self.alpha > 0:
            cut = lp.max(-1, keepdim=True).values + math.log(self.alpha)
            out = out.masked_fill(lp < cut, -math.inf)
        return out


# ---------------------------------------------------------------------------------------------
# kNN-LM

_HOOK_ATTR = "_ragkit_lm_head_input"


def capture_lm_head_input(model: Any) -> Any:
    """Install (once) a forward pre-hook on `model`'s output embedding that keeps a reference to
    the input of its latest call; returns the head module (read `head._ragkit_lm_head_input`)."""
    head = model.get_output_embeddings()
    if not getattr(head, "_ragkit_hooked", False):
        def hook(module, args):
            setattr(module, _HOOK_ATTR, args[0])
        head.register_forward_pre_hook(hook)
        head._ragkit_hooked = True
    return head


_FFN_ATTR = "_ragkit_ffn_input"
KNN_KEYS = ("lm_head_input", "ffn_input")


def last_ffn(model: Any) -> Any:
    """The feed-forward block of the LLM's last decoder layer (Llama, Qwen, Mistral, Gemma, GPT-2)."""
    dec = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", model)
    layers = getattr(dec, "layers", None)
    if layers is None:
        layers = getattr(dec, "h", None)
    mlp = getattr(layers[-1], "mlp", None) if layers is not None and len(layers) else None
    if mlp is None:
        raise AdapterError(f"kNN key 'ffn_input': {type(model).__name__} has no decoder layers with an 'mlp' "
                           "block that ragkit can find; build the datastore with key 'lm_head_input'")
    return mlp


def capture_key(model: Any, key: str = "lm_head_input"):
    """A function returning the latest kNN-LM key tensor [B, T, H] of `model` (hooks installed once):
    `lm_head_input`, the final hidden state; `ffn_input`, the input of the last layer's
    feed-forward block (after its norm), the key Khandelwal et al. (2020) found best."""
    if key == "lm_head_input":
        head = capture_lm_head_input(model)
        return lambda: getattr(head, _HOOK_ATTR, None)
    if key == "ffn_input":
        mlp = last_ffn(model)
        if not getattr(mlp, "_ragkit_ffn_hooked", False):
            def hook(module, args):
                setattr(module, _FFN_ATTR, args[0])
            mlp.register_forward_pre_hook(hook)
            mlp._ragkit_ffn_hooked = True
        return lambda: getattr(mlp, _FFN_ATTR, None)
    raise AdapterError(f"unknown kNN-LM key {key!r}; choose one of {', '.join(KNN_KEYS)}")


class KNNLMProcessor(_Processor):
    """`log(λ·p_kNN + (1−λ)·softmax(scores))`; p_kNN = softmax(−d²/T) over the k nearest keys.

    λ per position (both optional, fitted by `ragkit adapter fit`; the gate wins over the bins,
    the bins over `lam`):
    - `lambda_bins` {"edges": [...], "lambdas": [...]}: λ by the distance to the nearest key (bin i:
      edges[i−1] ≤ d²_min < edges[i]), so the datastore weighs much where it holds a close match;
    - `lambda_gate` {"mean", "std", "weights", "bias"}: λ = sigmoid(w·z + b) of the standardised
      `GATE_FEATURES` (He et al. 2021's adaptive interpolation, as a logistic gate)."""

    def __init__(self, index: Any, values: torch.Tensor, llm_model: Any, k: int = 64, temperature: float = 100.0,
                 lam: float = 0.25, key: str = "lm_head_input", lambda_bins: dict | None = None,
                 lambda_gate: dict | None = None) -> None:
        self.index, self.values = index, values.long()
        self.k, self.temperature, self.lam = int(k), float(temperature), float(lam)
        self.key = key
        self.latest_key = capture_key(llm_model, key)
        self.lam_bins = lambda_bins or None
        self.lam_gate = lambda_gate or None
        if self.lam_gate:
            n = len(GATE_FEATURES)
            if any(len(self.lam_gate.get(f) or []) != n for f in ("mean", "std", "weights")) or \
                    "bias" not in self.lam_gate:
                raise AdapterError(f"kNN lambda_gate needs 'mean', 'std', 'weights' ({n} values each, for "
                                   f"{', '.join(GATE_FEATURES)}) and 'bias', got {self.lam_gate}")
        if self.lam_bins:
            edges, lams = self.lam_bins.get("edges"), self.lam_bins.get("lambdas")
            if edges is None or lams is None or len(lams) != len(edges) + 1 or not all(0 <= x <= 1 for x in lams):
                raise AdapterError(f"kNN lambda_bins needs 'edges' (n) and 'lambdas' (n + 1, each in 0..1), got "
                                   f"{self.lam_bins}")

    def is_identity(self) -> bool:
        if self.lam_gate:
            return False
        if self.lam_bins:
            return all(x == 0.0 for x in self.lam_bins["lambdas"])
        return self.lam == 0.0

    def lambdas(self, side: Any, lp: torch.Tensor) -> torch.Tensor:
        """λ per position [N] from the neighbours (distances [N, k] nearest first, values) and the
        LLM's log-probabilities `lp` [N, V]."""
        d, v = side
        if self.lam_gate:
            g = self.lam_gate
            z = (gate_features(d, v, llm_entropy(lp), self.temperature) - torch.tensor(g["mean"], dtype=torch.float64)) \
                / torch.tensor(g["std"], dtype=torch.float64)
            return torch.sigmoid(z @ torch.tensor(g["weights"], dtype=torch.float64) + float(g["bias"]))
        if not self.lam_bins:
            return torch.full((d.shape[0],), self.lam, dtype=torch.float64)
        edges = torch.tensor(self.lam_bins["edges"], dtype=d.dtype)
        lams = torch.tensor(self.lam_bins["lambdas"], dtype=torch.float64)
        return lams[torch.bucketize(d[:, 0].contiguous(), edges, right=True)]

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(squared distances [N, k], value token ids [N, k]) of the k nearest keys."""
        import faiss

        q = queries.detach().float().contiguous().numpy()
        # faiss on as many OpenMP threads as torch has now (1 per decode step under ragkit's policy):
        # extra OpenMP threads stall on shared cores
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1 if len(q) <= 4 else max(1, torch.get_num_threads()))
        try:
            d, i = self.index.search(q, self.k)
        finally:
            faiss.omp_set_num_threads(before)
        i = torch.from_numpy(i)
        return torch.from_numpy(d).float(), self.values[i.clamp_min(0)].masked_fill(i < 0, 0)

    def step_side(self, input_ids):
        h = self.latest_key()
        if h is None:
            raise AdapterError("kNN-LM: the LLM has not run yet (the processor must be given the scores of the "
                               "same model it was built with)")
        if self.is_identity():
            return None
        return self.search(h[:, -1])

    def batched_side(self, input_ids, hidden=None):
        if self.key != "lm_head_input" or hidden is None:
            h = self.latest_key()
            if h is None or h.shape[-2] != input_ids.shape[-1]:
                raise AdapterError(f"kNN-LM needs the LLM's {self.key} at every position of the window "
                                   "(run the LLM over it first)")
            hidden = h[0]
        return self.search(hidden)

    def _mix(self, lp: torch.Tensor, lk: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        lam = lam.view(-1, *([1] * (lp.dim() - 1)))
        with torch.no_grad():
            a = torch.log1p(-lam).float()  # -inf where λ = 1
            b = torch.log(lam).float()     # -inf where λ = 0
        return torch.logaddexp(a + lp, b + lk)

    def knn_logprobs(self, side, width: int) -> torch.Tensor:
        d, v = side
        w = F.log_softmax(-d / self.temperature, -1)  # [N, k]
        p = torch.zeros(d.shape[0], width, dtype=torch.float32)
        p.scatter_add_(1, v, w.exp())
        return p.clamp_min(1e-30).log()

    def target_logprob(self, scores: torch.Tensor, side: Any, targets: torch.Tensor) -> torch.Tensor:
        """`combine(scores, side)` gathered at `targets` (log-probs [n]), in O(k) per position: what
        fitting λ and the temperature needs (tests check it against `combine`)."""
        full = F.log_softmax(scores.float(), -1)
        lp = full.gather(1, targets.view(-1, 1))[:, 0]
        if self.is_identity() or side is None:
            return lp
        d, v = side
        return self._mix(lp, knn_target_logprob(d, v, targets, self.temperature), self.lambdas(side, full))

    def combine(self, scores, side):
        lp = F.log_softmax(scores.float(), -1)
        if self.is_identity() or side is None:
            return lp
        return self._mix(lp, self.knn_logprobs(side, scores.shape[-1]), self.lambdas(side, lp))


GATE_FEATURES = ("nearest_distance", "log_distance_ratio", "llm_entropy", "knn_top_probability",
                 "neighbour_agreement")


def llm_entropy(lp: torch.Tensor) -> torch.Tensor:
    """Entropy [N] of the LLM's next-token distributions from log-probabilities [N, V]."""
    return torch.special.entr(lp.double().exp()).sum(-1)


def gate_features(d: torch.Tensor, v: torch.Tensor, entropy: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N, 5] float64, `GATE_FEATURES`: squared distance to the nearest key; log of the mean distance
    of the next 7 over the nearest; the LLM's entropy; the largest kNN token probability; the share
    of the 8 nearest keys whose next token is the nearest's."""
    d = d.double()
    m = min(8, d.shape[1])
    ratio = torch.log(d[:, 1:m].mean(1).clamp_min(1e-6) / d[:, 0].clamp_min(1e-6)) if m > 1 else torch.zeros(len(d))
    w = torch.softmax(-d / temperature, -1)
    top = torch.cat([((vc[:, :, None] == vc[:, None, :]).double() * wc[:, None, :]).sum(-1).max(1).values
                     for vc, wc in zip(v.split(512), w.split(512))]) if len(v) else torch.zeros(0, dtype=torch.float64)
    agree = (v[:, :m] == v[:, :1]).double().mean(1)
    return torch.stack([d[:, 0], ratio, entropy.double(), top, agree], 1)


def knn_target_logprob(d: torch.Tensor, v: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p_kNN(target) [n] from squared distances d [n, k] and neighbour values v [n, k]."""
    w = F.log_softmax(-d / temperature, -1).masked_fill(v != targets.view(-1, 1), -math.inf)
    return torch.logsumexp(w, -1).clamp_min(math.log(1e-30))


# ---------------------------------------------------------------------------------------------
# adapters (folders) of these kinds


def resolve_model_ref(ref: str, adapter_path: Path | None) -> str:
    """A model reference in a manifest: a path relative to the adapter folder or its parent, a
    name under adapters/, or an LLM name / hub id as is."""
    return resolve_folder_or_name(ref, adapter_path)


class _ModelBacked(LogitsAdapter):
    """Loads its small model(s) once per adapter object; each processor gets fresh caches."""

    roles: tuple[str, ...] = ()

    def __init__(self, manifest=None, path=None) -> None:
        super().__init__(manifest, path)
        self._models: dict[str, tuple[Any, Any, str]] = {}

    def model(self, role: str):
        if role not in self._models:
            from ragkit.generation.loader import load_causal_lm

            refs = self.manifest.get("models", {})
            if role not in refs:
                raise AdapterError(f"{self.path}: the manifest names no {role!r} model (models: {sorted(refs)})")
            ref = resolve_model_ref(refs[role], self.path)
            model, tok, name = load_causal_lm(ref, "auto")  # inference only: the format ragkit runs it in
            for p in model.parameters():
                p.requires_grad_(False)
            self._models[role] = (model, tok, f"{role} {name}")
        return self._models[role]

    def _checked(self, llm: Any, role: str):
        model, tok, name = self.model(role)
        _check_tokenizers(llm, tok, name)
        return model

    def p(self, key: str, default: Any) -> Any:
        return self.manifest.get("params", {}).get(key, default)


class ProxyAdapter(_ModelBacked):
    """Proxy-tuning. When the expert is a LoRA whose base is the anti-expert (and the manifest's
    `params.paired` is not false), both run as one batch of two through the anti-expert's weights
    (`lora_pair`); `self.paired_reason` says why not otherwise."""

    kind = "proxy"
    roles = ("expert", "anti_expert")

    def logits_processor(self, llm):
        alpha = self.p("alpha", 0.0)
        pair = self.pair_model()
        if pair is not None:
            model, tok, name, state = pair
            _check_tokenizers(llm, tok, name)
            return ProxyTuningProcessor.paired(model, state, alpha=alpha)
        return ProxyTuningProcessor(self._checked(llm, "expert"), self._checked(llm, "anti_expert"), alpha=alpha)

    def pair_model(self):
        """(model, tokenizer, name, row-LoRA state) for the paired run, loaded once; None (with
        `self.paired_reason`) when the expert is not a plain LoRA of the anti-expert."""
        if "pair" in self._models:
            return self._models["pair"]
        from ragkit.adaptation.lora_pair import install_row_lora, lora_base_id, lora_folder
        from ragkit.generation.loader import base_model_id, load_causal_lm

        refs = self.manifest.get("models", {})
        self.paired_reason = "params.paired is false"
        if not self.p("paired", True) or "expert" not in refs or "anti_expert" not in refs:
            return None
        expert = resolve_model_ref(refs["expert"], self.path)
        anti = resolve_model_ref(refs["anti_expert"], self.path)
        folder = lora_folder(expert)
        if folder is None:
            self.paired_reason = "the expert is not a LoRA adapter"
            return None
        expert_base, anti_base = lora_base_id(expert, folder), base_model_id(anti)
        if expert_base != anti_base:
            self.paired_reason = f"the expert's base {expert_base!r} is not the anti-expert {anti_base!r}"
            return None
        model, tok, name = load_causal_lm(anti, "auto")
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            state = install_row_lora(model, folder)
        except AdapterError as e:
            self.paired_reason = str(e)
            return None
        self.paired_reason = None
        self._models["pair"] = (model, tok, f"expert+anti-expert {name}", state)
        return self._models["pair"]


class PoEAdapter(_ModelBacked):
    kind = "poe"
    roles = ("small",)

    def logits_processor(self, llm):
        return ProductOfExpertsProcessor(self._checked(llm, "small"), w=self.p("w", 0.0),
                                         mode=self.p("mode", "product"))


class ContrastiveAdapter(_ModelBacked):
    kind = "contrastive"
    roles = ("amateur",)

    def logits_processor(self, llm):
        return ContrastiveProcessor(self._checked(llm, "amateur"), beta=self.p("beta", 0.5), alpha=self.p("alpha", 0.1))



def create(kind: str, out: str | Path, models: dict[str, str], base_model: str, params: dict | None = None) -> Path:
    """Write a `proxy` / `poe` / `contrastive` adapter folder that references its model folders
    (`models`: role → folder or LLM name; paths are stored relative to the adapter's parent folder
    when they lie under it). Roles: proxy expert + anti_expert, poe small, contrastive amateur."""
    from ragkit.adaptation.base import new_manifest, write_adapter
    from ragkit.generation.loader import load_causal_lm

    need = {"proxy": ("expert", "anti_expert"), "poe": ("small",), "contrastive": ("amateur",)}
    if kind not in need:
        raise AdapterError(f"unknown decode-time adapter kind {kind!r} (proxy, poe, contrastive; kNN: knn.build_datastore)")
    missing = [r for r in need[kind] if r not in models]
    if missing:
        raise AdapterError(f"a {kind} adapter needs the model(s) {', '.join(missing)}")
    out = Path(out)
    refs, toks = {}, []
    for role in need[kind]:
        ref = Path(models[role])
        if ref.is_dir():
            try:
                refs[role] = str(ref.resolve().relative_to(out.resolve().parent))
            except ValueError:
                refs[role] = str(ref.resolve())
        else:
            refs[role] = str(models[role])
        _, tok, name = load_causal_lm(models[role])
        toks.append((tok, f"{role} {name}"))
    for tok, name in toks[1:]:
        check_same_tokenizer(toks[0][0], tok, toks[0][1], name)
    defaults = {"proxy": {"alpha": 0.0}, "poe": {"w": 0.0, "mode": "product"}, "contrastive": {"beta": 0.5, "alpha": 0.1}}
    manifest = new_manifest(kind, base_model, toks[0][0], None, models=refs,
                            params={**defaults[kind], **(params or {})})
    return write_adapter(out, manifest, lambda tmp: None)
