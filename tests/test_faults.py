"""Faults: failing batches are split and retried, timeouts and cancellation withdraw work,
closing never strands a caller, and process exit never hangs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rerank_plugins import BackendError, EngineClosedError, RerankEngine
from rerank_plugins.backends.base import Encoded
from tests._fakes import FaultyBackend, GatedBackend
from tests._process import python

TEXTS = [
    "rag combines retrieval and generation",
    "the weather in paris",
    "python code for a rerank engine",
    "cats and dogs",
    "the train crossed the bridge over the river",
    "music and art",
]


@pytest.fixture(scope="module")
def real_backend(bert_path: str):
    engine = RerankEngine(bert_path, device="cpu")
    yield engine.backend
    engine.close()


def test_a_failing_batch_is_split_and_every_pair_still_scores(real_backend) -> None:
    healthy = FaultyBackend(real_backend, fail=lambda batch: False)
    with RerankEngine.from_backend(healthy, cache_size=0) as reference:
        expected = reference.score("what is rag?", TEXTS)

    def more_than_one(batch: list[Encoded]) -> bool:
        return len(batch) > 1

    faulty = FaultyBackend(real_backend, fail=more_than_one)
    with RerankEngine.from_backend(faulty, cache_size=0) as engine:
        scores = engine.score("what is rag?", TEXTS)
    assert scores == pytest.approx(expected, abs=1e-5)
    assert faulty.failures >= 1
    assert faulty.batch_sizes[-1] == 1  # halved down to single pairs


def test_a_pair_that_always_fails_fails_only_its_own_request(real_backend) -> None:
    poison = real_backend.encode("what is rag?", ["poison pill"])[0]

    def has_poison(batch: list[Encoded]) -> bool:
        return any(
            e.length == poison.length and (e.payload[0] == poison.payload[0]).all() for e in batch
        )

    faulty = FaultyBackend(real_backend, fail=has_poison)
    with RerankEngine.from_backend(faulty, cache_size=0) as engine:

        async def main():
            return await asyncio.gather(
                engine.ascore("what is rag?", TEXTS[:3]),
                engine.ascore("what is rag?", ["poison pill", TEXTS[3]]),
                engine.ascore("what is rag?", TEXTS[3:]),
                return_exceptions=True,
            )

        good, bad, good2 = asyncio.run(main())
    assert len(good) == 3 and len(good2) == 3
    assert isinstance(bad, BackendError)
    assert isinstance(bad.__cause__, RuntimeError)
    assert "injected fault" in str(bad.__cause__)


def test_a_timeout_raises_and_withdraws_pairs_that_have_not_run() -> None:
    backend = GatedBackend()
    with RerankEngine.from_backend(backend, cache_size=0) as engine:
        blocker = threading.Thread(target=engine.score, args=("q", ["first"]))
        blocker.start()
        assert backend.started.wait(5)
        # The gate stays shut until after the call: it can only return by timing out.
        with pytest.raises(TimeoutError, match=r"timeout=0\.2s"):
            engine.score("q", ["late"], timeout=0.2)
        backend.gate.set()
        blocker.join(5)
        assert engine.score("q", ["after"]) and "late" not in backend.seen


def test_a_cancelled_ascore_removes_its_pairs_and_leaves_the_worker_free() -> None:
    backend = GatedBackend()
    with RerankEngine.from_backend(backend, cache_size=0) as engine:

        async def main() -> list[float]:
            first = asyncio.ensure_future(engine.ascore("q", ["first"]))
            await asyncio.to_thread(backend.started.wait, 5)
            doomed = asyncio.ensure_future(engine.ascore("q", ["cancelled"]))
            await asyncio.sleep(0.05)
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            backend.gate.set()
            await first
            return await engine.ascore("q", ["after"])

        assert len(asyncio.run(main())) == 1
    assert "cancelled" not in backend.seen
    assert backend.seen == ["first", "after"]


def test_async_timeout_raises_timeout_error() -> None:
    backend = GatedBackend()
    with RerankEngine.from_backend(backend, cache_size=0) as engine:

        async def main() -> None:
            with pytest.raises(TimeoutError):
                await engine.ascore("q", ["slow"], timeout=0.1)

        asyncio.run(main())
        backend.gate.set()


def test_close_lets_queued_requests_finish_and_refuses_new_ones() -> None:
    backend = GatedBackend()
    engine = RerankEngine.from_backend(backend, cache_size=0)
    results: dict[str, object] = {}

    def call(name: str) -> None:
        try:
            results[name] = engine.score("q", [name])
        except Exception as exc:
            results[name] = exc

    threads = [threading.Thread(target=call, args=(n,)) for n in ("a", "b")]
    threads[0].start()
    assert backend.started.wait(5)
    threads[1].start()
    time.sleep(0.05)
    closer = threading.Thread(target=engine.close)
    closer.start()
    time.sleep(0.05)
    with pytest.raises(EngineClosedError):
        engine.score("q", ["c"])
    backend.gate.set()
    closer.join(5)
    for t in threads:
        t.join(5)
    assert isinstance(results["a"], list) and isinstance(results["b"], list)


def test_close_fails_callers_of_a_stuck_worker_instead_of_stranding_them() -> None:
    backend = GatedBackend()
    engine = RerankEngine.from_backend(backend, cache_size=0)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            engine.score("q", ["stuck"])
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert backend.started.wait(5)
    engine.close(timeout=0.2)
    caller.join(5)
    assert not caller.is_alive()
    assert isinstance(outcome[0], EngineClosedError)
    backend.gate.set()


@pytest.mark.slow
def test_process_exit_does_not_hang_on_the_worker() -> None:
    code = (
        "import threading\n"
        "from rerank_plugins import RerankEngine\n"
        "from tests._fakes import GatedBackend\n"
        "b = GatedBackend()\n"
        "e = RerankEngine.from_backend(b)\n"
        "threading.Thread(target=e.score, args=('q', ['x']), daemon=True).start()\n"
        "b.started.wait(5)\n"
        "print('exiting')\n"
    )
    out = python(code, timeout=60)  # a hang at exit raises TimeoutExpired
    assert out.returncode == 0, out.stderr
    assert "exiting" in out.stdout
