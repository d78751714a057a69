"""LangChain adapters over the shared engine: a compressor, a retriever, a cross-encoder.

`RerankCompressor` reranks what another retriever found; `RerankRetriever` is a whole
two-stage retriever (`rerank_plugins.retrieval.TwoStageRetriever`) as a LangChain retriever;
`RerankCrossEncoder` scores pairs for LangChain's own ``CrossEncoderReranker``. The first two
report each rerank step to LangChain's callbacks as a child run named ``"rerank"``.
"""

from __future__ import annotations

from rerank_plugins._imports import require

require("langchain_core", extra="langchain", purpose="rerank_plugins.langchain")

import asyncio  # noqa: E402
import copy  # noqa: E402
import os  # noqa: E402
from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.callbacks.manager import (  # noqa: E402
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.cross_encoders import BaseCrossEncoder  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever, LangSmithRetrieverParams  # noqa: E402
from pydantic import ConfigDict, ValidationInfo, field_validator  # noqa: E402

from rerank_plugins._adapters import (  # noqa: E402
    RERANKED_KEY,
    AdapterSettings,
    check_template,
    fill_template,
    gather_engine_options,
    model_name,
)
from rerank_plugins._langchain_runs import (  # noqa: E402
    arerank_run,
    rerank_run,
    run_metadata,
    run_outputs,
)
from rerank_plugins.contract import Scorer  # noqa: E402
from rerank_plugins.engine import RerankEngine  # noqa: E402
from rerank_plugins.registry import get_engine  # noqa: E402
from rerank_plugins.results import (  # noqa: E402
    RerankResult,
    check_count,
    check_instruction,
    check_threshold,
)
from rerank_plugins.retrieval import Match, TwoStageRetriever  # noqa: E402

__all__ = [
    "FIRST_STAGE_RANK_KEY",
    "FIRST_STAGE_SCORE_KEY",
    "RerankCompressor",
    "RerankCrossEncoder",
    "RerankRetriever",
]

FIRST_STAGE_SCORE_KEY = "first_stage_score"
"""Metadata key of a `RerankRetriever` document's first-stage (bi-encoder cosine) score."""
FIRST_STAGE_RANK_KEY = "first_stage_rank"
"""Metadata key of a `RerankRetriever` document's 1-based position in the first stage."""


class RerankCompressor(AdapterSettings, BaseDocumentCompressor):
    """Rerank retrieved documents with a cross-encoder and keep the best, with their scores.

    Works wherever LangChain takes a document compressor: ``ContextualCompressionRetriever``,
    ``DocumentCompressorPipeline``, and LCEL chains through those retrievers. The returned
    documents are new objects, best first, carrying the caller's metadata and ``id`` plus the
    score (a plain ``float``) under ``score_key``; the caller's documents are never changed.
    ``acompress_documents`` awaits the engine directly, so concurrent async calls share its
    batches without tying up threads. Each call is reported to the ``callbacks`` LangChain
    passes (and to any configured tracer) as a child run named ``"rerank"``: inputs
    ``{"query", "candidates"}``, outputs ``{"indices", "ids", "scores"}`` of the kept
    documents, best first.

    Args:
        model: Hub id or local folder of a cross-encoder, loaded once per process through
            `rerank_plugins.get_engine` (compressors with the same settings share it). The only
            setting that may be given positionally: ``RerankCompressor(model, top_n=3)``.
        engine: An existing engine (any `rerank_plugins.Scorer`) instead of ``model``.
        engine_options: Engine options for ``model``; they may also be given as keyword
            arguments (``device="cpu"``, ``max_length=256`` ...).
        top_n: Keep at most this many documents (default 3, as LangChain's rerankers); ``None``
            keeps every document, best first (as LangChain's ``CohereRerank``).
        score_threshold: Drop documents scoring below this, before the ``top_n`` cut.
        score_key: Metadata key of the score (default ``"relevance_score"``, the key of
            LangChain's Cohere and FlashRank rerankers).
        text_template: What is scored: ``None`` for the page content, a ``str.format``
            template over ``page_content`` and metadata fields (``"{title}: {page_content}"``),
            or a callable from `Document` to text.

    Raises:
        pydantic.ValidationError: A bad setting, one line naming it: an unknown option, not
            exactly one of ``model`` and ``engine``, ``top_n < 1``, a value of the wrong type
            (``top_n="3"``; values are never coerced), a malformed template, a bad engine
            option (``device="tpu"``).
        TypeError: More than one positional argument, or the model both positionally and as
            ``model=``.
        rerank_plugins.ModelLoadError: The model cannot be loaded.

    Examples:
        >>> from langchain_core.documents import Document
        >>> from rerank_plugins.langchain import RerankCompressor
        >>> compressor = RerankCompressor(  # doctest: +SKIP
        ...     "cross-encoder/ms-marco-MiniLM-L-6-v2", top_n=1
        ... )
        >>> docs = [Document("RAG combines retrieval with generation."), Document("Cats purr.")]
        >>> best = compressor.compress_documents(docs, "what is rag?")  # doctest: +SKIP
        >>> best[0].page_content, round(best[0].metadata["relevance_score"], 2)  # doctest: +SKIP
        ('RAG combines retrieval with generation.', 0.97)
    """

    score_key: str = "relevance_score"
    """Metadata key under which each returned document carries its score."""
    text_template: str | Callable[[Document], str] | None = None
    """What is scored: ``None`` (the page content), a ``str.format`` template over
    ``page_content`` and the metadata fields, or a callable from `Document` to text."""

    @field_validator("score_key", mode="before")
    @classmethod
    def _check_score_key(cls, value: object) -> str:
        return _check_score_key(value)

    @field_validator("text_template", mode="before")
    @classmethod
    def _check_text_template(cls, value: object) -> str | Callable[[Document], str] | None:
        if isinstance(value, str):
            return check_template(value)
        if value is None or callable(value):
            return value
        msg = (
            "text_template must be None, a str.format template such as "
            f"'{{title}}: {{page_content}}', or a callable from Document to str, got {value!r}."
        )
        raise ValueError(msg)

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> list[Document]:
        """Rerank ``documents`` against ``query``.

        Args:
            documents: The retrieved documents; an empty sequence returns ``[]`` without
                touching the model.
            query: The question.
            callbacks: What LangChain passes (a parent run's child callbacks, or handlers):
                the rerank step is reported to them as a child run named ``"rerank"``.

        Returns:
            New documents, best first, at most ``top_n``, each scoring at least
            ``score_threshold``, with the score under ``metadata[score_key]``.

        Raises:
            TypeError: ``query`` is not a string, or ``text_template`` produced a non-string.
            ValueError: ``query`` is empty, or a document lacks a field of ``text_template``.
        """
        metadata = run_metadata(model_name(self), self.top_n, self.score_threshold)
        with rerank_run(callbacks, query, len(documents), metadata) as run:
            # Each document travels with its position, which the run reports as "indices".
            ranked = self._rank(query, list(enumerate(documents)), self._text_of_pair)
            run.on_chain_end(_kept_outputs(ranked))
        return self._scored(ranked)

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> list[Document]:
        """Async `compress_documents`: awaits the engine without blocking the event loop."""
        metadata = run_metadata(model_name(self), self.top_n, self.score_threshold)
        async with arerank_run(callbacks, query, len(documents), metadata) as run:
            ranked = await self._arank(query, list(enumerate(documents)), self._text_of_pair)
            await run.on_chain_end(_kept_outputs(ranked))
        return self._scored(ranked)

    def _text_of_pair(self, item: tuple[int, Document]) -> str:
        return self._text_of(item[1])

    def _text_of(self, document: Document) -> str:
        template = self.text_template
        if template is None:
            return document.page_content
        if isinstance(template, str):
            return fill_template(
                template, {**document.metadata, "page_content": document.page_content}
            )
        return template(document)

    def _scored(self, ranked: list[tuple[tuple[int, Document], float | None]]) -> list[Document]:
        # model_copy keeps the caller's Document subclass, id and every other field; the new
        # metadata dict leaves the caller's own untouched.
        return [
            doc.model_copy(
                update={
                    "metadata": {**doc.metadata, self.score_key: score}
                    if score is not None
                    else {**doc.metadata, RERANKED_KEY: False}
                }
            )
            for (_, doc), score in ranked
        ]


class RerankRetriever(BaseRetriever):
    """A `TwoStageRetriever` as a LangChain retriever: bi-encoder candidates, then a rerank.

    Use it wherever LangChain takes a retriever (LCEL chains, agents' tools, ``EnsembleRetriever``)
    when the documents live in our own store (`InMemoryStore` or `QdrantStore`) rather than in a
    LangChain vector store; for a LangChain vector store, put a `RerankCompressor` after it.
    Each returned `Document` is built from a stored document: its text, its ``id`` and its
    metadata, plus the rerank score under ``score_key`` and the first stage's view under
    ``first_stage_score`` (cosine similarity) and ``first_stage_rank`` (1-based), all plain
    numbers. ``ainvoke`` runs the first stage (embedding, search) in a worker thread and awaits
    the engine for the rerank. Each call reports the rerank step as a child run named
    ``"rerank"`` of the retriever's run.

    Args:
        retriever: The two-stage retriever holding the documents, the bi-encoder and the engine.
        k: Documents to return at most (LangChain's name for it); ``invoke(query, k=2)``
            overrides it for one call.
        candidates: Documents the first stage hands to the reranker; raised to ``k`` when
            smaller, so that a large ``k`` never fails.
        score_threshold: Drop documents whose rerank score is below this, before the ``k`` cut
            (on the engine's scale, probabilities in [0, 1] by default).
        score_key: Metadata key of the rerank score.

    Raises:
        pydantic.ValidationError: A bad setting, one line naming it (``k=0``, ``k="3"``, a
            ``retriever`` that is not a `TwoStageRetriever`, an unknown setting).

    Examples:
        >>> from rerank_plugins.langchain import RerankRetriever
        >>> from rerank_plugins.retrieval import TwoStageRetriever
        >>> two_stage = TwoStageRetriever(  # doctest: +SKIP
        ...     "sentence-transformers/all-MiniLM-L6-v2",
        ...     reranker="cross-encoder/ms-marco-MiniLM-L-6-v2",
        ... )
        >>> two_stage.index(["RAG joins retrieval and generation.", "Cats purr."])  # doctest: +SKIP
        >>> retriever = RerankRetriever(retriever=two_stage, k=1)  # doctest: +SKIP
        >>> doc = retriever.invoke("What is RAG?")[0]  # doctest: +SKIP
        >>> doc.page_content, doc.metadata["first_stage_rank"]  # doctest: +SKIP
        ('RAG joins retrieval and generation.', 1)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    retriever: TwoStageRetriever
    """The two-stage retriever: its store holds the documents, its engine reranks."""
    k: int = 4
    """Documents to return at most; ``invoke(query, k=...)`` overrides it for one call."""
    candidates: int = 50
    """First-stage candidates handed to the reranker (at least ``k`` are always taken)."""
    score_threshold: float | None = None
    """Drop documents scoring below this, before the ``k`` cut; None keeps all."""
    score_key: str = "relevance_score"
    """Metadata key under which each returned document carries its rerank score."""

    @field_validator("k", "candidates", mode="before")
    @classmethod
    def _check_counts(cls, value: object, info: ValidationInfo) -> int:
        try:
            return check_count(str(info.field_name), value)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("score_threshold", mode="before")
    @classmethod
    def _check_score_threshold(cls, value: object) -> float | None:
        try:
            return check_threshold(value)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("score_key", mode="before")
    @classmethod
    def _check_score_key(cls, value: object) -> str:
        return _check_score_key(value)

    def _get_ls_params(self, **kwargs: Any) -> LangSmithRetrieverParams:
        params = super()._get_ls_params(**kwargs)
        params["ls_vector_store_provider"] = type(self.retriever.store).__name__
        params["ls_embedding_model"] = self.retriever.encoder.name
        return params

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, candidates, threshold = self._call_settings(kwargs)
        matches, engine = self._first_stage(query, candidates)
        metadata = run_metadata(None if engine is None else engine.info.model, k, threshold)
        with rerank_run(run_manager.get_child(), query, len(matches), metadata) as run:
            results = (
                engine.rerank(query, [m.text for m in matches], k, threshold) if engine else []
            )
            run.on_chain_end(_hit_outputs(matches, results))
        return self._documents(matches, results)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        k, candidates, threshold = self._call_settings(kwargs)
        # The first stage (a bi-encoder forward pass, a store search) has no async API: a
        # worker thread keeps it off the loop. The rerank awaits the engine itself.
        matches, engine = await asyncio.to_thread(self._first_stage, query, candidates)
        metadata = run_metadata(None if engine is None else engine.info.model, k, threshold)
        async with arerank_run(run_manager.get_child(), query, len(matches), metadata) as run:
            results = (
                await engine.arerank(query, [m.text for m in matches], k, threshold)
                if engine
                else []
            )
            await run.on_chain_end(_hit_outputs(matches, results))
        return self._documents(matches, results)

    def _call_settings(self, kwargs: Mapping[str, Any]) -> tuple[int, int, float | None]:
        """``k``, ``candidates`` and ``score_threshold`` for one call: its keywords, else ours."""
        unknown = sorted(set(kwargs) - {"k", "candidates", "score_threshold"})
        if unknown:
            msg = (
                f"RerankRetriever got unknown keyword argument(s) {', '.join(map(repr, unknown))}; "
                "expected k, candidates or score_threshold, e.g. retriever.invoke(query, k=3)."
            )
            raise TypeError(msg)
        k = check_count("k", kwargs.get("k", self.k))
        candidates = check_count("candidates", kwargs.get("candidates", self.candidates))
        threshold = check_threshold(kwargs.get("score_threshold", self.score_threshold))
        return k, max(candidates, k), threshold

    def _first_stage(self, query: str, candidates: int) -> tuple[list[Match], Scorer | None]:
        """The candidates, and the engine to rerank them (None, and not loaded, for none)."""
        matches = self.retriever.first_stage(query, candidates)
        return matches, (self.retriever.engine if matches else None)

    def _documents(self, matches: list[Match], results: list[RerankResult]) -> list[Document]:
        documents = []
        for result in results:
            match = matches[result.index]
            metadata = {
                **match.metadata,
                self.score_key: float(result.score),
                FIRST_STAGE_SCORE_KEY: float(match.score),
                FIRST_STAGE_RANK_KEY: result.index + 1,
            }
            documents.append(Document(page_content=match.text, metadata=metadata, id=match.id))
        return documents


class RerankCrossEncoder(BaseCrossEncoder):
    """The shared engine as a LangChain ``BaseCrossEncoder``, for ``CrossEncoderReranker``.

    ``CrossEncoderReranker(model=RerankCrossEncoder(...), top_n=3)`` is then LangChain's own
    reranker on our engine: one model per process shared with every other adapter, batched
    forward passes, the engine's cache. Scores are the engine's: probabilities in [0, 1] by
    default, the scale of langchain-community's ``HuggingFaceCrossEncoder`` (a sigmoid over a
    one-label model's logit); ``normalize=False`` gives raw logits. ``CrossEncoderReranker``
    throws the scores away and runs sync (``ainvoke`` parks a thread, and it reports no rerank
    run to callbacks); `RerankCompressor` keeps them, awaits the engine and is traced.

    A plain class, not a pydantic model: ``CrossEncoderReranker`` takes any
    ``BaseCrossEncoder``. Copies share the engine. Pickling one built from ``model`` stores
    the settings and looks the engine up again on loading; one on a `RemoteEngine` pickles
    with it; one on a loaded `RerankEngine` refuses with a ``TypeError``.

    Args:
        model: Hub id or local folder of a cross-encoder, loaded once per process through
            `rerank_plugins.get_engine`.
        engine: An existing engine (any `rerank_plugins.Scorer`) instead of ``model``.
        instruction: The task, for instruction-aware (decoder) rerankers (None: the model's
            default).
        engine_options: Engine options for ``model``; they may also be given as keyword
            arguments (``device="cpu"``, ``max_length=256`` ...).
        **options: More engine options, merged with ``engine_options``.

    Raises:
        TypeError: Not exactly one of ``model`` and ``engine``, an unknown option, engine
            options together with ``engine=``, an ``engine`` that is not a `Scorer`.
        ValueError: A bad engine option value (``device="tpu"``).
        rerank_plugins.ModelLoadError: The model cannot be loaded.

    Examples:
        >>> from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
        >>> from rerank_plugins.langchain import RerankCrossEncoder
        >>> cross_encoder = RerankCrossEncoder(  # doctest: +SKIP
        ...     model="cross-encoder/ms-marco-MiniLM-L-6-v2"
        ... )
        >>> pairs = [("what is rag?", "RAG joins retrieval and generation."), ("rag?", "Cats.")]
        >>> [round(s, 2) for s in cross_encoder.score(pairs)]  # doctest: +SKIP
        [0.97, 0.0]
        >>> reranker = CrossEncoderReranker(model=cross_encoder, top_n=3)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        engine: Scorer | None = None,
        instruction: str | None = None,
        engine_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if model is not None and not isinstance(model, str | os.PathLike):
            msg = f"model must be a hub id or a local folder (a str or path), got {model!r}."
            raise TypeError(msg)
        data = {
            "model": None if model is None else os.fspath(model),
            "engine": engine,
            "engine_options": engine_options,
            **options,
        }
        settings = gather_engine_options(
            type(self).__name__, data, ("model", "engine", "engine_options")
        )
        self.model: str | None = settings["model"]
        self.engine_options: dict[str, Any] = settings["engine_options"]
        self.instruction = check_instruction(instruction)
        self.engine: Scorer = engine if engine is not None else self._load()

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Score each (query, text) pair; pairs of different queries may be mixed.

        Pairs are grouped by query, each group scored in one engine call, and the scores put
        back in the order of ``text_pairs``.

        Args:
            text_pairs: ``(query, text)`` pairs.

        Returns:
            One plain ``float`` per pair, in order; ``[]`` for no pairs (the model is not
            touched).

        Raises:
            TypeError: A pair is not a (query, text) pair of strings.
            ValueError: A query is empty.
        """
        positions: dict[str, list[int]] = {}
        texts: list[str] = []
        for i, pair in enumerate(text_pairs):
            if not isinstance(pair, tuple | list) or len(pair) != 2 or not isinstance(pair[0], str):
                msg = f"text_pairs[{i}] must be a (query, text) pair of strings, got {pair!r}."
                raise TypeError(msg)
            positions.setdefault(pair[0], []).append(i)
            texts.append(pair[1])
        options = {} if self.instruction is None else {"instruction": self.instruction}
        scores = [0.0] * len(texts)
        for query, group in positions.items():
            got = self.engine.score(query, [texts[i] for i in group], **options)
            for i, value in zip(group, got, strict=True):
                scores[i] = float(value)
        return scores

    def _load(self) -> Scorer:
        # Only called with a model: the settings check guarantees exactly one of the two.
        return get_engine(str(self.model), **self.engine_options)

    def __getstate__(self) -> dict[str, Any]:
        # A loaded engine does not pickle; one built from `model` is looked up again, and a
        # RemoteEngine pickles as its settings.
        if self.model is None and isinstance(self.engine, RerankEngine):
            msg = (
                f"{type(self).__name__}(engine=...) holds a loaded RerankEngine, which cannot "
                "be pickled; build it with model=... (each process then loads or reuses its "
                "own engine) or with engine=RemoteEngine(...)."
            )
            raise TypeError(msg)
        state = dict(self.__dict__)
        if self.model is not None:
            del state["engine"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.model is not None:
            self.engine = self._load()

    def __copy__(self) -> RerankCrossEncoder:
        # Not through __getstate__, which refuses a loaded engine: a copy in this process may
        # share it.
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict[int, Any]) -> RerankCrossEncoder:
        # The engine is a process-wide resource (a model, a worker thread): copies share it.
        clone = self.__copy__()
        clone.engine_options = copy.deepcopy(self.engine_options, memo)
        return clone

    def __repr__(self) -> str:
        source = f"model={self.model!r}" if self.model is not None else f"engine={self.engine!r}"
        return f"{type(self).__name__}({source})"


def _check_score_key(value: object) -> str:
    if not isinstance(value, str) or not value:
        msg = f"score_key must be a non-empty metadata key, e.g. 'relevance_score', got {value!r}."
        raise ValueError(msg)
    return value


def _kept_outputs(ranked: list[tuple[tuple[int, Document], float | None]]) -> dict[str, list[Any]]:
    return run_outputs([(index, doc.id, score) for (index, doc), score in ranked])


def _hit_outputs(matches: list[Match], results: list[RerankResult]) -> dict[str, list[Any]]:
    return run_outputs([(r.index, matches[r.index].id, float(r.score)) for r in results])
