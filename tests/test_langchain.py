"""RerankCompressor: a LangChain document compressor that reranks with the shared engine."""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from pydantic import ValidationError

from rerank_plugins import RerankEngine
from rerank_plugins.errors import ModelLoadError
from rerank_plugins.langchain import RerankCompressor
from tests._models import SENTENCES

QUERY = "what is rag retrieval augmented generation"


def _corpus() -> list[Document]:
    return [
        Document(
            page_content=text,
            metadata={"source": f"s{i}.txt", "title": f"title {i}", "tags": ["a", "b"]},
            id=f"doc-{i}",
        )
        for i, text in enumerate(SENTENCES)
    ]


@pytest.fixture()
def corpus() -> list[Document]:
    return _corpus()


@pytest.fixture(scope="module")
def store() -> InMemoryVectorStore:
    return InMemoryVectorStore.from_documents(_corpus(), DeterministicFakeEmbedding(size=16))


def _retriever(store: InMemoryVectorStore, compressor: RerankCompressor):
    return ContextualCompressionRetriever(
        base_compressor=compressor,
        base_retriever=store.as_retriever(search_kwargs={"k": len(SENTENCES)}),
    )


def _expected(engine, query: str, texts: list[str], top_n: int) -> list[tuple[str, float]]:
    scores = engine.score(query, texts)
    ranked = sorted(zip(texts, scores, strict=True), key=lambda p: -p[1])
    return ranked[:top_n]


def _assert_reranked(out: list[Document], engine, query: str, top_n: int) -> None:
    expected = _expected(engine, query, SENTENCES, top_n)
    assert [d.page_content for d in out] == [text for text, _ in expected]
    scores = [d.metadata["relevance_score"] for d in out]
    assert scores == pytest.approx([s for _, s in expected], abs=1e-6)
    assert all(type(s) is float for s in scores)
    assert scores == sorted(scores, reverse=True)
    by_text = {d.page_content: d for d in _corpus()}
    for doc in out:
        original = by_text[doc.page_content]
        assert doc.id == original.id
        assert {k: v for k, v in doc.metadata.items() if k != "relevance_score"} == (
            original.metadata
        )


# ---------------------------------------------------------------------- end to end


def test_contextual_compression_retriever_returns_the_top_n_by_engine_score(
    store: InMemoryVectorStore, bert_engine: RerankEngine
) -> None:
    compressor = RerankCompressor(engine=bert_engine)
    out = _retriever(store, compressor).invoke(QUERY)
    assert len(out) == 3
    _assert_reranked(out, bert_engine, QUERY, top_n=3)


def test_contextual_compression_retriever_ainvoke_matches_invoke(
    store: InMemoryVectorStore, bert_engine: RerankEngine
) -> None:
    retriever = _retriever(store, RerankCompressor(engine=bert_engine, top_n=4))
    out = asyncio.run(retriever.ainvoke(QUERY))
    _assert_reranked(out, bert_engine, QUERY, top_n=4)
    assert out == retriever.invoke(QUERY)


def test_retriever_batch_reranks_each_query_on_its_own(
    store: InMemoryVectorStore, bert_engine: RerankEngine
) -> None:
    queries = [QUERY, "the weather in paris"]
    retriever = _retriever(store, RerankCompressor(engine=bert_engine, top_n=2))
    for query, out in zip(queries, retriever.batch(queries), strict=True):
        _assert_reranked(out, bert_engine, query, top_n=2)


def test_retriever_works_inside_an_lcel_chain(
    store: InMemoryVectorStore, bert_engine: RerankEngine
) -> None:
    retriever = _retriever(store, RerankCompressor(engine=bert_engine, top_n=2))
    chain = retriever | RunnableLambda(lambda docs: [d.page_content for d in docs])
    expected = [text for text, _ in _expected(bert_engine, QUERY, SENTENCES, 2)]
    assert chain.invoke(QUERY) == expected
    assert asyncio.run(chain.ainvoke(QUERY)) == expected


def test_document_compressor_pipeline_runs_the_compressor_sync_and_async(
    corpus: list[Document], bert_engine: RerankEngine
) -> None:
    pipeline = DocumentCompressorPipeline(transformers=[RerankCompressor(engine=bert_engine)])
    sync = pipeline.compress_documents(corpus, QUERY)
    _assert_reranked(list(sync), bert_engine, QUERY, top_n=3)
    assert list(asyncio.run(pipeline.acompress_documents(corpus, QUERY))) == list(sync)


# ---------------------------------------------------------------------- results


def test_caller_documents_are_never_mutated(
    corpus: list[Document], bert_engine: RerankEngine
) -> None:
    before = copy.deepcopy(corpus)
    compressor = RerankCompressor(engine=bert_engine, top_n=len(corpus))
    out = compressor.compress_documents(corpus, QUERY)
    out += asyncio.run(compressor.acompress_documents(corpus, QUERY))
    assert corpus == before
    assert all("relevance_score" not in d.metadata for d in corpus)
    originals = {id(d) for d in corpus} | {id(d.metadata) for d in corpus}
    assert not {id(d) for d in out} & originals
    assert not {id(d.metadata) for d in out} & originals


def test_score_threshold_is_applied_before_top_n(
    corpus: list[Document], bert_engine: RerankEngine
) -> None:
    scores = sorted(bert_engine.score(QUERY, SENTENCES), reverse=True)
    threshold = (scores[1] + scores[2]) / 2  # exactly two documents pass
    compressor = RerankCompressor(engine=bert_engine, top_n=5, score_threshold=threshold)
    out = compressor.compress_documents(corpus, QUERY)
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(scores[:2], abs=1e-6)
    assert asyncio.run(compressor.acompress_documents(corpus, QUERY)) == out


def test_a_threshold_above_every_score_returns_nothing(
    corpus: list[Document], bert_engine: RerankEngine
) -> None:
    compressor = RerankCompressor(engine=bert_engine, score_threshold=1.01)
    assert compressor.compress_documents(corpus, QUERY) == []


def test_score_key_is_configurable(corpus: list[Document], bert_engine: RerankEngine) -> None:
    out = RerankCompressor(engine=bert_engine, score_key="rerank").compress_documents(corpus, QUERY)
    assert all("relevance_score" not in d.metadata for d in out)
    assert [d.metadata["rerank"] for d in out] == pytest.approx(
        [s for _, s in _expected(bert_engine, QUERY, SENTENCES, 3)], abs=1e-6
    )


def test_top_n_none_keeps_every_retrieved_document_best_first(
    store: InMemoryVectorStore, bert_engine: RerankEngine
) -> None:
    # As LangChain's CohereRerank(top_n=None): no cut, every document sorted by score.
    retriever = _retriever(store, RerankCompressor(engine=bert_engine, top_n=None))
    out = retriever.invoke(QUERY)
    _assert_reranked(out, bert_engine, QUERY, top_n=len(SENTENCES))
    assert asyncio.run(retriever.ainvoke(QUERY)) == out


def test_top_n_none_with_a_threshold_keeps_every_document_above_it(
    corpus: list[Document], bert_engine: RerankEngine
) -> None:
    scores = sorted(bert_engine.score(QUERY, SENTENCES), reverse=True)
    threshold = (scores[3] + scores[4]) / 2  # exactly four documents pass
    compressor = RerankCompressor(engine=bert_engine, top_n=None, score_threshold=threshold)
    out = compressor.compress_documents(corpus, QUERY)
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(scores[:4], abs=1e-6)


def test_top_n_larger_than_the_input_returns_every_document(
    corpus: list[Document], bert_engine: RerankEngine
) -> None:
    out = RerankCompressor(engine=bert_engine, top_n=50).compress_documents(corpus[:2], QUERY)
    assert len(out) == 2


def test_document_subclasses_and_extra_fields_survive(bert_engine: RerankEngine) -> None:
    class Tagged(Document):
        tag: str = ""

    docs = [Tagged(page_content=t, tag=f"t{i}") for i, t in enumerate(SENTENCES[:3])]
    out = RerankCompressor(engine=bert_engine).compress_documents(docs, QUERY)
    assert all(type(d) is Tagged for d in out)
    assert {d.tag for d in out} == {"t0", "t1", "t2"}


# ---------------------------------------------------------------------- what is scored


def test_text_template_scores_metadata_fields_with_the_content(
    corpus: list[Document], bert_engine: RerankEngine
) -> None:
    compressor = RerankCompressor(engine=bert_engine, text_template="{title}: {page_content}")
    out = compressor.compress_documents(corpus, QUERY)
    texts = [f"{d.metadata['title']}: {d.page_content}" for d in corpus]
    expected = _expected(bert_engine, QUERY, texts, 3)
    assert [f"{d.metadata['title']}: {d.page_content}" for d in out] == [t for t, _ in expected]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(
        [s for _, s in expected], abs=1e-6
    )
    assert all(d.page_content in SENTENCES for d in out)  # the content itself is unchanged


def test_text_template_may_be_a_callable(corpus: list[Document], bert_engine: RerankEngine) -> None:
    compressor = RerankCompressor(
        engine=bert_engine, text_template=lambda d: d.page_content.upper(), top_n=10
    )
    out = compressor.compress_documents(corpus, QUERY)
    expected = bert_engine.score(QUERY, [d.page_content.upper() for d in out])
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx(expected, abs=1e-6)


def test_a_document_missing_a_template_field_raises_naming_it(
    bert_engine: RerankEngine,
) -> None:
    compressor = RerankCompressor(engine=bert_engine, text_template="{title}: {page_content}")
    with pytest.raises(ValueError, match="'title'"):
        compressor.compress_documents([Document("no title here")], QUERY)


def test_a_callable_template_returning_a_non_string_raises(bert_engine: RerankEngine) -> None:
    compressor = RerankCompressor(engine=bert_engine, text_template=lambda d: None)
    with pytest.raises(TypeError, match="expected a str"):
        compressor.compress_documents([Document("text")], QUERY)


# ---------------------------------------------------------------------- empty input, errors


def test_empty_input_returns_an_empty_list_without_touching_the_model(
    bert_engine: RerankEngine,
) -> None:
    compressor = RerankCompressor(engine=bert_engine)
    before = bert_engine.stats()["requests"]
    assert compressor.compress_documents([], QUERY) == []
    assert asyncio.run(compressor.acompress_documents([], QUERY)) == []
    assert bert_engine.stats()["requests"] == before


def test_an_empty_query_is_rejected(corpus: list[Document], bert_engine: RerankEngine) -> None:
    with pytest.raises(ValueError, match="query is empty"):
        RerankCompressor(engine=bert_engine).compress_documents(corpus, "  ")


# The settings both adapters share are pinned in test_adapters_shared.py; these are LangChain's.
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"score_key": ""}, r"score_key must be a non-empty metadata key, .*got ''"),
        ({"score_key": 3}, r"score_key must be a non-empty metadata key, .*got 3"),
        ({"text_template": "{title"}, r"text_template '\{title' is not a valid format string"),
        ({"text_template": "{}"}, r"text_template '\{\}' must name its fields"),
        ({"text_template": 3}, r"text_template must be None, a str\.format template .*got 3"),
        ({"devcie": "cpu"}, r"unknown option\(s\) 'devcie'.*device"),
    ],
)
def test_invalid_settings_raise_a_one_line_validation_error_naming_them(
    bert_path: str, options: dict, match: str
) -> None:
    with pytest.raises(ValidationError, match=match) as caught:
        RerankCompressor(model=bert_path, **options)
    (error,) = caught.value.errors()
    assert "\n" not in error["msg"]


def test_a_missing_model_raises_model_load_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError):
        RerankCompressor(model=str(tmp_path / "nope"))


# ---------------------------------------------------------------------- engines


def test_model_and_engine_options_resolve_to_the_shared_engine(
    bert_path: str, bert_engine: RerankEngine
) -> None:
    assert RerankCompressor(model=bert_path, device="cpu").engine is bert_engine
    assert RerankCompressor(model=bert_path, engine_options={"device": "cpu"}).engine is (
        bert_engine
    )
    assert RerankCompressor(engine=bert_engine).engine is bert_engine


def test_concurrent_ainvokes_share_engine_batches_and_keep_the_event_loop_running(
    bert_path: str,
) -> None:
    class AsyncNativeEmbedding(DeterministicFakeEmbedding):
        # The stock embedding awaits a thread; this one does not, so any thread use seen
        # below can only come from the compressor.
        async def aembed_query(self, text: str) -> list[float]:
            return self.embed_query(text)

    class CountingExecutor(ThreadPoolExecutor):
        submitted = 0

        def submit(self, *args, **kwargs):
            CountingExecutor.submitted += 1
            return super().submit(*args, **kwargs)

    store = InMemoryVectorStore.from_documents(_corpus(), AsyncNativeEmbedding(size=16))
    # An engine of its own, without a cache and with room for every pair in one pass.
    engine = RerankEngine(bert_path, device="cpu", cache_size=0, max_batch_size=256)
    compressor = RerankCompressor(engine=engine, top_n=2)
    retriever = ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=store.as_retriever(search_kwargs={"k": 5})
    )
    queries = [f"question {i} about rag and retrieval" for i in range(20)]

    async def main() -> tuple[list[list[Document]], int]:
        asyncio.get_running_loop().set_default_executor(CountingExecutor(max_workers=2))
        submitted_before = engine.stats()["requests"]
        finished = 0
        ticks_in_flight = 0  # ticks while some request sat in the engine
        running = True

        async def ticker() -> None:
            nonlocal ticks_in_flight
            while running:
                if engine.stats()["requests"] - submitted_before > finished:
                    ticks_in_flight += 1
                await asyncio.sleep(0)

        async def ask(query: str) -> list[Document]:
            nonlocal finished
            out = await retriever.ainvoke(query)
            finished += 1
            return out

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(*(ask(q) for q in queries))
        running = False
        await task
        return results, ticks_in_flight

    with engine:
        before = engine.stats()
        results, ticks_in_flight = asyncio.run(main())
        after = engine.stats()
        rescored = [
            engine.score(q, [d.page_content for d in out])
            for q, out in zip(queries, results, strict=True)
        ]

    assert all(len(out) == 2 for out in results)
    # The loop kept running while the engine scored: thousands of ticks here, where a
    # compressor that blocked the loop lets the ticker in only between requests (~3 ticks).
    assert ticks_in_flight >= 50
    assert CountingExecutor.submitted == 0  # and no thread of the default executor was parked
    assert after["requests"] - before["requests"] == 20
    assert after["forward_passes"] - before["forward_passes"] < 20  # requests shared passes
    for out, expected in zip(results, rescored, strict=True):
        assert [d.metadata["relevance_score"] for d in out] == pytest.approx(expected, abs=1e-5)
