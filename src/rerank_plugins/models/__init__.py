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

__all__ = ["check_model_reference", "read_config"]


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


def read_config(model: str) -> dict[str, Any] | None:
    """The model's config.json as a dict when ``model`` is a local folder, else None."""
    path = os.path.join(model, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data
