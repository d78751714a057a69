"""Choosing a score_threshold from an evaluation run instead of guessing it."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["suggest_threshold"]


def suggest_threshold(relevant_scores: Sequence[float], keep: float = 0.9) -> float:
    """The highest threshold that still keeps ``keep`` of the relevant documents.

    Feed it the reranker's scores of the *relevant* candidates of an evaluation run (the
    ``rerank-plugins eval`` output holds them and suggests thresholds for 80/90/95%).
    Thresholds are on the engine's scale: probabilities with ``normalize=True``, logits
    otherwise, so calibrate with the same setting you serve with.

    Args:
        relevant_scores: Scores the reranker gave to relevant documents.
        keep: Share of relevant documents to keep, in (0, 1].

    Returns:
        A threshold ``t`` such that at least ``keep`` of the scores are ``>= t``.

    Examples:
        >>> suggest_threshold([0.9, 0.8, 0.7, 0.2], keep=0.75)
        0.7
    """
    if not 0 < keep <= 1:
        msg = f"keep must be in (0, 1], got {keep}."
        raise ValueError(msg)
    scores = sorted((s for s in relevant_scores if not math.isnan(s)), reverse=True)
    if not scores:
        msg = "no scores of relevant documents to calibrate on; run an evaluation first."
        raise ValueError(msg)
    needed = max(math.ceil(keep * len(scores)), 1)
    return scores[needed - 1]
