"""The small interface every backend implements, and the unit of work it is given."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["Backend", "Encoded"]


@dataclass(frozen=True, slots=True)
class Encoded:
    """One (query, text) pair, prepared by a backend for its own forward pass.

    Attributes:
        length: Tokens the pair occupies; the engine budgets batches by it.
        truncated: Whether the text was cut to fit ``max_length``.
        payload: Backend-private data (token ids, or the raw texts for prompt-based models).
    """

    length: int
    truncated: bool
    payload: Any = field(repr=False)


@runtime_checkable
class Backend(Protocol):
    """What the engine needs from a model runtime: prepare pairs, score a batch, report itself.

    Backends return raw logits; the engine owns normalization, caching and batching, so that
    every backend gets them identically.
    """

    name: str
    device: str
    precision: str
    max_length: int

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize and truncate each (query, text) pair."""
        ...

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        """Raw relevance logits for a batch of encoded pairs, in batch order."""
        ...

    # Optional: ``encode_windows(query, texts) -> list[list[Encoded]]`` splits each text into
    # overlapping windows for the long-document passage modes (see rerank_plugins.windows).
    # Optional: ``cpu_threads: int | None`` (the intra-op threads of one forward pass; None
    # where passes can't run side by side) and ``bind_thread(threads)`` (called once in each
    # of the engine's forward threads) let the engine run CPU passes as parallel streams.

    def describe(self) -> dict[str, Any]:
        """Backend facts for `RerankEngine.info` and the start-up log line."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...
