"""Models by name: what a ``model=`` string names (a folder or a hub id), and offline stand-ins.

`check_model_reference` is used wherever a model is named (the backends, the bi-encoder, the
offline fallbacks), so a mistyped folder gives the same clear error everywhere.
`rerank_plugins.models.offline` builds the stand-ins the demo uses when no model hub is
reachable.
"""

from __future__ import annotations

import json
import os
from typing import Any

from rerank_plugins.errors import ModelLoadError

__all__ = ["check_model_reference", "model_file", "read_config"]


def check_model_reference(model: str) -> None:
    """Fail early, and clearly, on a local path that does not exist.

    A string that exists as a folder is a local model; one that looks like a path (absolute,
    ``./``, ``~``, or more than one ``/``) but is missing is a mistake, not a hub id.
    """
    if os.path.isdir(model):
        return
    if os.path.exists(model):
        msg = f"model {model!r} is a file; pass the folder that holds config.json and the weights."
        raise ModelLoadError(msg)
    looks_like_path = (
        model.startswith(("/", "./", "../", "~", "\\"))
        or model.count("/") > 1
        or (len(model) > 1 and model[1] == ":")
    )
    if looks_like_path:
        msg = f"model folder {model!r} does not exist; pass an existing folder or a hub id."
        raise ModelLoadError(msg)


def read_config(model: str, revision: str | None = None) -> dict[str, Any] | None:
    """The model's config.json as a dict (a local folder, or a hub id through the hub's cache).

    None where there is none, or the hub cannot be reached.
    """
    path = model_file(model, "config.json", revision)
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def model_file(model: str, filename: str, revision: str | None = None) -> str | None:
    """A local path to ``filename`` of ``model``: in its folder, else from the Hugging Face hub.

    Hub files come through the hub's cache (``HF_HUB_OFFLINE=1`` reads only the cache). None
    when the model has no such file or the hub cannot be reached; loading the model then says
    what went wrong.
    """
    if os.path.isdir(model):
        path = os.path.join(model, filename)
        return path if os.path.isfile(path) else None
    try:
        from huggingface_hub import hf_hub_download

        return str(hf_hub_download(model, filename, revision=revision))
    except Exception:  # not installed, no such repo or file, no network: the loader will say
        return None
