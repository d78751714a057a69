"""A fake backend with the real Backend interface, for fast tests of engine plumbing.

Scores here are a deterministic function of the text; anything about real scores uses a real
tiny model instead.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from rerank_plugins.backends.base import BackendBase, Encoded


def fake_logit(query: str, text: str) -> float:
    return (zlib.crc32(f"{query}\x00{text}".encode()) % 2000) / 100.0 - 10.0


class FakeBackend(BackendBase):
    name = "fake"
    device = "cpu"
    precision = "fp32"
    max_length = 64

    def __init__(self, fail: Callable[[list[tuple[str, str]]], bool] | None = None) -> None:
        self.fail = fail
        self.batches: list[int] = []
        self.encoded = 0
        self.lock = threading.Lock()

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        self.encoded += len(texts)
        return [
            Encoded(
                length=min(len(t.split()) + 3, 64),
                truncated=len(t.split()) > 61,
                payload=(query, t),
            )
            for t in texts
        ]

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        pairs = [e.payload for e in batch]
        with self.lock:
            self.batches.append(len(batch))
        if self.fail is not None and self.fail(pairs):
            raise RuntimeError("injected fault")
        return [fake_logit(q, t) for q, t in pairs]

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class FaultyBackend(BackendBase):
    """Wraps a real backend and raises on the batches a predicate picks (fault injection)."""

    def __init__(self, inner: Any, fail: Callable[[Sequence[Encoded]], bool]) -> None:
        self.inner = inner
        self.fail = fail
        self.name = inner.name
        self.device = inner.device
        self.precision = inner.precision
        self.max_length = inner.max_length
        # Streams pass through: the engine runs this backend's passes side by side as it would
        # the real one's, so faults land on whichever stream took the batch.
        self._cpu_threads = inner.cpu_threads
        self.supports_windows = inner.supports_windows
        self.batch_sizes: list[int] = []
        self.failures = 0
        self.lock = threading.Lock()

    @property
    def cpu_threads(self) -> int | None:
        return self._cpu_threads

    def bind_thread(self, threads: int) -> None:
        self.inner.bind_thread(threads)

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        return self.inner.encode(query, texts)

    def encode_windows(self, query: str, texts: Sequence[str]) -> list[list[Encoded]]:
        return self.inner.encode_windows(query, texts)

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        with self.lock:
            self.batch_sizes.append(len(batch))
        if self.fail(batch):
            with self.lock:
                self.failures += 1
            raise RuntimeError(f"injected fault on a batch of {len(batch)}")
        return self.inner.forward(batch)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        pass


class GatedBackend(FakeBackend):
    """Holds every forward pass until ``gate`` is set: lets tests queue work behind it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.started = threading.Event()
        self.seen: list[str] = []

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        self.started.set()
        self.gate.wait(10)
        self.seen.extend(t for _, t in (e.payload for e in batch))
        return super().forward(batch)


class HeldBackend(BackendBase):
    """Wraps a real backend; a forward pass holding one of ``holds`` waits for its release.

    Each held text has an ``entered`` event (its pass started) and a ``release`` event (let it
    run). ``seen`` lists the texts of every pass that ran, in order; ``passes`` counts them.
    Tests use it to put the engine in an exact state (mid-forward, a caller timed out) without
    leaning on timing.
    """

    def __init__(self, inner: Any, holds: Sequence[str] = ()) -> None:
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self.precision = inner.precision
        self.max_length = inner.max_length
        self.supports_windows = False
        self.release = {t: threading.Event() for t in holds}
        self.entered = {t: threading.Event() for t in holds}
        self.seen: list[str] = []
        self.passes = 0
        self.lock = threading.Lock()

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        inner = self.inner.encode(query, texts)
        return [Encoded(e.length, e.truncated, (t, e)) for t, e in zip(texts, inner, strict=True)]

    def hold(self, texts: list[str]) -> None:
        """Wait here while the batch holds a text not yet released (60 s at most: a hang guard)."""
        for text in texts:
            if text in self.release:
                self.entered[text].set()
                self.release[text].wait(60)

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        texts = [e.payload[0] for e in batch]
        self.hold(texts)
        logits = self.inner.forward([e.payload[1] for e in batch])
        with self.lock:
            self.seen.extend(texts)
            self.passes += 1
        return logits

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        pass
