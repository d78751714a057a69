"""Freed CPU activation memory goes back to the OS, at a cost bounded by 1% of forward time.

The cost of a trim counts the trim call and re-faulting the pages it returned: the next
forward passes touch them again, and the kernel zero-fills each one.
"""

from __future__ import annotations

import pytest

from rerank_plugins import RerankEngine
from rerank_plugins.backends._memory import MemoryReleaser, page_fault_seconds, resident_pages


def _releaser(
    trim_seconds: float, released_per_trim: int = 0, fault_seconds: float = 5e-6
) -> tuple[MemoryReleaser, list[int]]:
    """A releaser whose trim takes ``trim_seconds`` and returns ``released_per_trim`` pages.

    Time is an input: the releaser reads a clock that only the fake trim advances.
    """
    now = [0.0]
    releaser = MemoryReleaser(clock=lambda: now[0])
    calls: list[int] = []
    resident = [10_000_000]

    def slow_trim(pad: int) -> int:
        calls.append(pad)
        now[0] += trim_seconds
        resident[0] -= released_per_trim
        return 1

    releaser._trim = slow_trim
    releaser._resident = lambda: resident[0]
    releaser._fault_seconds = fault_seconds
    return releaser, calls


def test_a_trim_waits_for_a_hundred_times_its_last_cost_in_forward_time() -> None:
    releaser, calls = _releaser(0.002)
    releaser.after_forward(0.2)  # 200x the assumed first cost of 1 ms: trims, costs 2 ms
    assert calls == [0]
    releaser.after_forward(0.1)  # 0.1 s < 100 x 2 ms
    assert len(calls) == 1
    releaser.after_forward(0.15)  # 0.25 s >= 0.2 s
    assert len(calls) == 2
    assert releaser.trims == 2


def test_the_pages_a_trim_returns_count_in_its_cost() -> None:
    # 10,000 pages at 5 us each is 50 ms to fault back: the next trim waits for 5 s.
    releaser, calls = _releaser(0.0, released_per_trim=10_000)
    releaser.after_forward(0.2)
    assert len(calls) == 1
    assert releaser.released_pages == 10_000
    for _ in range(9):
        releaser.after_forward(0.5)  # 4.5 s of forward time: not yet
    assert len(calls) == 1
    releaser.after_forward(0.6)
    assert len(calls) == 2


def test_trimming_and_refaulting_cost_at_most_one_percent_of_forward_time() -> None:
    trim_seconds, pages, fault_seconds = 0.001, 2_000, 5e-6
    releaser, calls = _releaser(trim_seconds, released_per_trim=pages, fault_seconds=fault_seconds)
    forward_time = 0.0
    for _ in range(4000):
        releaser.after_forward(0.01)
        forward_time += 0.01
    spent = len(calls) * (trim_seconds + pages * fault_seconds)
    assert len(calls) > 1
    assert spent <= 0.011 * forward_time


def test_without_a_trimmable_allocator_nothing_is_called() -> None:
    releaser = MemoryReleaser()
    releaser._trim = None
    releaser.after_forward(10.0)
    assert releaser.trims == 0


def test_a_page_fault_is_measured_in_microseconds() -> None:
    seconds = page_fault_seconds(64)
    assert 0 < seconds < 1e-3


def test_the_resident_set_is_read_where_linux_reports_it() -> None:
    pages = resident_pages()
    if pages is None:
        pytest.skip("no /proc/self/statm on this platform")
    assert pages > 0


def test_a_cpu_engine_gives_memory_back_while_it_scores(bert_path: str, long_text: str) -> None:
    with RerankEngine(bert_path, device="cpu", cache_size=0) as engine:
        releaser = engine.backend.runner.releaser  # type: ignore[attr-defined]
        if not releaser.available:
            pytest.skip("this platform's allocator has no malloc_trim (not glibc)")
        texts = [f"{long_text[: 200 + 7 * i]} {i}" for i in range(400)]
        scores = engine.score("what is rag?", texts)
    assert len(scores) == len(texts)
    assert releaser.trims >= 1
