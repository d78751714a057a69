"""The rerank server: one engine per machine, spoken to over HTTP in the TEI or Cohere shape.

Examples:
    >>> from rerank_plugins.server import serve
    >>> serve("cross-encoder/ms-marco-MiniLM-L-6-v2", port=8080)  # doctest: +SKIP
"""

from __future__ import annotations

from rerank_plugins.server.app import RERANK_PATHS, create_app, serve
from rerank_plugins.server.metrics import ServerMetrics
from rerank_plugins.server.protocol import ApiError, Limits, RerankCall, parse_request

__all__ = [
    "RERANK_PATHS",
    "ApiError",
    "Limits",
    "RerankCall",
    "ServerMetrics",
    "create_app",
    "parse_request",
    "serve",
]
