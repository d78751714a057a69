"""Fine-tune a reranker on your own collection, with hard negatives from a bi-encoder.

`finetune` trains on a BEIR folder, or on a corpus alone (training queries generated from the
passages' titles, or from a sentence held out of each passage), evaluates the first stage, the
base reranker and the fine-tuned one on held-out queries, and writes a folder that
`rerank_plugins.get_engine`, both adapters and ``sentence_transformers.CrossEncoder`` load.
Importing this package loads no model runtime; the ``finetune`` extra installs what training
needs.

Examples:
    >>> from rerank_plugins.finetune import finetune
    >>> report = finetune(  # doctest: +SKIP
    ...     "my-corpus/",
    ...     base="cross-encoder/ms-marco-MiniLM-L-6-v2",
    ...     bi_encoder="sentence-transformers/all-MiniLM-L6-v2",
    ...     output="my-reranker",
    ... )
    >>> print(report.table())  # doctest: +SKIP
"""

from __future__ import annotations

from rerank_plugins.finetune.data import (
    CorpusPassage,
    JudgedQueryLike,
    TrainingData,
    load_training_data,
    self_supervised_pairs,
)
from rerank_plugins.finetune.negatives import ExactIndex, TrainingPair, mine_hard_negatives
from rerank_plugins.finetune.report import SYSTEMS, FinetuneReport
from rerank_plugins.finetune.runner import (
    LOSSES,
    FinetunePlan,
    FinetuneSettings,
    check_base_model,
    check_output,
    finetune,
    is_finetuned,
    plan_finetune,
)

__all__ = [
    "LOSSES",
    "SYSTEMS",
    "CorpusPassage",
    "ExactIndex",
    "FinetunePlan",
    "FinetuneReport",
    "FinetuneSettings",
    "JudgedQueryLike",
    "TrainingData",
    "TrainingPair",
    "check_base_model",
    "check_output",
    "finetune",
    "is_finetuned",
    "load_training_data",
    "mine_hard_negatives",
    "plan_finetune",
    "self_supervised_pairs",
]
