"""on_error="passthrough": when the reranker is down, a RAG service keeps answering."""

from __future__ import annotations

import asyncio
import copy
import logging

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import ValidationError

from rerank_plugins import BackendError, EngineClosedError, RerankEngine
from rerank_plugins.langchain import RerankCompressor
from rerank_plugins.llama_index import RerankPostprocessor
from tests._fakes import FakeBackend, GatedBackend

DOCS = [Document(page_content=f"doc {i}", metadata={"i": i}, id=f"id{i}") for i in range(5)]


def _broken() -> RerankEngine:
    return RerankEngine.from_backend(FakeBackend(fail=lambda pairs: True))


def test_by_default_a_reranker_failure_raises() -> None:
    with _broken() as engine, pytest.raises(BackendError):
        RerankCompressor(engine=engine).compress_documents(DOCS, "q")


def test_passthrough_returns_the_retriever_order_marked_not_reranked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    snapshot = copy.deepcopy(DOCS)
    with _broken() as engine, caplog.at_level(logging.WARNING, logger="rerank_plugins"):
        compressor = RerankCompressor(engine=engine, on_error="passthrough", top_n=3)
        out = compressor.compress_documents(DOCS, "q")
        aout = asyncio.run(compressor.acompress_documents(DOCS, "q"))
    for result in (out, aout):
        assert [d.id for d in result] == ["id0", "id1", "id2"]
        assert all(d.metadata["reranked"] is False for d in result)
        assert all("relevance_score" not in d.metadata for d in result)
    assert snapshot == DOCS  # the caller's documents are untouched
    assert any("passthrough" in r.getMessage() for r in caplog.records)


def test_passthrough_covers_a_closed_engine_and_a_timeout() -> None:
    engine = RerankEngine.from_backend(FakeBackend())
    engine.close()
    closed = RerankCompressor(engine=engine, on_error="passthrough")
    assert [d.metadata["reranked"] for d in closed.compress_documents(DOCS, "q")] == [False] * 3
    with pytest.raises(EngineClosedError):
        RerankCompressor(engine=engine).compress_documents(DOCS, "q")

    gated = GatedBackend()
    with RerankEngine.from_backend(gated) as slow:
        compressor = RerankCompressor(engine=slow, on_error="passthrough", timeout=0.1)
        assert len(compressor.compress_documents(DOCS, "q")) == 3
        with pytest.raises(TimeoutError):
            RerankCompressor(engine=slow, timeout=0.1).compress_documents(DOCS, "q")
        gated.gate.set()


def test_passthrough_never_hides_bad_input() -> None:
    with _broken() as engine, pytest.raises(ValueError, match="query is empty"):
        RerankCompressor(engine=engine, on_error="passthrough").compress_documents(DOCS, "")


def test_llama_index_passthrough_keeps_retrieval_scores_and_marks_nodes() -> None:
    nodes = [
        NodeWithScore(node=TextNode(text=f"n{i}", id_=f"n{i}"), score=1.0 - i / 10)
        for i in range(4)
    ]
    snapshot = copy.deepcopy(nodes)
    with _broken() as engine:
        post = RerankPostprocessor(engine=engine, on_error="passthrough", top_n=2)
        out = post.postprocess_nodes(nodes, query_str="q")
        aout = asyncio.run(post.apostprocess_nodes(nodes, query_str="q"))
    for result in (out, aout):
        assert [n.node.node_id for n in result] == ["n0", "n1"]
        assert [n.score for n in result] == [1.0, 0.9]
        assert all(n.node.metadata["reranked"] is False for n in result)
        assert "reranked" in result[0].node.excluded_llm_metadata_keys
    assert [n.node.metadata for n in nodes] == [n.node.metadata for n in snapshot]


def test_passthrough_with_top_n_none_returns_every_item_in_the_retriever_order() -> None:
    nodes = [NodeWithScore(node=TextNode(text=f"n{i}", id_=f"n{i}"), score=0.5) for i in range(4)]
    with _broken() as engine:
        docs = RerankCompressor(engine=engine, on_error="passthrough", top_n=None)
        post = RerankPostprocessor(engine=engine, on_error="passthrough", top_n=None)
        assert [d.id for d in docs.compress_documents(DOCS, "q")] == [d.id for d in DOCS]
        out = post.postprocess_nodes(nodes, query_str="q")
    assert [n.node.node_id for n in out] == ["n0", "n1", "n2", "n3"]
    assert all(n.node.metadata["reranked"] is False for n in out)


@pytest.mark.parametrize("adapter", [RerankCompressor, RerankPostprocessor])
def test_an_unknown_on_error_value_is_a_validation_error(adapter) -> None:
    with (
        RerankEngine.from_backend(FakeBackend()) as engine,
        pytest.raises(ValidationError, match="on_error must be 'raise' or 'passthrough'"),
    ):
        adapter(engine=engine, on_error="ignore")
