"""What both adapters share: one engine per settings, one ranking, one set of checks, lazy imports."""

from __future__ import annotations

import copy
import importlib
import pickle
import sys
from pathlib import Path

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode

from rerank_plugins import MissingDependencyError, RerankEngine
from rerank_plugins.langchain import RerankCompressor
from rerank_plugins.llama_index import RerankPostprocessor
from tests._models import SENTENCES
from tests._process import python

ADAPTERS = [RerankCompressor, RerankPostprocessor]
QUERY = "which city is the capital of france"


def test_adapters_with_the_same_settings_share_one_engine(bert_path: str) -> None:
    first = RerankCompressor(model=bert_path, device="cpu", max_length=128)
    second = RerankCompressor(model=bert_path, engine_options={"device": "cpu", "max_length": 128})
    third = RerankPostprocessor(model=bert_path, device="cpu", max_length=128, top_n=1)
    try:
        assert first.engine is second.engine is third.engine
        assert first.engine.info.max_length == 128
    finally:
        first.engine.close()


def test_adapters_with_other_settings_get_another_engine(
    bert_path: str, bert_engine: RerankEngine
) -> None:
    compressor = RerankCompressor(model=bert_path, device="cpu", normalize=False)
    try:
        assert compressor.engine is not bert_engine
        assert RerankPostprocessor(model=bert_path, device="cpu").engine is bert_engine
    finally:
        compressor.engine.close()


def test_both_adapters_rank_the_same_texts_the_same_way(bert_engine: RerankEngine) -> None:
    docs = [Document(page_content=t) for t in SENTENCES]
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in SENTENCES]
    compressed = RerankCompressor(engine=bert_engine, top_n=4).compress_documents(docs, QUERY)
    processed = RerankPostprocessor(engine=bert_engine, top_n=4).postprocess_nodes(
        nodes, query_str=QUERY
    )
    assert [d.page_content for d in compressed] == [n.node.get_content() for n in processed]
    assert [d.metadata["relevance_score"] for d in compressed] == [n.score for n in processed]
    assert [r.score for r in bert_engine.rerank(QUERY, SENTENCES, top_n=4)] == [
        n.score for n in processed
    ]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_copies_and_pickles_share_the_engine_and_leave_the_original_whole(
    adapter, bert_path: str, bert_engine: RerankEngine
) -> None:
    built = adapter(model=Path(bert_path), device="cpu", top_n=2)
    assert built.model == bert_path
    assert copy.deepcopy(built).engine is bert_engine
    assert copy.deepcopy(adapter(engine=bert_engine)).engine is bert_engine
    restored = pickle.loads(pickle.dumps(built))  # noqa: S301 (our own bytes)
    assert restored.engine is bert_engine
    assert restored.top_n == 2
    assert built.engine is bert_engine  # pickling did not strip the original's engine


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_unknown_option_is_named_along_with_the_valid_ones(adapter, bert_path: str) -> None:
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'topn'.*top_n.*max_length"):
        adapter(model=bert_path, topn=2)


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("top_n", [0, -1])
def test_top_n_below_one_fails_at_construction(adapter, top_n: int, bert_path: str) -> None:
    with pytest.raises(ValueError, match=f"top_n must be >= 1, got {top_n}"):
        adapter(model=bert_path, top_n=top_n)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_exactly_one_of_model_and_engine_is_required(
    adapter, bert_path: str, bert_engine: RerankEngine
) -> None:
    with pytest.raises(TypeError, match=r"exactly one of model= .* and engine="):
        adapter()
    with pytest.raises(TypeError, match="got both"):
        adapter(model=bert_path, engine=bert_engine)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_bad_engine_option_value_fails_at_construction(adapter, bert_path: str) -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        adapter(model=bert_path, device="tpu")


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("rerank_plugins.langchain", "langchain_core", "langchain"),
        ("rerank_plugins.llama_index", "llama_index.core", "llama-index"),
    ],
)
def test_importing_an_adapter_without_its_framework_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, framework: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, framework, None)  # makes `import framework` fail
    monkeypatch.delitem(sys.modules, module)
    with pytest.raises(MissingDependencyError, match=rf"pip install 'rerank-plugins\[{extra}\]'"):
        importlib.import_module(module)


@pytest.mark.slow
def test_the_package_imports_without_any_framework() -> None:
    code = (
        "import sys\n"
        "for name in ('langchain_core', 'langchain_classic', 'llama_index', 'torch'):\n"
        "    sys.modules[name] = None\n"
        "import rerank_plugins\n"
        "try:\n"
        "    import rerank_plugins.langchain\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MissingDependencyError")
    assert "pip install 'rerank-plugins[langchain]'" in done.stdout
