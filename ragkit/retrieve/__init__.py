"""Retrievers: BM25 (bm25s), dense (sentence-transformers + faiss) and hybrid fusion."""
from .base import Ranking, Retriever
from .bm25 import BM25Config, BM25Retriever, BM25Tokenizer
from .dense import DenseConfig, DenseRetriever
from .hybrid import FusionConfig, HybridRetriever, reciprocal_rank_fusion, weighted_fusion

__all__ = ["Ranking", "Retriever", "BM25Config", "BM25Retriever", "BM25Tokenizer", "DenseConfig",
           "DenseRetriever", "FusionConfig", "HybridRetriever", "reciprocal_rank_fusion", "weighted_fusion"]
