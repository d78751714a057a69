"""The default backend: any Hugging Face cross-encoder, loaded by sentence-transformers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.backends._heads import head_warnings
from rerank_plugins.backends._hf import (
    DEFAULT_MAX_LENGTH_CAP,
    PairEncoder,
    TorchBackendBase,
    TorchClassifier,
    check_model_reference,
    model_token_limit,
    resolve_max_length,
)
from rerank_plugins.backends._torch import resolve_device, resolve_dtype
from rerank_plugins.backends.base import Encoded
from rerank_plugins.config import EngineConfig
from rerank_plugins.errors import ModelLoadError, error_clause

__all__ = ["SentenceTransformersBackend"]


class SentenceTransformersBackend(TorchBackendBase):
    """Scores pairs with a `sentence_transformers.CrossEncoder`'s model and tokenizer.

    The model is loaded by ``CrossEncoder`` (so hub ids, local folders, revisions and
    ``trust_remote_code`` behave as there), then driven directly with pre-tokenized,
    length-sorted batches.
    """

    name = "sentence-transformers"
    supports_windows = True

    def __init__(self, config: EngineConfig) -> None:
        check_model_reference(config.model)
        st = require("sentence_transformers", purpose="the sentence-transformers backend")
        self.device = resolve_device(config.device)
        dtype, self.precision = resolve_dtype(config.precision, self.device)
        try:
            ce = st.CrossEncoder(
                config.model,
                device=self.device,
                trust_remote_code=config.trust_remote_code,
                revision=config.revision,
                model_kwargs={"use_safetensors": True} if _has_safetensors(config.model) else None,
            )
        except Exception as exc:
            msg = (
                f"could not load cross-encoder {config.model!r}: {error_clause(exc)}. Pass a "
                "local folder, or a hub id with network access to the Hugging Face hub."
            )
            raise ModelLoadError(msg) from exc
        hf_model = ce.model
        if hf_model is None:
            msg = f"{config.model!r} has no Hugging Face transformer model to run."
            raise ModelLoadError(msg)
        self.warnings = head_warnings(config.model, hf_model, config.revision)
        tokenizer = ce.tokenizer
        limit = model_token_limit(tokenizer, hf_model.config)
        self.max_length = resolve_max_length(config.max_length, limit, cap=DEFAULT_MAX_LENGTH_CAP)
        self.encoder = PairEncoder(tokenizer, self.max_length)
        self.runner: TorchClassifier = TorchClassifier(hf_model, self.encoder, self.device, dtype)
        self._ce: Any = ce

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize and truncate each (query, text) pair."""
        return self.encoder.encode(query, texts)

    def encode_windows(self, query: str, texts: Sequence[str]) -> list[list[Encoded]]:
        """Encode each text as overlapping windows (long-document passage modes)."""
        return self.encoder.encode_windows(query, texts)

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        """Raw logits for a batch of encoded pairs."""
        return self.runner.forward(batch)

    def describe(self) -> dict[str, Any]:
        """Backend facts for the engine's info."""
        return {
            **self.runner.describe(),
            "model_class": type(self._ce.model).__name__,
            "warnings": list(self.warnings),
        }

    def close(self) -> None:
        """Drop the model so its memory can be freed."""
        self._ce = None
        self.runner.model = None


def _has_safetensors(model: str) -> bool:
    import os

    return os.path.isfile(os.path.join(model, "model.safetensors"))
