"""RerankPostprocessor: a LlamaIndex node postprocessor that reranks with the shared engine."""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
from llama_index.core.callbacks.llama_debug import LlamaDebugHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from pydantic import ValidationError

from rerank_plugins import RerankEngine
from rerank_plugins.llama_index import RerankPostprocessor
from tests._models import SENTENCES

QUERY = "what is rag retrieval augmented generation"


@pytest.fixture(scope="module")
def index() -> VectorStoreIndex:
    docs = [
        Document(text=text, metadata={"title": f"title {i}", "n": i}, id_=f"doc-{i}")
        for i, text in enumerate(SENTENCES)
    ]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


@pytest.fixture()
def nodes(index: VectorStoreIndex) -> list[NodeWithScore]:
    """Every node of the index, as a retriever returns them (with retrieval scores)."""
    return index.as_retriever(similarity_top_k=len(SENTENCES)).retrieve(QUERY)


def _all_nodes(index: VectorStoreIndex) -> list[TextNode]:
    return list(index.docstore.docs.values())  # type: ignore[arg-type]


def _expected(
    engine: RerankEngine,
    query: str,
    nodes: list[TextNode],
    top_n: int,
    mode: MetadataMode = MetadataMode.EMBED,
) -> list[tuple[str, float]]:
    scores = engine.score(query, [n.get_content(metadata_mode=mode) for n in nodes])
    ranked = sorted(zip([n.node_id for n in nodes], scores, strict=True), key=lambda p: -p[1])
    return ranked[:top_n]


def _assert_reranked(
    out: list[NodeWithScore], index: VectorStoreIndex, engine: RerankEngine, top_n: int
) -> None:
    expected = _expected(engine, QUERY, _all_nodes(index), top_n)
    assert [n.node.node_id for n in out] == [node_id for node_id, _ in expected]
    assert [n.score for n in out] == pytest.approx([s for _, s in expected], abs=1e-6)
    assert all(type(n.score) is float for n in out)
    for n in out:
        stored = index.docstore.get_node(n.node.node_id)
        assert n.node.metadata == stored.metadata
        assert n.node.get_content() == stored.get_content()
        assert n.node.ref_doc_id == stored.ref_doc_id


# ---------------------------------------------------------------------- end to end


def test_query_engine_sources_are_the_top_n_by_engine_score(
    index: VectorStoreIndex, bert_engine: RerankEngine
) -> None:
    query_engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=len(SENTENCES),
        node_postprocessors=[RerankPostprocessor(engine=bert_engine)],
    )
    response = query_engine.query(QUERY)
    assert len(response.source_nodes) == 3
    _assert_reranked(response.source_nodes, index, bert_engine, top_n=3)


def test_query_engine_aquery_matches_query(
    index: VectorStoreIndex, bert_engine: RerankEngine
) -> None:
    query_engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=len(SENTENCES),
        node_postprocessors=[RerankPostprocessor(engine=bert_engine, top_n=4)],
    )
    response = asyncio.run(query_engine.aquery(QUERY))
    _assert_reranked(response.source_nodes, index, bert_engine, top_n=4)
    assert [n.score for n in response.source_nodes] == [
        n.score for n in query_engine.query(QUERY).source_nodes
    ]


def test_top_n_none_keeps_every_source_node_best_first(
    index: VectorStoreIndex, bert_path: str, bert_engine: RerankEngine
) -> None:
    query_engine = index.as_query_engine(
        llm=MockLLM(),
        similarity_top_k=len(SENTENCES),
        node_postprocessors=[RerankPostprocessor(bert_path, device="cpu", top_n=None)],
    )
    response = query_engine.query(QUERY)
    _assert_reranked(response.source_nodes, index, bert_engine, top_n=len(SENTENCES))
    assert [n.score for n in asyncio.run(query_engine.aquery(QUERY)).source_nodes] == [
        n.score for n in response.source_nodes
    ]


def test_retriever_pipelines_rerank_sync_and_async(
    index: VectorStoreIndex, bert_engine: RerankEngine
) -> None:
    retriever = index.as_retriever(similarity_top_k=len(SENTENCES))
    reranker = RerankPostprocessor(engine=bert_engine, top_n=2)
    sync = reranker.postprocess_nodes(retriever.retrieve(QUERY), query_str=QUERY)
    _assert_reranked(sync, index, bert_engine, top_n=2)

    async def pipeline() -> list[NodeWithScore]:
        found = await retriever.aretrieve(QUERY)
        return await reranker.apostprocess_nodes(found, query_bundle=QueryBundle(QUERY))

    assert asyncio.run(pipeline()) == sync


# ---------------------------------------------------------------------- results


def test_caller_nodes_are_never_mutated(
    nodes: list[NodeWithScore], bert_engine: RerankEngine
) -> None:
    before = copy.deepcopy(nodes)
    reranker = RerankPostprocessor(engine=bert_engine, top_n=len(nodes), keep_retrieval_score=True)
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    out += asyncio.run(reranker.apostprocess_nodes(nodes, query_str=QUERY))
    assert nodes == before
    originals = {id(x) for n in nodes for x in (n, n.node, n.node.metadata)}
    assert not {id(x) for n in out for x in (n, n.node, n.node.metadata)} & originals


def test_keep_retrieval_score_moves_it_into_the_copy_metadata(
    nodes: list[NodeWithScore], bert_engine: RerankEngine
) -> None:
    retrieval = {n.node.node_id: n.score for n in nodes}
    reranker = RerankPostprocessor(engine=bert_engine, top_n=5, keep_retrieval_score=True)
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    for n in out:
        assert n.node.metadata["retrieval_score"] == retrieval[n.node.node_id]
        # The bookkeeping value stays out of what the LLM and the embeddings read.
        assert "retrieval_score" not in n.node.get_content(metadata_mode=MetadataMode.LLM)
        assert "retrieval_score" not in n.node.get_content(metadata_mode=MetadataMode.EMBED)
    assert all("retrieval_score" not in n.node.metadata for n in nodes)
    plain = RerankPostprocessor(engine=bert_engine).postprocess_nodes(nodes, query_str=QUERY)
    assert all("retrieval_score" not in n.node.metadata for n in plain)


def test_score_threshold_is_applied_before_top_n(
    index: VectorStoreIndex, nodes: list[NodeWithScore], bert_engine: RerankEngine
) -> None:
    scores = [s for _, s in _expected(bert_engine, QUERY, _all_nodes(index), len(SENTENCES))]
    threshold = (scores[1] + scores[2]) / 2  # exactly two nodes pass
    reranker = RerankPostprocessor(engine=bert_engine, top_n=5, score_threshold=threshold)
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.score for n in out] == pytest.approx(scores[:2], abs=1e-6)
    assert asyncio.run(reranker.apostprocess_nodes(nodes, query_str=QUERY)) == out


def test_metadata_mode_chooses_what_is_scored(
    index: VectorStoreIndex, nodes: list[NodeWithScore], bert_engine: RerankEngine
) -> None:
    reranker = RerankPostprocessor(engine=bert_engine, metadata_mode=MetadataMode.NONE)
    out = reranker.postprocess_nodes(nodes, query_str=QUERY)
    expected = _expected(bert_engine, QUERY, _all_nodes(index), 3, MetadataMode.NONE)
    assert [n.node.node_id for n in out] == [node_id for node_id, _ in expected]
    assert [n.score for n in out] == pytest.approx([s for _, s in expected], abs=1e-6)


# ---------------------------------------------------------------------- empty input, errors


def test_empty_input_returns_an_empty_list_without_touching_the_model(
    bert_engine: RerankEngine,
) -> None:
    reranker = RerankPostprocessor(engine=bert_engine)
    before = bert_engine.stats()["requests"]
    assert reranker.postprocess_nodes([], query_str=QUERY) == []
    assert asyncio.run(reranker.apostprocess_nodes([], query_str=QUERY)) == []
    assert bert_engine.stats()["requests"] == before


def test_a_missing_query_raises_a_clear_value_error(
    nodes: list[NodeWithScore], bert_engine: RerankEngine
) -> None:
    reranker = RerankPostprocessor(engine=bert_engine)
    with pytest.raises(ValueError, match="needs the query"):
        reranker.postprocess_nodes(nodes)
    with pytest.raises(ValueError, match="needs the query"):
        asyncio.run(reranker.apostprocess_nodes(nodes))


def test_the_async_path_awaits_the_engine_without_a_thread(
    nodes: list[NodeWithScore], bert_engine: RerankEngine
) -> None:
    class CountingExecutor(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            CountingExecutor.submitted += 1
            return super().submit(*args, **kwargs)

    reranker = RerankPostprocessor(engine=bert_engine)
    queries = [f"{QUERY} {i}" for i in range(8)]

    async def main() -> list[list[NodeWithScore]]:
        asyncio.get_running_loop().set_default_executor(CountingExecutor(max_workers=2))
        return await asyncio.gather(
            *(reranker.apostprocess_nodes(nodes, query_str=q) for q in queries)
        )

    results = asyncio.run(main())
    assert CountingExecutor.submitted == 0
    assert [len(r) for r in results] == [3] * len(queries)


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


@pytest.mark.parametrize("run", ["sync", "async"])
@pytest.mark.parametrize("empty", [False, True], ids=["nodes", "empty"])
def test_rerank_events_and_the_reranking_callback_fire(
    run: str,
    empty: bool,
    nodes: list[NodeWithScore],
    bert_engine: RerankEngine,
    recorder: _EventRecorder,
) -> None:
    debug = LlamaDebugHandler(print_trace_on_end=False)
    reranker = RerankPostprocessor(
        engine=bert_engine, top_n=2, callback_manager=CallbackManager([debug])
    )
    given = [] if empty else nodes
    if run == "sync":
        out = reranker.postprocess_nodes(given, query_str=QUERY)
    else:
        out = asyncio.run(reranker.apostprocess_nodes(given, query_str=QUERY))

    starts = [e for e in recorder.events if isinstance(e, ReRankStartEvent)]
    ends = [e for e in recorder.events if isinstance(e, ReRankEndEvent)]
    assert len(starts) == len(ends) == 1
    assert starts[0].top_n == 2
    assert starts[0].model_name == bert_engine.info.model
    assert starts[0].nodes == given
    assert ends[0].nodes == out
    assert recorder.events.index(starts[0]) < recorder.events.index(ends[0])

    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    start, end = pairs[0]
    assert start.payload[EventPayload.QUERY_STR] == QUERY
    assert start.payload[EventPayload.TOP_K] == 2
    assert end.payload[EventPayload.NODES] == out
    assert len(out) == (0 if empty else 2)


@pytest.mark.parametrize("empty", [False, True], ids=["nodes", "empty"])
def test_with_top_n_none_the_events_report_every_node_given(
    empty: bool, nodes: list[NodeWithScore], bert_engine: RerankEngine, recorder: _EventRecorder
) -> None:
    # The events' top_n is an int in LlamaIndex: "keep all" is the number of nodes given.
    debug = LlamaDebugHandler(print_trace_on_end=False)
    reranker = RerankPostprocessor(
        engine=bert_engine, top_n=None, callback_manager=CallbackManager([debug])
    )
    given = [] if empty else nodes
    out = reranker.postprocess_nodes(given, query_str=QUERY)
    (start,) = [e for e in recorder.events if isinstance(e, ReRankStartEvent)]
    assert start.top_n == len(given) == len(out)
    ((begin, _),) = debug.get_event_pairs(CBEventType.RERANKING)
    assert begin.payload[EventPayload.TOP_K] == len(given)


def test_model_name_in_events_is_the_model_given(
    bert_path: str, nodes: list[NodeWithScore], recorder: _EventRecorder
) -> None:
    RerankPostprocessor(model=bert_path, device="cpu").postprocess_nodes(nodes, query_str=QUERY)
    starts = [e for e in recorder.events if isinstance(e, ReRankStartEvent)]
    assert [e.model_name for e in starts] == [bert_path]


# ---------------------------------------------------------------------- construction


def test_model_and_engine_options_resolve_to_the_shared_engine(
    bert_path: str, bert_engine: RerankEngine
) -> None:
    assert RerankPostprocessor(model=bert_path, device="cpu").engine is bert_engine
    assert RerankPostprocessor(engine=bert_engine).engine is bert_engine


# The settings both adapters share are pinned in test_adapters_shared.py; these are LlamaIndex's.
@pytest.mark.parametrize(
    ("options", "match"),
    [
        (
            {"metadata_mode": "bogus"},
            r"metadata_mode must be one of MetadataMode\.ALL, .*got 'bogus'",
        ),
        ({"metadata_mode": 2}, r"metadata_mode must be one of .*got 2"),
        ({"keep_retrieval_score": "yes"}, r"keep_retrieval_score must be True or False, got 'yes'"),
        ({"keep_retrieval_score": 1}, r"keep_retrieval_score must be True or False, got 1"),
    ],
)
def test_invalid_settings_raise_a_one_line_validation_error_naming_them(
    bert_path: str, options: dict, match: str
) -> None:
    with pytest.raises(ValidationError, match=match) as caught:
        RerankPostprocessor(bert_path, **options)
    (error,) = caught.value.errors()
    assert "\n" not in error["msg"]


def test_metadata_mode_may_be_given_by_its_value(bert_engine: RerankEngine) -> None:
    reranker = RerankPostprocessor(engine=bert_engine, metadata_mode="none")
    assert reranker.metadata_mode is MetadataMode.NONE


def test_serialization_leaves_out_the_engine(bert_path: str) -> None:
    data = RerankPostprocessor(model=bert_path, device="cpu", top_n=2).to_dict()
    assert "engine" not in data
    assert data["class_name"] == "RerankPostprocessor"
    assert data["model"] == bert_path
    assert data["engine_options"] == {"device": "cpu"}


def test_to_json_and_back_keeps_every_setting(bert_path: str, bert_engine: RerankEngine) -> None:
    built = RerankPostprocessor(
        bert_path,
        device="cpu",
        top_n=None,
        metadata_mode=MetadataMode.LLM,
        keep_retrieval_score=True,
        timeout=5,
    )
    back = RerankPostprocessor.from_json(built.to_json())
    assert back.engine is bert_engine
    assert back.to_dict() == built.to_dict()
