import pytest

from ragkit.retrieval.hybrid import (FusionConfig, HybridRetriever, by_document, reciprocal_rank_fusion,
                                    weighted_fusion)


def test_rrf_formula():
    fused = dict(reciprocal_rank_fusion([[("a", 9.0), ("b", 5.0)], [("b", 0.9), ("c", 0.8)]], k=60))
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["a"] == pytest.approx(1 / 61) and fused["c"] == pytest.approx(1 / 62)
    assert list(dict(sorted(fused.items(), key=lambda x: -x[1]))) == ["b", "a", "c"]


def test_weighted_fusion_normalises_scores():
    fused = dict(weighted_fusion([[("a", 10.0), ("b", 5.0), ("c", 0.0)], [("c", 0.9), ("a", 0.1)]], [0.5, 0.5]))
    assert fused["a"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.0)
    assert fused["b"] == pytest.approx(0.5 * 0.5)
    assert fused["c"] == pytest.approx(0.5 * 0.0 + 0.5 * 1.0)


def test_document_unit_merges_chunks_of_one_document():
    # bm25 and dense pick different chunks of doc x; per-document fusion must still add them up
    rankings = [[("x#0", 3.0), ("y#0", 2.0)], [("x#2", 0.9), ("x#0", 0.8), ("z#0", 0.7)]]
    reduced, best = by_document(rankings)
    assert reduced[1] == [("x", 0.9), ("z", 0.7)]
    assert best["x"] == "x#0"  # both rank x first; the first retriever's chunk wins the tie

    class Fixed:
        def __init__(self, ranking):
            self.ranking = ranking

        def search(self, q, k):
            return self.ranking[:k]

        def __len__(self):
            return 3

    hybrid = HybridRetriever({"bm25": Fixed(rankings[0]), "dense": Fixed(rankings[1])})
    top = hybrid.search("q", 3)
    assert [c for c, _ in top] == ["x#0", "y#0", "z#0"]
    assert top[0][1] == pytest.approx(2 / 61)
    chunky = HybridRetriever({"bm25": Fixed(rankings[0]), "dense": Fixed(rankings[1])}, FusionConfig(unit="chunk"))
    assert [c for c, _ in chunky.search("q", 4)] == ["x#0", "x#2", "y#0", "z#0"]


def test_bad_fusion_config():
    with pytest.raises(ValueError, match="unknown fusion"):
        FusionConfig(method="max")
    with pytest.raises(ValueError, match="at least two"):
        HybridRetriever({})
