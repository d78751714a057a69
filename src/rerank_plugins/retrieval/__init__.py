"""Framework-free two-stage retrieval: bi-encoder candidates, reranked by the shared engine.

Importing this package loads no model runtime: sentence-transformers, torch and qdrant-client
are imported when a model or a Qdrant store is first used.

Examples:
    >>> from rerank_plugins.retrieval import TwoStageRetriever
    >>> r = TwoStageRetriever()  # doctest: +SKIP
    >>> r.index(["RAG joins retrieval and generation.", "Paris is in France."])  # doctest: +SKIP
    >>> [hit.text for hit in r.retrieve("What is RAG?", top_k=1)]  # doctest: +SKIP
    ['RAG joins retrieval and generation.']
"""

from __future__ import annotations

from rerank_plugins.retrieval.encoders import BiEncoder, Encoder
from rerank_plugins.retrieval.retriever import (
    DEFAULT_BI_ENCODER,
    DEFAULT_RERANKER,
    Hit,
    Retrieval,
    StageTimings,
    TwoStageRetriever,
    content_id,
)
from rerank_plugins.retrieval.stores import InMemoryStore, Match, QdrantStore, VectorStore

__all__ = [
    "DEFAULT_BI_ENCODER",
    "DEFAULT_RERANKER",
    "BiEncoder",
    "Encoder",
    "Hit",
    "InMemoryStore",
    "Match",
    "QdrantStore",
    "Retrieval",
    "StageTimings",
    "TwoStageRetriever",
    "VectorStore",
    "content_id",
]
