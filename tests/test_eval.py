"""Evaluation: metric values by hand and against ranx, BEIR/TREC loading, the eval command."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rerank_plugins import RerankEngine
from rerank_plugins.backends.base import BackendBase, Encoded
from rerank_plugins.evaluation import (
    evaluate,
    evaluate_run,
    load_beir,
    load_trec_run,
    mrr_at,
    ndcg_at,
    recall_at,
    suggest_threshold,
)
from tests._fakes import FakeBackend

# Processes, servers, Ray, ONNX exports or the benchmark harness: the full lane only.
pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).parent / "data" / "beir_sample"


def test_ndcg_matches_a_hand_computed_value() -> None:
    qrels = {"a": 2, "b": 1, "z": 1}
    ranking = ["x", "a", "b", "y"]
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at(ranking, qrels, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at(ranking, qrels, 1) == 0.0
    assert ndcg_at(["a", "b", "z"], qrels, 10) == pytest.approx(1.0)


def test_mrr_and_recall_match_hand_computed_values() -> None:
    qrels = {"a": 1, "b": 1, "c": 0}
    assert mrr_at(["c", "x", "b", "a"], qrels, 10) == pytest.approx(1 / 3)
    assert mrr_at(["c", "x", "b"], qrels, 2) == 0.0
    assert recall_at(["c", "x", "b"], qrels, 10) == 0.5
    assert recall_at(["a", "b"], qrels, 1) == 0.5


def test_unjudged_queries_are_skipped_and_missing_runs_count_as_empty() -> None:
    means, per_query = evaluate_run({"q1": ["a"]}, {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}})
    assert set(per_query) == {"q1", "q2"}
    assert means["recall@10"] == 0.5


def test_metrics_agree_with_ranx_on_a_random_run() -> None:
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    rng = random.Random(3)
    docs = [f"d{i}" for i in range(200)]
    qrels = {
        f"q{q}": {d: rng.choice([1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 12))}
        for q in range(30)
    }
    run = {q: rng.sample(docs, 120) for q in qrels}
    ours, _ = evaluate_run(run, qrels)
    ranx_run = Run({q: {d: float(len(r) - i) for i, d in enumerate(r)} for q, r in run.items()})
    theirs = ranx_evaluate(
        Qrels(qrels), ranx_run, ["ndcg@10", "mrr@10", "recall@10", "recall@50", "recall@100"]
    )
    for metric, value in theirs.items():
        assert ours[metric] == pytest.approx(value, abs=1e-6), metric


def test_the_shipped_sample_loads_in_the_beir_layout() -> None:
    data = load_beir(SAMPLE)
    assert len(data.queries) == 8 and "q-unjudged" not in data.queries
    assert data.corpus["paris-0"].startswith("Paris Paris is the capital")  # title + text
    assert data.qrels["q2"]["paris-0"] == 2
    run = load_trec_run(SAMPLE / "run.trec")
    assert len(run["q1"]) == 20 and run["q1"][0] == "bicycle-2"


def test_missing_beir_files_and_bad_run_lines_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"corpus\.jsonl"):
        load_beir(tmp_path)
    bad = tmp_path / "bad.trec"
    bad.write_text("q1 Q0 d1 1\n")
    with pytest.raises(ValueError, match=r"bad\.trec:1"):
        load_trec_run(bad)


def test_evaluate_reports_both_stages_latency_and_thresholds(bert_path: str) -> None:
    data = load_beir(SAMPLE)
    run = load_trec_run(SAMPLE / "run.trec")
    with RerankEngine(bert_path, device="cpu") as engine:
        report = evaluate(data, engine, run, candidates=20, per_query=True)
    expected_first, _ = evaluate_run({q: r[:20] for q, r in run.items()}, data.qrels)
    assert report.first_stage == pytest.approx(expected_first)
    assert set(report.reranked) == {"ndcg@10", "mrr@10", "recall@10", "recall@50", "recall@100"}
    # reranking reorders but never adds or drops candidates
    assert report.reranked["recall@100"] == pytest.approx(report.first_stage["recall@100"])
    assert report.queries == 8 and set(report.per_query) == set(data.queries)
    assert report.latency_ms["median"] > 0 and report.pairs_per_second > 0
    assert set(report.thresholds) == {"keep_80%", "keep_90%", "keep_95%"}
    assert report.thresholds["keep_95%"] <= report.thresholds["keep_80%"]


class FakeClock:
    """Seconds that pass only when a forward pass runs: time is an input of the test."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


class TickingBackend(BackendBase):
    """A real backend whose every forward pass also advances ``clock`` by ``tick`` seconds."""

    def __init__(self, inner: Any, clock: FakeClock, tick: float) -> None:
        self.inner, self.clock, self.tick = inner, clock, tick
        self.name, self.device = inner.name, inner.device
        self.precision, self.max_length = inner.precision, inner.max_length
        self.supports_windows = inner.supports_windows
        self.passes = 0
        self.lock = threading.Lock()

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        return self.inner.encode(query, texts)

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        logits = self.inner.forward(batch)
        with self.lock:
            self.passes += 1
        self.clock.advance(self.tick)
        return logits

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        pass


TICK = 0.25  # seconds of fake time per forward pass


@pytest.fixture(scope="module")
def bert_backend(bert_path: str):
    engine = RerankEngine(bert_path, device="cpu")
    yield engine.backend
    engine.close()


def test_the_reported_latency_is_the_time_of_the_forward_passes(bert_backend) -> None:
    data = load_beir(SAMPLE)
    run = load_trec_run(SAMPLE / "run.trec")
    clock = FakeClock()
    backend = TickingBackend(bert_backend, clock, TICK)
    # max_batch_size=4: several passes per query, so a count of passes is not a count of queries
    with RerankEngine.from_backend(backend, max_batch_size=4) as engine:
        report = evaluate(data, engine, run, candidates=20, clock=clock)
        totals = engine.stats()
    pairs = 20 * len(data.queries)
    assert backend.passes > len(data.queries)
    # every pass ran inside a timed rerank, and nothing else moved the clock
    assert report.latency_ms["mean"] * len(data.queries) == pytest.approx(
        backend.passes * TICK * 1000
    )
    assert report.pairs_per_second == pytest.approx(pairs / (backend.passes * TICK))
    assert report.rerank_stats["forward_passes"] == backend.passes
    assert report.rerank_stats["forward_pairs"] == pairs  # each timed pair was forward-passed
    assert report.rerank_stats["cache_hits"] == 0
    assert totals["forward_pairs"] == pairs  # ... and scored once overall


def test_a_warm_cache_shows_as_cache_hits_not_as_speed(bert_backend) -> None:
    data = load_beir(SAMPLE)
    run = load_trec_run(SAMPLE / "run.trec")
    clock = FakeClock()
    backend = TickingBackend(bert_backend, clock, TICK)
    with RerankEngine.from_backend(backend) as engine:
        evaluate(data, engine, run, candidates=20, clock=clock)
        passes = backend.passes
        again = evaluate(data, engine, run, candidates=20, clock=clock)
    assert backend.passes == passes  # the second run is answered from the cache
    assert again.rerank_stats["cache_hits"] == 20 * len(data.queries)
    assert again.rerank_stats["forward_pairs"] == 0
    assert again.latency_ms["mean"] == 0.0 and again.pairs_per_second == 0.0


def test_a_reranker_that_knows_the_answers_improves_ndcg() -> None:
    data = load_beir(SAMPLE)
    run = load_trec_run(SAMPLE / "run.trec")
    relevant_texts = {data.corpus[d] for q in data.qrels.values() for d, r in q.items() if r > 0}

    class Oracle(FakeBackend):
        def forward(self, batch):
            return [5.0 if t in relevant_texts else -5.0 for _, t in (e.payload for e in batch)]

    with RerankEngine.from_backend(Oracle()) as engine:
        report = evaluate(data, engine, run, candidates=20)
    assert report.reranked["ndcg@10"] > report.first_stage["ndcg@10"]
    assert report.reranked["mrr@10"] >= report.first_stage["mrr@10"]


def test_suggest_threshold_keeps_the_requested_share() -> None:
    scores = [0.95, 0.9, 0.7, 0.6, 0.2]
    t = suggest_threshold(scores, keep=0.6)
    assert sum(s >= t for s in scores) / len(scores) >= 0.6
    assert t == 0.7
    with pytest.raises(ValueError, match="keep must be in"):
        suggest_threshold(scores, keep=0)


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rerank_plugins", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_eval_command_with_a_run_file_writes_json_and_a_plot(
    bert_path: str, tmp_path: Path
) -> None:
    output, plot = tmp_path / "results.json", tmp_path / "plot.png"
    proc = _cli(
        "eval",
        str(SAMPLE),
        "--reranker",
        bert_path,
        "--run",
        str(SAMPLE / "run.trec"),
        "--candidates",
        "20",
        "--device",
        "cpu",
        "--output",
        str(output),
        "--plot",
        str(plot),
    )
    assert proc.returncode == 0, proc.stderr
    assert "ndcg@10" in proc.stdout and "first stage" in proc.stdout
    results = json.loads(output.read_text())
    for stage in ("first_stage", "reranked"):
        assert set(results[stage]) == {"ndcg@10", "mrr@10", "recall@10", "recall@50", "recall@100"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_command_with_a_bi_encoder(bert_path: str, tmp_path: Path) -> None:
    from rerank_plugins.models.offline import bi_encoder_path

    output = tmp_path / "results.json"
    proc = _cli(
        "eval",
        str(SAMPLE),
        "--reranker",
        bert_path,
        "--bi-encoder",
        str(bi_encoder_path()),
        "--candidates",
        "10",
        "--device",
        "cpu",
        "--output",
        str(output),
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(output.read_text())
    # the real MiniLM bi-encoder finds the relevant passages of this easy sample
    assert results["first_stage"]["recall@10"] > 0.8


def test_eval_command_reranks_each_candidate_once_on_the_cold_path(
    bert_path: str, tmp_path: Path, capsys
) -> None:
    """The bi-encoder first stage only searches; the timed rerank runs every pair's forward pass."""
    from rerank_plugins.cli import main
    from rerank_plugins.models.offline import bi_encoder_path

    output = tmp_path / "results.json"
    argv = ["eval", str(SAMPLE), "--reranker", bert_path, "--bi-encoder", bi_encoder_path()]
    assert main([*argv, "--candidates", "10", "--device", "cpu", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    pairs = 10 * results["queries"]
    assert results["rerank_stats"]["forward_pairs"] == pairs
    assert results["rerank_stats"]["cache_hits"] == 0
    assert results["engine_stats"]["forward_pairs"] == pairs  # the first stage scored none
    assert f"timed: {pairs} pairs in " in capsys.readouterr().out


def test_eval_command_refuses_bad_input_with_one_line(tmp_path: Path, bert_path: str) -> None:
    proc = _cli("eval", str(tmp_path), "--reranker", bert_path, "--run", "nope.trec")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
    proc = _cli("eval", str(SAMPLE), "--reranker", bert_path)
    assert proc.returncode == 2 and "--bi-encoder" in proc.stderr
