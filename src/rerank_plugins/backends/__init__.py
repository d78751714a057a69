"""Backends: model runtimes behind one small interface, chosen by name or by ``auto``."""

from __future__ import annotations

from rerank_plugins.backends.base import Backend, BackendBase, Encoded, missing_members
from rerank_plugins.config import EngineConfig

__all__ = [
    "Backend",
    "BackendBase",
    "Encoded",
    "backend_class",
    "load_backend",
    "missing_members",
    "pick_backend",
]


def pick_backend(config: EngineConfig) -> tuple[str, str]:
    """Resolve ``backend="auto"``; returns (backend name, the reason it was picked)."""
    if config.backend != "auto":
        return config.backend, "requested"
    from rerank_plugins.backends.decoder import is_causal_lm

    if is_causal_lm(config.model, config.revision):
        return "decoder", "decoder-only (LLM) reranker"
    if config.decoder_protocol != "auto" or config.decoder_tokens is not None:
        msg = (
            f"decoder_protocol and decoder_tokens apply to decoder (causal LM) rerankers; "
            f"{config.model!r} is not a causal LM. Drop the options, or pass backend='decoder' "
            "where the model's config cannot be read before loading."
        )
        raise ValueError(msg)
    # precision="int8" never arrives here: EngineConfig accepts it with backend="onnx" only.
    return "sentence-transformers", "sequence-classification cross-encoder"


def backend_class(name: str) -> type[BackendBase]:
    """The class of the backend called ``name`` (its module is imported here, lazily)."""
    if name == "sentence-transformers":
        from rerank_plugins.backends.sentence_transformers import SentenceTransformersBackend

        return SentenceTransformersBackend
    if name == "flag":
        from rerank_plugins.backends.flag import FlagBackend

        return FlagBackend
    if name == "decoder":
        from rerank_plugins.backends.decoder import DecoderBackend

        return DecoderBackend
    if name == "onnx":
        from rerank_plugins.backends.onnx import OnnxBackend

        return OnnxBackend
    msg = f"unknown backend {name!r}; expected sentence-transformers, flag, onnx or decoder."
    raise ValueError(msg)


def load_backend(config: EngineConfig, name: str) -> Backend:
    """Load the backend called ``name`` for ``config`` (imports happen only here)."""
    backend: Backend = backend_class(name)(config)
    return backend
