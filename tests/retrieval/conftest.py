"""Fixtures of the retrieval tests: a small real corpus and its index (BM25 + dense), per module."""
import pytest

from ragkit import Index


@pytest.fixture(scope="module")
def docs(short_topic_docs):
    return short_topic_docs


@pytest.fixture(scope="module")
def built(encoder, docs):
    return Index.build(docs, encoder=encoder)
