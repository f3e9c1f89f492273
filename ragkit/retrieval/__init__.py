"""Retrievers: BM25 (bm25s), dense (sentence-transformers + faiss) and hybrid fusion."""
from ragkit.retrieval.base import Ranking, Retriever
from ragkit.retrieval.bm25 import BM25Config, BM25Retriever, BM25Tokenizer
from ragkit.retrieval.dense import DenseConfig, DenseRetriever
from ragkit.retrieval.hybrid import FusionConfig, HybridRetriever, reciprocal_rank_fusion, weighted_fusion

__all__ = ["Ranking", "Retriever", "BM25Config", "BM25Retriever", "BM25Tokenizer", "DenseConfig",
           "DenseRetriever", "FusionConfig", "HybridRetriever", "reciprocal_rank_fusion", "weighted_fusion"]
