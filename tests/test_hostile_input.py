"""Hostile and odd input either works or raises a clear TypeError/ValueError, and never
crashes the worker or poisons a neighbour's batch."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from rerank_plugins import RerankEngine
from tests._fakes import FakeBackend

ODD_TEXTS = {
    "empty": "",
    "whitespace": " \t\n  ",
    "control characters": "rag\x01\x02\x1b[31m retrieval\x7f",
    "nul bytes": "rag\x00retrieval\x00\x00",
    "emoji": "rag 🤖🔍📚 retrieval 👍🏽",
    "right-to-left": "مرحبا بالعالم rag שלום",
    "zero-width": "r\u200ba\u200cg\u200d retrieval\ufeff",
    "lone surrogate": "rag \ud800 retrieval",
    "combining marks": "Z̴̡̛a̷l̸g̶o̵ rag",
}


@pytest.fixture(scope="module")
def engine(bert_path: str):
    with RerankEngine(bert_path, device="cpu") as e:
        yield e


@pytest.mark.parametrize("name", sorted(ODD_TEXTS))
def test_odd_text_scores_like_any_text_and_its_neighbours_are_unaffected(
    engine: RerankEngine, name: str
) -> None:
    neighbours = ["rag combines retrieval and generation", "the weather in paris"]
    alone = engine.score("what is rag?", neighbours)
    engine.clear_cache()
    mixed = engine.score("what is rag?", [neighbours[0], ODD_TEXTS[name], neighbours[1]])
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in mixed)
    assert [mixed[0], mixed[2]] == pytest.approx(alone, abs=1e-5)


def test_odd_queries_score_too(engine: RerankEngine) -> None:
    for query in ("🤖?", "مرحبا", "a\x00b", "q" * 5000):
        scores = engine.score(query, ["rag", "paris"])
        assert len(scores) == 2 and not any(math.isnan(s) for s in scores)


def test_a_one_megabyte_document_is_cut_to_max_length_with_exact_scores(
    engine: RerankEngine, bert_path: str
) -> None:
    from sentence_transformers import CrossEncoder

    huge = "rag retrieval paris weather " * 40_000  # ~1.1 MB
    assert len(huge) > 1_000_000
    scores = engine.score("what is rag?", [huge, "short"])
    reference = CrossEncoder(bert_path, max_length=512).predict([("what is rag?", huge)])
    assert scores[0] == pytest.approx(float(reference[0]), abs=1e-4)


def test_a_long_document_without_whitespace_is_still_scored(engine: RerankEngine) -> None:
    assert len(engine.score("q", ["x" * 200_000])) == 1


def test_ten_thousand_duplicates_cost_one_forward_pair() -> None:
    backend = FakeBackend()
    with RerankEngine.from_backend(backend) as engine:
        scores = engine.score("q", ["same document"] * 10_000)
    assert len(scores) == 10_000 and len(set(scores)) == 1
    assert sum(backend.batches) == 1


def test_truncation_is_logged_once_per_engine_not_per_call(
    bert_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = RerankEngine(bert_path, device="cpu", max_length=32, cache_size=0)
    with engine, caplog.at_level(logging.WARNING, logger="rerank_plugins"):
        for _ in range(3):
            engine.score("q", ["paris " * 100])
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"top_n": 0}, ValueError, "top_n must be >= 1"),
        ({"top_n": -3}, ValueError, "top_n must be >= 1"),
        ({"top_n": 2.5}, TypeError, "top_n must be a positive int"),
        ({"top_n": True}, TypeError, "top_n must be a positive int"),
        ({"score_threshold": "high"}, TypeError, "score_threshold must be a number"),
        ({"score_threshold": float("nan")}, ValueError, "must not be NaN"),
    ],
)
def test_bad_selection_arguments_raise_clearly(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with RerankEngine.from_backend(FakeBackend()) as engine, pytest.raises(error, match=match):
        engine.rerank("q", ["a", "b"], **kwargs)  # type: ignore[arg-type]


def test_a_huge_top_n_returns_everything() -> None:
    with RerankEngine.from_backend(FakeBackend()) as engine:
        assert len(engine.rerank("q", ["a", "b", "c"], top_n=10**12)) == 3


def test_nan_scores_rank_last_and_never_pass_a_threshold() -> None:
    class NanBackend(FakeBackend):
        def forward(self, batch):
            return [float("nan") if t == "nan" else 1.0 for _, t in (e.payload for e in batch)]

    with RerankEngine.from_backend(NanBackend(), normalize=False) as engine:
        ranked = engine.rerank("q", ["nan", "a", "b"])
        assert [r.index for r in ranked] == [1, 2, 0]
        assert [r.index for r in engine.rerank("q", ["nan", "a"], score_threshold=0.0)] == [1]


def test_non_string_and_none_inputs_never_reach_the_worker() -> None:
    backend = FakeBackend()
    with RerankEngine.from_backend(backend) as engine:
        for bad in ([b"bytes"], [None], [1.5], [["nested"]], [{"text": "dict"}]):
            with pytest.raises(TypeError, match=r"texts\[0\] must be a str"):
                engine.score("q", bad)  # type: ignore[arg-type]
        assert engine.score("q", ["still works"])
        assert asyncio.run(engine.ascore("q", ["async too"]))
    assert backend.encoded == 2


def test_the_caller_s_list_is_not_mutated() -> None:
    texts = ["b", "a", "c", "a"]
    snapshot = list(texts)
    with RerankEngine.from_backend(FakeBackend()) as engine:
        engine.rerank("q", texts, top_n=2)
    assert texts == snapshot


def test_trust_remote_code_is_off_by_default(bert_engine: RerankEngine) -> None:
    assert bert_engine.config.trust_remote_code is False
