"""The small interface every backend implements, and the unit of work it is given."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rerank_plugins import _protocols

__all__ = ["Backend", "BackendBase", "Encoded", "missing_members"]


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

    @property
    def supports_windows(self) -> bool:
        """Whether `encode_windows` works (the ``long_documents`` passage modes)."""
        ...

    @property
    def cpu_threads(self) -> int | None:
        """Intra-op threads of one CPU forward pass; None where passes can't run side by side."""
        ...

    @property
    def supports_instructions(self) -> bool:
        """Whether `encode` takes ``instruction=`` (instruction-aware decoder rerankers)."""
        ...

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize and truncate each (query, text) pair."""
        ...

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        """Raw relevance logits for a batch of encoded pairs, in batch order."""
        ...

    def encode_windows(self, query: str, texts: Sequence[str]) -> list[list[Encoded]]:
        """Each text as overlapping windows (only where ``supports_windows``)."""
        ...

    def bind_thread(self, threads: int) -> None:
        """Give this thread's forward passes ``threads`` intra-op threads (CPU streams)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Backend facts for `RerankEngine.info` and the start-up log line."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


class BackendBase(ABC):
    """The optional abilities of a backend, declared with their defaults: subclass and override.

    A backend that can split long documents into windows (the ``long_documents`` passage
    modes) sets ``supports_windows`` and implements `encode_windows`. One whose forward passes
    can run side by side on the CPU sets ``cpu_threads`` (the intra-op threads of one pass)
    and implements `bind_thread`, which the engine calls once in each of its forward threads.
    A backend whose model reads a task instruction sets ``supports_instructions``; its `encode`
    then takes an ``instruction`` keyword (None: the model's default).
    The engine reads these declarations when it is built; it never probes for methods.

    Examples:
        >>> class Constant(BackendBase):
        ...     name, device, precision, max_length = "constant", "cpu", "fp32", 512
        ...     def encode(self, query, texts):
        ...         return [Encoded(len(t.split()), False, t) for t in texts]
        ...     def forward(self, batch):
        ...         return [0.0 for _ in batch]
        ...     def describe(self):
        ...         return {}
        ...     def close(self):
        ...         pass
        >>> backend = Constant()
        >>> backend.supports_windows, backend.supports_instructions, backend.cpu_threads
        (False, False, None)
        >>> isinstance(backend, Backend)
        True
    """

    supports_windows: bool = False
    supports_instructions: bool = False
    name: str
    device: str
    precision: str
    max_length: int

    def __init__(self, config: Any = None) -> None:  # noqa: B027 (a default, not abstract)
        """Backends are built from an `EngineConfig`; this base keeps nothing of it."""

    @abstractmethod
    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize and truncate each (query, text) pair."""

    @abstractmethod
    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        """Raw relevance logits for a batch of encoded pairs, in batch order."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Backend facts for `RerankEngine.info` and the start-up log line."""

    @abstractmethod
    def close(self) -> None:
        """Release the model."""

    @classmethod
    def resolve_device(cls, device: str) -> str:
        """The device ``"auto"`` means for this backend, found without loading a model.

        `rerank_plugins.get_engine` asks it, so that equivalent settings share one engine.
        The default: CPU. Backends that can use an accelerator say which they would pick.
        """
        return "cpu" if device == "auto" else device

    @property
    def cpu_threads(self) -> int | None:
        """None by default: forward passes run one at a time."""
        return None

    def encode_windows(self, query: str, texts: Sequence[str]) -> list[list[Encoded]]:
        """Not supported by default: the engine checks ``supports_windows`` first."""
        msg = f"the {self.name!r} backend cannot split documents into windows."
        raise NotImplementedError(msg)

    def bind_thread(self, threads: int) -> None:  # noqa: B027 (a default, not abstract)
        """Nothing to bind by default (a backend without ``cpu_threads`` runs one stream)."""


def missing_members(backend: object) -> list[str]:
    """The `Backend` members ``backend`` lacks (empty when it implements the interface).

    Examples:
        >>> missing_members(object())[:3]
        ['name', 'device', 'precision']
    """
    return _protocols.missing_members(backend, Backend)
