"""Is the scoring head trained? Detects a model whose head the checkpoint did not contain.

Passing a bi-encoder (an embedding model) where a cross-encoder belongs is a common mix-up:
transformers then adds a freshly initialised classification head, and every score is noise
around 0.5. transformers reports it in a log line that applications (and our command line)
usually silence; the engine reports it instead, as one warning and in ``engine.info.warnings``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from rerank_plugins.models import model_file, read_config

__all__ = ["checkpoint_keys", "head_warnings", "untrained_head"]

logger = logging.getLogger("rerank_plugins")

_HEADED = ("ForSequenceClassification", "ForCausalLM")


def checkpoint_keys(model: str, revision: str | None = None) -> set[str] | None:
    """Names of the tensors ``model``'s checkpoint holds; None where they cannot be read.

    Reads only headers: safetensors (single or sharded, from the index) without loading a
    tensor, or a ``pytorch_model.bin`` memory-mapped.
    """
    index = model_file(model, "model.safetensors.index.json", revision)
    if index is not None:
        with open(index, encoding="utf-8") as fh:
            return set(json.load(fh).get("weight_map", {}))
    single = model_file(model, "model.safetensors", revision)
    if single is not None:
        from safetensors import safe_open

        with safe_open(single, framework="numpy") as fh:
            return set(fh.keys())
    binary = model_file(model, "pytorch_model.bin", revision)
    if binary is not None:
        try:
            import torch

            state = torch.load(binary, map_location="meta", weights_only=True, mmap=True)
        except Exception:  # an old or odd pickle: say nothing rather than guess
            return None
        return set(state)
    return None


def untrained_head(hf_model: Any, keys: set[str]) -> list[str]:
    """The head parameters of ``hf_model`` (outside its base model) the checkpoint lacks.

    A head tied to a base-model tensor (a decoder's LM head tied to its embeddings) counts as
    present: the checkpoint leaves it out on purpose.
    """
    prefix = f"{getattr(hf_model, 'base_model_prefix', '')}."
    base = {p.data_ptr() for name, p in hf_model.named_parameters() if name.startswith(prefix)}
    missing = []
    for name, param in hf_model.named_parameters(remove_duplicate=False):
        if name.startswith(prefix) or param.data_ptr() in base:
            continue
        if name not in keys:
            missing.append(name)
    return missing


def head_warnings(model: str, hf_model: Any | None, revision: str | None = None) -> list[str]:
    """Warnings to show when ``model`` cannot rank: its head is missing or untrained.

    Args:
        model: Hub id or folder, as given.
        hf_model: The loaded transformers model (None for a ready-made ONNX file: then only the
            config's architecture is checked).
        revision: Hub revision.

    Returns:
        Zero or one one-line messages.
    """
    from rerank_plugins.models.offline import UNTRAINED_HEAD_NOTICE, is_untrained_fallback

    if os.path.isdir(model) and is_untrained_fallback(model):
        return [UNTRAINED_HEAD_NOTICE]
    config = read_config(model, revision) or {}
    architectures = [str(a) for a in config.get("architectures") or []]
    if architectures and not any(a.endswith(_HEADED) for a in architectures):
        kind = architectures[0]
        return [
            f"{model!r} is a {kind} checkpoint with no trained scoring head (an embedding or "
            "bi-encoder model?), so its scores are random; rerank with a cross-encoder such "
            "as cross-encoder/ms-marco-MiniLM-L-6-v2 or BAAI/bge-reranker-v2-m3."
        ]
    if hf_model is None:
        return []
    keys = checkpoint_keys(model, revision)
    if not keys:
        return []
    missing = untrained_head(hf_model, keys)
    if not missing:
        return []
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    return [
        f"{model!r} has an untrained scoring head: its checkpoint lacks {shown}, which were "
        "freshly initialised, so its scores are random; rerank with a trained cross-encoder "
        "(a *ForSequenceClassification checkpoint), not a base or embedding model."
    ]
