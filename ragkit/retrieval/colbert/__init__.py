"""ColBERT late interaction: the model (`model`), the exact engine (`exact`), colbert-ai's PLAID
engine (`plaid`, optional), and training (`train`)."""
from ragkit.retrieval.colbert.exact import DEFAULT_COLBERT, ENGINES, ColBERTConfig

__all__ = ["DEFAULT_COLBERT", "ENGINES", "ColBERTConfig"]
