"""What both adapters' settings become as a JSON schema, a dump and a pickle, and back again.

A RemoteEngine is a URL plus settings: it survives every round trip, and dumps never hold its
API key (a reference to the environment variable stands in for it). A loaded local model
survives none, and says so in one line naming what to pass instead.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from rerank_plugins import RerankEngine
from rerank_plugins.langchain import RerankCompressor
from rerank_plugins.llama_index import RerankPostprocessor
from rerank_plugins.remote import API_KEY_ENV, RemoteEngine
from rerank_plugins.server import create_app
from tests._models import SENTENCES
from tests._serving import running

ADAPTERS = [RerankCompressor, RerankPostprocessor]
QUERY = "which city is the capital of france"
KEY = "serialization-test-key"

Adapter = RerankCompressor | RerankPostprocessor


def _ranked(adapter: Adapter) -> list[tuple[str, float]]:
    """What an adapter returns for SENTENCES, as (text, score) pairs, best first."""
    if isinstance(adapter, RerankCompressor):
        docs = [Document(page_content=t) for t in SENTENCES]
        return [
            (d.page_content, d.metadata["relevance_score"])
            for d in adapter.compress_documents(docs, QUERY)
        ]
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in SENTENCES]
    found = adapter.postprocess_nodes(nodes, query_str=QUERY)
    return [(n.node.get_content(), n.score) for n in found]


def _dumps(adapter: Adapter) -> dict[str, Any]:
    """Each plain-data form of ``adapter`` its framework offers, by name."""
    out: dict[str, Any] = {
        "model_dump": adapter.model_dump(),
        "model_dump_json": adapter.model_dump_json(),
    }
    if isinstance(adapter, RerankPostprocessor):
        out["to_dict"] = adapter.to_dict()
        out["to_json"] = adapter.to_json()
    return out


def _rebuilt(adapter: Adapter) -> dict[str, Adapter]:
    """``adapter`` rebuilt from each of its dumps, the framework's own way back."""
    if isinstance(adapter, RerankCompressor):  # LangChain: keyword arguments from the dump
        return {
            "model_dump": RerankCompressor(**adapter.model_dump()),
            "model_dump_json": RerankCompressor(**json.loads(adapter.model_dump_json())),
        }
    return {  # LlamaIndex: from_dict / from_json
        "to_dict": RerankPostprocessor.from_dict(adapter.to_dict()),
        "to_json": RerankPostprocessor.from_json(adapter.to_json()),
    }


# ---------------------------------------------------------------------- JSON schema


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("mode", ["validation", "serialization"])
def test_the_json_schema_describes_the_settings_and_the_engine_as_dumps_write_it(
    adapter: type[Adapter], mode: Any
) -> None:
    schema = adapter.model_json_schema(mode=mode)
    json.dumps(schema)  # plain JSON all the way down
    shared = {"model", "engine_options", "top_n", "score_threshold", "on_error", "timeout"}
    assert shared <= set(schema["properties"])
    if mode == "validation":
        engine = schema["properties"]["engine"]
        remote, null = engine["anyOf"]
        assert null == {"type": "null"}
        assert remote["required"] == ["remote"]
        assert remote["properties"]["remote"]["required"] == ["url"]


def test_the_schema_of_a_remote_engine_names_every_setting_to_config_writes() -> None:
    schema = RerankCompressor.model_json_schema()["properties"]["engine"]["anyOf"][0]
    written = RemoteEngine("http://127.0.0.1:8080", api_key=KEY).to_config()
    assert set(schema["properties"]["remote"]["properties"]) == set(written)


def test_a_callable_text_template_is_left_out_of_the_schema_not_a_failure() -> None:
    template = RerankCompressor.model_json_schema()["properties"]["text_template"]
    assert template["anyOf"] == [{"type": "string"}, {"type": "null"}]


# ---------------------------------------------------------------------- a local model


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_adapter_with_a_loaded_engine_refuses_pickling_in_one_line_naming_what_to_pass(
    adapter: type[Adapter], bert_engine: RerankEngine
) -> None:
    built = adapter(engine=bert_engine)
    with pytest.raises(TypeError) as caught:
        pickle.dumps(built)
    message = str(caught.value)
    assert message.startswith(
        f"{adapter.__name__} cannot be pickled: its engine= is a loaded RerankEngine, and a "
        "loaded model is not serializable; build it with model=... and engine_options={...}"
    )
    assert "engine=RemoteEngine(url)" in message
    assert "\n" not in message
    assert built.engine is bert_engine  # the failed attempt left the adapter whole


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_adapter_with_a_loaded_engine_refuses_every_dump_in_one_line_naming_what_to_pass(
    adapter: type[Adapter], bert_engine: RerankEngine
) -> None:
    built = adapter(engine=bert_engine)
    dumps = [built.model_dump, built.model_dump_json]
    if isinstance(built, RerankPostprocessor):
        dumps += [built.to_dict, built.to_json]
    for dump in dumps:
        with pytest.raises(PydanticSerializationError) as caught:
            dump()
        message = str(caught.value)
        assert f"{adapter.__name__} cannot be dumped: its engine= is a loaded RerankEngine" in (
            message
        )
        assert "model=... and engine_options={...}" in message
        assert "\n" not in message


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_excluding_the_engine_dumps_the_other_settings(
    adapter: type[Adapter], bert_engine: RerankEngine
) -> None:
    dump = adapter(engine=bert_engine, top_n=2).model_dump(exclude={"engine"})
    assert "engine" not in dump
    assert dump["top_n"] == 2


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_what_to_pass_instead_model_and_engine_options_round_trips_every_way(
    adapter: type[Adapter], bert_path: str, bert_engine: RerankEngine
) -> None:
    built = adapter(model=bert_path, engine_options={"device": "cpu"}, top_n=2)
    for way, dump in _dumps(built).items():
        assert "engine" not in (json.loads(dump) if isinstance(dump, str) else dump), way
    copies = {"pickle": pickle.loads(pickle.dumps(built)), **_rebuilt(built)}  # noqa: S301
    for way, copy in copies.items():
        assert copy.engine is bert_engine, way
        assert (copy.model, copy.engine_options, copy.top_n) == (bert_path, {"device": "cpu"}, 2)


# ---------------------------------------------------------------------- a RemoteEngine


@pytest.fixture(scope="module")
def url(bert_engine: RerankEngine) -> Iterator[str]:
    with running(create_app(bert_engine, api_key=KEY)) as base:
        yield base


@pytest.fixture()
def remote(url: str) -> Iterator[RemoteEngine]:
    with RemoteEngine(url, api_key=KEY, batch_size=4, max_retries=0) as engine:
        yield engine


@pytest.fixture()
def key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, KEY)


@pytest.fixture()
def no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_remote_adapter_scores_as_the_local_engine_it_serves(
    adapter: type[Adapter], remote: RemoteEngine, bert_engine: RerankEngine
) -> None:
    over_http = _ranked(adapter(engine=remote, top_n=4))
    local = _ranked(adapter(engine=bert_engine, top_n=4))
    assert [t for t, _ in over_http] == [t for t, _ in local]
    assert [s for _, s in over_http] == pytest.approx([s for _, s in local], abs=1e-6)


@pytest.mark.slow
@pytest.mark.usefixtures("no_key_in_environment")
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_remote_adapter_pickles_with_its_key_and_scores_the_same(
    adapter: type[Adapter], remote: RemoteEngine
) -> None:
    # A pickle is a copy for another process (multiprocessing, Ray): it carries the key.
    built = adapter(engine=remote, top_n=4, timeout=30)
    expected = _ranked(built)
    restored = pickle.loads(pickle.dumps(built))  # noqa: S301 (our own bytes)
    assert isinstance(restored.engine, RemoteEngine)
    assert restored.engine is not remote  # its own connections
    assert (restored.top_n, restored.timeout, restored.model) == (4, 30.0, None)
    with restored.engine:
        assert _ranked(restored) == expected


@pytest.mark.slow
@pytest.mark.usefixtures("key_in_environment")
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_remote_adapter_rebuilds_from_every_dump_and_scores_the_same(
    adapter: type[Adapter], remote: RemoteEngine, url: str
) -> None:
    built = adapter(engine=remote, top_n=4, score_threshold=0.0)
    expected = _ranked(built)
    for way, copy in _rebuilt(built).items():
        assert isinstance(copy.engine, RemoteEngine), way
        assert copy.engine.url == remote.url, way
        assert (copy.top_n, copy.score_threshold) == (4, 0.0), way
        with copy.engine:
            assert _ranked(copy) == expected, way


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_dump_holds_the_remote_settings_and_never_the_api_key(adapter: type[Adapter]) -> None:
    engine = RemoteEngine("http://127.0.0.1:8080/", api="cohere", model="m", api_key=KEY)
    for way, dump in _dumps(adapter(engine=engine)).items():
        assert KEY not in (dump if isinstance(dump, str) else json.dumps(dump)), way
        data = json.loads(dump) if isinstance(dump, str) else dump
        settings = data["engine"]["remote"]
        assert settings["url"] == "http://127.0.0.1:8080"
        assert (settings["api"], settings["model"], settings["path"]) == (
            "cohere",
            "m",
            "/v1/rerank",
        )
        assert settings["api_key"] == {"env": API_KEY_ENV}, way
        assert data["model"] is None


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_engine_without_a_key_dumps_none_for_it(adapter: type[Adapter]) -> None:
    dump = adapter(engine=RemoteEngine("http://127.0.0.1:8080")).model_dump()
    assert dump["engine"]["remote"]["api_key"] is None


@pytest.mark.usefixtures("no_key_in_environment")
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_rebuilding_without_the_key_in_the_environment_names_the_variable_to_set(
    adapter: type[Adapter],
) -> None:
    engine = RemoteEngine("http://127.0.0.1:8080", api_key=KEY)
    dump = adapter(engine=engine).model_dump()
    dump.pop("class_name", None)  # LlamaIndex's, read by from_dict
    with pytest.raises(ValidationError) as caught:
        adapter(**dump)
    (error,) = caught.value.errors()
    assert "\n" not in error["msg"]
    assert f"from the environment variable {API_KEY_ENV}, which is not set" in error["msg"]


@pytest.mark.slow
@pytest.mark.usefixtures("no_key_in_environment")
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_key_the_user_puts_into_the_dump_is_used(
    adapter: type[Adapter], remote: RemoteEngine
) -> None:
    built = adapter(engine=remote, top_n=4)
    dump = built.model_dump()
    dump.pop("class_name", None)
    dump["engine"]["remote"]["api_key"] = KEY  # opting in: the dump now holds a secret
    rebuilt = adapter(**dump)
    with rebuilt.engine:
        assert _ranked(rebuilt) == _ranked(built)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_credential_headers_are_never_dumped_and_the_error_says_to_use_api_key(
    adapter: type[Adapter],
) -> None:
    engine = RemoteEngine("http://127.0.0.1:8080", headers={"X-API-Key": KEY, "X-Team": "a"})
    built = adapter(engine=engine)
    with pytest.raises(PydanticSerializationError) as caught:
        built.model_dump()
    message = str(caught.value)
    assert "credential header(s) 'X-API-Key'" in message
    assert "pass the key as api_key= instead" in message
    assert KEY not in message
    # A pickle, a copy for another process, does carry the headers.
    restored = pickle.loads(pickle.dumps(built))  # noqa: S301 (our own bytes)
    assert isinstance(restored.engine, RemoteEngine)


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ({"remote": {}}, r"a RemoteEngine config has no 'url'"),
        ({"remote": {"url": "http://h", "apikey": "k"}}, r"unknown key\(s\) 'apikey'"),
        ({"local": {"model": "x"}}, r"engine given as a dict must be \{'remote'"),
        ({"remote": {"url": "ftp://h"}}, r"url must start with http:// or https://"),
        ({"remote": {"url": "http://h", "api_key": {"file": "k"}}}, r"api_key in a RemoteEngine"),
    ],
)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_bad_engine_in_a_dump_is_a_one_line_validation_error(
    adapter: type[Adapter], engine: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        adapter(engine=engine)
    (error,) = caught.value.errors()
    assert "\n" not in error["msg"]
