"""Exception types raised by rerank-plugins, so callers can catch exactly what they mean."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "EngineClosedError",
    "MissingDependencyError",
    "ModelLoadError",
    "RerankError",
]


class RerankError(Exception):
    """Base class of every error this package raises on purpose.

    Every exception type of the package pickles to an equal one, so it crosses process
    boundaries (multiprocessing, Ray, Celery): a subclass whose constructor takes more than
    the message defines ``__reduce__`` (see `RemoteError`), and ``tests/test_pickling.py``
    checks each of them.
    """


class MissingDependencyError(RerankError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class ModelLoadError(RerankError, ValueError):
    """The model could not be found or loaded (a missing folder, an unknown hub id, bad config)."""


class EngineClosedError(RerankError, RuntimeError):
    """The engine was closed; build a new one (or call `get_engine` again)."""


class BackendError(RerankError, RuntimeError):
    """A backend forward pass failed; the original error is chained as ``__cause__``."""
