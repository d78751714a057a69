"""Moved to `rerank_plugins.models.offline` (the offline stand-ins for the demo's models).

This name stays importable for code written against it: every name of the new module reads
the same from here. New code imports from ``rerank_plugins.models.offline`` (and patches
there).
"""

from __future__ import annotations

from typing import Any

from rerank_plugins.models import offline
from rerank_plugins.models.offline import (
    UNTRAINED_HEAD_NOTICE,
    ModelKind,
    ResolvedModel,
    bi_encoder_path,
    build_minilm_cross_encoder,
    default_cache_dir,
    describe,
    fallback_for,
    is_untrained_fallback,
    resolve_model,
)

__all__ = [
    "UNTRAINED_HEAD_NOTICE",
    "ModelKind",
    "ResolvedModel",
    "bi_encoder_path",
    "build_minilm_cross_encoder",
    "default_cache_dir",
    "describe",
    "fallback_for",
    "is_untrained_fallback",
    "resolve_model",
]


def __getattr__(name: str) -> Any:
    """Any other name of `rerank_plugins.models.offline`, read from there."""
    return getattr(offline, name)
