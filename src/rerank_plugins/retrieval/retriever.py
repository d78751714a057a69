"""Two-stage retrieval: a bi-encoder finds candidates, the shared rerank engine orders them."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rerank_plugins.config import EngineConfig
from rerank_plugins.contract import Scorer, check_scorer
from rerank_plugins.registry import get_engine
from rerank_plugins.results import check_count, check_query, check_texts, select
from rerank_plugins.retrieval.encoders import BiEncoder, Encoder
from rerank_plugins.retrieval.stores import InMemoryStore, Match, VectorStore

__all__ = [
    "DEFAULT_BI_ENCODER",
    "DEFAULT_RERANKER",
    "Hit",
    "Retrieval",
    "StageTimings",
    "TwoStageRetriever",
    "content_id",
]

logger = logging.getLogger("rerank_plugins")

DEFAULT_BI_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_RERANKER = "cross-encoder/ms-marco-MiniLM-L-6-v2"

# Texts embedded and written per step of `index`: the progress bar's unit of work, and a
# bound on the memory one step pins.
_INDEX_CHUNK = 256


@dataclass(frozen=True)
class Hit:
    """One retrieved document, with both stages' view of it.

    Attributes:
        text: The document text.
        id: The caller's id (or the content-derived id `index` assigned).
        metadata: The caller's metadata (a copy; changing it changes nothing stored).
        score: Rerank score on the engine's scale (a probability by default).
        first_stage_score: Cosine similarity of the bi-encoder embeddings.
        first_stage_rank: 1-based position in the first-stage ranking.

    Examples:
        >>> hit = Hit("RAG combines ...", "doc-7", {"source": "wiki"}, 0.93, 0.61, 3)
        >>> hit.first_stage_rank, hit.score
        (3, 0.93)
    """

    text: str
    id: str
    metadata: dict[str, Any]
    score: float
    first_stage_score: float
    first_stage_rank: int


@dataclass(frozen=True)
class StageTimings:
    """Wall-clock milliseconds of each stage of one retrieval.

    Attributes:
        embed_ms: Embedding the query with the bi-encoder.
        search_ms: Nearest-neighbour search in the store.
        rerank_ms: Scoring every candidate with the cross-encoder.
    """

    embed_ms: float = 0.0
    search_ms: float = 0.0
    rerank_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        """All three stages."""
        return self.embed_ms + self.search_ms + self.rerank_ms


@dataclass(frozen=True)
class Retrieval:
    """Everything one retrieval saw: the answer, the first stage's candidates, the timings.

    Attributes:
        query: The question.
        hits: Reranked hits, best first, thresholded and cut to ``top_k``.
        candidates: Every first-stage candidate in first-stage order, each with its rerank
            score, so the two rankings can be compared.
        timings: Per-stage wall-clock times.
    """

    query: str
    hits: list[Hit]
    candidates: list[Hit]
    timings: StageTimings = field(default_factory=StageTimings)


class TwoStageRetriever:
    """Retrieve with a bi-encoder, then rerank the candidates with the shared cross-encoder.

    The first stage embeds the query and takes the ``candidates`` nearest documents from the
    store; the second stage scores each against the query with the rerank engine and keeps the
    best ``top_k``. The reranker is `rerank_plugins.get_engine`'s shared engine, so this
    retriever and any LangChain or LlamaIndex adapter on the same model and options hold one
    copy of it and batch together. Models load on first use.

    Args:
        bi_encoder: Hub id or folder of a sentence-transformers model, or any `Encoder`.
        reranker: Hub id or folder of a cross-encoder (default
            ``cross-encoder/ms-marco-MiniLM-L-6-v2``); not together with ``engine``.
        engine: An existing engine or any `Scorer` to rerank with, instead of ``reranker``.
        store: Where the vectors live: an `InMemoryStore` (default), a `QdrantStore`, or any
            `VectorStore`.
        reranker_options: Engine options for `get_engine` (``device``, ``max_length``,
            ``normalize``...); they may also be passed as keyword arguments.
        batch_size: Texts per bi-encoder forward pass (when ``bi_encoder`` is a name).
        show_progress: Progress bar while indexing: True, False, or None (only for more than
            one chunk of texts, and only on a terminal).
        **engine_options: More engine options, merged with ``reranker_options``.

    Raises:
        TypeError: An unknown engine option, or ``engine`` together with reranker settings.
        ValueError: A bad engine option value.

    Examples:
        >>> from rerank_plugins.retrieval import TwoStageRetriever
        >>> r = TwoStageRetriever(  # doctest: +SKIP
        ...     bi_encoder="sentence-transformers/all-MiniLM-L6-v2",
        ...     reranker="cross-encoder/ms-marco-MiniLM-L-6-v2",
        ... )
        >>> r.index(["RAG joins retrieval and generation.", "Paris is French."])  # doctest: +SKIP
        >>> hit = r.retrieve("What is RAG?", top_k=1, candidates=2)[0]  # doctest: +SKIP
        >>> hit.text, hit.first_stage_rank  # doctest: +SKIP
        ('RAG joins retrieval and generation.', 1)
    """

    def __init__(
        self,
        bi_encoder: str | os.PathLike[str] | Encoder = DEFAULT_BI_ENCODER,
        reranker: str | None = None,
        *,
        engine: Scorer | None = None,
        store: VectorStore | None = None,
        reranker_options: Mapping[str, Any] | None = None,
        batch_size: int = 32,
        show_progress: bool | None = None,
        **engine_options: Any,
    ) -> None:
        options = dict(reranker_options or {})
        clash = sorted(set(options) & set(engine_options))
        if clash:
            msg = (
                f"engine option(s) {', '.join(map(repr, clash))} given both in "
                "reranker_options and as keyword arguments; pass each once."
            )
            raise TypeError(msg)
        options.update(engine_options)
        if engine is not None:
            if reranker is not None or options:
                msg = (
                    "pass either engine= (an existing engine) or reranker= and engine options, "
                    "not both: an existing engine already has its model and options."
                )
                raise TypeError(msg)
            check_scorer(engine, "TwoStageRetriever")
        self._reranker = reranker if reranker is not None else DEFAULT_RERANKER
        if engine is None:
            EngineConfig.from_options(self._reranker, options)  # reject bad options now
        self._engine_options = options
        self._engine: Scorer | None = engine
        self._lock = threading.Lock()

        if isinstance(bi_encoder, str | os.PathLike):
            device = options.get("device", "auto")
            self.encoder: Encoder = BiEncoder(bi_encoder, device=device, batch_size=batch_size)
        elif isinstance(bi_encoder, Encoder):
            self.encoder = bi_encoder
        else:
            msg = (
                f"bi_encoder must be a hub id, a folder or an Encoder, got "
                f"{type(bi_encoder).__name__}."
            )
            raise TypeError(msg)

        self.store: VectorStore = store if store is not None else InMemoryStore()
        known = getattr(self.store, "encoder", None)
        if known and known != self.encoder.name:
            logger.warning(
                "the store was built with bi-encoder %r but this retriever queries it with %r; "
                "scores are meaningless unless both embed alike.",
                known,
                self.encoder.name,
            )
        self.show_progress = show_progress

    # ------------------------------------------------------------------ models

    @property
    def engine(self) -> Scorer:
        """The reranking engine (the shared `get_engine` instance, loaded on first use)."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    self._engine = get_engine(self._reranker, **self._engine_options)
        return self._engine

    def load_models(self) -> TwoStageRetriever:
        """Load the bi-encoder and the reranker now rather than on first use; returns ``self``."""
        load = getattr(self.encoder, "load", None)
        if callable(load):
            load()
        _ = self.engine
        return self

    def __len__(self) -> int:
        return len(self.store)

    # ------------------------------------------------------------------ indexing

    def index(
        self,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]] | None = None,
        ids: Sequence[str] | None = None,
        *,
        show_progress: bool | None = None,
    ) -> list[str]:
        """Embed and store documents; an id already in the store is updated, not duplicated.

        Args:
            texts: Documents to index.
            metadatas: One mapping per text, kept and returned with every hit.
            ids: One string id per text. Default: derived from the text (``"sha1:<hex>"``), so
                indexing the same texts again updates them instead of adding copies.
            show_progress: Override the retriever's progress-bar setting for this call.

        Returns:
            The id of each text, in order.

        Raises:
            TypeError: ``texts`` is not a list of strings, an id is not a string, or a
                metadata entry is not a mapping.
            ValueError: ``metadatas`` or ``ids`` has a different length than ``texts``, or
                an id is empty.
        """
        texts = check_texts(texts)
        n = len(texts)
        metas = _check_metadatas(metadatas, n)
        doc_ids = _check_ids(ids, texts)
        if n == 0:
            return []
        show = self.show_progress if show_progress is None else show_progress
        from tqdm.auto import tqdm

        bar = tqdm(
            total=n,
            desc="indexing",
            unit="doc",
            disable=(not show) if show is not None else (n <= _INDEX_CHUNK or None),
            leave=False,
        )
        with bar:
            for start in range(0, n, _INDEX_CHUNK):
                stop = min(start + _INDEX_CHUNK, n)
                vectors = self.encoder.encode_documents(texts[start:stop])
                part = slice(start, stop)
                self.store.upsert(doc_ids[part], vectors, texts[part], metas[part])
                bar.update(stop - start)
        if isinstance(self.store, InMemoryStore) and self.store.encoder is None:
            self.store.encoder = self.encoder.name
        return doc_ids

    # ------------------------------------------------------------------ retrieval

    def retrieve(
        self,
        query: str,
        top_k: int = 10,
        candidates: int = 50,
        *,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """The ``top_k`` best documents for ``query``, reranked, best first.

        Args:
            query: The question.
            top_k: Hits to return at most.
            candidates: Documents the first stage hands to the reranker (>= ``top_k``).
            score_threshold: Drop hits whose rerank score is below this, before the ``top_k``
                cut (on the engine's score scale).

        Returns:
            Hits sorted by rerank score (ties keep first-stage order); empty for an empty
            index (the reranker is not called).

        Raises:
            ValueError: An empty query, or ``candidates < top_k``.
            TypeError: ``query`` is not a string, or ``top_k`` / ``candidates`` not an int.
        """
        return self.retrieve_detailed(
            query, top_k, candidates, score_threshold=score_threshold
        ).hits

    async def aretrieve(
        self,
        query: str,
        top_k: int = 10,
        candidates: int = 50,
        *,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """Async `retrieve`: embedding and search run in a worker thread, reranking is awaited."""
        result = await self.aretrieve_detailed(
            query, top_k, candidates, score_threshold=score_threshold
        )
        return result.hits

    def retrieve_detailed(
        self,
        query: str,
        top_k: int = 10,
        candidates: int = 50,
        *,
        score_threshold: float | None = None,
    ) -> Retrieval:
        """`retrieve`, plus the first-stage candidates and per-stage timings.

        Examples:
            >>> run = retriever.retrieve_detailed("What is RAG?", top_k=3)  # doctest: +SKIP
            >>> [c.first_stage_rank for c in run.candidates[:3]]  # doctest: +SKIP
            [1, 2, 3]
        """
        query = _check_request(query, top_k, candidates)
        matches, embed_ms, search_ms = self._first_stage(query, candidates)
        if not matches:
            return Retrieval(query, [], [], StageTimings(embed_ms, search_ms, 0.0))
        engine = self.engine
        start = time.perf_counter()
        scores = engine.score(query, [m.text for m in matches])
        rerank_ms = (time.perf_counter() - start) * 1000
        return _assemble(
            query, matches, scores, top_k, score_threshold, (embed_ms, search_ms, rerank_ms)
        )

    def first_stage(self, query: str, candidates: int = 50) -> list[Match]:
        """The first stage alone: the ``candidates`` nearest documents, nothing reranked.

        For measuring the first stage, or the reranker apart from it (``rerank-plugins eval``
        times the rerank of these candidates): the reranker is neither loaded nor called.

        Args:
            query: The question.
            candidates: Documents to return at most.

        Returns:
            Matches in first-stage order (cosine similarity, best first); empty for an empty
            index.

        Raises:
            ValueError: An empty query, or ``candidates < 1``.
            TypeError: ``query`` is not a string, or ``candidates`` not an int.

        Examples:
            >>> [m.id for m in retriever.first_stage("What is RAG?", 2)]  # doctest: +SKIP
            ['doc-7', 'doc-2']
        """
        query = check_query(query)
        matches, _, _ = self._first_stage(query, check_count("candidates", candidates))
        return matches

    async def aretrieve_detailed(
        self,
        query: str,
        top_k: int = 10,
        candidates: int = 50,
        *,
        score_threshold: float | None = None,
    ) -> Retrieval:
        """Async `retrieve_detailed`; the event loop is never blocked by a model."""
        query = _check_request(query, top_k, candidates)
        matches, embed_ms, search_ms = await asyncio.to_thread(self._first_stage, query, candidates)
        if not matches:
            return Retrieval(query, [], [], StageTimings(embed_ms, search_ms, 0.0))
        # Loading a model blocks for seconds: do it off the loop too.
        engine = self._engine
        if engine is None:
            engine = await asyncio.to_thread(lambda: self.engine)
        start = time.perf_counter()
        scores = await engine.ascore(query, [m.text for m in matches])
        rerank_ms = (time.perf_counter() - start) * 1000
        return _assemble(
            query, matches, scores, top_k, score_threshold, (embed_ms, search_ms, rerank_ms)
        )

    def _first_stage(self, query: str, candidates: int) -> tuple[list[Match], float, float]:
        # No emptiness pre-check: len() on a Qdrant server is an exact count, too dear per
        # query. An empty store returns no matches, and then the reranker never runs.
        start = time.perf_counter()
        vector = self.encoder.encode_query(query)
        embedded = time.perf_counter()
        matches = self.store.search(vector, candidates)
        searched = time.perf_counter()
        return matches, (embedded - start) * 1000, (searched - embedded) * 1000

    def __repr__(self) -> str:
        reranker = self._reranker if self._engine is None else type(self._engine).__name__
        return (
            f"TwoStageRetriever(bi_encoder={self.encoder.name!r}, reranker={reranker!r}, "
            f"store={self.store!r})"
        )


def _assemble(
    query: str,
    matches: list[Match],
    scores: list[float],
    top_k: int,
    score_threshold: float | None,
    timings: tuple[float, float, float],
) -> Retrieval:
    candidates = [
        Hit(
            text=m.text,
            id=m.id,
            metadata=m.metadata,
            score=float(score),
            first_stage_score=float(m.score),
            first_stage_rank=rank,
        )
        for rank, (m, score) in enumerate(zip(matches, scores, strict=True), start=1)
    ]
    order = select(scores, top_n=top_k, score_threshold=score_threshold)
    return Retrieval(query, [candidates[i] for i in order], candidates, StageTimings(*timings))


def _check_request(query: object, top_k: object, candidates: object) -> str:
    checked = check_query(query)
    k = check_count("top_k", top_k)
    c = check_count("candidates", candidates)
    if c < k:
        msg = (
            f"candidates={c} is smaller than top_k={k}: the reranker can only reorder what the "
            f"first stage returns. Pass candidates >= top_k (e.g. candidates={max(50, k)})."
        )
        raise ValueError(msg)
    return checked


def _check_metadatas(
    metadatas: Sequence[Mapping[str, Any]] | None, n: int
) -> list[Mapping[str, Any]]:
    if metadatas is None:
        return [{} for _ in range(n)]
    metas = list(metadatas)
    if len(metas) != n:
        msg = f"got {len(metas)} metadatas for {n} texts; pass one mapping per text (or None)."
        raise ValueError(msg)
    for i, meta in enumerate(metas):
        if meta is None:
            metas[i] = {}
        elif not isinstance(meta, Mapping):
            msg = f"metadatas[{i}] must be a dict, got {type(meta).__name__}."
            raise TypeError(msg)
    return metas


def _check_ids(ids: Sequence[str] | None, texts: list[str]) -> list[str]:
    if ids is None:
        return [content_id(text) for text in texts]
    if isinstance(ids, str):
        msg = "ids must be a list of strings, got a single string; wrap it in a list."
        raise TypeError(msg)
    out = list(ids)
    if len(out) != len(texts):
        msg = f"got {len(out)} ids for {len(texts)} texts; pass one id per text (or None)."
        raise ValueError(msg)
    for i, doc_id in enumerate(out):
        if not isinstance(doc_id, str):
            msg = f"ids[{i}] must be a str, got {type(doc_id).__name__}; convert ids with str()."
            raise TypeError(msg)
        if not doc_id:
            msg = f"ids[{i}] is empty; every document needs a non-empty id."
            raise ValueError(msg)
    return out


def content_id(text: str) -> str:
    """The default id of a text: ``"sha1:"`` and the SHA-1 of its UTF-8 bytes.

    Examples:
        >>> content_id("hello")
        'sha1:aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d'
    """
    return "sha1:" + hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()
