"""Rerank results and the one implementation of ranking, thresholding and the top-n cut."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "RerankResult",
    "check_count",
    "check_instruction",
    "check_query",
    "check_texts",
    "check_threshold",
    "check_top_n",
    "select",
    "to_probability",
]


@dataclass(frozen=True, slots=True)
class RerankResult:
    """One reranked input.

    Attributes:
        index: Position of the text in the caller's list.
        score: Relevance score, a plain ``float`` (probability when the engine normalizes).
        text: The text that was scored.
        windows: How many windows of the text were scored (1 unless a long-document passage
            mode split it).
        truncated: Whether part of the text was never seen by the model (cut at
            ``max_length`` in ``truncate``/``first`` mode).

    Examples:
        >>> RerankResult(index=2, score=0.93, text="RAG combines retrieval and generation.")
        RerankResult(index=2, score=0.93, text='RAG combines retrieval and generation.', \
windows=1, truncated=False)
    """

    index: int
    score: float
    text: str
    windows: int = 1
    truncated: bool = False


def check_query(query: object) -> str:
    """Return ``query`` if it is a non-empty string, else raise a clear error.

    Raises:
        TypeError: ``query`` is not a string.
        ValueError: ``query`` is empty or only whitespace.
    """
    if not isinstance(query, str):
        msg = f"query must be a str, got {type(query).__name__}; pass the user's question as text."
        raise TypeError(msg)
    if not query.strip():
        msg = "query is empty; pass the question to rank the texts against."
        raise ValueError(msg)
    return query


def check_instruction(instruction: object) -> str | None:
    """Return the instruction, or None for none (``None``, or an empty or blank string).

    Examples:
        >>> check_instruction("  "), check_instruction("Find code.")
        (None, 'Find code.')

    Raises:
        TypeError: ``instruction`` is not a string or None.
    """
    if instruction is None:
        return None
    if not isinstance(instruction, str):
        msg = f"instruction must be a string or None, got {type(instruction).__name__}."
        raise TypeError(msg)
    return instruction if instruction.strip() else None


def check_texts(texts: object) -> list[str]:
    """Return a new list of the texts, raising on anything that is not a list of strings.

    Raises:
        TypeError: ``texts`` is a bare string, not a sequence, or holds a non-string.
    """
    if isinstance(texts, str | bytes):
        msg = "texts must be a list of strings, got a single string; wrap it in a list."
        raise TypeError(msg)
    if not isinstance(texts, Sequence | Iterable):
        msg = f"texts must be a list of strings, got {type(texts).__name__}."
        raise TypeError(msg)
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            msg = f"texts[{i}] must be a str, got {type(text).__name__}; convert or drop it first."
            raise TypeError(msg)
    return out


def check_count(name: str, value: object) -> int:
    """``value`` if it is a positive int (not a bool); else a one-line error naming ``name``.

    Examples:
        >>> check_count("top_k", 3)
        3
    """
    if not isinstance(value, int) or isinstance(value, bool):
        msg = f"{name} must be a positive int, got {value!r}."
        raise TypeError(msg)
    if value < 1:
        msg = f"{name} must be >= 1, got {value}."
        raise ValueError(msg)
    return value


def check_top_n(top_n: object, *, allow_none: bool = True) -> int | None:
    """Validate a ``top_n`` value (a positive int, or None for all).

    Raises:
        TypeError: ``top_n`` is not an int.
        ValueError: ``top_n`` is below 1.
    """
    if top_n is None and allow_none:
        return None
    if not isinstance(top_n, int) or isinstance(top_n, bool):
        msg = f"top_n must be a positive int{' or None' if allow_none else ''}, got {top_n!r}."
        raise TypeError(msg)
    if top_n < 1:
        msg = f"top_n must be >= 1, got {top_n}."
        raise ValueError(msg)
    return top_n


def check_threshold(score_threshold: object) -> float | None:
    """Validate a ``score_threshold`` (a number, or None for no threshold).

    Raises:
        TypeError: It is not a number.
        ValueError: It is NaN.
    """
    if score_threshold is None:
        return None
    if not isinstance(score_threshold, int | float) or isinstance(score_threshold, bool):
        msg = f"score_threshold must be a number or None, got {score_threshold!r}."
        raise TypeError(msg)
    if math.isnan(score_threshold):
        msg = "score_threshold must not be NaN."
        raise ValueError(msg)
    return float(score_threshold)


def select(
    scores: Sequence[float],
    top_n: int | None = None,
    score_threshold: float | None = None,
) -> list[int]:
    """Indices of the best scores: threshold first, then best first, then the top-n cut.

    Ties keep the callers' order; NaN scores rank last and never pass a threshold.

    Args:
        scores: One score per input.
        top_n: Keep at most this many (None keeps all that pass the threshold).
        score_threshold: Drop scores below this value before the top-n cut.

    Returns:
        Indices into ``scores``, best first.

    Examples:
        >>> select([0.2, 0.9, 0.5, 0.9], top_n=2)
        [1, 3]
        >>> select([0.2, 0.9, 0.5], score_threshold=0.4)
        [1, 2]
    """
    top_n = check_top_n(top_n)
    threshold = check_threshold(score_threshold)
    order = sorted(
        range(len(scores)),
        key=lambda i: (math.isnan(scores[i]), -scores[i] if not math.isnan(scores[i]) else 0.0, i),
    )
    if threshold is not None:
        order = [i for i in order if not math.isnan(scores[i]) and scores[i] >= threshold]
    return order if top_n is None else order[:top_n]


def to_probability(logit: float) -> float:
    """``sigmoid(logit)``, computed without overflow: the engine's ``normalize=True`` scale.

    NaN stays NaN (a model that returned NaN ranks last, never above a threshold).

    Examples:
        >>> to_probability(0.0), to_probability(-1000.0), to_probability(1000.0)
        (0.5, 0.0, 1.0)
    """
    if math.isnan(logit):
        return logit
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)
