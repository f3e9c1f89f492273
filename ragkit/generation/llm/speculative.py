"""Speculative decoding with a small sibling as the draft: ragkit's own loop.

Each round's proposals come from the prompt when its last `llm.draft_lookup` tokens occurred
earlier (prompt lookup: the tokens that followed them, no model run), else from the draft: up to
`llm.draft_tokens` greedy tokens, one step each on the decode threads, stopping early after a token
it gives less than `llm.draft_confidence` probability;
the LLM checks them all in one forward pass (several rows: on the prefill threads, as batched steps
are) and keeps the longest run it agrees with, plus its own next token. Both KV caches are cut back
to what was kept. Greedy only.

Exactness: the text equals the LLM's own greedy text when its decode steps run kernels whose result
for a position does not depend on how many positions share the pass. ragkit's `int8` layers
(`aten._weight_int8pack_mm`, kept for the whole check by `int8_rows`) and eager attention are such kernels (checked bit for bit against
one-token steps, on 1 and 2 threads); torch's SDPA attention is not (logits differed by up to 0.25
and two of six answers took the other side of a near-tie). So with a draft attached the LLM's decode
steps, with or without the draft, use eager attention (`HFCausalLM.step_attention`); prompts keep SDPA.
"""
from __future__ import annotations

from typing import Callable

from ragkit.generation.quantize import int8_rows
from ragkit.runtime import torch_threads


def speculative_decode(llm, ids, max_new_tokens: int, on_tokens: Callable[[list[int]], bool]) -> list[int]:
    """Greedy token ids after the prompt `ids` (a [1, n] tensor) for `llm` (an `HFCausalLM` with a
    draft attached). `on_tokens(new)` gets each run of kept tokens and returns True to stop."""
    import torch
    from transformers import DynamicCache

    from ragkit.generation.llm.hf import cache_kwarg

    target, draft = llm.model, llm.draft.model
    kw_t, kw_d = cache_kwarg(target), cache_kwarg(draft)
    eos = llm.end_token_ids()
    seq = ids[0].tolist()
    out: list[int] = []
    stats = llm.draft_stats = {"checks": 0, "proposed": 0, "kept": 0, "looked_up": 0}
    t_cache = llm._prefill(ids)  # the prompt but its last token, as the plain path prefills it
    if t_cache is None:  # a short prompt: the plain path runs it whole in its first step; so does this
        t_cache = DynamicCache(config=target.config)
        with torch_threads(llm.threads), torch.inference_mode(), llm._attention(llm.step_attention):
            first = int(target(input_ids=ids, use_cache=True, logits_to_keep=1, **{kw_t: t_cache}).logits[0, -1].argmax())
        seq.append(first)
        out.append(first)
        if on_tokens([first]) or first in eos or max_new_tokens <= 1:
            return out
    d_cache = DynamicCache(config=draft.config)
    multi_threads = llm.prefill_threads or llm.threads
    with torch_threads(multi_threads), torch.inference_mode():
        if len(seq) > 1:
            draft(input_ids=torch.tensor([seq[:-1]]), use_cache=True, **{kw_d: d_cache})
    while len(out) < max_new_tokens:
        budget = min(llm.draft_tokens, max_new_tokens - len(out) - 1)  # verifying always adds one token
        proposals = lookup_proposals(seq, llm.draft_lookup, budget)  # free when the answer copies its prompt
        stats["looked_up"] += bool(proposals)
        with torch_threads(llm.threads), torch.inference_mode():
            feed = seq[d_cache.get_seq_length():]
            for _ in range(0 if proposals else budget):
                logits = draft(input_ids=torch.tensor([feed]), use_cache=True, logits_to_keep=1, **{kw_d: d_cache}).logits
                probs = torch.softmax(logits[0, -1].float(), dim=-1)
                token = int(probs.argmax())
                proposals.append(token)
                feed = [token]
                if token in eos or float(probs[token]) < llm.draft_confidence:
                    break  # an unsure draft token is still checked, but drafting further would likely be wasted
        block = seq[t_cache.get_seq_length():] + proposals
        with torch_threads(multi_threads if len(block) > 1 else llm.threads), torch.inference_mode(), \
                llm._attention(llm.step_attention), int8_rows(target, len(block)):
            logits = target(input_ids=torch.tensor([block]), use_cache=True, **{kw_t: t_cache}).logits[0]
        checks = logits[-len(proposals) - 1:].argmax(-1).tolist()
        kept = 0
        while kept < len(proposals) and proposals[kept] == checks[kept]:
            kept += 1
        new = proposals[:kept] + [checks[kept]]
        stats["checks"] += 1
        stats["proposed"] += len(proposals)
        stats["kept"] += kept
        valid = len(seq) + kept  # cache positions that hold kept tokens: the sequence so far and the agreed drafts
        _cut(t_cache, valid)
        _cut(d_cache, valid)
        for i, token in enumerate(new):
            if token in eos:
                new = new[:i + 1]
                break
        new = new[:max_new_tokens - len(out)]
        seq += new
        out += new
        if on_tokens(new) or new[-1] in eos:
            break
    return out


def lookup_proposals(seq: list[int], ngram: int, budget: int) -> list[int]:
    """Prompt-lookup drafting: the up to `budget` tokens that followed the latest earlier occurrence
    of the sequence's last `ngram` tokens (prompt or answer so far); [] when there is none or
    `ngram` is 0. Answers grounded in retrieved passages copy runs of them, which this proposes
    without running the draft model."""
    if ngram <= 0 or budget <= 0 or len(seq) <= ngram:
        return []
    tail = seq[-ngram:]
    for start in range(len(seq) - ngram - 1, -1, -1):
        if seq[start:start + ngram] == tail:
            return seq[start + ngram:start + ngram + budget]
    return []


def _cut(cache, length: int) -> None:
    """Keep the first `length` positions of a KV cache (a negative `crop` removes that many: the
    one meaning every transformers version shares)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)

