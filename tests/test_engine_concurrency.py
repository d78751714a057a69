"""Many threads and coroutines share the engine's batches and each gets its own scores."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from rerank_plugins import RerankEngine
from tests._fakes import FakeBackend
from tests._models import random_text


def _workload(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    pool = [random_text(rng, rng.randint(2, 60)) for _ in range(40)]
    return [(random_text(rng, 3), rng.sample(pool, rng.randint(1, 12))) for _ in range(n)]


def test_threads_get_the_same_scores_as_sequential_calls(bert_path: str) -> None:
    work = _workload(24)
    with RerankEngine(bert_path, device="cpu", cache_size=0) as engine:
        sequential = [engine.score(q, texts) for q, texts in work]
        with ThreadPoolExecutor(max_workers=12) as pool:
            concurrent = list(pool.map(lambda w: engine.score(*w), work))
    for seq, conc in zip(sequential, concurrent, strict=True):
        assert conc == pytest.approx(seq, abs=1e-5)


def test_coroutines_get_the_same_scores_as_sequential_calls(bert_path: str) -> None:
    work = _workload(24, seed=1)
    with RerankEngine(bert_path, device="cpu", cache_size=0) as engine:
        sequential = [engine.score(q, texts) for q, texts in work]

        async def main() -> list[list[float]]:
            return await asyncio.gather(*(engine.ascore(q, texts) for q, texts in work))

        concurrent = asyncio.run(main())
    for seq, conc in zip(sequential, concurrent, strict=True):
        assert conc == pytest.approx(seq, abs=1e-5)


def test_concurrent_requests_are_coalesced_into_shared_forward_passes() -> None:
    gate = threading.Event()

    class SlowFirst(FakeBackend):
        def forward(self, batch):  # hold the first batch until every caller has queued
            gate.wait(5)
            return super().forward(batch)

    backend = SlowFirst()
    engine = RerankEngine.from_backend(backend, cache_size=0, max_batch_size=64)
    with engine, ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(engine.score, f"q{i}", [f"doc {i}"]) for i in range(16)]
        while engine.stats()["requests"] < 16:
            pass
        gate.set()
        results = [f.result(timeout=10) for f in futures]
    assert all(len(r) == 1 for r in results)
    # 16 single-pair requests: the first runs alone, the other 15 share one forward pass
    assert len(backend.batches) <= 3
    assert max(backend.batches) >= 8


def test_a_failing_request_fails_alone_and_its_neighbours_succeed() -> None:
    backend = FakeBackend(fail=lambda pairs: any("poison" in t for _, t in pairs))
    with RerankEngine.from_backend(backend, cache_size=0) as engine:

        async def main():
            return await asyncio.gather(
                engine.ascore("q", ["fine 1", "fine 2"]),
                engine.ascore("q", ["poison pill", "fine 3"]),
                engine.ascore("q", ["fine 4"]),
                return_exceptions=True,
            )

        ok1, bad, ok2 = asyncio.run(main())
    assert isinstance(ok1, list) and len(ok1) == 2
    assert isinstance(ok2, list) and len(ok2) == 1
    assert isinstance(bad, RuntimeError) and "poison" not in str(type(bad))
    assert isinstance(bad.__cause__, RuntimeError) and "injected fault" in str(bad.__cause__)


def test_many_threads_and_coroutines_at_once_match_sequential_scores() -> None:
    work = _workload(60, seed=2)
    backend = FakeBackend()
    with RerankEngine.from_backend(backend, cache_size=0) as engine:
        sequential = [engine.score(q, t) for q, t in work]
        thread_results: dict[int, list[float]] = {}

        def run_thread(i: int) -> None:
            thread_results[i] = engine.score(*work[i])

        threads = [threading.Thread(target=run_thread, args=(i,)) for i in range(0, 60, 2)]
        for t in threads:
            t.start()

        async def main() -> list[list[float]]:
            return await asyncio.gather(*(engine.ascore(*work[i]) for i in range(1, 60, 2)))

        async_results = asyncio.run(main())
        for t in threads:
            t.join(10)
    for k, i in enumerate(range(1, 60, 2)):
        assert async_results[k] == sequential[i]
    for i in range(0, 60, 2):
        assert thread_results[i] == sequential[i]
