"""Decoder (LLM) rerankers run natively: Qwen3-Reranker, bge-reranker-v2-gemma, CrossEncoder LLMs.

The backend picks the protocol the model was trained for (`choose_protocol`), builds the token
ids exactly as that protocol's reference does (`_decoder_formats`), and runs the model with
the engine's batching through `DecoderRunner`, which computes only the logits a score reads
and runs each request's shared prompt and query once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.backends._decoder_formats import (
    CrossEncoderFormat,
    DecoderFormat,
    FlagLLMFormat,
    Qwen3Format,
)
from rerank_plugins.backends._decoder_runner import DecoderRunner, shared_prefix_length
from rerank_plugins.backends._heads import head_warnings
from rerank_plugins.backends._hf import (
    TorchBackendBase,
    check_model_reference,
    model_token_limit,
    read_config,
    resolve_max_length,
)
from rerank_plugins.backends._torch import resolve_device, resolve_dtype
from rerank_plugins.backends.base import Encoded
from rerank_plugins.config import EngineConfig
from rerank_plugins.errors import ModelLoadError, error_clause
from rerank_plugins.models import model_file

__all__ = ["DecoderBackend", "choose_protocol", "is_causal_lm"]

_DEFAULT_TOKENS: dict[str, tuple[str, str | None]] = {
    "flag-llm": ("Yes", None),
    "qwen3": ("yes", "no"),
}
_DEFAULT_MAX_LENGTH = {"flag-llm": 512, "qwen3": 8192, "sentence-transformers": 8192}
_PROBE_TEXTS = ("a", "0")


def is_causal_lm(model: str, revision: str | None = None) -> bool:
    """Whether ``model`` (a folder, or a hub id) is a decoder-only (``*ForCausalLM``) model."""
    config = read_config(model, revision) or {}
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])


def choose_protocol(
    model: str, requested: str, config: dict[str, Any], revision: str | None = None
) -> tuple[str, str]:
    """The reranking protocol of a causal LM, and why; an error names the options.

    Args:
        model: Hub id or local folder.
        requested: The ``decoder_protocol`` option (``"auto"`` to detect).
        config: The model's config.json.
        revision: The hub revision, where ``model`` is a hub id.

    Returns:
        (protocol, reason).

    Raises:
        ValueError: A layerwise or lightweight BGE reranker, or a model no rule places.

    Examples:
        >>> choose_protocol("BAAI/bge-reranker-v2-gemma", "auto", {"model_type": "gemma"})[0]
        'flag-llm'
        >>> choose_protocol("x", "qwen3", {"model_type": "llama"})
        ('qwen3', 'requested (decoder_protocol)')
    """
    name = model.lower()
    architectures = " ".join(config.get("architectures") or [])
    if "layerwise" in name or "LayerWise" in architectures:
        msg = (
            f"{model!r} is a layerwise BGE reranker, which scores with per-layer heads this "
            "engine does not run; use FlagEmbedding's LayerWiseFlagLLMReranker directly."
        )
        raise ValueError(msg)
    if "lightweight" in name or "CostWise" in architectures:
        msg = (
            f"{model!r} is a lightweight BGE reranker (token compression, layer cut-off), which "
            "this engine does not run; use FlagEmbedding's LightWeightFlagLLMReranker directly."
        )
        raise ValueError(msg)
    if requested != "auto":
        return requested, "requested (decoder_protocol)"
    if _has_logit_score(model, revision):
        return "sentence-transformers", "sentence-transformers CrossEncoder files (LogitScore)"
    model_type = str(config.get("model_type", ""))
    if model_type == "qwen3":
        return "qwen3", "Qwen3 causal LM: the Qwen3-Reranker model card's format"
    if model_type == "gemma" or "bge-reranker" in name:
        return "flag-llm", "BGE LLM reranker (bge-reranker-v2-gemma): FlagLLMReranker's format"
    msg = (
        f"cannot tell which reranking protocol {model!r} ({architectures or model_type}) was "
        "trained for; pass decoder_protocol='flag-llm' (FlagEmbedding LLM rerankers), 'qwen3' "
        "(Qwen3-Reranker's format) or 'sentence-transformers' (a CrossEncoder folder)."
    )
    raise ValueError(msg)


def _has_logit_score(model: str, revision: str | None) -> bool:
    path = model_file(model, "modules.json", revision)
    if path is None:
        return False
    with open(path, encoding="utf-8") as f:
        modules = json.load(f)
    return any("LogitScore" in str(m.get("type", "")) for m in modules)


class DecoderBackend(TorchBackendBase):
    """Scores pairs with a decoder-only LM that answers yes/no, as its reference library does.

    Examples:
        >>> from rerank_plugins import RerankEngine
        >>> engine = RerankEngine("Qwen/Qwen3-Reranker-0.6B", backend="decoder")  # doctest: +SKIP
        >>> engine.info.details["protocol"]  # doctest: +SKIP
        'qwen3'
    """

    name = "decoder"
    supports_windows = False
    supports_instructions = True

    def __init__(self, config: EngineConfig) -> None:
        check_model_reference(config.model)
        transformers = require("transformers", purpose="the decoder backend")
        self.device = resolve_device(config.device)
        dtype, self.precision = resolve_dtype(config.precision, self.device)
        hf_config = read_config(config.model, config.revision)
        if hf_config is None:
            hf_config = _hub_config(transformers, config)
        self.protocol, self.protocol_reason = choose_protocol(
            config.model, config.decoder_protocol, hf_config, config.revision
        )
        tokens = config.decoder_tokens or _DEFAULT_TOKENS.get(self.protocol, ("yes", "no"))
        cap = _DEFAULT_MAX_LENGTH[self.protocol]
        self.format: DecoderFormat
        try:
            if self.protocol == "sentence-transformers":
                if config.decoder_tokens is not None:
                    msg = (
                        "decoder_tokens does not apply to a CrossEncoder folder: its LogitScore "
                        "module names the tokens. Drop the option, or pick another protocol."
                    )
                    raise ValueError(msg)
                st = require("sentence_transformers", purpose="CrossEncoder decoder rerankers")
                ce = st.CrossEncoder(
                    config.model,
                    device=self.device,
                    trust_remote_code=config.trust_remote_code,
                    revision=config.revision,
                )
                model, tokenizer = ce.model, ce.tokenizer
                own = getattr(ce, "max_seq_length", None)
                limit = int(own or model_token_limit(tokenizer, model.config))
                self.max_length = resolve_max_length(config.max_length, limit, cap=cap)
                self.format = CrossEncoderFormat(ce, self.max_length)
            else:
                tokenizer = transformers.AutoTokenizer.from_pretrained(
                    config.model,
                    trust_remote_code=config.trust_remote_code,
                    revision=config.revision,
                )
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    config.model,
                    trust_remote_code=config.trust_remote_code,
                    revision=config.revision,
                    dtype=dtype,
                )
                limit = model_token_limit(tokenizer, model.config)
                self.max_length = resolve_max_length(config.max_length, limit, cap=cap)
                fmt = FlagLLMFormat if self.protocol == "flag-llm" else Qwen3Format
                self.format = fmt(tokenizer, self.max_length, tokens)
        except (ValueError, ModelLoadError):
            raise
        except Exception as exc:
            msg = (
                f"could not load decoder reranker {config.model!r}: {error_clause(exc)}. Pass a "
                "local folder, or a hub id with network access to the Hugging Face hub."
            )
            raise ModelLoadError(msg) from exc
        self.warnings = head_warnings(config.model, model, config.revision)
        pad = tokenizer.pad_token_id
        pad_id = int(pad) if pad is not None else int(tokenizer.eos_token_id or 0)
        self.runner: DecoderRunner = DecoderRunner(
            model, self.format.tokens, self.device, dtype, pad_id
        )
        self._model_class = type(model).__name__

    def encode(
        self, query: str, texts: Sequence[str], instruction: str | None = None
    ) -> list[Encoded]:
        """Token ids of each pair, split into the prefix all of them share and the rest."""
        template = self._template(query, instruction)
        out = []
        for ids, truncated in self.format.encode(query, texts, instruction):
            n = shared_prefix_length(ids, template)
            out.append(Encoded(len(ids), truncated, (tuple(ids[:n]), tuple(ids[n:]))))
        return out

    def _template(self, query: str, instruction: str | None) -> list[int]:
        """The ids every document's pair starts with: what two probe documents share.

        Found per (query, instruction) rather than across a request's documents, so the split,
        and with it every score, does not depend on which documents come together.
        """
        a, b = (ids for ids, _ in self.format.encode(query, _PROBE_TEXTS, instruction))
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return a[:n]

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        """Raw scores (the true token's logit, minus the false token's where there is one)."""
        return self.runner.forward(batch)

    def describe(self) -> dict[str, Any]:
        """Backend facts for the engine's info: protocol, scoring tokens, shortcuts taken."""
        tokens = self.format.tokens
        return {
            **self.runner.describe(),
            "protocol": self.protocol,
            "protocol_reason": self.protocol_reason,
            "score_tokens": [tokens.true, tokens.false],
            "default_instruction": self.format.default_instruction,
            "model_class": self._model_class,
            "warnings": list(self.warnings),
        }

    def close(self) -> None:
        """Drop the model so its memory can be freed."""
        self.runner.close()


def _hub_config(transformers: Any, config: EngineConfig) -> dict[str, Any]:
    try:
        loaded = transformers.AutoConfig.from_pretrained(
            config.model, trust_remote_code=config.trust_remote_code, revision=config.revision
        )
    except Exception as exc:
        msg = (
            f"could not read the config of {config.model!r}: {error_clause(exc)}. Pass a "
            "local folder, or a hub id with network access to the Hugging Face hub."
        )
        raise ModelLoadError(msg) from exc
    data: dict[str, Any] = loaded.to_dict()
    return data
