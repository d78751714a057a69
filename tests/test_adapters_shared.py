"""What both adapters share: one engine per settings, one ranking, one set of checks, lazy imports."""

from __future__ import annotations

import copy
import importlib
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import ValidationError

from rerank_plugins import MissingDependencyError, RerankEngine
from rerank_plugins.langchain import RerankCompressor
from rerank_plugins.llama_index import RerankPostprocessor
from tests._models import SENTENCES
from tests._process import python

ADAPTERS = [RerankCompressor, RerankPostprocessor]
QUERY = "which city is the capital of france"


def _ranked(adapter: RerankCompressor | RerankPostprocessor) -> list[tuple[str, float]]:
    """What an adapter returns for SENTENCES, as (text, score) pairs, best first."""
    if isinstance(adapter, RerankCompressor):
        docs = [Document(page_content=t) for t in SENTENCES]
        out = adapter.compress_documents(docs, QUERY)
        return [(d.page_content, d.metadata["relevance_score"]) for d in out]
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in SENTENCES]
    found = adapter.postprocess_nodes(nodes, query_str=QUERY)
    return [(n.node.get_content(), n.score) for n in found]


def _invalid(adapter, bert_path: str, options: dict[str, Any]) -> dict[str, Any]:
    """Build ``adapter`` with ``options`` (on the tiny model unless they name model or engine);
    return its one validation error."""
    settings = options if {"model", "engine"} & set(options) else {"model": bert_path, **options}
    with pytest.raises(ValidationError) as caught:
        adapter(**settings)
    assert caught.value.title == adapter.__name__
    (error,) = caught.value.errors()
    assert "\n" not in error["msg"]
    return error


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


# ---------------------------------------------------------------------- bad settings

# Each bad setting, and the one line its ValidationError says: the setting and what to pass.
# Values are checked strictly: a str, a float or a bool is never taken for an int, nor a str
# for a number or a flag, where pydantic's lax mode would coerce "3" to 3.
BAD_SETTINGS = [
    ({"top_n": "3"}, r"top_n must be a positive int or None, got '3'"),
    ({"top_n": 2.5}, r"top_n must be a positive int or None, got 2\.5"),
    ({"top_n": True}, r"top_n must be a positive int or None, got True"),
    ({"top_n": 0}, r"top_n must be >= 1, got 0"),
    ({"top_n": -1}, r"top_n must be >= 1, got -1"),
    ({"score_threshold": "0.5"}, r"score_threshold must be a number or None, got '0\.5'"),
    ({"score_threshold": float("nan")}, r"score_threshold must not be NaN"),
    ({"timeout": 0}, r"timeout must be a positive number of seconds or None, got 0"),
    ({"timeout": "5"}, r"timeout must be a positive number of seconds or None, got '5'"),
    ({"on_error": "ignore"}, r"on_error must be 'raise' or 'passthrough', got 'ignore'"),
    ({"instruction": ["find"]}, r"instruction must be a string or None, got list"),
    ({"model": 3}, r"model must be a hub id or a local folder .*got 3; .*by keyword \(top_n=3\)"),
    ({"model": ""}, r"model must be a non-empty hub id or folder path, got ''"),
    ({"model": None}, r"needs exactly one of model= .* and engine= .*got neither"),
    ({"engine": "an engine"}, r"engine must implement rerank_plugins\.Scorer; str lacks score"),
    ({"topn": 2}, r"unknown option\(s\) 'topn'; expected its settings \(.*top_n.*max_length"),
    ({"engine_options": ["cpu"]}, r"engine_options must be a dict of engine options, got list"),
    ({"engine_options": {"devcie": "cpu"}}, r"unknown engine option\(s\) 'devcie'"),
    (
        {"device": "cpu", "engine_options": {"device": "cpu"}},
        r"engine option\(s\) 'device' both as keyword arguments and in engine_options",
    ),
    ({"device": "tpu"}, r"unknown device 'tpu'; expected 'auto', 'cpu'"),
    ({"max_length": "256"}, r"max_length must be a positive int or None, got '256'"),
    ({"normalize": "yes"}, r"normalize must be True or False, got 'yes'"),
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize(
    ("options", "message"), BAD_SETTINGS, ids=[repr(options) for options, _ in BAD_SETTINGS]
)
def test_every_bad_setting_raises_a_one_line_validation_error_naming_it(
    adapter, options: dict[str, Any], message: str, bert_path: str
) -> None:
    said = _invalid(adapter, bert_path, options)["msg"]
    assert re.search(message, said), said


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_model_and_engine_together_raise_a_validation_error(
    adapter, bert_path: str, bert_engine: RerankEngine
) -> None:
    error = _invalid(adapter, bert_path, {"model": bert_path, "engine": bert_engine})
    assert "exactly one of model=" in error["msg"]
    assert error["msg"].endswith("got both.")
    error = _invalid(adapter, bert_path, {"engine": bert_engine, "device": "cpu"})
    assert "engine options (device) only apply with model=" in error["msg"]


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_int_is_taken_where_a_number_of_seconds_or_a_score_is_expected(
    adapter, bert_engine: RerankEngine
) -> None:
    built = adapter(engine=bert_engine, score_threshold=0, timeout=30)
    assert (built.score_threshold, built.timeout) == (0.0, 30.0)
    assert type(built.score_threshold) is float
    assert type(built.timeout) is float


# ---------------------------------------------------------------------- top_n=None


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_top_n_none_keeps_every_item_best_first(adapter, bert_engine: RerankEngine) -> None:
    built = adapter(engine=bert_engine, top_n=None)
    assert built.top_n is None
    ranked = _ranked(built)
    expected = bert_engine.rerank(QUERY, SENTENCES)
    assert [text for text, _ in ranked] == [r.text for r in expected]
    assert [score for _, score in ranked] == [r.score for r in expected]
    assert len(ranked) == len(SENTENCES)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_top_n_is_three_unless_given(adapter, bert_engine: RerankEngine) -> None:
    assert adapter(engine=bert_engine).top_n == 3
    assert len(_ranked(adapter(engine=bert_engine))) == 3


# ---------------------------------------------------------------------- the model, positionally


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_model_may_be_given_positionally_with_the_same_results(
    adapter, bert_path: str, bert_engine: RerankEngine
) -> None:
    positional = adapter(bert_path, device="cpu", top_n=4)
    keyword = adapter(model=bert_path, device="cpu", top_n=4)
    as_path = adapter(Path(bert_path), device="cpu", top_n=4)
    assert positional.model == keyword.model == as_path.model == bert_path
    assert positional.engine is keyword.engine is as_path.engine is bert_engine
    assert _ranked(positional) == _ranked(keyword) == _ranked(as_path)
    assert len(_ranked(positional)) == 4


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_positionally_built_adapter_copies_pickles_and_rebuilds_from_its_dump(
    adapter, bert_path: str, bert_engine: RerankEngine
) -> None:
    built = adapter(bert_path, device="cpu", top_n=None)
    restored = pickle.loads(pickle.dumps(built))  # noqa: S301 (our own bytes)
    # Each framework's own way back from plain data: pydantic's dump, LlamaIndex's to_dict.
    if isinstance(built, RerankPostprocessor):
        rebuilt = RerankPostprocessor.from_dict(built.to_dict())
    else:
        rebuilt = adapter(**built.model_dump())
    for other in (copy.deepcopy(built), restored, rebuilt):
        assert other.engine is bert_engine
        assert (other.model, other.top_n, other.engine_options) == (
            bert_path,
            None,
            {"device": "cpu"},
        )


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_more_than_one_positional_argument_is_a_one_line_type_error(
    adapter, bert_path: str
) -> None:
    with pytest.raises(TypeError) as caught:
        adapter(bert_path, 3)
    assert str(caught.value) == (
        f"{adapter.__name__} takes one positional argument, the model, got 2; pass the other "
        f"settings by keyword, e.g. {adapter.__name__}(model, top_n=3)."
    )


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_the_model_given_both_positionally_and_by_keyword_is_a_type_error(
    adapter, bert_path: str
) -> None:
    with pytest.raises(TypeError, match=r"got the model twice, positionally and as model="):
        adapter(bert_path, model=bert_path)


def test_a_positional_top_n_as_sentence_transformer_rerank_takes_it_is_refused_with_a_hint(
    bert_path: str,
) -> None:
    # LlamaIndex's SentenceTransformerRerank(3) means top_n=3; here the first argument is the
    # model, so a bare int is refused, saying where top_n goes, instead of loading "3".
    error = _invalid(RerankPostprocessor, bert_path, {"model": 3})
    assert error["loc"] == ("model",)
    assert "settings such as top_n go by keyword (top_n=3)" in error["msg"]


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
