"""CPU streams: forward passes side by side, each on its share of torch's threads.

A CPU engine over a torch backend runs two forward passes at once, one thread each, where torch
has two or more threads: on the 2-core reference machine that is 10-11% more pairs per second
than one pass on both threads (docs/benchmarks.md). These tests pin what must stay true while
it does so: the same scores, the thread counts of everyone else left alone, failures isolated,
and nothing left running after close.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Sequence

import pytest
import torch

from rerank_plugins import RerankEngine
from rerank_plugins.backends.base import Encoded
from rerank_plugins.batching import BatchPolicy
from tests._fakes import FakeBackend, FaultyBackend
from tests._models import random_text

QUERY = "what is rag retrieval augmented generation"


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [random_text(rng, rng.randint(3, 60)) for _ in range(n)]


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rerank-stream")]


class Recorder:
    """Wraps a real backend; notes which thread ran each pass and on how many torch threads."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.seen: set[tuple[str, int]] = set()
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        with self.lock:
            self.seen.add((threading.current_thread().name, torch.get_num_threads()))
        return self.inner.forward(batch)  # type: ignore[attr-defined]


def test_a_cpu_engine_splits_torch_threads_into_two_streams_by_default(bert_path: str) -> None:
    threads = torch.get_num_threads()
    with RerankEngine(bert_path, device="cpu") as engine:
        info = engine.info
    if threads >= 2:
        assert (info.streams, info.threads_per_stream) == (2, threads // 2)
        # The batch shrinks with the streams: the tokens in flight stay those of one 2,048 pass.
        assert (info.batch_tokens, info.max_batch_size) == (1024, 8)
    else:
        assert (info.streams, info.threads_per_stream) == (1, threads)
        assert (info.batch_tokens, info.max_batch_size) == (2048, 16)


def test_streams_can_be_set_and_one_stream_is_the_single_pass_engine(bert_path: str) -> None:
    with RerankEngine(bert_path, device="cpu", streams=1) as one:
        assert one.info.streams == 1
        assert one.info.threads_per_stream == torch.get_num_threads()
        assert one.policy == BatchPolicy(2048, 16, 1)
    with RerankEngine(bert_path, device="cpu", streams=3, batch_tokens=600) as three:
        assert three.info.streams == 3
        assert three.info.threads_per_stream == max(torch.get_num_threads() // 3, 1)
        assert three.policy.batch_tokens == 600  # an explicit budget is kept as given


def test_passes_run_on_the_stream_threads_each_with_its_share(bert_path: str) -> None:
    with RerankEngine(bert_path, device="cpu", cache_size=0, streams=2) as engine:
        recorder = Recorder(engine.backend)
        engine._backend = recorder  # type: ignore[assignment]
        engine.score(QUERY, _texts(64))
        share = engine.info.threads_per_stream
    names = {name for name, _ in recorder.seen}
    assert len(names) == 2
    assert all(name.startswith("rerank-stream") for name in names)
    assert {count for _, count in recorder.seen} == {share}


def test_binding_the_streams_leaves_every_other_threads_torch_threads_alone(
    bert_path: str,
) -> None:
    before = torch.get_num_threads()
    with RerankEngine(bert_path, device="cpu", cache_size=0, streams=2) as engine:
        engine.score(QUERY, _texts(64))
        assert torch.get_num_threads() == before  # the caller's thread
        fresh: list[int] = []
        probe = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        probe.start()
        probe.join()
        assert fresh == [before]  # a thread started after the engine's streams bound theirs


def test_two_streams_score_exactly_what_one_pass_at_a_time_scores(bert_path: str) -> None:
    texts = _texts(80, seed=1)
    texts += texts[:10]  # duplicates are scored once and handed to each position
    same_batches = {"device": "cpu", "cache_size": 0, "batch_tokens": 1024, "max_batch_size": 8}
    with RerankEngine(bert_path, streams=1, **same_batches) as one:
        expected = one.score(QUERY, texts)
    with RerankEngine(bert_path, streams=2, **same_batches) as two:
        got = two.score(QUERY, texts)
        assert two.stats()["forward_pairs"] == 80
    # Only the threads per pass differ, which may move fp32 sums in the last bits.
    assert got == pytest.approx(expected, abs=1e-6)
    assert got[80:] == got[:10]


def test_a_poisoned_pair_fails_only_its_request_while_the_other_stream_works(
    bert_path: str,
) -> None:
    with RerankEngine(bert_path, device="cpu", cache_size=0, streams=2) as reference:
        real = reference.backend
        good = _texts(40, seed=2)
        expected = reference.score(QUERY, good)
        poison = real.encode(QUERY, ["poison pill"])[0]

        def has_poison(batch: Sequence[Encoded]) -> bool:
            return any(
                e.length == poison.length and (e.payload[0] == poison.payload[0]).all()
                for e in batch
            )

        faulty = FaultyBackend(real, fail=has_poison)
        with RerankEngine.from_backend(faulty, cache_size=0) as engine:
            assert engine.info.streams == reference.info.streams

            async def main() -> list[object]:
                return await asyncio.gather(
                    engine.ascore(QUERY, good[:20]),
                    engine.ascore(QUERY, ["poison pill", good[0]]),
                    engine.ascore(QUERY, good[20:]),
                    return_exceptions=True,
                )

            first, bad, second = asyncio.run(main())
    assert isinstance(bad, Exception) and "injected fault" in str(bad.__cause__)
    assert isinstance(first, list) and isinstance(second, list)
    assert first + second == pytest.approx(expected, abs=1e-6)
    assert faulty.failures >= 1


def test_more_than_one_stream_needs_a_backend_that_can_run_passes_side_by_side() -> None:
    with pytest.raises(ValueError, match="streams=2 needs forward passes that can run side"):
        RerankEngine.from_backend(FakeBackend(), streams=2)
    with RerankEngine.from_backend(FakeBackend()) as engine:  # unset: one stream, no error
        assert engine.info.streams == 1


@pytest.mark.parametrize(
    ("streams", "error"), [(0, ValueError), (-1, ValueError), ("2", TypeError), (True, TypeError)]
)
def test_a_bad_streams_value_is_refused_by_name(streams: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="streams must be a positive int"):
        RerankEngine.from_backend(FakeBackend(), streams=streams)


def test_close_stops_the_stream_threads(bert_path: str) -> None:
    before = set(_stream_threads())
    engine = RerankEngine(bert_path, device="cpu", cache_size=0, streams=2)
    engine.score(QUERY, _texts(40))
    assert len(set(_stream_threads()) - before) == 2
    engine.close()
    assert set(_stream_threads()) - before == set()
