"""Validated, hashable engine settings: the key under which `get_engine` shares engines."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Literal

__all__ = ["BACKENDS", "DECODER_PROTOCOLS", "DEVICES", "PRECISIONS", "EngineConfig"]

BackendName = Literal["auto", "sentence-transformers", "flag", "onnx", "decoder"]
Precision = Literal["auto", "fp32", "fp16", "bf16", "int8"]

BACKENDS: tuple[str, ...] = ("auto", "sentence-transformers", "flag", "onnx", "decoder")
DECODER_PROTOCOLS: tuple[str, ...] = ("auto", "sentence-transformers", "flag-llm", "qwen3")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16", "int8")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
_BACKEND_ALIASES = {"st": "sentence-transformers", "sentence_transformers": "sentence-transformers"}


@dataclass(frozen=True)
class EngineConfig:
    """Everything that decides what an engine computes and how.

    Two engines with equal configs compute the same scores, so `get_engine` hands out one
    shared instance per config.

    Examples:
        >>> cfg = EngineConfig(model="cross-encoder/ms-marco-MiniLM-L-6-v2", max_length=256)
        >>> cfg.max_length
        256
    """

    model: str
    """Hugging Face hub id or local folder of the cross-encoder."""
    backend: str = "auto"
    """``"auto"``, ``"sentence-transformers"``, ``"flag"``, ``"onnx"`` or ``"decoder"``.
    ``auto`` picks ``decoder`` (our native runner) for decoder-only (LLM) rerankers and
    ``sentence-transformers`` otherwise; ``flag`` runs FlagEmbedding's own classes."""
    device: str = "auto"
    """``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``."""
    max_length: int | None = None
    """Tokens per (query, document) pair. Default: the model's own limit, capped at 512."""
    normalize: bool = True
    """``True``: probabilities in [0, 1] (sigmoid of the logit). ``False``: raw logits."""
    cache_size: int = 10_000
    """Entries in the LRU score cache; ``0`` turns the cache off."""
    precision: str = "auto"
    """``"auto"`` (fp16 on CUDA/MPS, bf16 on CUDA where supported, fp32 on CPU), ``"fp32"``,
    ``"fp16"``, ``"bf16"``, or ``"int8"`` (onnx backend only)."""
    batch_tokens: int | None = None
    """Token budget of one forward pass (padded length x pairs). Default depends on the device."""
    max_batch_size: int | None = None
    """Upper bound on pairs in one forward pass. Default depends on the device."""
    streams: int | None = None
    """Forward passes run side by side on CPU, each on an equal share of torch's threads.
    Default: 2 where torch has 2 or more CPU threads (measured faster than one pass on all the
    threads; the default batch shrinks so the tokens in flight stay the same), else 1. Only the
    torch backends on CPU can run more than one."""
    trust_remote_code: bool = False
    """Run model code shipped with the weights. Off unless you trust the model's author."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load."""
    long_documents: str = "truncate"
    """``"truncate"`` (cut at ``max_length``, as the reference libraries do), a passage mode
    that scores every overlapping window of a long document and keeps the ``"max"`` (MaxP) or
    the ``"mean"`` window score, or ``"first"`` (FirstP): the first window's score, which is
    the truncated pair's, so it scores no other window and costs what ``"truncate"`` costs."""
    decoder_protocol: str = "auto"
    """How a decoder (LLM) reranker reads a pair: ``"auto"`` (detected; `engine.info` says
    what and why), ``"sentence-transformers"`` (a CrossEncoder folder with ``LogitScore``),
    ``"flag-llm"`` (FlagLLMReranker's layout, bge-reranker-v2-gemma) or ``"qwen3"`` (the
    Qwen3-Reranker model card's). Decoder backend only."""
    decoder_tokens: tuple[str, str | None] | None = None
    """``(true, false)`` answer tokens whose logits make a decoder reranker's score
    (``logit(true) - logit(false)``; ``false=None`` scores ``logit(true)`` alone). Default: the
    protocol's own (``("yes", "no")`` for qwen3, ``("Yes", None)`` for flag-llm); mxbai-style
    models pass theirs, e.g. ``("1", "0")``."""

    def __post_init__(self) -> None:
        """Validate and normalise every field; errors name the field and what to pass."""
        if not isinstance(self.model, str | os.PathLike) or not str(self.model).strip():
            msg = f"model must be a non-empty hub id or folder path, got {self.model!r}."
            raise TypeError(msg) if not isinstance(self.model, str) else ValueError(msg)
        model = os.fspath(self.model)
        if os.path.isdir(model):
            model = os.path.realpath(model)
        object.__setattr__(self, "model", model)

        backend = _BACKEND_ALIASES.get(str(self.backend), self.backend)
        if backend not in BACKENDS:
            msg = f"unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}."
            raise ValueError(msg)
        object.__setattr__(self, "backend", backend)

        device = str(self.device)
        if device.split(":")[0] not in DEVICES:
            msg = (
                f"unknown device {self.device!r}; "
                "expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
            )
            raise ValueError(msg)
        object.__setattr__(self, "device", device)

        if self.precision not in PRECISIONS:
            msg = f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}."
            raise ValueError(msg)
        if self.precision == "int8" and backend != "onnx":
            msg = "precision='int8' is only available with backend='onnx'; pass backend='onnx'."
            raise ValueError(msg)

        from rerank_plugins.windows import LONG_DOCUMENT_MODES

        if self.long_documents not in LONG_DOCUMENT_MODES:
            msg = (
                f"unknown long_documents mode {self.long_documents!r}; "
                f"expected one of {', '.join(LONG_DOCUMENT_MODES)}."
            )
            raise ValueError(msg)
        self._check_decoder_options(backend)
        _positive_or_none("max_length", self.max_length)
        _positive_or_none("batch_tokens", self.batch_tokens)
        _positive_or_none("max_batch_size", self.max_batch_size)
        _positive_or_none("streams", self.streams)
        if not isinstance(self.cache_size, int) or isinstance(self.cache_size, bool):
            msg = f"cache_size must be an int (0 turns the cache off), got {self.cache_size!r}."
            raise TypeError(msg)
        if self.cache_size < 0:
            msg = f"cache_size must be >= 0 (0 turns the cache off), got {self.cache_size}."
            raise ValueError(msg)
        for name in ("normalize", "trust_remote_code"):
            if not isinstance(getattr(self, name), bool):
                msg = f"{name} must be True or False, got {getattr(self, name)!r}."
                raise TypeError(msg)

    def _check_decoder_options(self, backend: str) -> None:
        if self.decoder_protocol not in DECODER_PROTOCOLS:
            msg = (
                f"unknown decoder_protocol {self.decoder_protocol!r}; expected one of "
                f"{', '.join(DECODER_PROTOCOLS)}."
            )
            raise ValueError(msg)
        tokens = self.decoder_tokens
        if tokens is not None:
            ok = (
                isinstance(tokens, tuple | list)
                and len(tokens) == 2
                and isinstance(tokens[0], str)
                and bool(tokens[0])
                and (tokens[1] is None or (isinstance(tokens[1], str) and bool(tokens[1])))
            )
            if not ok:
                msg = (
                    "decoder_tokens must be a (true, false) pair of token strings (false may be "
                    f"None), got {tokens!r}."
                )
                raise TypeError(msg)
            object.__setattr__(self, "decoder_tokens", (tokens[0], tokens[1]))
        if backend in ("sentence-transformers", "flag", "onnx") and (
            self.decoder_protocol != "auto" or tokens is not None
        ):
            msg = (
                f"decoder_protocol and decoder_tokens apply to backend='decoder' only, got "
                f"backend={backend!r}; pass backend='decoder' or 'auto'."
            )
            raise ValueError(msg)

    @classmethod
    def option_names(cls) -> frozenset[str]:
        """The keyword options that `get_engine` and the adapters accept besides ``model``."""
        return frozenset(f.name for f in fields(cls) if f.name != "model")

    @classmethod
    def from_options(cls, model: str, options: dict[str, Any]) -> EngineConfig:
        """Build a config from keyword options, rejecting unknown ones by name.

        Args:
            model: Hub id or local folder.
            options: Engine options (see the class fields).

        Returns:
            The validated config.

        Raises:
            TypeError: An option is not an engine option.
        """
        unknown = sorted(set(options) - cls.option_names())
        if unknown:
            msg = (
                f"unknown engine option(s) {', '.join(map(repr, unknown))}; "
                f"expected some of {', '.join(sorted(cls.option_names()))}."
            )
            raise TypeError(msg)
        return cls(model=model, **options)


def _positive_or_none(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        msg = f"{name} must be a positive int or None, got {value!r}."
        raise TypeError(msg)
    if value < 1:
        msg = f"{name} must be a positive int or None, got {value}."
        raise ValueError(msg)
