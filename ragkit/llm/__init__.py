"""LLM backends behind one interface: local transformers models and OpenAI-compatible endpoints."""
from .base import LLM, Generation, GenerationConfig, Message, Prompt
from .hf import DEFAULT_LLM, HFCausalLM
from .openai_compat import OpenAICompatLLM

__all__ = ["LLM", "Generation", "GenerationConfig", "Message", "Prompt", "DEFAULT_LLM", "HFCausalLM",
           "OpenAICompatLLM"]
