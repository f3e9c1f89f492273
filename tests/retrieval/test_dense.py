import numpy as np
import pytest

from ragkit.data.chunking import Chunk
from ragkit.retrieval.stores.vectors import FaissConfig, FaissVectorStore
from ragkit.retrieval.dense import DenseConfig, DenseRetriever


def chunks_of(docs):
    return [Chunk(f"{d.id}#0", d.id, 0, d.text[:600], d.title, d.source, 0, 600) for d in docs]


class CountingEncoder:
    """Wraps the real encoder and counts the texts it encodes."""

    def __init__(self, enc):
        self.enc, self.encoded = enc, 0

    def __getattr__(self, name):
        return getattr(self.enc, name)

    def encode(self, texts, **kw):
        self.encoded += len(texts)
        return self.enc.encode(texts, **kw)

    def encode_query(self, q):
        return self.enc.encode_query(q)


@pytest.fixture(scope="module")
def small_chunks(topic_docs):
    return chunks_of(topic_docs[:40])


def test_scores_are_cosine_of_sentence_transformers_embeddings(encoder, small_chunks):
    r = DenseRetriever(encoder)
    r.add(small_chunks)
    q = "how does the with statement manage context"
    hits = r.search(q, 5)
    st = encoder.model.encode([c.indexed_text for c in small_chunks] + [q], normalize_embeddings=True)
    cos = st[:-1] @ st[-1]
    order = np.argsort(-cos)[:5]
    assert [h for h, _ in hits] == [small_chunks[i].id for i in order]
    np.testing.assert_allclose([s for _, s in hits], cos[order], atol=1e-4)


def test_incremental_add_and_delete_never_re_encode(encoder, small_chunks):
    enc = CountingEncoder(encoder)
    r = DenseRetriever(enc)
    r.add(small_chunks[:30])
    r.add(small_chunks[30:])
    assert enc.encoded == 40
    assert r.delete([c.id for c in small_chunks[:5]]) == 5
    assert enc.encoded == 40 and len(r) == 35
    assert not {h for h, _ in r.search("assert statement", 35)} & {c.id for c in small_chunks[:5]}
    with pytest.raises(ValueError, match="already indexed"):
        r.add(small_chunks[10:11])


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_stores_find_exact_neighbours(kind, tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 64)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"c{i}" for i in range(len(vecs))]
    exact = FaissVectorStore(64)
    exact.add(ids, vecs)
    approx = FaissVectorStore(64, FaissConfig(kind=kind, ivf_nprobe=64))
    approx.add(ids, vecs)
    queries = vecs[:50] + 0.05 * rng.normal(size=(50, 64)).astype(np.float32)
    recall = np.mean([e[0][0] == a[0][0] for e, a in zip(exact.search(queries, 1), approx.search(queries, 1))])
    assert recall >= 0.9
    approx.remove(ids[:100])
    assert len(approx) == 2900 and all(h[0][0] not in ids[:100] for h in approx.search(vecs[:100], 1))
    approx.save(tmp_path / kind)
    back = FaissVectorStore.load(tmp_path / kind)
    assert back.search(queries[:5], 3) == approx.search(queries[:5], 3)


def test_ivfpq_needs_enough_vectors():
    store = FaissVectorStore(16, FaissConfig(kind="ivfpq"))
    with pytest.raises(ValueError, match="at least 1000 vectors"):
        store.add(["a", "b"], np.ones((2, 16), np.float32))


def test_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="dimension 8"):
        FaissVectorStore(8).add(["a"], np.ones((1, 4), np.float32))


def test_dense_save_load(encoder, small_chunks, tmp_path):
    r = DenseRetriever(encoder, DenseConfig(index=FaissConfig(kind="hnsw")))
    r.add(small_chunks)
    r.save(tmp_path / "dense")
    back = DenseRetriever.load(tmp_path / "dense", encoder)
    assert back.config.index.kind == "hnsw"
    assert back.search("import system and modules", 5) == r.search("import system and modules", 5)
