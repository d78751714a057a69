"""RerankRetriever: a TwoStageRetriever as a LlamaIndex retriever, inside LlamaIndex's own engines."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.callbacks.llama_debug import LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.retrieval import (
    RetrievalEndEvent,
    RetrievalStartEvent,
)
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

from rerank_plugins import RerankEngine
from rerank_plugins.data import load_corpus
from rerank_plugins.llama_index import (
    FIRST_STAGE_RANK_KEY,
    FIRST_STAGE_SCORE_KEY,
    RerankRetriever,
)
from rerank_plugins.retrieval import BiEncoder, Hit, TwoStageRetriever

QUERY = "Why is the sky blue?"
BOOKKEEPING = {FIRST_STAGE_SCORE_KEY, FIRST_STAGE_RANK_KEY}


@pytest.fixture(scope="module")
def encoder() -> BiEncoder:
    from rerank_plugins.models.offline import bi_encoder_path

    return BiEncoder(bi_encoder_path(), device="cpu").load()


@pytest.fixture(scope="module")
def two_stage(encoder: BiEncoder, bert_engine: RerankEngine) -> TwoStageRetriever:
    passages = load_corpus()[::5]  # 60 passages, four from each topic
    retriever = TwoStageRetriever(encoder, engine=bert_engine)
    retriever.index(
        [p.text for p in passages],
        metadatas=[p.metadata for p in passages],
        ids=[p.id for p in passages],
    )
    return retriever


def _assert_nodes_are_the_hits(nodes: list[NodeWithScore], hits: list[Hit]) -> None:
    """Each node is the hit at its place: same id, text, metadata, scores, first-stage view."""
    assert hits, "a comparison with no hits proves nothing"
    assert [n.node.node_id for n in nodes] == [h.id for h in hits]
    assert [n.score for n in nodes] == [h.score for h in hits]
    for n, hit in zip(nodes, hits, strict=True):
        assert isinstance(n.node, TextNode)
        assert type(n.score) is float
        assert n.node.get_content(metadata_mode=MetadataMode.NONE) == hit.text
        metadata = dict(n.node.metadata)
        assert metadata.pop(FIRST_STAGE_SCORE_KEY) == hit.first_stage_score
        assert metadata.pop(FIRST_STAGE_RANK_KEY) == hit.first_stage_rank
        assert metadata == hit.metadata


# ---------------------------------------------------------------------- on its own


def test_retrieve_returns_the_two_stage_hits_as_nodes_with_their_rerank_scores(
    two_stage: TwoStageRetriever,
) -> None:
    nodes = RerankRetriever(two_stage, top_k=5, candidates=20).retrieve(QUERY)
    _assert_nodes_are_the_hits(nodes, two_stage.retrieve(QUERY, top_k=5, candidates=20))


def test_aretrieve_returns_the_same_nodes_as_retrieve(two_stage: TwoStageRetriever) -> None:
    retriever = RerankRetriever(two_stage, top_k=5, candidates=20)
    nodes = asyncio.run(retriever.aretrieve(QUERY))
    _assert_nodes_are_the_hits(nodes, two_stage.retrieve(QUERY, top_k=5, candidates=20))
    assert nodes == retriever.retrieve(QUERY)


def test_the_async_path_awaits_the_two_stage_async_path_not_the_sync_one(
    two_stage: TwoStageRetriever, bert_engine: RerankEngine
) -> None:
    class AsyncOnly(TwoStageRetriever):
        def retrieve(self, *args: Any, **kwargs: Any) -> list[Hit]:
            raise AssertionError("aretrieve must not fall back to the sync retrieve")

    same_store = AsyncOnly(two_stage.encoder, engine=bert_engine, store=two_stage.store)
    nodes = asyncio.run(RerankRetriever(same_store, top_k=3).aretrieve(QUERY))
    _assert_nodes_are_the_hits(nodes, two_stage.retrieve(QUERY, top_k=3))


def test_the_default_top_k_is_llama_index_s_similarity_top_k(
    two_stage: TwoStageRetriever,
) -> None:
    nodes = RerankRetriever(two_stage).retrieve(QUERY)
    _assert_nodes_are_the_hits(nodes, two_stage.retrieve(QUERY, top_k=2))


def test_candidates_fewer_than_top_k_are_raised_to_top_k(two_stage: TwoStageRetriever) -> None:
    nodes = RerankRetriever(two_stage, top_k=6, candidates=2).retrieve(QUERY)
    _assert_nodes_are_the_hits(nodes, two_stage.retrieve(QUERY, top_k=6, candidates=6))


def test_score_threshold_is_applied_before_top_k(two_stage: TwoStageRetriever) -> None:
    candidates = two_stage.retrieve_detailed(QUERY, top_k=20, candidates=20).candidates
    scores = sorted((c.score for c in candidates), reverse=True)
    threshold = scores[2]  # three candidates reach it
    retriever = RerankRetriever(two_stage, top_k=10, candidates=20, score_threshold=threshold)
    nodes = retriever.retrieve(QUERY)
    assert len(nodes) == 3
    _assert_nodes_are_the_hits(
        nodes, two_stage.retrieve(QUERY, top_k=10, candidates=20, score_threshold=threshold)
    )


def test_first_stage_bookkeeping_is_hidden_from_the_llm_and_the_embeddings(
    two_stage: TwoStageRetriever,
) -> None:
    (node,) = RerankRetriever(two_stage, top_k=1).retrieve(QUERY)
    assert set(node.node.excluded_llm_metadata_keys) >= BOOKKEEPING
    assert set(node.node.excluded_embed_metadata_keys) >= BOOKKEEPING
    for mode in (MetadataMode.LLM, MetadataMode.EMBED):
        text = node.node.get_content(metadata_mode=mode)
        assert FIRST_STAGE_RANK_KEY not in text
        assert FIRST_STAGE_SCORE_KEY not in text
    assert FIRST_STAGE_RANK_KEY in node.node.get_content(metadata_mode=MetadataMode.ALL)


def test_an_empty_store_returns_no_nodes(encoder: BiEncoder, bert_engine: RerankEngine) -> None:
    empty = TwoStageRetriever(encoder, engine=bert_engine)
    retriever = RerankRetriever(empty)
    assert retriever.retrieve(QUERY) == []
    assert asyncio.run(retriever.aretrieve(QUERY)) == []


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"top_k": 0}, ValueError, r"top_k must be >= 1, got 0"),
        ({"top_k": "3"}, TypeError, r"top_k must be a positive int, got '3'"),
        ({"candidates": True}, TypeError, r"candidates must be a positive int, got True"),
        ({"score_threshold": "0.5"}, TypeError, r"score_threshold must be a number or None"),
        ({"score_threshold": math.nan}, ValueError, r"score_threshold must not be NaN"),
    ],
)
def test_bad_settings_raise_one_line_errors_naming_them(
    two_stage: TwoStageRetriever, options: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        RerankRetriever(two_stage, **options)
    assert "\n" not in str(caught.value)


def test_anything_but_a_two_stage_retriever_is_refused_with_what_to_use_instead(
    bert_engine: RerankEngine,
) -> None:
    with pytest.raises(TypeError, match=r"got RerankEngine; .* put a RerankPostprocessor after"):
        RerankRetriever(bert_engine)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- inside LlamaIndex


@pytest.mark.parametrize("run", ["query", "aquery"])
def test_inside_a_retriever_query_engine_the_sources_are_the_two_stage_hits(
    run: str, two_stage: TwoStageRetriever
) -> None:
    # MockLLM: the answer is not under test, and nothing may reach a network.
    engine = RetrieverQueryEngine.from_args(
        RerankRetriever(two_stage, top_k=4, candidates=20), llm=MockLLM()
    )
    response = engine.query(QUERY) if run == "query" else asyncio.run(engine.aquery(QUERY))
    _assert_nodes_are_the_hits(
        response.source_nodes, two_stage.retrieve(QUERY, top_k=4, candidates=20)
    )
    assert str(response)  # the LLM was given the nodes and answered


@pytest.mark.parametrize(
    ("run", "use_async"),
    [("retrieve", False), ("retrieve", True), ("aretrieve", True)],
    ids=["sync", "sync-nested-async", "async"],
)
def test_inside_a_query_fusion_retriever_the_fused_nodes_are_the_two_stage_hits(
    run: str, use_async: bool, two_stage: TwoStageRetriever
) -> None:
    # One query and the "simple" mode: no generated queries, and the scores pass unchanged.
    fusion = QueryFusionRetriever(
        [RerankRetriever(two_stage, top_k=5, candidates=20)],
        llm=MockLLM(),
        num_queries=1,
        mode="simple",
        similarity_top_k=5,
        use_async=use_async,
    )
    nodes = fusion.retrieve(QUERY) if run == "retrieve" else asyncio.run(fusion.aretrieve(QUERY))
    _assert_nodes_are_the_hits(nodes, two_stage.retrieve(QUERY, top_k=5, candidates=20))


# ---------------------------------------------------------------------- instrumentation


class _EventRecorder(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "EventRecorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture()
def recorder():
    root = get_dispatcher()
    handler = _EventRecorder()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


@pytest.mark.parametrize("run", ["retrieve", "aretrieve"])
def test_retrieval_events_and_the_retrieve_callback_fire_as_for_llama_index_retrievers(
    run: str, two_stage: TwoStageRetriever, recorder: _EventRecorder
) -> None:
    debug = LlamaDebugHandler(print_trace_on_end=False)
    retriever = RerankRetriever(two_stage, top_k=3, callback_manager=CallbackManager([debug]))
    if run == "retrieve":
        nodes = retriever.retrieve(QUERY)
    else:
        nodes = asyncio.run(retriever.aretrieve(QUERY))

    (start,) = [e for e in recorder.events if isinstance(e, RetrievalStartEvent)]
    (end,) = [e for e in recorder.events if isinstance(e, RetrievalEndEvent)]
    assert start.str_or_query_bundle == QUERY
    assert end.nodes == nodes
    assert recorder.events.index(start) < recorder.events.index(end)

    ((begin, finish),) = debug.get_event_pairs(CBEventType.RETRIEVE)
    assert begin.payload[EventPayload.QUERY_STR] == QUERY
    assert finish.payload[EventPayload.NODES] == nodes
    assert len(nodes) == 3
