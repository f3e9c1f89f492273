"""Without the `llamaindex` extra, importing ragkit's llama-index components says how to install it."""
import importlib

import pytest


def test_missing_llama_index_gives_the_install_hint(missing):
    missing("llama_index.core", forget=["ragkit.integrations.llama_index"])
    with pytest.raises(ImportError, match=r"pip install 'ragkit\[llamaindex\]'"):
        importlib.import_module("ragkit.integrations.llama_index")
