"""RerankRetriever, RerankCrossEncoder and the rerank run that LangChain's callbacks see."""

from __future__ import annotations

import asyncio
import copy
import pickle
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests
from pydantic import ValidationError

from rerank_plugins import BackendError, RerankEngine
from rerank_plugins.langchain import (
    RerankCompressor,
    RerankCrossEncoder,
    RerankRetriever,
)
from rerank_plugins.remote import RemoteEngine
from rerank_plugins.retrieval import BiEncoder, InMemoryStore, QdrantStore, TwoStageRetriever
from tests._fakes import FakeBackend
from tests._models import SENTENCES

QUERY = "what is rag retrieval augmented generation"
IDS = [f"doc-{i}" for i in range(len(SENTENCES))]
STORES = ["memory", "qdrant-memory"]


# ---------------------------------------------------------------------- helpers


class RecordingScorer:
    """The real engine, with a record of which of its scoring methods each call used."""

    def __init__(self, engine: RerankEngine) -> None:
        self.inner = engine
        self.calls: list[str] = []

    def score(self, query: str, texts: Sequence[str], **options: Any) -> list[float]:
        self.calls.append("score")
        return self.inner.score(query, texts, **options)

    async def ascore(self, query: str, texts: Sequence[str], **options: Any) -> list[float]:
        self.calls.append("ascore")
        return await self.inner.ascore(query, texts, **options)

    def rerank(self, query: str, texts: Sequence[str], *args: Any, **options: Any) -> Any:
        self.calls.append("rerank")
        return self.inner.rerank(query, texts, *args, **options)

    async def arerank(self, query: str, texts: Sequence[str], *args: Any, **options: Any) -> Any:
        self.calls.append("arerank")
        return await self.inner.arerank(query, texts, *args, **options)

    @property
    def info(self) -> Any:
        return self.inner.info

    @property
    def closed(self) -> bool:
        return self.inner.closed

    def stats(self) -> dict[str, int]:
        return self.inner.stats()

    def close(self) -> None:  # the shared engine outlives this test
        pass


class Runs:
    """What a tracer sees: every run's start and end events, by run id."""

    def __init__(self) -> None:
        self.by_id: dict[UUID, dict[str, Any]] = {}

    def start(self, kind: str, run_id: UUID, parent: UUID | None, **fields: Any) -> None:
        self.by_id[run_id] = {"kind": kind, "parent_run_id": parent, **fields}

    def end(self, run_id: UUID, **fields: Any) -> None:
        self.by_id[run_id].update(fields)

    def named(self, name: str) -> list[dict[str, Any]]:
        return [run for run in self.by_id.values() if run["name"] == name]

    def one(self, name: str) -> dict[str, Any]:
        (run,) = self.named(name)
        return run

    def id_of(self, name: str) -> UUID:
        (run_id,) = [i for i, run in self.by_id.items() if run["name"] == name]
        return run_id


class Recorder(BaseCallbackHandler):
    """A sync tracer: records chain and retriever runs."""

    def __init__(self) -> None:
        self.runs = Runs()

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kw) -> None:
        self.runs.start(
            "chain",
            run_id,
            parent_run_id,
            name=kw.get("name"),
            inputs=inputs,
            metadata=kw["metadata"],
        )

    def on_chain_end(self, outputs, *, run_id, **kw) -> None:
        self.runs.end(run_id, outputs=outputs)

    def on_chain_error(self, error, *, run_id, **kw) -> None:
        self.runs.end(run_id, error=error)

    def on_retriever_start(self, serialized, query, *, run_id, parent_run_id=None, **kw) -> None:
        self.runs.start("retriever", run_id, parent_run_id, name=kw.get("name"), inputs=query)

    def on_retriever_end(self, documents, *, run_id, **kw) -> None:
        self.runs.end(run_id, outputs=documents)

    def on_retriever_error(self, error, *, run_id, **kw) -> None:
        self.runs.end(run_id, error=error)


class AsyncRecorder(AsyncCallbackHandler):
    """An async tracer: the same records, through the async callback API."""

    def __init__(self) -> None:
        self.runs = Runs()

    async def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kw) -> None:
        self.runs.start(
            "chain",
            run_id,
            parent_run_id,
            name=kw.get("name"),
            inputs=inputs,
            metadata=kw["metadata"],
        )

    async def on_chain_end(self, outputs, *, run_id, **kw) -> None:
        self.runs.end(run_id, outputs=outputs)

    async def on_chain_error(self, error, *, run_id, **kw) -> None:
        self.runs.end(run_id, error=error)

    async def on_retriever_start(
        self, serialized, query, *, run_id, parent_run_id=None, **kw
    ) -> None:
        self.runs.start("retriever", run_id, parent_run_id, name=kw.get("name"), inputs=query)

    async def on_retriever_end(self, documents, *, run_id, **kw) -> None:
        self.runs.end(run_id, outputs=documents)

    async def on_retriever_error(self, error, *, run_id, **kw) -> None:
        self.runs.end(run_id, error=error)


def _corpus() -> list[Document]:
    return [
        Document(page_content=text, metadata={"source": f"s{i}.txt"}, id=IDS[i])
        for i, text in enumerate(SENTENCES)
    ]


def _vector_store_retriever():
    store = InMemoryVectorStore.from_documents(_corpus(), DeterministicFakeEmbedding(size=16))
    return store.as_retriever(search_kwargs={"k": len(SENTENCES)})


def _compression_retriever(compressor) -> ContextualCompressionRetriever:
    return ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=_vector_store_retriever()
    )


def _two_stage(bi_encoder: BiEncoder, engine, store) -> TwoStageRetriever:
    two_stage = TwoStageRetriever(bi_encoder, engine=engine, store=store)
    two_stage.index(
        SENTENCES, metadatas=[{"source": f"s{i}.txt"} for i in range(len(SENTENCES))], ids=IDS
    )
    return two_stage


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def bi_encoder() -> BiEncoder:
    from rerank_plugins.models.offline import bi_encoder_path

    return BiEncoder(bi_encoder_path(), device="cpu").load()


def _store(kind: str):
    if kind == "memory":
        return InMemoryStore()
    pytest.importorskip("qdrant_client")
    return QdrantStore(collection="native", path=":memory:")


@pytest.fixture(scope="module", params=STORES)
def two_stage(request, bi_encoder: BiEncoder, bert_engine: RerankEngine) -> TwoStageRetriever:
    return _two_stage(bi_encoder, bert_engine, _store(request.param))


@pytest.fixture(scope="module")
def memory_two_stage(bi_encoder: BiEncoder, bert_engine: RerankEngine) -> TwoStageRetriever:
    return _two_stage(bi_encoder, bert_engine, _store("memory"))


@pytest.fixture(scope="module")
def qdrant_two_stage(bi_encoder: BiEncoder, bert_engine: RerankEngine) -> Iterator:
    store = _store("qdrant-memory")
    yield _two_stage(bi_encoder, bert_engine, store)
    store.close()


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    # The standard suite's one async test runs on anyio's pytest plugin, on asyncio only.
    return "asyncio"


# ---------------------------------------------------------------------- LangChain's standard suite


@pytest.mark.anyio
class TestRerankRetrieverStandardInMemory(RetrieversIntegrationTests):
    """langchain-tests' retriever suite over the in-memory store."""

    @pytest.fixture(autouse=True)
    def _two_stage(self, memory_two_stage: TwoStageRetriever) -> None:
        self.two_stage = memory_two_stage

    @property
    def retriever_constructor(self) -> type[RerankRetriever]:
        return RerankRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"retriever": self.two_stage, "k": 2, "candidates": 5}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


@pytest.mark.anyio
class TestRerankRetrieverStandardQdrant(TestRerankRetrieverStandardInMemory):
    """langchain-tests' retriever suite over Qdrant's in-process (":memory:") mode."""

    @pytest.fixture(autouse=True)
    def _two_stage(self, qdrant_two_stage: TwoStageRetriever) -> None:
        self.two_stage = qdrant_two_stage


# ---------------------------------------------------------------------- RerankRetriever


def test_documents_are_the_two_stage_hits_with_both_stages_scores_and_the_stored_metadata(
    two_stage: TwoStageRetriever,
) -> None:
    hits = two_stage.retrieve(QUERY, top_k=3, candidates=len(SENTENCES))
    out = RerankRetriever(retriever=two_stage, k=3, candidates=len(SENTENCES)).invoke(QUERY)
    assert [d.page_content for d in out] == [h.text for h in hits]
    assert [d.id for d in out] == [h.id for h in hits]
    for doc, hit in zip(out, hits, strict=True):
        assert doc.metadata == {
            "source": hit.metadata["source"],
            "relevance_score": pytest.approx(hit.score, abs=1e-6),
            "first_stage_score": pytest.approx(hit.first_stage_score, abs=1e-6),
            "first_stage_rank": hit.first_stage_rank,
        }
        assert type(doc.metadata["relevance_score"]) is float
        assert type(doc.metadata["first_stage_score"]) is float
        assert type(doc.metadata["first_stage_rank"]) is int


def test_k_is_a_setting_that_invoke_and_ainvoke_override_per_call(
    two_stage: TwoStageRetriever,
) -> None:
    retriever = RerankRetriever(retriever=two_stage, k=2)
    assert len(retriever.invoke(QUERY)) == 2
    assert len(retriever.invoke(QUERY, k=5)) == 5
    assert len(asyncio.run(retriever.ainvoke(QUERY, k=1))) == 1
    assert retriever.k == 2  # a per-call k changes nothing for the next call


def test_ainvoke_returns_what_invoke_returns(two_stage: TwoStageRetriever) -> None:
    retriever = RerankRetriever(retriever=two_stage, k=4)
    assert asyncio.run(retriever.ainvoke(QUERY)) == retriever.invoke(QUERY)


def test_ainvoke_awaits_the_engine_and_invoke_calls_it(
    bi_encoder: BiEncoder, bert_engine: RerankEngine
) -> None:
    engine = RecordingScorer(bert_engine)
    retriever = RerankRetriever(retriever=_two_stage(bi_encoder, engine, InMemoryStore()))
    asyncio.run(retriever.ainvoke(QUERY))
    retriever.invoke(QUERY)
    assert engine.calls == ["arerank", "rerank"]


def test_candidates_are_raised_to_k_so_a_large_k_never_fails(
    two_stage: TwoStageRetriever,
) -> None:
    retriever = RerankRetriever(retriever=two_stage, k=2, candidates=2)
    out = retriever.invoke(QUERY, k=len(SENTENCES))
    assert sorted(d.id for d in out) == sorted(IDS)


def test_candidates_bound_what_the_reranker_sees(two_stage: TwoStageRetriever) -> None:
    out = RerankRetriever(retriever=two_stage, k=3, candidates=3).invoke(QUERY)
    assert sorted(d.metadata["first_stage_rank"] for d in out) == [1, 2, 3]


def test_score_threshold_drops_documents_before_the_k_cut(
    two_stage: TwoStageRetriever, bert_engine: RerankEngine
) -> None:
    scores = sorted(bert_engine.score(QUERY, SENTENCES), reverse=True)
    threshold = (scores[1] + scores[2]) / 2  # exactly two documents pass
    everything = {"k": len(SENTENCES), "candidates": len(SENTENCES)}
    retriever = RerankRetriever(retriever=two_stage, score_threshold=threshold, **everything)
    assert len(retriever.invoke(QUERY)) == 2
    assert len(retriever.invoke(QUERY, score_threshold=None)) == len(SENTENCES)
    per_call = RerankRetriever(retriever=two_stage, **everything)
    assert per_call.invoke(QUERY, score_threshold=threshold) == retriever.invoke(QUERY)


def test_score_key_is_configurable(two_stage: TwoStageRetriever) -> None:
    out = RerankRetriever(retriever=two_stage, score_key="rerank").invoke(QUERY)
    assert all("rerank" in d.metadata and "relevance_score" not in d.metadata for d in out)


def test_an_empty_index_returns_nothing_without_reranking(
    bi_encoder: BiEncoder, bert_engine: RerankEngine
) -> None:
    engine = RecordingScorer(bert_engine)
    empty = TwoStageRetriever(bi_encoder, engine=engine, store=InMemoryStore())
    retriever = RerankRetriever(retriever=empty)
    assert retriever.invoke(QUERY) == []
    assert asyncio.run(retriever.ainvoke(QUERY)) == []
    assert engine.calls == []


def test_an_unknown_invoke_keyword_is_a_type_error_naming_the_valid_ones(
    memory_two_stage: TwoStageRetriever,
) -> None:
    retriever = RerankRetriever(retriever=memory_two_stage)
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) 'top_k'; expected k,"):
        retriever.invoke(QUERY, top_k=2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"k": 0}, ValueError, r"k must be >= 1, got 0"),
        ({"k": "2"}, TypeError, r"k must be a positive int, got '2'"),
        ({"candidates": 0}, ValueError, r"candidates must be >= 1, got 0"),
        ({"score_threshold": "0.5"}, TypeError, r"score_threshold must be a number or None"),
    ],
)
def test_bad_per_call_settings_are_rejected(
    memory_two_stage: TwoStageRetriever, kwargs: dict, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        RerankRetriever(retriever=memory_two_stage).invoke(QUERY, **kwargs)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"k": 0}, r"k must be >= 1, got 0"),
        ({"k": "3"}, r"k must be a positive int, got '3'"),
        ({"k": True}, r"k must be a positive int, got True"),
        ({"candidates": 2.5}, r"candidates must be a positive int, got 2\.5"),
        ({"score_threshold": "high"}, r"score_threshold must be a number or None, got 'high'"),
        ({"score_key": ""}, r"score_key must be a non-empty metadata key"),
        ({"top_k": 3}, r"top_k\s+Extra inputs are not permitted"),
    ],
)
def test_bad_settings_raise_a_validation_error_naming_them(
    memory_two_stage: TwoStageRetriever, settings: dict, match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        RerankRetriever(retriever=memory_two_stage, **settings)


def test_the_retriever_must_be_a_two_stage_retriever() -> None:
    with pytest.raises(ValidationError, match="TwoStageRetriever"):
        RerankRetriever(retriever=object())


# ---------------------------------------------------------------------- RerankCrossEncoder


@pytest.fixture(scope="module")
def hf_cross_encoder(bert_path: str):
    from langchain_community.cross_encoders import HuggingFaceCrossEncoder

    return HuggingFaceCrossEncoder(model_name=bert_path, model_kwargs={"device": "cpu"})


def test_scores_match_huggingface_cross_encoder_on_the_same_model(
    bert_engine: RerankEngine, hf_cross_encoder
) -> None:
    # Both are probabilities: HuggingFaceCrossEncoder returns CrossEncoder.predict, whose
    # default activation on a one-label model is a sigmoid, the engine's normalize=True.
    pairs = [(QUERY, text) for text in SENTENCES]
    ours = RerankCrossEncoder(engine=bert_engine).score(pairs)
    theirs = [float(s) for s in hf_cross_encoder.score(pairs)]
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert sorted(range(len(pairs)), key=lambda i: -ours[i]) == sorted(
        range(len(pairs)), key=lambda i: -theirs[i]
    )
    assert all(type(s) is float for s in ours)


def test_pairs_of_different_queries_are_scored_per_query_in_the_callers_order(
    bert_engine: RerankEngine,
) -> None:
    other = "the weather in paris"
    pairs = [(QUERY if i % 2 else other, text) for i, text in enumerate(SENTENCES)]
    engine = RecordingScorer(bert_engine)
    scores = RerankCrossEncoder(engine=engine).score(pairs)
    assert engine.calls == ["score", "score"]  # one engine call per distinct query
    expected = [bert_engine.score(query, [text])[0] for query, text in pairs]
    assert scores == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("invoke", ["invoke", "ainvoke"])
def test_cross_encoder_reranker_keeps_the_documents_huggingface_keeps(
    bert_path: str, hf_cross_encoder, invoke: str
) -> None:
    def run(cross_encoder) -> list[Document]:
        retriever = _compression_retriever(CrossEncoderReranker(model=cross_encoder, top_n=3))
        if invoke == "ainvoke":
            return asyncio.run(retriever.ainvoke(QUERY))
        return retriever.invoke(QUERY)

    ours = run(RerankCrossEncoder(model=bert_path, device="cpu"))
    assert [d.id for d in ours] == [d.id for d in run(hf_cross_encoder)]
    assert len(ours) == 3


def test_no_pairs_score_to_an_empty_list_without_touching_the_model(
    bert_engine: RerankEngine,
) -> None:
    engine = RecordingScorer(bert_engine)
    assert RerankCrossEncoder(engine=engine).score([]) == []
    assert engine.calls == []


@pytest.mark.parametrize(
    ("pair", "match"),
    [
        ("just a string", r"text_pairs\[0\] must be a \(query, text\) pair of strings"),
        ((QUERY,), r"text_pairs\[0\] must be a \(query, text\) pair"),
        ((None, "text"), r"text_pairs\[0\] must be a \(query, text\) pair"),
    ],
)
def test_a_malformed_pair_is_a_type_error_naming_it(
    bert_engine: RerankEngine, pair: Any, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        RerankCrossEncoder(engine=bert_engine).score([pair])


def test_model_and_engine_options_resolve_to_the_shared_engine(
    bert_path: str, bert_engine: RerankEngine
) -> None:
    assert RerankCrossEncoder(bert_path, device="cpu").engine is bert_engine
    assert RerankCrossEncoder(model=bert_path, engine_options={"device": "cpu"}).engine is (
        bert_engine
    )
    assert RerankCrossEncoder(engine=bert_engine).engine is bert_engine


def test_copies_and_pickles_share_the_engine(bert_path: str, bert_engine: RerankEngine) -> None:
    built = RerankCrossEncoder(model=bert_path, device="cpu")
    restored = pickle.loads(pickle.dumps(built))  # noqa: S301 (our own bytes)
    assert restored.engine is bert_engine
    assert restored.engine_options == {"device": "cpu"}
    assert built.engine is bert_engine  # pickling did not strip the original's engine
    assert copy.deepcopy(built).engine is bert_engine
    assert copy.deepcopy(RerankCrossEncoder(engine=bert_engine)).engine is bert_engine
    assert copy.copy(RerankCrossEncoder(engine=bert_engine)).engine is bert_engine
    reranker = CrossEncoderReranker(model=built, top_n=2)
    assert reranker.model_copy(deep=True).model.engine is bert_engine


def test_a_cross_encoder_on_a_remote_engine_pickles_with_it_and_on_a_loaded_one_refuses(
    bert_engine: RerankEngine,
) -> None:
    remote = RemoteEngine("http://127.0.0.1:9", batch_size=4)  # never called here
    restored = pickle.loads(pickle.dumps(RerankCrossEncoder(engine=remote)))  # noqa: S301
    assert isinstance(restored.engine, RemoteEngine)
    assert restored.engine.url == remote.url
    with pytest.raises(TypeError, match=r"loaded RerankEngine, which cannot be pickled; .*model="):
        pickle.dumps(RerankCrossEncoder(engine=bert_engine))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, TypeError, r"needs exactly one of model= .* and engine= .*, got neither"),
        ({"devcie": "cpu"}, TypeError, r"unknown option\(s\) 'devcie'"),
        ({"device": "tpu"}, ValueError, r"device"),
        ({"model": 3}, TypeError, r"model must be a hub id or a local folder"),
    ],
)
def test_bad_settings_are_rejected_before_any_load(
    bert_path: str, kwargs: dict, error: type, match: str
) -> None:
    if kwargs and "model" not in kwargs:
        kwargs = {"model": bert_path, **kwargs}
    with pytest.raises(error, match=match):
        RerankCrossEncoder(**kwargs)


# ---------------------------------------------------------------------- the rerank run


def _retrieved(query: str) -> list[Document]:
    """What the compression retriever's base retriever hands the compressor, in order."""
    return _vector_store_retriever().invoke(query)


def _assert_rerank_run(runs: Runs, parent: str, out: list[Document], query: str = QUERY) -> None:
    run = runs.one("rerank")
    assert run["kind"] == "chain"
    assert run["parent_run_id"] == runs.id_of(parent)
    assert run["inputs"] == {"query": query, "candidates": len(SENTENCES)}
    assert run["metadata"]["rerank_top_n"] == 2
    assert run["outputs"]["ids"] == [d.id for d in out]
    assert run["outputs"]["scores"] == [d.metadata["relevance_score"] for d in out]
    candidates = _retrieved(query)
    assert [candidates[i].id for i in run["outputs"]["indices"]] == [d.id for d in out]


def test_a_compression_retriever_reports_the_rerank_step_as_its_child_run(
    bert_engine: RerankEngine,
) -> None:
    recorder = Recorder()
    retriever = _compression_retriever(RerankCompressor(engine=bert_engine, top_n=2))
    out = retriever.invoke(QUERY, config={"callbacks": [recorder]})
    _assert_rerank_run(recorder.runs, "ContextualCompressionRetriever", out)
    assert recorder.runs.one("rerank")["metadata"]["rerank_model"] == bert_engine.info.model


def test_an_async_compression_retriever_reports_the_rerank_step_to_async_handlers(
    bert_engine: RerankEngine,
) -> None:
    recorder = AsyncRecorder()
    retriever = _compression_retriever(RerankCompressor(engine=bert_engine, top_n=2))
    out = asyncio.run(retriever.ainvoke(QUERY, config={"callbacks": [recorder]}))
    _assert_rerank_run(recorder.runs, "ContextualCompressionRetriever", out)


@pytest.mark.parametrize("handler", [Recorder, AsyncRecorder])
def test_in_an_lcel_chain_the_rerank_run_sits_under_the_retriever_under_the_chain(
    bert_engine: RerankEngine, handler: type
) -> None:
    recorder = handler()
    retriever = _compression_retriever(RerankCompressor(engine=bert_engine, top_n=2))
    chain = (retriever | RunnableLambda(lambda docs: [d.id for d in docs])).with_config(
        run_name="rag"
    )
    config = {"callbacks": [recorder]}
    if handler is AsyncRecorder:
        ids = asyncio.run(chain.ainvoke(QUERY, config=config))
    else:
        ids = chain.invoke(QUERY, config=config)
    runs = recorder.runs
    assert runs.one("rerank")["outputs"]["ids"] == ids
    assert runs.one("rerank")["parent_run_id"] == runs.id_of("ContextualCompressionRetriever")
    assert runs.one("ContextualCompressionRetriever")["parent_run_id"] == runs.id_of("rag")
    assert runs.one("rag")["parent_run_id"] is None


@pytest.mark.parametrize("handler", [Recorder, AsyncRecorder])
def test_a_failing_rerank_is_reported_as_the_rerank_runs_error(
    bert_engine: RerankEngine, handler: type
) -> None:
    recorder = handler()
    retriever = _compression_retriever(RerankCompressor(engine=bert_engine))
    call = retriever.ainvoke if handler is AsyncRecorder else retriever.invoke
    with pytest.raises(ValueError, match="query is empty"):
        result = call("   ", config={"callbacks": [recorder]})
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    rerank = recorder.runs.one("rerank")
    assert isinstance(rerank["error"], ValueError)
    assert "outputs" not in rerank
    assert rerank["parent_run_id"] == recorder.runs.id_of("ContextualCompressionRetriever")
    assert isinstance(recorder.runs.one("ContextualCompressionRetriever")["error"], ValueError)


def test_a_compressor_called_on_its_own_reports_a_root_rerank_run(
    bert_engine: RerankEngine,
) -> None:
    recorder = Recorder()
    docs = _corpus()
    out = RerankCompressor(engine=bert_engine, top_n=None).compress_documents(
        docs, QUERY, callbacks=[recorder]
    )
    run = recorder.runs.one("rerank")
    assert run["parent_run_id"] is None
    assert run["metadata"]["rerank_top_n"] is None
    assert [docs[i].id for i in run["outputs"]["indices"]] == [d.id for d in out]


def test_an_empty_candidate_list_still_reports_its_rerank_run(bert_engine: RerankEngine) -> None:
    recorder = Recorder()
    assert RerankCompressor(engine=bert_engine).compress_documents([], QUERY, [recorder]) == []
    run = recorder.runs.one("rerank")
    assert run["inputs"] == {"query": QUERY, "candidates": 0}
    assert run["outputs"] == {"indices": [], "ids": [], "scores": []}


@pytest.mark.parametrize("handler", [Recorder, AsyncRecorder])
def test_rerank_retriever_reports_its_rerank_step_as_a_child_run(
    two_stage: TwoStageRetriever, handler: type
) -> None:
    recorder = handler()
    retriever = RerankRetriever(retriever=two_stage, k=3, candidates=6)
    config = {"callbacks": [recorder]}
    if handler is AsyncRecorder:
        out = asyncio.run(retriever.ainvoke(QUERY, config=config))
    else:
        out = retriever.invoke(QUERY, config=config)
    runs = recorder.runs
    rerank = runs.one("rerank")
    assert rerank["parent_run_id"] == runs.id_of("RerankRetriever")
    assert runs.one("RerankRetriever")["outputs"] == out
    assert rerank["inputs"] == {"query": QUERY, "candidates": 6}
    assert rerank["metadata"]["rerank_top_n"] == 3
    assert rerank["metadata"]["ls_embedding_model"] == two_stage.encoder.name
    assert rerank["outputs"] == {
        "indices": [d.metadata["first_stage_rank"] - 1 for d in out],
        "ids": [d.id for d in out],
        "scores": [d.metadata["relevance_score"] for d in out],
    }


def test_a_passed_through_rerank_ends_its_run_with_no_scores() -> None:
    engine = RerankEngine.from_backend(FakeBackend())
    engine.close()
    recorder = Recorder()
    docs = _corpus()
    compressor = RerankCompressor(engine=engine, on_error="passthrough", top_n=2)
    out = compressor.compress_documents(docs, QUERY, callbacks=[recorder])
    run = recorder.runs.one("rerank")
    assert "error" not in run
    assert run["outputs"] == {"indices": [0, 1], "ids": [d.id for d in out], "scores": [None, None]}


def test_a_failing_engine_is_the_rerank_runs_error_when_not_passed_through() -> None:
    recorder = Recorder()
    broken = RerankEngine.from_backend(FakeBackend(fail=lambda pairs: True))
    with broken as engine, pytest.raises(BackendError):
        RerankCompressor(engine=engine).compress_documents(_corpus(), QUERY, [recorder])
    assert isinstance(recorder.runs.one("rerank")["error"], BackendError)
