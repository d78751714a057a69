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

from rerank_plugins.errors import ModelLoadError, error_clause

__all__ = ["check_model_reference", "error_clause", "hub_offline", "model_file", "read_config"]

# Files whose presence makes a folder a loadable model by their own loader: sentence-transformers
# (modules.json names the parts, possibly in subfolders) and PEFT adapters.
_OWN_LAYOUT_FILES = ("modules.json", "adapter_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".gguf")


def check_model_reference(model: str, *, hub: bool = True) -> None:
    """Fail early, and clearly, on a model reference that cannot load.

    A string that looks like a path (absolute, ``./``, ``~``, or more than one ``/``) but is
    missing is a mistake, not a hub id. An existing folder must hold a saved model: a
    ``config.json`` with a ``model_type`` and weights (or a sentence-transformers
    ``modules.json``); otherwise the loaders fail with messages that name every model type they
    know. With ``hub``, a hub id that cannot load because the hub is off (``HF_HUB_OFFLINE``)
    and the id is not in the local cache is refused too.

    Args:
        model: Hub id or local folder.
        hub: Also refuse a hub id that offline mode cannot load (False where the caller
            handles that case itself, e.g. by falling back).

    Raises:
        ModelLoadError: One line naming the model, what is missing, and what to pass instead.

    Examples:
        >>> check_model_reference("./no/such/model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rerank_plugins.errors.ModelLoadError: model folder './no/such/model' does not exist; ...
    """
    if os.path.isdir(model):
        problem = _folder_problem(model)
        if problem is not None:
            raise ModelLoadError(problem)
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
    if hub:
        problem = _offline_hub_problem(model)
        if problem is not None:
            raise ModelLoadError(problem)


def _folder_problem(folder: str) -> str | None:
    """Why ``folder`` is not a saved model, as a one-line error, or None when it looks like one."""
    try:
        names = set(os.listdir(folder))
    except OSError as exc:
        return f"cannot read model folder {folder!r} ({error_clause(exc)}); check its permissions."
    if any(name in names for name in _OWN_LAYOUT_FILES):
        return None
    if not names:
        return (
            f"model folder {folder!r} is empty; pass a folder saved with save_pretrained "
            "(config.json and the weights), or a hub id."
        )
    if "config.json" not in names:
        return (
            f"model folder {folder!r} has no config.json, so it holds no saved model; pass a "
            "folder saved with save_pretrained (config.json and the weights), or a hub id."
        )
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as exc:
        return (
            f"the config.json of model folder {folder!r} cannot be read as JSON "
            f"({error_clause(exc)}); save the model again with save_pretrained."
        )
    if not isinstance(config, dict) or not (config.get("model_type") or config.get("auto_map")):
        return (
            f"the config.json of model folder {folder!r} has no model_type; pass a folder saved "
            'with save_pretrained, or add the architecture\'s "model_type" (e.g. "bert").'
        )
    has_weights = os.path.isdir(os.path.join(folder, "onnx")) or any(
        name.endswith(_WEIGHT_SUFFIXES) for name in names
    )
    if not has_weights:
        return (
            f"model folder {folder!r} has a config.json but no weights (no .safetensors, .bin "
            "or .onnx file); copy the weights next to config.json, or pass a hub id."
        )
    return None


def _offline_hub_problem(repo_id: str) -> str | None:
    """Why hub id ``repo_id`` cannot load in offline mode, or None (online, or cached)."""
    if not hub_offline():
        return None
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client: the loader names the extra to install
        return None
    # Any cached revision will do: this only rules out ids with nothing cached at all.
    # sentence-transformers completes an id without an owner with its own organisations.
    names = [repo_id]
    if "/" not in repo_id:
        names += [f"sentence-transformers/{repo_id}", f"cross-encoder/{repo_id}"]
    roots = [str(constants.HF_HUB_CACHE)]
    if os.environ.get("SENTENCE_TRANSFORMERS_HOME"):
        roots.append(os.environ["SENTENCE_TRANSFORMERS_HOME"])
    for root in roots:
        for name in names:
            if os.path.isdir(os.path.join(root, "models--" + name.replace("/", "--"))):
                return None
    return (
        f"model {repo_id!r} is neither a local folder nor in the Hugging Face cache, and the hub "
        "is off (HF_HUB_OFFLINE=1); check the name, pass a local folder, or unset HF_HUB_OFFLINE "
        "to download it."
    )


def hub_offline() -> bool:
    """Whether the Hugging Face hub is off: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set.

    Examples:
        >>> import os
        >>> hub_offline() == bool(os.environ.get("HF_HUB_OFFLINE"))  # doctest: +SKIP
        True
    """
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


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
