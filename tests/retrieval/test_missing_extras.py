"""Without the `colbert` extra (colbert-ai), the PLAID engine says how to install it."""
from types import SimpleNamespace

import pytest

from ragkit.errors import ModelLoadError
from ragkit.retrieval.colbert.exact import ColBERTConfig
from ragkit.retrieval.index import Index, IndexConfig


def test_plaid_without_colbert_ai_gives_the_install_hint(missing):
    missing("colbert")
    config = IndexConfig(retrievers=["colbert"], colbert=ColBERTConfig(engine="plaid", nbits=2))
    with pytest.raises(ModelLoadError, match=r"pip install 'ragkit\[colbert\]'"):
        Index(config, colbert=SimpleNamespace(dim=128))  # the check comes before the model is used
