"""Backends: model runtimes behind one small interface, chosen by name or by ``auto``."""

from __future__ import annotations

from rerank_plugins.backends.base import Backend, BackendBase, Encoded, missing_members
from rerank_plugins.config import EngineConfig

__all__ = ["Backend", "BackendBase", "Encoded", "load_backend", "missing_members", "pick_backend"]


def pick_backend(config: EngineConfig) -> tuple[str, str]:
    """Resolve ``backend="auto"``; returns (backend name, the reason it was picked)."""
    if config.backend != "auto":
        return config.backend, "requested"
    from rerank_plugins.backends.flag import is_llm_reranker

    if is_llm_reranker(config.model):
        return "flag", "decoder-only (LLM) reranker: FlagLLMReranker"
    if config.precision == "int8":
        return "onnx", "int8 runs on ONNX Runtime"
    return "sentence-transformers", "sequence-classification cross-encoder"


def load_backend(config: EngineConfig, name: str) -> Backend:
    """Load the backend called ``name`` for ``config`` (imports happen only here)."""
    if name == "sentence-transformers":
        from rerank_plugins.backends.sentence_transformers import SentenceTransformersBackend

        return SentenceTransformersBackend(config)
    if name == "flag":
        from rerank_plugins.backends.flag import FlagBackend

        return FlagBackend(config)
    if name == "onnx":
        from rerank_plugins.backends.onnx import OnnxBackend

        backend: Backend = OnnxBackend(config)
        return backend
    msg = f"unknown backend {name!r}; expected sentence-transformers, flag or onnx."
    raise ValueError(msg)
