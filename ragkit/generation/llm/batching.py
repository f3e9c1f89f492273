"""Dynamic batching for a local transformers model: generations that arrive while the model is
decoding join one shared batch instead of waiting for everyone before them.

How it works. Each request's prompt (all but its last token) is prefilled alone into its own KV
cache, on the model's `prefill_threads`, one new request between two steps of the batch. That cache
then joins the batch's cache, left-padded to
a common length: padded positions are masked out and every row keeps its own position ids. One
forward pass per step decodes every row: on the model's `threads` (decode policy: 1) while one row
decodes, on its `prefill_threads` (2) when several do, since a step over many rows and their caches
is heavy work like a prefill (SmolLM2-135M, 900-token caches, idle machine: a step of 8 rows takes
280 ms on 1 thread, 165 ms on 2; one row 93 ms). A row that finishes (end of
text, a stop string, `max_new_tokens`, or a cancel from its client) leaves the batch at once; the
cache columns no remaining row needs are dropped. Greedy decoding gives the same text as the
request run alone (checked token for token against `HFCausalLM.generate` in the tests).

Limits. At most `max_batch` rows decode together; when they are all taken, at most `max_queue`
requests wait for a row, and one more gets `ServerBusyError` at once (the server answers 503 with `Retry-After`): the
queue is never unbounded. Models whose KV cache is not plain full attention (sliding-window
layers, as in Gemma 3) and generations with white-box adapters (`llm.logits_adapters`) are not
batched: `HFCausalLM` runs them on its serial path, under the same queue cap.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from typing import Iterator

from ragkit.errors import ServerBusyError
from ragkit.generation.llm.base import GenerationConfig, TextStream, cut_at_stop
from ragkit.runtime import torch_threads


class _Request:
    """One generation: its prompt ids, settings, the tokens so far and the text pieces for its reader."""

    def __init__(self, ids, config: GenerationConfig, out: TextStream) -> None:
        import torch

        self.ids, self.config, self.out = ids, config, out
        self.tokens: list[int] = []
        self.emitted = ""
        self.finish_reason: str | None = None
        self.pieces: queue.SimpleQueue = queue.SimpleQueue()  # str, then None (end) or an exception
        self.generator = None
        if config.temperature > 0 and config.seed is not None:
            self.generator = torch.Generator().manual_seed(config.seed)
        self.submitted = time.monotonic()


def supports_batching(model) -> bool:
    """Whether `model`'s KV cache is plain full attention in every layer (what left-padded rows need)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - a config this transformers cannot make a cache for
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


class DecodeBatcher:
    """The shared decode loop of one `HFCausalLM` (a daemon thread, started on the first request)."""

    def __init__(self, llm, max_batch: int = 8, max_queue: int = 32) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be ≥ 1 and max_queue ≥ 0 (got {max_batch}, {max_queue})")
        self.llm, self.max_batch, self.max_queue = llm, max_batch, max_queue
        self.eos = llm.end_token_ids()
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._rows: list[_Request] = []
        self._cache = self._mask = self._pos = self._next = None
        self._thread: threading.Thread | None = None
        self._seconds_per_request = 10.0  # running mean of a request's time in the batch (Retry-After)
        self.steps = 0
        self.peak_batch = 0

    # -- the caller's side -----------------------------------------------------------------------
    def submit(self, ids, config: GenerationConfig, out: TextStream) -> _Request:
        """Queue a generation; `ServerBusyError` when `max_queue` requests already wait."""
        with self._cond:
            if len(self._rows) + len(self._waiting) >= self.max_batch + self.max_queue:
                raise ServerBusyError(
                    f"the model is busy: {len(self._rows)} answers are decoding and {len(self._waiting)} wait "
                    f"(the queue holds {self.max_queue}); retry shortly", retry_after=self.retry_after())
            req = _Request(ids, config, out)
            self._waiting.append(req)
            self.llm.activity.queued(1)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="ragkit-batch")
                self._thread.start()
            self._cond.notify()
        return req

    def retry_after(self) -> int:
        """Seconds a client should wait before retrying: the queue ahead, at the measured pace."""
        rounds = (len(self._waiting) + len(self._rows)) / max(1, self.max_batch)
        return max(1, math.ceil(rounds * self._seconds_per_request))

    def pieces(self, req: _Request) -> Iterator[str]:
        """The request's text as it is produced; stopping early cancels it."""
        finished = False
        try:
            while True:
                item = req.pieces.get()
                if item is None:
                    finished = True
                    break
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            if not finished:
                req.out.cancel()
        req.out.finish_reason = req.finish_reason
        req.out.completion_tokens = len(req.tokens)

    def status(self) -> dict:
        with self._cond:
            return {"decoding": len(self._rows), "waiting": len(self._waiting), "steps": self.steps,
                    "peak_batch": self.peak_batch}

    # -- the decode thread -------------------------------------------------------------------------
    def _loop(self) -> None:
        from ragkit.generation.llm.hf import _GENERATE_LOCK

        while True:
            with self._cond:
                while not self._waiting and not self._rows:
                    if not self._cond.wait(timeout=30.0) and not self._waiting:
                        self._thread = None  # idle: the next submit starts a fresh thread
                        return
                # One new request per step: its prefill alternates with the running rows' steps, so
                # they keep streaming, and the first arrivals see their first token before the
                # last arrival's prompt is read.
                admit = []
                if self._waiting and len(self._rows) < self.max_batch:
                    admit.append(self._waiting.popleft())
                    self.llm.activity.queued(-1)
            try:
                with _GENERATE_LOCK:  # serial generations (adapters) and batch steps take turns
                    if not self._rows and admit:
                        self.llm.activity.started()
                    for req in admit:
                        self._admit(req)
                    if self._rows:
                        self._step()
                    if not self._rows:
                        self.llm.activity.ended()
            except BaseException as e:  # noqa: BLE001 - handed to every reader, the loop goes on
                failed = {id(r): r for r in self._rows + admit if r.finish_reason is None}
                for req in failed.values():
                    req.pieces.put(e)
                self._reset()
                self.llm.activity.ended()

    def _reset(self) -> None:
        with self._cond:
            self._rows = []
        self._cache = self._mask = self._pos = self._next = None

    def _admit(self, req: _Request) -> None:
        """Prefill the request's prompt alone, then add its cache to the batch (left-padded)."""
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        from ragkit.generation.llm.hf import cache_kwarg

        if req.out.cancelled.is_set():
            return self._finish(req, "cancelled")
        llm, ids = self.llm, req.ids
        cache = DynamicCache(config=llm.model.config)
        with torch_threads(llm.prefill_threads or llm.threads), torch.inference_mode():
            llm.model(input_ids=ids[:, :-1], use_cache=True, logits_to_keep=1, **{cache_kwarg(llm.model): cache})
        n = ids.shape[1] - 1
        last = ids[:, -1].clone()
        if not self._rows:
            self._cache, self._mask = cache, torch.ones(1, n, dtype=torch.long)
            self._pos, self._next = torch.tensor([n]), last
        else:
            width = self._mask.shape[1]
            full = max(width, n)
            for old, new in zip(self._cache.layers, cache.layers):
                old.keys = torch.cat([F.pad(old.keys, (0, 0, full - width, 0)), F.pad(new.keys, (0, 0, full - n, 0))])
                old.values = torch.cat([F.pad(old.values, (0, 0, full - width, 0)),
                                        F.pad(new.values, (0, 0, full - n, 0))])
            self._mask = torch.cat([F.pad(self._mask, (full - width, 0)),
                                    F.pad(torch.ones(1, n, dtype=torch.long), (full - n, 0))])
            self._pos = torch.cat([self._pos, torch.tensor([n])])
            self._next = torch.cat([self._next, last])
        with self._cond:
            self._rows.append(req)
            self.peak_batch = max(self.peak_batch, len(self._rows))

    def _step(self) -> None:
        """One forward pass for every row, one token each; finished rows leave."""
        import torch

        from ragkit.generation.llm.hf import cache_kwarg

        llm = self.llm
        mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=torch.long)], dim=1)
        threads = llm.threads if len(self._rows) == 1 else (llm.prefill_threads or llm.threads)
        with torch_threads(threads), torch.inference_mode():
            logits = llm.model(input_ids=self._next[:, None], attention_mask=mask, position_ids=self._pos[:, None],
                               use_cache=True, **{cache_kwarg(llm.model): self._cache}).logits[:, -1].float()
        self._mask, self._pos = mask, self._pos + 1
        self.steps += 1
        llm.activity.step()
        chosen = [self._choose(req, logits[i]) for i, req in enumerate(self._rows)]
        self._next = torch.tensor(chosen, dtype=torch.long)
        keep = [i for i, (req, token) in enumerate(zip(self._rows, chosen)) if not self._advance(req, token)]
        if len(keep) < len(self._rows):
            self._drop(keep)

    def _choose(self, req: _Request, logits) -> int:
        import torch

        config = req.config
        if config.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / config.temperature, dim=-1)
        if config.top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            cut = torch.cumsum(sorted_p, dim=-1) - sorted_p >= config.top_p
            sorted_p[cut] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=req.generator))

    def _advance(self, req: _Request, token: int) -> bool:
        """Record the row's new token and send its new text; True when the row is finished."""
        req.tokens.append(token)
        if token in self.eos:
            return self._finish(req, "stop")
        if req.out.cancelled.is_set():
            return self._finish(req, "cancelled")
        text = self.llm.tokenizer.decode(req.tokens, skip_special_tokens=True)
        if req.config.stop:
            cut, stopped = cut_at_stop(text, req.config.stop)
            if stopped:
                return self._finish(req, "stop", cut)
        if len(req.tokens) >= req.config.max_new_tokens:
            return self._finish(req, "length", text)
        ready = text[: len(text) - _held(text, req.config.stop)]
        if ready.startswith(req.emitted) and len(ready) > len(req.emitted):
            req.pieces.put(ready[len(req.emitted):])
            req.emitted = ready
        return False

    def _finish(self, req: _Request, reason: str, text: str | None = None) -> bool:
        if text is None:
            tokens = req.tokens[:-1] if req.tokens and req.tokens[-1] in self.eos else req.tokens
            text = self.llm.tokenizer.decode(tokens, skip_special_tokens=True) if reason != "cancelled" else ""
        if text.startswith(req.emitted) and len(text) > len(req.emitted):
            req.pieces.put(text[len(req.emitted):])
            req.emitted = text
        req.finish_reason = reason
        req.pieces.put(None)
        took = time.monotonic() - req.submitted
        self._seconds_per_request = 0.8 * self._seconds_per_request + 0.2 * took
        return True

    def _drop(self, keep: list[int]) -> None:
        import torch

        index = torch.tensor(keep, dtype=torch.long)
        with self._cond:
            self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._pos = self._next = None
            return
        mask = self._mask[index]
        first = int(mask.any(dim=0).nonzero()[0])  # columns every remaining row pads can go
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self._mask, self._pos, self._next = mask[:, first:], self._pos[index], self._next[index]


def _held(text: str, stop: list[str]) -> int:
    """How many trailing characters to hold back: an incomplete UTF-8 character, or the start of a
    stop string that the next tokens may complete."""
    held = 1 if text.endswith("\ufffd") else 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                held = max(held, k)
                break
    return held
