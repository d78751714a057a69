"""The process-wide registry: one shared engine per model and settings (`get_engine`).

Ten chains that ask for the same model hold one copy of it. Every live engine is tracked so
that `close_all_engines` (also run at interpreter exit) stops their workers.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rerank_plugins.backends import backend_class, pick_backend
from rerank_plugins.config import EngineConfig

if TYPE_CHECKING:
    from rerank_plugins.engine import RerankEngine

__all__ = ["close_all_engines", "forget", "get_engine", "track"]

_REGISTRY: dict[EngineConfig, RerankEngine] = {}
_REGISTRY_LOCK = threading.Lock()
_LIVE: set[RerankEngine] = set()


def _canonical(config: EngineConfig) -> EngineConfig:
    """Resolve ``auto`` settings so that equivalent configs share one engine."""
    backend, _ = pick_backend(config)
    device = config.device
    if device == "auto":  # each backend knows what auto means for it (onnx: no torch)
        device = backend_class(backend).resolve_device(device)
    return replace(config, backend=backend, device=device)


def get_engine(model: str, **options: Any) -> RerankEngine:
    """The process-wide engine for ``model`` and ``options``, loaded on first use.

    The same model and settings always return the same instance, so any number of adapters,
    chains and retrievers hold one copy of the model and share its batches and cache. A closed
    engine is replaced by a fresh one on the next call.

    Args:
        model: Hugging Face hub id or local folder.
        **options: Engine options, as for `RerankEngine`.

    Returns:
        The shared engine.

    Examples:
        >>> from rerank_plugins import get_engine
        >>> a = get_engine("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        >>> a is get_engine("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        True
    """
    requested = EngineConfig.from_options(model, options)
    config = _canonical(requested)
    with _REGISTRY_LOCK:
        engine = _REGISTRY.get(config)
        if engine is None or engine.closed:
            from rerank_plugins.engine import RerankEngine

            name, reason = pick_backend(requested)
            engine = RerankEngine._load(config, name, reason)
            _REGISTRY[config] = engine
        return engine


def track(engine: RerankEngine) -> None:
    """Note a started engine, for `close_all_engines`."""
    _LIVE.add(engine)


def forget(engine: RerankEngine) -> None:
    """Drop a closing engine from the registry and the live set."""
    _LIVE.discard(engine)
    with _REGISTRY_LOCK:
        for key, value in list(_REGISTRY.items()):
            if value is engine:
                del _REGISTRY[key]


def close_all_engines(*, cancel_pending: bool = False) -> None:
    """Close every engine in the process (also runs at interpreter exit).

    Args:
        cancel_pending: Fail queued requests at once and stop running ones at their next
            batch boundary, rather than finish them (what interpreter exit does).
    """
    for engine in list(_LIVE):
        engine.close(timeout=5.0, cancel_pending=cancel_pending)


def _close_at_exit() -> None:
    # Nobody waits for a result any more: stop at the next batch boundary, not after the queue.
    close_all_engines(cancel_pending=True)


def _after_fork_in_child() -> None:
    """A forked child inherits the engines but none of their threads: reset them for this process.

    Only the forking thread exists in the child, so nothing here can race; each engine starts
    its worker again on its first call in the child.
    """
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for engine in list(_LIVE):
        engine._after_fork()


atexit.register(_close_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
