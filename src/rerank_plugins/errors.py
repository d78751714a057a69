"""Exception types raised by rerank-plugins, so callers can catch exactly what they mean."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "EngineClosedError",
    "MissingDependencyError",
    "ModelLoadError",
    "RerankError",
    "error_clause",
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


# How long an embedded cause may run before it is cut to its first sentence.
_CLAUSE_LIMIT = 240


def error_clause(exc: BaseException, limit: int = _CLAUSE_LIMIT) -> str:
    r"""``exc``'s message to embed in a sentence of ours: one line, no closing punctuation.

    Library messages often end in a period, span lines, or run to thousands of characters
    (transformers lists every model type it knows). The clause keeps the first sentence when
    the whole is longer than ``limit``, and never ends in ``.``, ``;`` or ``:``, so
    ``f"could not load {name!r}: {error_clause(exc)}. Pass ..."`` reads as one sentence.

    Args:
        exc: The error whose message to embed (its type name when the message is empty).
        limit: Characters at most.

    Returns:
        The clause.

    Examples:
        >>> error_clause(OSError("Unrecognized model in x. Should have a model_type.\n"))
        'Unrecognized model in x. Should have a model_type'
        >>> f"could not load 'x': {error_clause(ValueError('no such file.'))}. Pass a folder."
        "could not load 'x': no such file. Pass a folder."
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        end = text.find(". ")
        if 0 < end < limit:
            text = text[:end]
        else:
            return text[:limit].rsplit(" ", 1)[0].rstrip(" .;:,") + "…"
    return text.rstrip(" .;:,")
