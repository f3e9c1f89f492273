"""The interface every LLM backend implements: generate, stream, count tokens (logits where the
backend has them)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator, Union

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


class LLM(ABC):
    """A text generator. Prompts are plain strings or chat messages."""

    model_id: str = ""
    context_window: int = 2048
    has_logits: bool = False

    @abstractmethod
    def generate(self, prompt: Prompt, config: GenerationConfig | None = None) -> Generation:
        """The whole completion."""

    @abstractmethod
    def stream(self, prompt: Prompt, config: GenerationConfig | None = None) -> Iterator[str]:
        """The completion as text pieces, as they are produced."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in this model's vocabulary."""


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
