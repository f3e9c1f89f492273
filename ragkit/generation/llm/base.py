"""The interface every LLM backend implements: generate, stream, count tokens (logits where the
backend has them)."""
from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator, Union

from ragkit.errors import PromptTooLongError

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
Prompt = Union[str, list[Message]]


@dataclass
class GenerationConfig:
    """Decoding settings; `temperature=0` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of text or a stop string) or "length"


class TextStream:
    """One generation's text pieces as they are produced.

    Iterate it once. `cancel()` may be called from any thread (a server whose client went away): it
    never blocks, and decoding stops at its next step. Once iteration ends, `finish_reason` is the
    backend's own ("stop": end of text or a stop string, "length": `max_new_tokens` reached,
    "cancelled") and `completion_tokens` counts the tokens the model generated.
    """

    def __init__(self, produce: Callable[["TextStream"], Iterator[str]]) -> None:
        self.cancelled = threading.Event()
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self._pieces = produce(self)

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def cancel(self) -> None:
        self.cancelled.set()


class DecodeActivity:
    """What a backend's decoding is doing, for health checks: when the current generation started,
    when it last produced a token, and how many generations wait for the model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.busy_since: float | None = None
        self.last_step: float | None = None
        self.waiting = 0
        self.completed = 0

    def queued(self, delta: int) -> None:
        with self._lock:
            self.waiting += delta

    def started(self) -> None:
        with self._lock:
            self.busy_since = self.last_step = time.monotonic()

    def step(self) -> None:
        self.last_step = time.monotonic()

    def ended(self) -> None:
        with self._lock:
            self.busy_since = self.last_step = None
            self.completed += 1

    def snapshot(self) -> dict:
        now = time.monotonic()
        busy, last = self.busy_since, self.last_step
        return {"busy": busy is not None, "busy_s": round(now - busy, 3) if busy is not None else 0.0,
                "since_last_step_s": round(now - last, 3) if last is not None else 0.0,
                "waiting": self.waiting, "completed": self.completed}


class LLM(ABC):
    """A text generator. Prompts are plain strings or chat messages."""

    model_id: str = ""
    context_window: int = 2048
    has_logits: bool = False

    @abstractmethod
    def generate(self, prompt: Prompt, config: GenerationConfig | None = None) -> Generation:
        """The whole completion."""

    @abstractmethod
    def stream(self, prompt: Prompt, config: GenerationConfig | None = None) -> TextStream:
        """The completion as text pieces, as they are produced (a cancellable `TextStream`). The
        prompt's length is checked when this is called, before any piece is produced."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model's vocabulary."""

    def render(self, prompt: Prompt) -> str:
        """The text the model sees for `prompt` (backends with a chat template override this)."""
        if isinstance(prompt, str):
            return prompt
        return "\n\n".join(m["content"] for m in prompt)

    def check_prompt(self, prompt: Prompt, max_new_tokens: int) -> int:
        """The prompt's token count; `PromptTooLongError` when it and `max_new_tokens` do not fit
        the context window together."""
        return self._check_length(self.count_tokens(self.render(prompt)), max_new_tokens)

    def _check_length(self, n_prompt: int, max_new_tokens: int) -> int:
        if n_prompt + max_new_tokens > self.context_window:
            raise PromptTooLongError(
                f"the prompt is {n_prompt} tokens; with max_tokens {max_new_tokens} it needs "
                f"{n_prompt + max_new_tokens}, more than {self.model_id or 'the model'}'s context of "
                f"{self.context_window} tokens: shorten it or ask for fewer tokens")
        return n_prompt


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
