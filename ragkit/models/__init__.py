"""Models ragkit runs: the dense sentence encoder (more to come: ColBERT, LLM backends)."""
from .encoder import DEFAULT_ENCODER, Encoder, SentenceEncoder, resolve_model_path

__all__ = ["DEFAULT_ENCODER", "Encoder", "SentenceEncoder", "resolve_model_path"]
