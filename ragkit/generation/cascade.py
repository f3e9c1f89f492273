"""Small-to-large cascades: the pipeline's LLM (small, cheap) answers first; when its answer's mean
token probability is under `cascade.min_confidence`, the larger LLM answers the same prompt instead.

The signal costs one teacher-forced forward pass of the small model over its own answer
(`HFCausalLM.completion_logprobs`). `Answer.model` says which model answered and `Answer.cascade`
why (the confidence, the threshold, whether it escalated). Measured on PubMedQA in
`bench/qwen_pair.py cascade` (there the signal is the small model's probability of its label).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ragkit.errors import RagkitError


@dataclass
class Cascade:
    """Escalation from the pipeline's LLM to `large` when the first answer is unsure."""

    large: Any
    min_confidence: float = 0.5

    @classmethod
    def from_config(cls, config) -> "Cascade | None":
        """The cascade a `PipelineConfig` asks for (its `cascade` section), or None when off."""
        c = config.cascade
        if not c.model:
            return None
        if config.llm.backend != "hf":
            raise RagkitError("cascade needs a local LLM (llm.backend hf): its signal is the LLM's token probabilities")
        if not 0.0 <= c.min_confidence <= 1.0:
            raise RagkitError(f"cascade.min_confidence must be between 0 and 1, got {c.min_confidence}")
        from ragkit.generation.loader import load_llm

        large = load_llm(c.model, dtype=config.llm.dtype, threads=config.llm.threads,
                         prefill_threads=config.llm.prefill_threads)
        return cls(large, c.min_confidence)

    def confidence(self, small, messages, text: str) -> float:
        """The small model's mean token probability of its own answer (geometric mean; 1.0 for an
        empty answer, which nothing can improve)."""
        logprobs = small.completion_logprobs(messages, text)
        return math.exp(sum(logprobs) / len(logprobs)) if logprobs else 1.0

    def decide(self, small, messages, text: str) -> dict:
        """{"confidence", "min_confidence", "escalated", "reason"} for the small model's answer."""
        c = self.confidence(small, messages, text)
        escalate = c < self.min_confidence
        reason = (f"{small.model_id}'s mean token probability {c:.3f} is below {self.min_confidence}"
                  if escalate else f"{small.model_id}'s mean token probability {c:.3f} reaches {self.min_confidence}")
        return {"confidence": round(c, 4), "min_confidence": self.min_confidence, "escalated": escalate,
                "small_model": small.model_id, "large_model": self.large.model_id, "reason": reason}
