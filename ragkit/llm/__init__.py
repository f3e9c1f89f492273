"""LLM backends behind one interface: local transformers models and OpenAI-compatible endpoints."""
from .base import LLM, Generation, GenerationConfig, Message, Prompt, TextStream
from .hf import DEFAULT_LLM, HFCausalLM
from .openai_compat import OpenAICompatLLM

__all__ = ["LLM", "Generation", "GenerationConfig", "Message", "Prompt", "TextStream", "DEFAULT_LLM", "HFCausalLM",
           "OpenAICompatLLM"]
