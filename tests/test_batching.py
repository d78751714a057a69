"""Batch planning: longest first, within the token budget, every pair exactly once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rerank_plugins.batching import BatchPolicy, plan_batches


@given(
    lengths=st.lists(st.integers(1, 600), max_size=200),
    budget=st.integers(1, 20_000),
    size=st.integers(1, 64),
)
def test_every_item_is_planned_once_within_the_budget(
    lengths: list[int], budget: int, size: int
) -> None:
    batches = plan_batches(lengths, BatchPolicy(budget, size))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= size
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1


@given(lengths=st.lists(st.integers(1, 600), min_size=1, max_size=100))
def test_batches_are_length_sorted(lengths: list[int]) -> None:
    flat = [i for b in plan_batches(lengths, BatchPolicy(2048, 16)) for i in b]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_cpu_and_gpu_get_different_default_policies() -> None:
    cpu = BatchPolicy.for_device("cpu")
    gpu = BatchPolicy.for_device("cuda")
    assert cpu.max_batch_size < gpu.max_batch_size
    assert BatchPolicy.for_device("cpu", batch_tokens=99).batch_tokens == 99
