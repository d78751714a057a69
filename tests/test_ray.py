"""Ray: the Data callable class on a local Ray, and the Serve deployment behind RemoteEngine."""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rerank_plugins import RerankEngine
from rerank_plugins.ray import RerankBatch, build_deployment, rerank_dataset, score_rows
from rerank_plugins.results import select
from tests._models import SENTENCES, random_text
from tests._serving import free_port

# Processes, servers, Ray, ONNX exports or the benchmark harness: the full lane only.
pytestmark = pytest.mark.slow

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="Ray is an optional extra: pip install 'rerank-plugins[ray]'",
)

QUERY = "what is rag retrieval augmented generation"
# One pair per forward pass: no padding, so a score does not depend on which pairs shared its
# batch (padding moves fp32 scores by up to ~1e-6). What remains between processes is the
# thread count: Ray gives a 1-CPU actor one torch thread, and a different split of the GEMM
# reductions moves these scores by up to 1.02e-6 (measured on the 300 rows below, one thread
# against two). Scores of different pairs differ by 1e-2 and more, so 1e-5 still catches any
# score that went to the wrong row or candidate.
EXACT = {"device": "cpu", "max_batch_size": 1}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exact_engine(bert_path: str) -> RerankEngine:
    from rerank_plugins import get_engine

    return get_engine(bert_path, **EXACT)


def _rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 8)  # some rows have no candidates at all
        cands = [random_text(rng, rng.randint(2, 30)) for _ in range(k)]
        rows.append({"qid": len(rows), "query": random_text(rng, 4), "candidates": cands})
    return pd.DataFrame(rows)


def _check(frame: pd.DataFrame, engine: RerankEngine) -> None:
    for row in frame.itertuples():
        candidates = list(row.candidates)
        expected = engine.score(row.query, candidates)
        assert len(row.scores) == len(candidates)
        np.testing.assert_allclose(list(row.scores), expected, rtol=0, atol=TOLERANCE)
        ranks = [0] * len(expected)
        for position, i in enumerate(select(list(row.scores))):
            ranks[i] = position + 1
        assert list(row.ranks) == ranks


# ---------------------------------------------------------------------- without a cluster


def test_the_callable_scores_pandas_batches_and_leaves_the_input_alone(
    bert_engine: RerankEngine,
) -> None:
    frame = _rows(40)
    before = frame.copy(deep=True)
    out = RerankBatch(engine=bert_engine)(frame)
    pd.testing.assert_frame_equal(frame, before)
    assert list(out.columns) == ["qid", "query", "candidates", "scores", "ranks"]
    _check(out, bert_engine)


def test_the_callable_takes_numpy_and_arrow_batches(bert_engine: RerankEngine) -> None:
    frame = _rows(12, seed=1)
    rerank = RerankBatch(engine=bert_engine)
    numpy_batch = {
        "query": frame["query"].to_numpy(),
        "candidates": np.array([np.array(c, dtype=str) for c in frame["candidates"]], dtype=object),
    }
    from_numpy = rerank(numpy_batch)
    assert set(from_numpy) == {"query", "candidates", "scores", "ranks"}
    from_arrow = rerank(pa.Table.from_pandas(frame[["query", "candidates"]]))
    assert from_arrow.schema.field("scores").type == pa.list_(pa.float64())
    for scores, (_, row) in zip(from_numpy["scores"], frame.iterrows(), strict=True):
        assert list(scores) == bert_engine.score(row["query"], row["candidates"])
    assert from_arrow.column("scores").to_pylist() == [list(s) for s in from_numpy["scores"]]


def test_column_names_are_configurable(bert_engine: RerankEngine) -> None:
    frame = pd.DataFrame({"q": [QUERY], "docs": [SENTENCES[:3]]})
    out = RerankBatch(
        engine=bert_engine,
        query_column="q",
        candidates_column="docs",
        scores_column="s",
        ranks_column="r",
    )(frame)
    assert out["s"][0] == bert_engine.score(QUERY, SENTENCES[:3])


def test_a_missing_column_or_a_bad_candidate_is_named(bert_engine: RerankEngine) -> None:
    rerank = RerankBatch(engine=bert_engine)
    with pytest.raises(KeyError, match=r"no column 'candidates'.*candidates_column="):
        rerank(pd.DataFrame({"query": ["q"], "docs": [["a"]]}))
    with pytest.raises(TypeError, match=r"row 1 of 'candidates': texts\[0\] must be a str"):
        rerank(pd.DataFrame({"query": ["q", "q"], "candidates": [["a"], [None]]}))
    with pytest.raises(ValueError, match="query is empty"):
        rerank(pd.DataFrame({"query": [" "], "candidates": [["a"]]}))


def test_rows_of_one_batch_are_scored_together(bert_path: str) -> None:
    from tests._fakes import FakeBackend

    backend = FakeBackend()
    engine = RerankEngine.from_backend(backend, cache_size=0, max_batch_size=64)
    try:
        score_rows(engine, [f"q{i}" for i in range(8)], [["a", "b", "c", "d"]] * 8)
    finally:
        engine.close()
    assert max(backend.batches) > 4  # pairs of different queries shared a forward pass


def test_the_callable_needs_exactly_one_of_model_and_engine(bert_engine: RerankEngine) -> None:
    with pytest.raises(TypeError, match="exactly one of model"):
        RerankBatch()
    with pytest.raises(TypeError, match="exactly one of model"):
        RerankBatch("m", engine=bert_engine)


@needs_ray
def test_ray_entry_points_check_options_before_ray_starts(bert_path: str) -> None:
    with pytest.raises(TypeError, match="unknown engine option"):
        build_deployment(bert_path, devcie="cpu")
    with pytest.raises(TypeError, match="unknown server option"):
        build_deployment(bert_path, server_options={"max_docs": 5})
    with pytest.raises(TypeError, match="unknown engine option"):
        rerank_dataset(object(), bert_path, devcie="cpu")


# ---------------------------------------------------------------------- on a local Ray


@pytest.fixture(scope="module")
def ray() -> Iterator[ModuleType]:
    """A local Ray with two CPUs, shared by the tests of this module."""
    ray = pytest.importorskip(
        "ray", reason="Ray is an optional extra: pip install 'rerank-plugins[ray]'"
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_data_reranks_a_parquet_table_like_the_local_engine(
    ray: ModuleType, bert_path: str, exact_engine: RerankEngine, tmp_path: Path
) -> None:
    _rows(300).to_parquet(tmp_path / "in.parquet")
    ds = ray.data.read_parquet(str(tmp_path / "in.parquet"))
    rerank_dataset(ds, bert_path, batch_size=64, **EXACT).write_parquet(str(tmp_path / "out"))
    out = pd.read_parquet(tmp_path / "out").sort_values("qid")
    assert out["qid"].tolist() == list(range(300))
    _check(out, exact_engine)


@pytest.mark.slow
def test_ray_serve_deployment_answers_by_handle_and_over_http(
    ray: ModuleType, bert_path: str, exact_engine: RerankEngine
) -> None:
    from ray import serve

    from rerank_plugins.remote import RemoteEngine, RemoteError

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        app = build_deployment(
            bert_path,
            num_replicas=1,
            ray_actor_options={"num_cpus": 0.5},
            server_options={"api_key": "k"},
            **EXACT,
        )
        handle = serve.run(app, name="rerank", route_prefix="/")
        expected = exact_engine.score(QUERY, SENTENCES)
        by_handle = handle.rerank.remote(QUERY, SENTENCES, 3).result(timeout_s=60)
        assert [r.index for r in by_handle] == select(expected, top_n=3)
        assert [r.score for r in by_handle] == pytest.approx(
            [expected[r.index] for r in by_handle], abs=TOLERANCE
        )
        scores = handle.score.remote(QUERY, SENTENCES).result(timeout_s=60)
        assert scores == pytest.approx(expected, abs=TOLERANCE)
        with RemoteEngine(f"http://127.0.0.1:{port}", api_key="k") as remote:
            assert remote.score(QUERY, SENTENCES) == scores  # the replica's cache: same floats
            with pytest.raises(RemoteError, match="answered 401"):
                RemoteEngine(f"http://127.0.0.1:{port}").score(QUERY, SENTENCES)
    finally:
        serve.shutdown()
