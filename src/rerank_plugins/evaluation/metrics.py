"""nDCG, MRR and recall at a cutoff, computed as trec_eval and BEIR compute them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

__all__ = ["METRICS", "evaluate_run", "mrr_at", "ndcg_at", "recall_at"]

METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@10", "recall@50", "recall@100")


def ndcg_at(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """Normalised discounted cumulative gain at ``k`` with linear gains (trec_eval's ndcg_cut).

    Args:
        ranking: Document ids, best first.
        qrels: Document id -> graded relevance (0 or missing: not relevant).
        k: Cutoff.

    Returns:
        nDCG@k in [0, 1]; 0 when the query has no relevant document.

    Examples:
        >>> round(ndcg_at(["a", "b", "c"], {"b": 1}, 10), 4)
        0.6309
    """
    dcg = sum(
        qrels.get(doc, 0) / math.log2(rank + 2)
        for rank, doc in enumerate(ranking[:k])
        if qrels.get(doc, 0) > 0
    )
    ideal = sorted((r for r in qrels.values() if r > 0), reverse=True)[:k]
    idcg = sum(rel / math.log2(rank + 2) for rank, rel in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def mrr_at(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document within the top ``k`` (0 if none).

    Examples:
        >>> mrr_at(["a", "b", "c"], {"c": 2}, 10)
        0.3333333333333333
    """
    for rank, doc in enumerate(ranking[:k]):
        if qrels.get(doc, 0) > 0:
            return 1.0 / (rank + 1)
    return 0.0


def recall_at(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the top ``k``.

    Examples:
        >>> recall_at(["a", "b"], {"a": 1, "z": 1}, 10)
        0.5
    """
    relevant = {d for d, r in qrels.items() if r > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def _one(name: str, ranking: Sequence[str], qrels: Mapping[str, int]) -> float:
    kind, _, cutoff = name.partition("@")
    fn = {"ndcg": ndcg_at, "mrr": mrr_at, "recall": recall_at}[kind]
    return fn(ranking, qrels, int(cutoff))


def evaluate_run(
    run: Mapping[str, Sequence[str]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = METRICS,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query metrics of a run over the queries that have relevance judgements.

    Queries with no relevant document in ``qrels`` are skipped, as trec_eval and BEIR skip
    them; a judged query missing from ``run`` counts as an empty ranking.

    Args:
        run: Query id -> document ids, best first.
        qrels: Query id -> (document id -> relevance).
        metrics: Names like ``"ndcg@10"``.

    Returns:
        (mean of each metric, per-query values).
    """
    per_query: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        if not any(r > 0 for r in judged.values()):
            continue
        ranking = list(run.get(qid, []))
        per_query[qid] = {m: _one(m, ranking, judged) for m in metrics}
    n = len(per_query)
    means = {m: (sum(v[m] for v in per_query.values()) / n if n else 0.0) for m in metrics}
    return means, per_query
