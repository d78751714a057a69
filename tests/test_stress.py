"""Load: 64 threads and 200 coroutines at once, sync and async mixed, cache on and off."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from rerank_plugins import RerankEngine
from tests._models import random_text

# Processes, servers, Ray, ONNX exports or the benchmark harness: the full lane only.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("cache_size", [0, 10_000])
def test_every_caller_gets_exactly_the_sequential_scores_under_load(
    bert_path: str, cache_size: int
) -> None:
    rng = random.Random(cache_size)
    shared_docs = [random_text(rng, rng.randint(1, 40)) for _ in range(60)]
    queries = [random_text(rng, 3) for _ in range(12)]
    work = [(rng.choice(queries), rng.sample(shared_docs, rng.randint(1, 8))) for _ in range(264)]
    with RerankEngine(bert_path, device="cpu", cache_size=0, max_batch_size=1) as ref:
        expected = [ref.score(q, t) for q, t in work]

    results: dict[int, list[float]] = {}
    errors: list[BaseException] = []
    with RerankEngine(bert_path, device="cpu", cache_size=cache_size) as engine:

        def sync_caller(i: int) -> None:
            try:
                results[i] = engine.score(*work[i], timeout=120)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=sync_caller, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()

        async def async_callers() -> None:
            outs = await asyncio.gather(
                *(engine.ascore(*work[i], timeout=120) for i in range(64, 264))
            )
            results.update({64 + k: out for k, out in enumerate(outs)})

        asyncio.run(async_callers())
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a thread deadlocked"
    assert not errors
    for i, exp in enumerate(expected):
        assert results[i] == pytest.approx(exp, abs=1e-5)
