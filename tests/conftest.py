"""Shared fixtures: the packaged MiniLM encoder (loaded once), a real text corpus, data-set paths."""
from __future__ import annotations

import os
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
def topic_docs():
    """Real text every Python ships: the language-reference topics of pydoc_data."""
    from pydoc_data.topics import topics

    from ragkit.data.corpus import Document

    return [Document(f"topic:{k}", v, k, f"pydoc_data.topics:{k}") for k, v in sorted(topics.items())]


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not (path / "corpus.jsonl").exists():
        pytest.skip(f"data set {name!r} not found at {path} (set RAGKIT_DATASETS to the shared BEIR folder)")
    return path
