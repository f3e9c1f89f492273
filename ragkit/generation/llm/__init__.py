"""LLM backends behind one interface: local transformers models and OpenAI-compatible endpoints."""
from ragkit.generation.llm.base import LLM, Generation, GenerationConfig, Message, Prompt, TextStream
from ragkit.generation.llm.hf import DEFAULT_LLM, HFCausalLM
from ragkit.generation.llm.openai_compat import OpenAICompatLLM

__all__ = ["LLM", "Generation", "GenerationConfig", "Message", "Prompt", "TextStream", "DEFAULT_LLM", "HFCausalLM",
           "OpenAICompatLLM"]
