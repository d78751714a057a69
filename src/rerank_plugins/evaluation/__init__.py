"""Evaluation on your own data: IR metrics, BEIR/TREC loaders, first stage vs reranked."""

from __future__ import annotations

from rerank_plugins.evaluation.calibrate import suggest_threshold
from rerank_plugins.evaluation.data import BeirData, load_beir, load_trec_run
from rerank_plugins.evaluation.metrics import METRICS, evaluate_run, mrr_at, ndcg_at, recall_at
from rerank_plugins.evaluation.runner import EvalReport, evaluate

__all__ = [
    "METRICS",
    "BeirData",
    "EvalReport",
    "evaluate",
    "evaluate_run",
    "load_beir",
    "load_trec_run",
    "mrr_at",
    "ndcg_at",
    "recall_at",
    "suggest_threshold",
]
