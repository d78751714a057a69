"""The contract between the engines and their callers: `Scorer`, its info, `EngineInfo`.

Adapters, the retriever, the server and the command line call any `Scorer` (a local
`RerankEngine` or a `RemoteEngine`) through these members only, never probing for others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rerank_plugins._protocols import missing_members
from rerank_plugins.results import RerankResult

__all__ = ["EngineInfo", "Scorer", "ScorerInfo", "check_scorer"]


def check_scorer(engine: object, owner: str) -> None:
    """Raise a one-line `TypeError` naming what ``engine`` lacks of the `Scorer` interface.

    Args:
        engine: What a caller passed as ``engine=``.
        owner: Who asks, for the message (e.g. ``"RerankCompressor"``).

    Examples:
        >>> check_scorer(object(), "RerankCompressor")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: RerankCompressor: engine must implement ...; object lacks score, ascore, ...
    """
    missing = missing_members(engine, Scorer)
    if missing:
        msg = (
            f"{owner}: engine must implement rerank_plugins.Scorer; {type(engine).__name__} "
            f"lacks {', '.join(missing)}. Pass get_engine(...), a RerankEngine or a RemoteEngine."
        )
        raise TypeError(msg)


class ScorerInfo(Protocol):
    """What callers read of any scorer's info (`EngineInfo`, `RemoteInfo`)."""

    @property
    def model(self) -> str:
        """The model's name (hub id, folder, or what a server calls it)."""
        ...

    @property
    def normalize(self) -> bool:
        """Whether scores are probabilities in [0, 1] (else raw logits)."""
        ...

    @property
    def max_length(self) -> int | None:
        """Tokens per (query, text) pair; None where the scorer cannot know (a server)."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """What the adapters and the server need from an engine; local and remote ones implement it.

    Scoring (sync and async), what it runs (``info``), its counters (``stats``) and its life
    (``closed``, ``close``): callers use these members directly and never probe for them.
    """

    def score(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Scores in the order of ``texts``; ``instruction`` for instruction-aware models."""
        ...

    async def ascore(
        self, query: str, texts: Sequence[str], *, instruction: str | None = None
    ) -> list[float]:
        """Scores in the order of ``texts``, without blocking the event loop."""
        ...

    def rerank(
        self,
        query: str,
        texts: Sequence[str],
        top_n: int | None = None,
        score_threshold: float | None = None,
        *,
        timeout: float | None = None,
        instruction: str | None = None,
    ) -> list[RerankResult]:
        """Results best first, thresholded, then cut to ``top_n``."""
        ...

    async def arerank(
        self,
        query: str,
        texts: Sequence[str],
        top_n: int | None = None,
        score_threshold: float | None = None,
        *,
        timeout: float | None = None,
        instruction: str | None = None,
    ) -> list[RerankResult]:
        """Async `rerank`."""
        ...

    @property
    def info(self) -> ScorerInfo:
        """What the scorer runs."""
        ...

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters since creation (requests, pairs, and what else the scorer counts)."""
        ...

    def close(self) -> None:
        """Release what the scorer holds; later calls fail. Idempotent."""
        ...


@dataclass(frozen=True)
class EngineInfo:
    """What an engine runs: the answer to "which backend did auto pick, on what device?".

    Attributes:
        model: Hub id or resolved local folder.
        backend: Backend name.
        backend_reason: Why that backend (``"requested"`` or what ``auto`` saw).
        device: Resolved device.
        precision: Effective precision (after any fallback).
        max_length: Tokens per pair.
        normalize: Probabilities (True) or raw logits (False).
        score_scale: Human-readable scale of the scores.
        cache_size: LRU entries (0: off).
        batch_tokens: Token budget per forward pass.
        max_batch_size: Pair limit per forward pass.
        streams: Forward passes run side by side (CPU), each on ``threads_per_stream`` threads.
        threads_per_stream: Intra-op threads of one pass (None where the backend sets its own).
        details: Backend-specific facts (attention implementation, model class ...).
        warnings: What makes this model's scores untrustworthy, found at load: a checkpoint
            with no trained scoring head (an embedding model passed as a reranker). Empty
            when all is well; each is also logged once, as a warning, at load.
    """

    model: str
    backend: str
    backend_reason: str
    device: str
    precision: str
    max_length: int
    normalize: bool
    score_scale: str
    cache_size: int
    batch_tokens: int
    max_batch_size: int
    streams: int = 1
    threads_per_stream: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
