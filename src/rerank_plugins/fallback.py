"""Moved to `rerank_plugins.models.offline` (the offline stand-ins for the demo's models).

This name stays importable for code written against it; new code imports from
``rerank_plugins.models.offline``.
"""

from __future__ import annotations

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
