"""rerank-plugins: one shared, batched cross-encoder engine for every RAG pipeline in a process.

Examples:
    >>> from rerank_plugins import get_engine
    >>> engine = get_engine("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
    >>> texts = ["RAG combines ...", "The weather ..."]
    >>> engine.rerank("what is rag?", texts, top_n=1)  # doctest: +SKIP
    [RerankResult(index=0, score=0.97, text='RAG combines ...')]
"""

from __future__ import annotations

from rerank_plugins.backends.base import Backend, Encoded
from rerank_plugins.config import EngineConfig
from rerank_plugins.contract import EngineInfo, Scorer
from rerank_plugins.engine import RerankEngine
from rerank_plugins.errors import (
    BackendError,
    EngineClosedError,
    MissingDependencyError,
    ModelLoadError,
    RerankError,
)
from rerank_plugins.registry import close_all_engines, get_engine
from rerank_plugins.remote import RemoteEngine, RemoteError
from rerank_plugins.results import RerankResult

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "Encoded",
    "EngineClosedError",
    "EngineConfig",
    "EngineInfo",
    "MissingDependencyError",
    "ModelLoadError",
    "RemoteEngine",
    "RemoteError",
    "RerankEngine",
    "RerankError",
    "RerankResult",
    "Scorer",
    "__version__",
    "close_all_engines",
    "get_engine",
]
