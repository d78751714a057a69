"""LlamaIndex adapters over the shared engine: a node postprocessor and a two-stage retriever.

`RerankPostprocessor` reranks what another retriever found; `RerankRetriever` is a whole
two-stage retriever (`rerank_plugins.retrieval.TwoStageRetriever`) as a LlamaIndex retriever.
"""

from __future__ import annotations

from rerank_plugins._imports import require

require("llama_index.core", extra="llama-index", purpose="rerank_plugins.llama_index")

from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Any  # noqa: E402

from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload  # noqa: E402
from llama_index.core.constants import DEFAULT_SIMILARITY_TOP_K  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.events.rerank import (  # noqa: E402
    ReRankEndEvent,
    ReRankStartEvent,
)
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.retrievers import BaseRetriever  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode  # noqa: E402
from llama_index.core.settings import Settings  # noqa: E402
from pydantic import (  # noqa: E402
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from rerank_plugins._adapters import RERANKED_KEY, AdapterSettings, model_name  # noqa: E402
from rerank_plugins.results import check_count, check_threshold  # noqa: E402
from rerank_plugins.retrieval import Hit, TwoStageRetriever  # noqa: E402

__all__ = [
    "FIRST_STAGE_RANK_KEY",
    "FIRST_STAGE_SCORE_KEY",
    "RETRIEVAL_SCORE_KEY",
    "RerankPostprocessor",
    "RerankRetriever",
]

RETRIEVAL_SCORE_KEY = "retrieval_score"
"""Metadata key of the original retrieval score when ``keep_retrieval_score=True``."""
FIRST_STAGE_SCORE_KEY = "first_stage_score"
"""Metadata key of a `RerankRetriever` node's first-stage (bi-encoder cosine) score."""
FIRST_STAGE_RANK_KEY = "first_stage_rank"
"""Metadata key of a `RerankRetriever` node's 1-based position in the first stage."""

dispatcher = get_dispatcher(__name__)


class RerankPostprocessor(AdapterSettings, BaseNodePostprocessor):
    """Rerank retrieved nodes with a cross-encoder and keep the best, with their scores.

    Use it in ``index.as_query_engine(node_postprocessors=[...])`` (``query`` and ``aquery``)
    or on a retriever's output with ``postprocess_nodes`` / ``apostprocess_nodes``. It returns
    new `NodeWithScore` objects, best first, holding copies of the nodes with
    ``NodeWithScore.score`` set to the rerank score (a plain ``float``); the caller's nodes are
    never changed. It emits LlamaIndex's ``ReRankStartEvent`` / ``ReRankEndEvent`` and the
    callback manager's ``RERANKING`` event, and the async path awaits the engine directly.

    Args:
        model: Hub id or local folder of a cross-encoder, loaded once per process through
            `rerank_plugins.get_engine` (postprocessors with the same settings share it). The
            only setting that may be given positionally: ``RerankPostprocessor(model, top_n=3)``.
        engine: An existing engine (any `rerank_plugins.Scorer`) instead of ``model``.
        engine_options: Engine options for ``model``; they may also be given as keyword
            arguments (``device="cpu"``, ``max_length=256`` ...).
        top_n: Keep at most this many nodes (default 3); ``None`` keeps every node, best first.
        score_threshold: Drop nodes scoring below this, before the ``top_n`` cut.
        metadata_mode: Which metadata ``node.get_content`` includes in the scored text
            (default ``MetadataMode.EMBED``, as LlamaIndex's own rerankers).
        keep_retrieval_score: Keep the original retrieval score in the copy's metadata under
            ``"retrieval_score"`` (hidden from the text the LLM and embeddings see).
        callback_manager: LlamaIndex callback manager (set by the query engine).

    Raises:
        pydantic.ValidationError: A bad setting, one line naming it: an unknown option, not
            exactly one of ``model`` and ``engine``, ``top_n < 1``, a value of the wrong type
            (``top_n="3"``; values are never coerced), a bad engine option (``device="tpu"``).
        TypeError: More than one positional argument, or the model both positionally and as
            ``model=``.
        rerank_plugins.ModelLoadError: The model cannot be loaded.

    Examples:
        >>> from llama_index.core.schema import NodeWithScore, TextNode
        >>> from rerank_plugins.llama_index import RerankPostprocessor
        >>> reranker = RerankPostprocessor(  # doctest: +SKIP
        ...     "cross-encoder/ms-marco-MiniLM-L-6-v2", top_n=1
        ... )
        >>> texts = ["RAG is ...", "Cats purr."]
        >>> nodes = [NodeWithScore(node=TextNode(text=t), score=0.5) for t in texts]
        >>> best = reranker.postprocess_nodes(nodes, query_str="what is rag?")  # doctest: +SKIP
        >>> best[0].node.text, round(best[0].score, 2)  # doctest: +SKIP
        ('RAG is ...', 0.97)
    """

    metadata_mode: MetadataMode = MetadataMode.EMBED
    """Which metadata ``node.get_content(metadata_mode=...)`` puts into the scored text."""
    keep_retrieval_score: bool = False
    """Keep the original retrieval score in the copy's metadata under ``"retrieval_score"``."""

    @field_validator("metadata_mode", mode="before")
    @classmethod
    def _check_metadata_mode(cls, value: object) -> MetadataMode:
        try:
            return MetadataMode(value)
        except (TypeError, ValueError):
            modes = ", ".join(f"MetadataMode.{m.name}" for m in MetadataMode)
            msg = f"metadata_mode must be one of {modes} (or its value), got {value!r}."
            raise ValueError(msg) from None

    @field_validator("keep_retrieval_score", mode="before")
    @classmethod
    def _check_keep_retrieval_score(cls, value: object) -> bool:
        if not isinstance(value, bool):
            msg = f"keep_retrieval_score must be True or False, got {value!r}."
            raise ValueError(msg)
        return value

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex serialization."""
        return "RerankPostprocessor"

    @model_serializer(mode="wrap")
    def _dump_settings(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo):  # type: ignore[no-untyped-def]
        # Pydantic keeps one model serializer, the last defined. Named as the adapters' one,
        # this replaces it and does the work of both it (the engine as data) and LlamaIndex
        # BaseComponent's (the class name).
        data = self._settings_data(handler, info)
        data["class_name"] = self.class_name()
        return data

    def _postprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = _query_of(query_bundle)
        with self._reranking(nodes, query_bundle, query) as finish:
            return finish(self._rank(query, nodes, self._text_of))

    async def _apostprocess_nodes(
        self,
        nodes: list[NodeWithScore],
        query_bundle: QueryBundle | None = None,
    ) -> list[NodeWithScore]:
        query = _query_of(query_bundle)
        with self._reranking(nodes, query_bundle, query) as finish:
            return finish(await self._arank(query, nodes, self._text_of))

    def _text_of(self, node: NodeWithScore) -> str:
        return node.node.get_content(metadata_mode=self.metadata_mode)

    def _scored(self, ranked: list[tuple[NodeWithScore, float | None]]) -> list[NodeWithScore]:
        out = []
        for item, score in ranked:
            # A shallow copy of the node with its own metadata dict and exclusion lists (what
            # later steps tend to edit): the caller's node and its score stay as they were.
            node = item.node
            metadata = dict(node.metadata)
            excluded_llm = list(node.excluded_llm_metadata_keys)
            excluded_embed = list(node.excluded_embed_metadata_keys)
            bookkeeping = []
            if self.keep_retrieval_score:
                metadata[RETRIEVAL_SCORE_KEY] = None if item.score is None else float(item.score)
                bookkeeping.append(RETRIEVAL_SCORE_KEY)
            if score is None:  # passed through unranked: keep the retrieval score
                metadata[RERANKED_KEY] = False
                bookkeeping.append(RERANKED_KEY)
                score = item.score
            # Bookkeeping, not content: keep it out of what the LLM and embeddings read.
            for keys in (excluded_llm, excluded_embed):
                keys.extend(k for k in bookkeeping if k not in keys)
            update = {
                "metadata": metadata,
                "excluded_llm_metadata_keys": excluded_llm,
                "excluded_embed_metadata_keys": excluded_embed,
            }
            out.append(NodeWithScore(node=node.model_copy(update=update), score=score))
        return out

    @contextmanager
    def _reranking(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None, query: str
    ) -> Iterator[Callable[[list[tuple[NodeWithScore, float | None]]], list[NodeWithScore]]]:
        """Emit the start events; yield the step that builds the result and ends the events."""
        # The events take an int: with top_n=None (keep all) that is every node given.
        top_n = len(nodes) if self.top_n is None else self.top_n
        dispatcher.event(
            ReRankStartEvent(
                query=query_bundle, nodes=nodes, top_n=top_n, model_name=model_name(self)
            )
        )
        payload: dict[str, Any] = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: model_name(self),
            EventPayload.QUERY_STR: query,
            EventPayload.TOP_K: top_n,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:

            def finish(
                ranked: list[tuple[NodeWithScore, float | None]],
            ) -> list[NodeWithScore]:
                result = self._scored(ranked)
                event.on_end(payload={EventPayload.NODES: result})
                dispatcher.event(ReRankEndEvent(nodes=result))
                return result

            yield finish


def _query_of(query_bundle: QueryBundle | None) -> str:
    if query_bundle is None:
        msg = (
            "RerankPostprocessor needs the query: pass query_str=... (or query_bundle=...) to "
            "postprocess_nodes, or use it inside a query engine."
        )
        raise ValueError(msg)
    return query_bundle.query_str


class RerankRetriever(BaseRetriever):
    """A `TwoStageRetriever` as a LlamaIndex retriever: bi-encoder candidates, then a rerank.

    Use it wherever LlamaIndex takes a retriever (``RetrieverQueryEngine``,
    ``QueryFusionRetriever``, a router) when the documents live in our own store
    (`InMemoryStore` or `QdrantStore`) rather than in a LlamaIndex index; for an index, put a
    `RerankPostprocessor` after its retriever instead. Each returned `NodeWithScore` holds a
    new `TextNode` built from a stored document (its text, id and metadata) with
    ``NodeWithScore.score`` set to the rerank score, and the first stage's view in the node's
    metadata under ``"first_stage_score"`` (cosine similarity) and ``"first_stage_rank"``
    (1-based), hidden from the text the LLM and embeddings see. The nodes and scores are
    exactly what ``TwoStageRetriever.retrieve`` returns. ``aretrieve`` awaits
    ``TwoStageRetriever.aretrieve``: the first stage runs in a worker thread and the rerank
    awaits the engine. LlamaIndex's retrieval events (``RetrievalStartEvent`` /
    ``RetrievalEndEvent``, the callback manager's ``RETRIEVE``) fire as for its own retrievers.

    Args:
        retriever: The two-stage retriever holding the documents, the bi-encoder and the engine.
        top_k: Nodes to return at most (default 2, LlamaIndex's ``similarity_top_k``).
        candidates: Documents the first stage hands to the reranker (default 50); raised to
            ``top_k`` when smaller.
        score_threshold: Drop nodes whose rerank score is below this, before the ``top_k`` cut
            (on the engine's scale, probabilities in [0, 1] by default).
        callback_manager: LlamaIndex callback manager (default: ``Settings.callback_manager``).

    Raises:
        TypeError: ``retriever`` is not a `TwoStageRetriever`, or a count or threshold of the
            wrong type (``top_k="3"``).
        ValueError: ``top_k`` or ``candidates`` below 1, or a NaN threshold.

    Examples:
        >>> from rerank_plugins.llama_index import RerankRetriever
        >>> from rerank_plugins.retrieval import TwoStageRetriever
        >>> two_stage = TwoStageRetriever(  # doctest: +SKIP
        ...     "sentence-transformers/all-MiniLM-L6-v2",
        ...     reranker="cross-encoder/ms-marco-MiniLM-L-6-v2",
        ... )
        >>> two_stage.index(["RAG joins retrieval and generation.", "Cats purr."])  # doctest: +SKIP
        >>> best = RerankRetriever(two_stage, top_k=1).retrieve("What is RAG?")[0]  # doctest: +SKIP
        >>> best.node.get_content(), best.node.metadata["first_stage_rank"]  # doctest: +SKIP
        ('RAG joins retrieval and generation.', 1)
    """

    def __init__(
        self,
        retriever: TwoStageRetriever,
        *,
        top_k: int = DEFAULT_SIMILARITY_TOP_K,
        candidates: int = 50,
        score_threshold: float | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if not isinstance(retriever, TwoStageRetriever):
            msg = (
                "RerankRetriever needs a rerank_plugins.retrieval.TwoStageRetriever, got "
                f"{type(retriever).__name__}; for a LlamaIndex index, put a "
                "RerankPostprocessor after its retriever instead."
            )
            raise TypeError(msg)
        self.retriever = retriever
        self.top_k = check_count("top_k", top_k)
        self.candidates = check_count("candidates", candidates)
        self.score_threshold = check_threshold(score_threshold)
        # As LlamaIndex's own retrievers: handlers set on Settings see this one too.
        super().__init__(callback_manager=callback_manager or Settings.callback_manager)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.retriever.retrieve(
            query_bundle.query_str, *self._counts(), score_threshold=self.score_threshold
        )
        return [_node(hit) for hit in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = await self.retriever.aretrieve(
            query_bundle.query_str, *self._counts(), score_threshold=self.score_threshold
        )
        return [_node(hit) for hit in hits]

    def _counts(self) -> tuple[int, int]:
        """``top_k`` and ``candidates``, the latter at least the former."""
        return self.top_k, max(self.candidates, self.top_k)

    def __repr__(self) -> str:
        return (
            f"RerankRetriever({self.retriever!r}, top_k={self.top_k}, "
            f"candidates={self.candidates}, score_threshold={self.score_threshold})"
        )


def _node(hit: Hit) -> NodeWithScore:
    """A retrieval hit as a scored node: a new `TextNode` with the first stage's bookkeeping."""
    bookkeeping = [FIRST_STAGE_SCORE_KEY, FIRST_STAGE_RANK_KEY]
    node = TextNode(
        id_=hit.id,
        text=hit.text,
        metadata={
            **hit.metadata,
            FIRST_STAGE_SCORE_KEY: float(hit.first_stage_score),
            FIRST_STAGE_RANK_KEY: int(hit.first_stage_rank),
        },
        # Bookkeeping, not content: kept out of what the LLM and embeddings read.
        excluded_llm_metadata_keys=list(bookkeeping),
        excluded_embed_metadata_keys=list(bookkeeping),
    )
    return NodeWithScore(node=node, score=float(hit.score))
