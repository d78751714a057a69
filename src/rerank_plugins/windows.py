"""Long documents: overlapping token windows and how their scores combine into one."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["LONG_DOCUMENT_MODES", "aggregate", "window_spans"]

LONG_DOCUMENT_MODES: tuple[str, ...] = ("truncate", "max", "first", "mean")


def window_spans(n_tokens: int, budget: int, overlap: int | None = None) -> list[tuple[int, int]]:
    """Token spans ``[start, end)`` covering ``n_tokens`` in windows of at most ``budget``.

    Consecutive windows overlap by ``overlap`` tokens (default: a quarter of the budget), so a
    passage cut by one window boundary is whole in the next window.

    Args:
        n_tokens: Length of the document in tokens.
        budget: Tokens a window may hold (the pair budget minus query and special tokens).
        overlap: Tokens shared by consecutive windows.

    Returns:
        The spans, in document order; one span for a document that fits.

    Examples:
        >>> window_spans(10, 4, overlap=1)
        [(0, 4), (3, 7), (6, 10)]
        >>> window_spans(3, 4)
        [(0, 3)]
    """
    if budget < 1:
        msg = f"the query leaves no room for the document (window budget {budget} tokens)."
        raise ValueError(msg)
    if n_tokens <= budget:
        return [(0, n_tokens)]
    overlap = budget // 4 if overlap is None else overlap
    stride = max(budget - overlap, 1)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + budget, n_tokens)
        spans.append((start, end))
        if end >= n_tokens:
            return spans
        start += stride


def aggregate(logits: Sequence[float], mode: str) -> float:
    """Combine window logits into the document's logit.

    ``max`` (MaxP) takes the best window, ``first`` (FirstP) the first, ``mean`` the mean of
    the logits. Aggregating logits, not probabilities, keeps ``normalize`` a pure change of
    scale: ``max`` and ``first`` give the same order either way.

    Examples:
        >>> aggregate([-1.0, 3.0, 1.0], "max"), aggregate([-1.0, 3.0, 1.0], "mean")
        (3.0, 1.0)
    """
    if mode == "max":
        return max(logits)
    if mode == "first":
        return logits[0]
    if mode == "mean":
        return math.fsum(logits) / len(logits)
    if mode == "truncate":
        return logits[0]
    msg = f"unknown long_documents mode {mode!r}; expected one of {', '.join(LONG_DOCUMENT_MODES)}."
    raise ValueError(msg)
