"""Freed CPU activation memory goes back to the OS, at a cost bounded by 1% of forward time."""

from __future__ import annotations

import time

import pytest

from rerank_plugins import RerankEngine
from rerank_plugins.backends._memory import MemoryReleaser


def _releaser_with_trim_cost(seconds: float) -> tuple[MemoryReleaser, list[int]]:
    releaser = MemoryReleaser()
    calls: list[int] = []

    def slow_trim(pad: int) -> int:
        calls.append(pad)
        time.sleep(seconds)
        return 1

    releaser._trim = slow_trim
    return releaser, calls


def test_a_trim_waits_for_a_hundred_times_its_last_cost_in_forward_time() -> None:
    releaser, calls = _releaser_with_trim_cost(0.002)
    releaser.after_forward(0.2)  # 200x the assumed first cost of 1 ms: trims, measures ~2 ms
    assert calls == [0]
    releaser.after_forward(0.1)  # 0.1 s < 100 x ~2 ms
    assert len(calls) == 1
    releaser.after_forward(0.15)  # 0.25 s >= 0.2 s
    assert len(calls) == 2
    assert releaser.trims == 2


def test_trimming_costs_at_most_one_percent_of_forward_time() -> None:
    releaser, calls = _releaser_with_trim_cost(0.001)
    forward_time = 0.0
    for _ in range(2000):
        releaser.after_forward(0.003)
        forward_time += 0.003
    assert 0 < len(calls) * 0.001 <= 0.011 * forward_time


def test_without_a_trimmable_allocator_nothing_is_called() -> None:
    releaser = MemoryReleaser()
    releaser._trim = None
    releaser.after_forward(10.0)
    assert releaser.trims == 0


def test_a_cpu_engine_gives_memory_back_while_it_scores(bert_path: str, long_text: str) -> None:
    with RerankEngine(bert_path, device="cpu", cache_size=0) as engine:
        releaser = engine.backend.runner.releaser  # type: ignore[attr-defined]
        if not releaser.available:
            pytest.skip("this platform's allocator has no malloc_trim (not glibc)")
        texts = [f"{long_text[: 200 + 7 * i]} {i}" for i in range(400)]
        scores = engine.score("what is rag?", texts)
    assert len(scores) == len(texts)
    assert releaser.trims >= 1
