"""Hard negatives: the passages a bi-encoder ranks high for a query that are not its answers."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rerank_plugins.contract import Scorer
from rerank_plugins.retrieval.encoders import Encoder

__all__ = ["ExactIndex", "TrainingPair", "mine_hard_negatives"]

logger = logging.getLogger("rerank_plugins")


class ExactIndex:
    """A corpus embedded once by a bi-encoder, searched exactly (one matrix-vector product).

    It is the first stage of the fine-tune: the candidates hard negatives are mined from, and
    the first-stage ranking of the evaluation.

    Args:
        encoder: The bi-encoder (e.g. `rerank_plugins.retrieval.BiEncoder`).
        corpus: Passage id -> text.

    Examples:
        >>> from rerank_plugins.retrieval import BiEncoder
        >>> encoder = BiEncoder("sentence-transformers/all-MiniLM-L6-v2")
        >>> corpus = {"a": "Paris is the capital of France.", "b": "Cats purr."}
        >>> index = ExactIndex(encoder, corpus)  # doctest: +SKIP
        >>> index.search("capital of France", 1)  # doctest: +SKIP
        [('a', 0.71)]
    """

    def __init__(self, encoder: Encoder, corpus: Mapping[str, str]) -> None:
        self.encoder = encoder
        self.ids = list(corpus)
        self._row = {doc_id: i for i, doc_id in enumerate(self.ids)}
        self._vectors = encoder.encode_documents([corpus[i] for i in self.ids])

    def scores(self, query: str) -> np.ndarray:
        """Cosine similarity of ``query`` to every passage, in ``ids`` order."""
        if not self.ids:
            return np.zeros(0, dtype=np.float32)
        vector = self.encoder.encode_query(query)
        return np.asarray(self._vectors @ vector, dtype=np.float32)

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        """The ``k`` most similar passages, best first; ties keep corpus order."""
        scores = self.scores(query)
        order = np.argsort(-scores, kind="stable")[:k]
        return [(self.ids[i], float(scores[i])) for i in order]

    def row(self, doc_id: str) -> int:
        """The position of ``doc_id`` in ``ids``."""
        return self._row[doc_id]


@dataclass(frozen=True)
class TrainingPair:
    """A (query, passage, label) row: 1 for a judged answer, 0 for a mined hard negative.

    Attributes:
        query_id: The query's id.
        query: The query text.
        passage_id: The passage's id.
        passage: The passage text.
        label: 1.0 (relevant) or 0.0 (hard negative).
        similarity: The bi-encoder's cosine similarity of query and passage.
    """

    query_id: str
    query: str
    passage_id: str
    passage: str
    label: float
    similarity: float = 0.0


def mine_hard_negatives(
    index: ExactIndex,
    corpus: Mapping[str, str],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    negatives: int,
    depth: int,
    margin: float | None = None,
    denoiser: Scorer | None = None,
    progress: bool = False,
) -> list[TrainingPair]:
    """One positive pair per judged answer, each followed by ``negatives`` mined negatives.

    The negatives of a query are the passages the bi-encoder ranks highest within the top
    ``depth``, skipping every judged answer of the query (any passage with a grade above 0,
    and any passage whose text equals an answer's), and any passage whose similarity to the
    query is within ``margin`` of the best answer's, when a ``margin`` is given (such a near
    tie is more often an unjudged answer than a wrong one). With ``denoiser`` (the base
    reranker), a candidate it scores at least as high as the query's best answer is skipped
    too, as a likely false negative.

    Args:
        index: The bi-encoder's view of ``corpus``.
        corpus: Passage id -> text.
        queries: Query id -> text, to mine for.
        qrels: Query id -> (passage id -> grade).
        negatives: Negatives per query (fewer when fewer candidates qualify).
        depth: How far down the first-stage ranking to look for them.
        margin: Skip candidates whose cosine similarity exceeds the best answer's minus this
            (None: keep them all).
        denoiser: Optional reranker that vetoes likely false negatives.
        progress: Show a progress bar.

    Returns:
        Training rows: for each query, its positives, then its negatives.
    """
    from tqdm.auto import tqdm

    rows: list[TrainingPair] = []
    bar = tqdm(list(queries), desc="mining hard negatives", unit="query", disable=not progress)
    for qid in bar:
        query = queries[qid]
        answers = [d for d, grade in qrels.get(qid, {}).items() if grade > 0 and d in corpus]
        if not answers:
            continue
        scores = index.scores(query)
        best = max(float(scores[index.row(d)]) for d in answers)
        answer_texts = {" ".join(corpus[d].split()) for d in answers}
        order = np.argsort(-scores, kind="stable")[: depth + len(answers)]
        candidates = [
            doc_id
            for doc_id in (index.ids[i] for i in order)
            if doc_id not in answers
            and " ".join(corpus[doc_id].split()) not in answer_texts
            and (margin is None or float(scores[index.row(doc_id)]) <= best - margin)
        ][:depth]
        if denoiser is not None and candidates:
            candidates = _denoise(denoiser, query, [corpus[d] for d in answers], candidates, corpus)
        rows += [
            TrainingPair(qid, query, d, corpus[d], 1.0, float(scores[index.row(d)]))
            for d in answers
        ]
        rows += [
            TrainingPair(qid, query, d, corpus[d], 0.0, float(scores[index.row(d)]))
            for d in candidates[:negatives]
        ]
    return rows


def _denoise(
    scorer: Scorer,
    query: str,
    answers: Sequence[str],
    candidates: list[str],
    corpus: Mapping[str, str],
) -> list[str]:
    scores = scorer.score(query, [*answers, *(corpus[d] for d in candidates)])
    bar = max(scores[: len(answers)])
    kept = [d for d, s in zip(candidates, scores[len(answers) :], strict=True) if s < bar]
    if len(kept) < len(candidates):
        logger.debug("dropped %d likely false negatives", len(candidates) - len(kept))
    return kept
