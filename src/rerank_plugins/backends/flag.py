"""FlagEmbedding backend: `FlagReranker` encoder models and `FlagLLMReranker` LLM rerankers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rerank_plugins._imports import require
from rerank_plugins.backends._heads import head_warnings
from rerank_plugins.backends._hf import (
    DEFAULT_MAX_LENGTH_CAP,
    PairEncoder,
    TorchBackendBase,
    TorchClassifier,
    check_model_reference,
    model_token_limit,
    read_config,
    resolve_max_length,
)
from rerank_plugins.backends._torch import resolve_device, resolve_dtype
from rerank_plugins.backends.base import Encoded
from rerank_plugins.config import EngineConfig
from rerank_plugins.errors import ModelLoadError, error_clause

__all__ = ["LLM_MAX_LENGTH_CAP", "FlagBackend", "FlagRoundTripEncoder", "is_llm_reranker"]

LLM_MAX_LENGTH_CAP = 512
"""Default ``max_length`` of decoder-only rerankers here: FlagLLMReranker's own default (the
passage budget; the query gets 3/4 of it), so ``backend="flag"`` scores what its users get."""


def is_llm_reranker(model: str) -> bool:
    """Whether a local model folder holds a decoder-only (LLM) reranker such as bge-v2-gemma."""
    config = read_config(model) or {}
    architectures = config.get("architectures") or []
    return any(a.endswith("ForCausalLM") for a in architectures)


class FlagRoundTripEncoder(PairEncoder):
    """FlagEmbedding 1.4.2's pair encoding where the tokenizer has no ``prepare_for_model``.

    transformers 5 removed the id-level ``prepare_for_model``. There ``FlagReranker`` cuts the
    query and the passage to their token budgets as before, then decodes both back to text and
    tokenizes the pair again (``truncation="only_second"``). The round trip is not the identity:
    an empty passage becomes no second sequence at all, and a passage with characters the
    vocabulary lacks reads back ``<unk>`` as text, which may then split differently. This
    encoder does the same steps, so the ``flag`` backend scores exactly what ``FlagReranker``
    scores in the same environment.
    """

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        """Encode each (query, text) pair as FlagEmbedding does on transformers 5."""
        q = self.query_ids(query)
        q_text = self._decode(q)
        passages: list[str] = []
        truncated: list[bool] = []
        for d, cut_more in self.text_ids(texts, self.max_length):
            passages.append(self._decode(self._cut(d, self.max_length)))
            truncated.append(len(q) + len(d) + self.n_special > self.max_length or cut_more)
        options = {
            "truncation": "only_second",
            "max_length": self.max_length,
            "padding": False,
            "return_token_type_ids": self.use_token_types,
        }
        # Batched where the pair is a pair; an empty passage alone, as the tokenizer then
        # encodes the query as a single sequence.
        full = [i for i, p in enumerate(passages) if p]
        encoded: dict[int, Any] = {}
        if full:
            batch = self.tokenizer([q_text] * len(full), [passages[i] for i in full], **options)
            for row, i in enumerate(full):
                encoded[i] = {k: batch[k][row] for k in batch}
        for i, p in enumerate(passages):
            if not p:
                encoded[i] = self.tokenizer(q_text, p, **options)
        out = []
        for i in range(len(passages)):
            ids = np.asarray(encoded[i]["input_ids"], dtype=np.int64)
            types = None
            if self.use_token_types:
                types = np.asarray(encoded[i]["token_type_ids"], dtype=np.int64)
            out.append(Encoded(length=len(ids), truncated=truncated[i], payload=(ids, types)))
        return out

    def _decode(self, ids: Sequence[int]) -> str:
        text: str = self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return text


def flag_reranker_round_trips(tokenizer: Any) -> bool:
    """Whether FlagEmbedding re-tokenizes decoded text for this tokenizer (transformers 5).

    The same test FlagEmbedding 1.4.2's ``prepare_for_model_compat`` makes: the id-level
    ``prepare_for_model`` is gone.
    """
    return not callable(getattr(tokenizer, "prepare_for_model", None))


class FlagBackend(TorchBackendBase):
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
        # LLM rerankers go through FlagLLMReranker's own prompt, which has no window mode.
        self.supports_windows = not self.llm
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
            msg = (
                f"FlagEmbedding could not load {config.model!r}: {error_clause(exc)}. Pass a "
                "local folder, or a hub id with network access to the Hugging Face hub."
            )
            raise ModelLoadError(msg) from exc
        model = self._reranker.model
        self.warnings = head_warnings(config.model, model, config.revision)
        tokenizer = self._reranker.tokenizer
        limit = model_token_limit(tokenizer, model.config)
        cap = LLM_MAX_LENGTH_CAP if self.llm else DEFAULT_MAX_LENGTH_CAP
        self.max_length = resolve_max_length(config.max_length, limit, cap=cap)
        self.round_trip = not self.llm and flag_reranker_round_trips(tokenizer)
        encoder_class = FlagRoundTripEncoder if self.round_trip else PairEncoder
        self.encoder = encoder_class(tokenizer, self.max_length)
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
        # compute_score prefixes "A: " to queries and "B: " to passages before its per-device
        # scoring; compute_score_single_gpu alone skips that, so it is applied here.
        pairs = self._reranker.get_detailed_inputs([list(e.payload) for e in batch])
        scores = self._reranker.compute_score_single_gpu(
            pairs,
            batch_size=len(pairs),
            max_length=self.max_length,
            normalize=False,
            device=self.device,
        )
        return [float(s) for s in scores]

    def describe(self) -> dict[str, Any]:
        """Backend facts for the engine's info."""
        kind = "FlagLLMReranker" if self.llm else "FlagReranker"
        runner = self.runner.describe() if self.runner else {"attention": "eager"}
        pairs = "decoded and re-tokenized, as FlagReranker on transformers 5"
        return {
            "flag_class": kind,
            **runner,
            "pair_encoding": pairs if self.round_trip else "token ids",
            "warnings": list(self.warnings),
        }

    def close(self) -> None:
        """Drop the model so its memory can be freed."""
        self._reranker = None
        if self.runner is not None:
            self.runner.model = None
