"""FlagEmbedding backend: `FlagReranker` encoder models and `FlagLLMReranker` LLM rerankers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.backends._hf import (
    DEFAULT_MAX_LENGTH_CAP,
    PairEncoder,
    TorchClassifier,
    check_model_reference,
    model_token_limit,
    read_config,
    resolve_max_length,
)
from rerank_plugins.backends._torch import resolve_device, resolve_dtype
from rerank_plugins.backends.base import Encoded
from rerank_plugins.config import EngineConfig
from rerank_plugins.errors import ModelLoadError

__all__ = ["FlagBackend", "is_llm_reranker"]


def is_llm_reranker(model: str) -> bool:
    """Whether a local model folder holds a decoder-only (LLM) reranker such as bge-v2-gemma."""
    config = read_config(model) or {}
    architectures = config.get("architectures") or []
    return any(a.endswith("ForCausalLM") for a in architectures)


class FlagBackend:
    """Scores pairs with FlagEmbedding's rerankers.

    Encoder rerankers (BGE base/large/v2-m3) are loaded by ``FlagReranker`` and driven with the
    same tokenization it uses (query capped at 3/4 of ``max_length``, ``only_second``
    truncation), in the engine's length-sorted token-budget batches, without its trial pass.
    LLM rerankers (``bge-reranker-v2-gemma``) go through ``FlagLLMReranker.compute_score``, whose
    prompt layout is the model's contract; the engine still batches, dedups and caches for them.
    """

    name = "flag"

    def __init__(self, config: EngineConfig) -> None:
        check_model_reference(config.model)
        fe = require("FlagEmbedding", purpose="the flag backend")
        self.device = resolve_device(config.device)
        dtype, self.precision = resolve_dtype(config.precision, self.device)
        self.llm = is_llm_reranker(config.model)
        cls = fe.FlagLLMReranker if self.llm else fe.FlagReranker
        try:
            self._reranker: Any = cls(
                config.model,
                use_fp16=self.precision == "fp16",
                use_bf16=self.precision == "bf16",
                devices=[self.device],
                trust_remote_code=config.trust_remote_code,
            )
        except Exception as exc:
            msg = f"FlagEmbedding could not load {config.model!r}: {exc}."
            raise ModelLoadError(msg) from exc
        model = self._reranker.model
        tokenizer = self._reranker.tokenizer
        limit = model_token_limit(tokenizer, model.config)
        cap = None if self.llm else DEFAULT_MAX_LENGTH_CAP
        self.max_length = resolve_max_length(config.max_length, limit, cap=cap or 1024)
        self.encoder = PairEncoder(tokenizer, self.max_length)
        self.runner: TorchClassifier | None = None
        if self.llm:
            model.to(device=self.device, dtype=dtype).eval()
        else:
            self.runner = TorchClassifier(model, self.encoder, self.device, dtype)

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize and truncate each pair (LLM rerankers keep the texts for their prompt)."""
        encoded = self.encoder.encode(query, texts)
        if not self.llm:
            return encoded
        return [
            Encoded(e.length, e.truncated, (query, text))
            for e, text in zip(encoded, texts, strict=True)
        ]

    def encode_windows(self, query: str, texts: Sequence[str]) -> list[list[Encoded]]:
        """Encode each text as overlapping windows (encoder rerankers only)."""
        if self.llm:
            msg = "long_documents passage modes need an encoder reranker; LLM rerankers truncate."
            raise ValueError(msg)
        return self.encoder.encode_windows(query, texts)

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        """Raw logits for a batch of encoded pairs."""
        if self.runner is not None:
            return self.runner.forward(batch)
        pairs = [list(e.payload) for e in batch]
        scores = self._reranker.compute_score_single_gpu(
            pairs,
            batch_size=len(pairs),
            max_length=self.max_length,
            normalize=False,
            device=self.device,
        )
        return [float(s) for s in scores]

    @property
    def cpu_threads(self) -> int | None:
        """Intra-op threads of one CPU forward pass; None where passes can't run side by side."""
        return self.runner.cpu_threads if self.runner is not None else None

    def bind_thread(self, threads: int) -> None:
        """Run this thread's forward passes on ``threads`` intra-op threads."""
        if self.runner is not None:
            self.runner.bind_thread(threads)

    def describe(self) -> dict[str, Any]:
        """Backend facts for the engine's info."""
        kind = "FlagLLMReranker" if self.llm else "FlagReranker"
        runner = self.runner.describe() if self.runner else {"attention": "eager"}
        return {"flag_class": kind, **runner}

    def close(self) -> None:
        """Drop the model so its memory can be freed."""
        self._reranker = None
        if self.runner is not None:
            self.runner.model = None
