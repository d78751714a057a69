"""Counters and histograms of the rerank server, written in the Prometheus text format."""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence

__all__ = ["DOCUMENT_BUCKETS", "DURATION_BUCKETS", "Histogram", "ServerMetrics"]

DURATION_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (seconds) of the request latency histogram."""

DOCUMENT_BUCKETS: tuple[float, ...] = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
"""Upper bounds of the documents-per-request histogram."""


class Histogram:
    """A cumulative histogram with fixed buckets, as Prometheus expects.

    Args:
        buckets: Increasing upper bounds; ``+Inf`` is added.

    Examples:
        >>> h = Histogram((0.1, 1.0))
        >>> h.observe(0.05); h.observe(0.5); h.observe(3.0)
        >>> h.counts, h.count, round(h.total, 2)
        ([1, 2, 3], 3, 3.55)
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        if list(buckets) != sorted(buckets) or not buckets:
            msg = f"histogram buckets must be a non-empty increasing sequence, got {buckets!r}."
            raise ValueError(msg)
        self.bounds = [float(b) for b in buckets] + [math.inf]
        self._hits = [0] * len(self.bounds)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self._hits[i] += 1
                break
        self.count += 1
        self.total += value

    @property
    def counts(self) -> list[int]:
        """Cumulative counts per bucket (the last one is ``+Inf``, equal to `count`)."""
        out, running = [], 0
        for hits in self._hits:
            running += hits
            out.append(running)
        return out

    def render(self, name: str) -> list[str]:
        """The ``_bucket``, ``_sum`` and ``_count`` sample lines."""
        lines = [
            f'{name}_bucket{{le="{_label_number(bound)}"}} {count}'
            for bound, count in zip(self.bounds, self.counts, strict=True)
        ]
        lines.append(f"{name}_sum {_number(self.total)}")
        lines.append(f"{name}_count {self.count}")
        return lines


class ServerMetrics:
    """What the server counts: requests by API and status, pairs, latency, request sizes.

    Engine counters (forward passes, cache hits) are read from ``engine.stats()`` when the
    page is rendered, so they cover every caller of the engine in the process.

    Examples:
        >>> m = ServerMetrics()
        >>> m.record("tei", 200, documents=3, seconds=0.02)
        >>> 'rerank_requests_total{api="tei",status="200"} 1' in m.render()
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.pairs = 0
        self.in_flight = 0
        self.duration = Histogram(DURATION_BUCKETS)
        self.documents = Histogram(DOCUMENT_BUCKETS)

    def record(self, api: str, status: int, *, documents: int = 0, seconds: float = 0.0) -> None:
        """Count one answered request (``documents`` only for requests that were scored)."""
        with self._lock:
            key = (api, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            self.duration.observe(seconds)
            if status == 200:
                self.pairs += documents
                self.documents.observe(documents)

    def render(self, engine_stats: Mapping[str, int] | None = None) -> str:
        """The metrics page in the Prometheus text exposition format (version 0.0.4)."""
        stats = dict(engine_stats or {})
        with self._lock:
            out: list[str] = []
            _head(out, "rerank_requests_total", "counter", "Rerank requests by API and status.")
            for (api, status), n in sorted(self.requests.items()):
                out.append(f'rerank_requests_total{{api="{api}",status="{status}"}} {n}')
            _head(out, "rerank_pairs_total", "counter", "(query, document) pairs scored.")
            out.append(f"rerank_pairs_total {self.pairs}")
            _head(out, "rerank_requests_in_flight", "gauge", "Rerank requests being answered.")
            out.append(f"rerank_requests_in_flight {self.in_flight}")
            _head(
                out,
                "rerank_request_duration_seconds",
                "histogram",
                "Time from reading a rerank request to answering it.",
            )
            out += self.duration.render("rerank_request_duration_seconds")
            _head(out, "rerank_request_documents", "histogram", "Documents per scored request.")
            out += self.documents.render("rerank_request_documents")
        engine = [
            ("cache_hits", "rerank_cache_hits_total", "Pairs answered from the score cache."),
            ("cache_misses", "rerank_cache_misses_total", "Pairs the score cache did not hold."),
            ("forward_passes", "rerank_forward_passes_total", "Model forward passes (batches)."),
            ("forward_pairs", "rerank_forward_pairs_total", "Pairs run through the model."),
            ("requests", "rerank_engine_requests_total", "Calls into the engine, all callers."),
        ]
        for key, name, help_text in engine:
            if key in stats:
                _head(out, name, "counter", help_text)
                out.append(f"{name} {int(stats[key])}")
        if "forward_passes" in stats and "forward_pairs" in stats:
            passes = stats["forward_passes"]
            mean = stats["forward_pairs"] / passes if passes else 0.0
            _head(out, "rerank_batch_size_mean", "gauge", "Mean pairs per forward pass so far.")
            out.append(f"rerank_batch_size_mean {_number(mean)}")
        if "cache_entries" in stats:
            _head(out, "rerank_cache_entries", "gauge", "Entries in the score cache.")
            out.append(f"rerank_cache_entries {int(stats['cache_entries'])}")
        return "\n".join(out) + "\n"


def _head(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _label_number(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))
