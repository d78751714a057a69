"""Evaluate first stage vs reranked on a BEIR-layout data set."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerank_plugins.contract import Scorer
from rerank_plugins.evaluation.calibrate import suggest_threshold
from rerank_plugins.evaluation.data import BeirData
from rerank_plugins.evaluation.metrics import METRICS, evaluate_run

__all__ = ["EvalReport", "evaluate"]

FirstStage = Callable[[str, str, int], list[str]]


@dataclass
class EvalReport:
    """Metrics before and after reranking, with latency and threshold suggestions.

    Attributes:
        first_stage: Mean metrics of the first-stage ranking (``ndcg@10``, ``mrr@10``,
            ``recall@10``, ``recall@50``, ``recall@100``).
        reranked: The same metrics after reranking the candidates.
        difference: ``reranked - first_stage`` per metric.
        queries: Queries evaluated (those with at least one relevant document).
        candidates: Candidates reranked per query.
        latency_ms: Rerank latency per query: median, p95, mean.
        pairs_per_second: Pairs scored per second of reranking.
        rerank_stats: What the scorer's counters (`Scorer.stats`) rose by during the timed
            reranks alone: for an engine, ``forward_passes``, ``forward_pairs`` and
            ``cache_hits``, which tell a latency of forward passes from one of cache reads.
        thresholds: Score thresholds that keep 80/90/95% of the relevant candidates.
        per_query: Per-query metrics (``first_stage`` and ``reranked``), when asked for.
    """

    first_stage: dict[str, float]
    reranked: dict[str, float]
    difference: dict[str, float]
    queries: int
    candidates: int
    latency_ms: dict[str, float]
    pairs_per_second: float
    rerank_stats: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``--output`` file of ``rerank-plugins eval``)."""
        out: dict[str, Any] = {
            "first_stage": self.first_stage,
            "reranked": self.reranked,
            "difference": self.difference,
            "queries": self.queries,
            "candidates": self.candidates,
            "latency_ms": self.latency_ms,
            "pairs_per_second": self.pairs_per_second,
            "rerank_stats": self.rerank_stats,
            "thresholds": self.thresholds,
        }
        if self.per_query:
            out["per_query"] = self.per_query
        return out


def evaluate(
    data: BeirData,
    engine: Scorer,
    first_stage: FirstStage | Mapping[str, Sequence[str]],
    *,
    candidates: int = 100,
    per_query: bool = False,
    progress: Callable[[int, int], None] | None = None,
    instruction: str | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> EvalReport:
    """Rerank each judged query's first-stage candidates and score both rankings.

    Only the rerank call of each query is timed, not the first stage. Its latency is what
    ``engine`` spends: an engine whose score cache already holds the pairs answers from it,
    and ``rerank_stats`` then shows cache hits instead of forward passes (build the engine
    with ``cache_size=0``, as ``rerank-plugins eval`` does, to time the cold path).

    Args:
        data: The data set.
        engine: The reranker (an engine, or any `Scorer`).
        first_stage: A TREC run (query id -> document ids, best first), or a callable
            ``(query_id, query_text, k) -> document ids`` (e.g. a bi-encoder retriever).
        candidates: How many first-stage documents to rerank per query.
        per_query: Keep per-query metrics in the report.
        progress: Called with (done, total) after each query.
        instruction: The task, for instruction-aware rerankers (None: the model's default).
        clock: Seconds, read before and after each timed rerank (default
            `time.perf_counter`); tests pass a clock of their own.

    Returns:
        The report.

    Raises:
        ValueError: ``candidates`` < 1, or the run names documents missing from the corpus.
    """
    if candidates < 1:
        msg = f"candidates must be >= 1, got {candidates}."
        raise ValueError(msg)
    before: dict[str, list[str]] = {}
    after: dict[str, list[str]] = {}
    latencies: list[float] = []
    relevant_scores: list[float] = []
    pairs = 0
    rerank_seconds = 0.0
    counted: dict[str, int] = {}
    total = len(data.queries)
    for n, (qid, query) in enumerate(data.queries.items(), 1):
        if callable(first_stage):
            ranking = list(first_stage(qid, query, candidates))
        else:
            ranking = list(first_stage.get(qid, []))
        ranking = ranking[:candidates]
        missing = [d for d in ranking if d not in data.corpus]
        if missing:
            msg = f"the run names documents missing from the corpus for query {qid}: {missing[:3]}"
            raise ValueError(msg)
        before[qid] = ranking
        texts = [data.corpus[d] for d in ranking]
        stats_before = engine.stats()
        start = clock()
        results = engine.rerank(query, texts, instruction=instruction) if ranking else []
        elapsed = clock() - start
        _add_rise(counted, stats_before, engine.stats())
        latencies.append(elapsed * 1000)
        rerank_seconds += elapsed
        pairs += len(ranking)
        after[qid] = [ranking[r.index] for r in results]
        judged = data.qrels.get(qid, {})
        relevant_scores += [r.score for r in results if judged.get(ranking[r.index], 0) > 0]
        if progress is not None:
            progress(n, total)

    first, first_pq = evaluate_run(before, data.qrels, METRICS)
    reranked, reranked_pq = evaluate_run(after, data.qrels, METRICS)
    thresholds = {}
    if relevant_scores:
        for keep in (0.8, 0.9, 0.95):
            thresholds[f"keep_{round(keep * 100)}%"] = suggest_threshold(relevant_scores, keep)
    report = EvalReport(
        first_stage=first,
        reranked=reranked,
        difference={m: reranked[m] - first[m] for m in METRICS},
        queries=len(first_pq),
        candidates=candidates,
        latency_ms=_latency(latencies),
        pairs_per_second=pairs / rerank_seconds if rerank_seconds > 0 else 0.0,
        rerank_stats=counted,
        thresholds=thresholds,
    )
    if per_query:
        report.per_query = {
            qid: {"first_stage": first_pq[qid], "reranked": reranked_pq[qid]} for qid in first_pq
        }
    return report


# The counters that say what the timed reranks did; others (entries held ...) are not rises.
_TIMED_COUNTERS = (
    "requests",
    "pairs",
    "forward_passes",
    "forward_pairs",
    "cache_hits",
    "cache_misses",
)


def _add_rise(total: dict[str, int], before: Mapping[str, int], after: Mapping[str, int]) -> None:
    for name in _TIMED_COUNTERS:
        if name in before and name in after:
            total[name] = total.get(name, 0) + after[name] - before[name]


def _latency(values: list[float]) -> dict[str, float]:
    if not values:
        return {"median": 0.0, "p95": 0.0, "mean": 0.0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median": statistics.median(ordered), "p95": p95, "mean": statistics.fmean(ordered)}
