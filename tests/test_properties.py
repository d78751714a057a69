"""Property-based checks: batch composition never changes a score; a rerank is always a
sorted permutation that respects top_n and the threshold."""

from __future__ import annotations

import asyncio
import math
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rerank_plugins import RerankEngine
from rerank_plugins.results import select
from tests._models import WORDS

words = st.lists(st.sampled_from(WORDS), min_size=0, max_size=60).map(" ".join)


@pytest.fixture(scope="module")
def reference(bert_path: str):
    with RerankEngine(bert_path, device="cpu", cache_size=0, max_batch_size=1) as engine:
        yield engine


@pytest.fixture(scope="module")
def bert(bert_path: str) -> str:
    return bert_path


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(words, min_size=1, max_size=12),
    batch_tokens=st.integers(16, 4096),
    max_batch_size=st.integers(1, 32),
    concurrency=st.integers(1, 4),
)
def test_a_pairs_score_does_not_depend_on_its_batch(
    reference: RerankEngine,
    bert: str,
    texts: list[str],
    batch_tokens: int,
    max_batch_size: int,
    concurrency: int,
) -> None:
    expected = reference.score("what is rag?", texts)
    with RerankEngine(
        bert, device="cpu", cache_size=0, batch_tokens=batch_tokens, max_batch_size=max_batch_size
    ) as engine:

        async def main() -> list[list[float]]:
            return await asyncio.gather(
                *(engine.ascore("what is rag?", texts) for _ in range(concurrency))
            )

        for got in asyncio.run(main()):
            assert got == pytest.approx(expected, abs=1e-5)


@given(
    scores=st.lists(
        st.one_of(st.floats(-10, 10), st.sampled_from([0.5, 0.5, float("nan")])), max_size=40
    ),
    top_n=st.one_of(st.none(), st.integers(1, 50)),
    threshold=st.one_of(st.none(), st.floats(-10, 10)),
)
def test_selection_is_a_sorted_stable_permutation_respecting_top_n_and_threshold(
    scores: list[float], top_n: int | None, threshold: float | None
) -> None:
    picked = select(scores, top_n=top_n, score_threshold=threshold)
    assert len(set(picked)) == len(picked)
    passing = [
        i
        for i in range(len(scores))
        if threshold is None or (not math.isnan(scores[i]) and scores[i] >= threshold)
    ]
    assert sorted(picked) == sorted(picked) and set(picked) <= set(passing)
    assert len(picked) == (len(passing) if top_n is None else min(top_n, len(passing)))
    if threshold is None and top_n is None:
        assert sorted(picked) == list(range(len(scores)))  # a permutation of the input
    for a, b in pairwise(picked):
        sa, sb = scores[a], scores[b]
        if math.isnan(sa):
            assert math.isnan(sb) and a < b
        elif not math.isnan(sb):
            assert sa > sb or (sa == sb and a < b)  # ties keep input order
    # whatever was cut is no better than what was kept
    cut = set(passing) - set(picked)
    if picked and cut:
        worst_kept = scores[picked[-1]]
        assert all(math.isnan(scores[i]) or scores[i] <= worst_kept for i in cut)
