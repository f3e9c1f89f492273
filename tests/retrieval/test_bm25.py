import bm25s
import numpy as np
import pytest
import Stemmer
from rank_bm25 import BM25Okapi

from ragkit.data.chunking import Chunk
from ragkit.retrieval.bm25 import BM25Config, BM25Retriever

QUERIES = ["exception handling in try statements", "class definition and inheritance", "for loop else clause",
           "global and nonlocal names", "operator precedence of lambda", "string formatting literals"]


def chunks_of(docs):
    return [Chunk(f"{d.id}#0", d.id, 0, d.text, d.title, d.source, 0, len(d.text)) for d in docs]


def reference_tokens(texts):
    return bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"), return_ids=False,
                          show_progress=False)


def test_okapi_mode_equals_rank_bm25_scores(topic_docs):
    chunks = chunks_of(topic_docs)
    r = BM25Retriever(BM25Config(method="okapi", unit="chunk"))
    r.add(chunks)
    ref = BM25Okapi(reference_tokens([c.indexed_text for c in chunks]))
    for q in QUERIES:
        expected = ref.get_scores(reference_tokens([q])[0])
        np.testing.assert_allclose(r.scores(q), expected, rtol=2e-5, atol=1e-5)


def test_lucene_mode_equals_plain_bm25s(topic_docs):
    chunks = chunks_of(topic_docs)
    r = BM25Retriever(BM25Config(unit="chunk"))
    r.add(chunks)
    ref = bm25s.BM25()
    ref.index(reference_tokens([c.indexed_text for c in chunks]), show_progress=False)
    for q in QUERIES:
        docs, scores = ref.retrieve(reference_tokens([q]), k=10, show_progress=False)
        got = r.search(q, 10)
        assert [c.id for c in np.array(chunks)[docs[0]]] == [cid for cid, _ in got]
        np.testing.assert_allclose(scores[0], [s for _, s in got], rtol=1e-5)


def test_document_unit_scores_whole_documents_and_returns_best_chunk():
    # doc "a" spreads the query terms over two chunks; as a whole it beats "b", which has one term
    a0 = Chunk("a#0", "a", 0, "alpha alpha words here", start=0, end=22)
    a1 = Chunk("a#1", "a", 1, "beta gamma other", start=23, end=39)
    b0 = Chunk("b#0", "b", 0, "alpha plain filler text", start=0, end=23)
    c0 = Chunk("c#0", "c", 0, "unrelated content entirely", start=0, end=26)
    r = BM25Retriever(BM25Config(stemmer=None))
    r.add([a0, a1, b0, c0])
    hits = r.search("beta gamma alpha", 5)
    assert [cid for cid, _ in hits] == ["a#1", "b#0"]  # a first, represented by its best chunk; c never
    assert r.search("zzzz nothing", 5) == []


def test_incremental_add_delete_equals_fresh_build(topic_docs):
    chunks = chunks_of(topic_docs)
    half = len(chunks) // 2
    inc = BM25Retriever()
    inc.add(chunks[:half])
    inc.add(chunks[half:])
    removed = inc.delete([c.id for c in chunks[:10]])
    fresh = BM25Retriever()
    fresh.add(chunks[10:])
    assert removed == 10 and len(inc) == len(fresh)
    for q in QUERIES:
        a, b = inc.search(q, 10), fresh.search(q, 10)
        assert [x for x, _ in a] == [x for x, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-5)


def test_duplicate_chunk_is_rejected(topic_docs):
    r = BM25Retriever()
    r.add(chunks_of(topic_docs[:3]))
    with pytest.raises(ValueError, match="already indexed"):
        r.add(chunks_of(topic_docs[:1]))


def test_stopwords_and_stemming_are_configurable():
    default = BM25Retriever()
    raw = BM25Retriever(BM25Config(stopwords=None, stemmer=None))
    assert default.tokenize("The runners were running") == ["runner", "were", "run"]
    assert raw.tokenize("The runners were running") == ["the", "runners", "were", "running"]
    with pytest.raises(ValueError, match="unknown BM25 method"):
        BM25Config(method="bm99")


def test_save_load_roundtrip(tmp_path, topic_docs):
    r = BM25Retriever(BM25Config(method="okapi"))
    r.add(chunks_of(topic_docs))
    r.save(tmp_path / "bm25")
    assert not list((tmp_path / "bm25").glob("*.pkl"))
    back = BM25Retriever.load(tmp_path / "bm25")
    for q in QUERIES:
        assert back.search(q, 10) == r.search(q, 10)
