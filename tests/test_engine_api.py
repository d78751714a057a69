"""The engine's public contract: shared instances, results, closing, caching and bad input."""

from __future__ import annotations

import asyncio
import json

import pytest

from rerank_plugins import (
    EngineClosedError,
    ModelLoadError,
    RerankEngine,
    RerankResult,
    get_engine,
)
from tests._fakes import FakeBackend, fake_logit
from tests._process import python


def test_get_engine_returns_the_same_instance_for_the_same_model_and_settings(
    bert_path: str,
) -> None:
    a = get_engine(bert_path, device="cpu")
    b = get_engine(bert_path, device="cpu", normalize=True)
    c = get_engine(bert_path + "/", device="cpu")
    assert a is b is c


def test_get_engine_resolves_auto_settings_before_sharing(bert_path: str) -> None:
    assert get_engine(bert_path) is get_engine(
        bert_path, device="cpu", backend="sentence-transformers"
    )


def test_get_engine_gives_a_different_engine_for_different_settings(bert_path: str) -> None:
    a = get_engine(bert_path, device="cpu")
    b = get_engine(bert_path, device="cpu", max_length=128)
    assert a is not b
    assert b.info.max_length == 128


def test_rerank_engine_constructor_builds_a_private_engine(bert_path: str) -> None:
    with RerankEngine(bert_path, device="cpu") as private:
        assert private is not get_engine(bert_path, device="cpu")


def test_score_returns_plain_floats_in_input_order(bert_engine: RerankEngine) -> None:
    texts = ["the weather in paris", "rag combines retrieval and generation", "python code"]
    scores = bert_engine.score("what is rag?", texts)
    singles = [bert_engine.score("what is rag?", [t])[0] for t in texts]
    assert scores == pytest.approx(singles, abs=1e-6)
    assert all(type(s) is float and 0.0 <= s <= 1.0 for s in scores)


def test_ascore_returns_the_same_numbers_as_score(bert_engine: RerankEngine) -> None:
    texts = ["the weather in paris", "rag combines retrieval and generation"]
    sync = bert_engine.score("what is rag?", texts)
    assert asyncio.run(bert_engine.ascore("what is rag?", texts)) == sync


def test_rerank_orders_best_first_and_keeps_index_and_text(bert_engine: RerankEngine) -> None:
    texts = ["the weather in paris", "rag combines retrieval and generation", "python code", "x"]
    scores = bert_engine.score("what is rag?", texts)
    ranked = bert_engine.rerank("what is rag?", texts)
    assert [r.index for r in ranked] == sorted(range(4), key=lambda i: -scores[i])
    assert all(isinstance(r, RerankResult) and r.text == texts[r.index] for r in ranked)
    assert [r.score for r in ranked] == sorted(scores, reverse=True)


def test_rerank_applies_the_threshold_before_the_top_n_cut(bert_engine: RerankEngine) -> None:
    texts = ["the weather in paris", "rag combines retrieval and generation", "python code", "x"]
    scores = sorted(bert_engine.score("what is rag?", texts), reverse=True)
    threshold = (scores[1] + scores[2]) / 2  # exactly two pass
    ranked = bert_engine.rerank("what is rag?", texts, top_n=3, score_threshold=threshold)
    assert [r.score for r in ranked] == scores[:2]
    assert len(bert_engine.rerank("what is rag?", texts, top_n=1)) == 1


def test_empty_input_returns_empty_list_without_touching_the_model() -> None:
    backend = FakeBackend()
    with RerankEngine.from_backend(backend) as engine:
        assert engine.score("q", []) == []
        assert engine.rerank("q", []) == []
        assert asyncio.run(engine.ascore("q", [])) == []
    assert backend.encoded == 0 and backend.batches == []


def test_normalize_false_returns_raw_logits() -> None:
    with RerankEngine.from_backend(FakeBackend(), normalize=False) as engine:
        assert engine.score("q", ["a", "b"]) == [fake_logit("q", "a"), fake_logit("q", "b")]
        assert engine.info.score_scale.startswith("raw logit")


def test_identical_pairs_are_scored_once_and_repeats_come_from_the_cache() -> None:
    backend = FakeBackend()
    with RerankEngine.from_backend(backend, normalize=False) as engine:
        scores = engine.score("q", ["a", "b", "a", "a"])
        assert scores[0] == scores[2] == scores[3]
        assert backend.encoded == 2 and sum(backend.batches) == 2
        engine.score("q", ["b", "a"])
        assert sum(backend.batches) == 2  # both cached
        assert engine.stats()["cache_hits"] >= 2


def test_cache_size_zero_turns_the_cache_off() -> None:
    backend = FakeBackend()
    with RerankEngine.from_backend(backend, cache_size=0) as engine:
        engine.score("q", ["a", "b"])
        engine.score("q", ["a", "b"])
    assert sum(backend.batches) == 4


def test_cache_is_bounded_lru() -> None:
    backend = FakeBackend()
    with RerankEngine.from_backend(backend, cache_size=3) as engine:
        engine.score("q", ["a", "b", "c", "d"])
        assert engine.stats()["cache_entries"] == 3


def test_a_closed_engine_raises_a_clear_error_instead_of_hanging(bert_path: str) -> None:
    engine = RerankEngine(bert_path, device="cpu")
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(EngineClosedError, match="closed"):
        engine.score("q", ["a"])
    with pytest.raises(EngineClosedError):
        asyncio.run(engine.ascore("q", ["a"]))


def test_get_engine_replaces_a_closed_shared_engine(bert_path: str) -> None:
    engine = get_engine(bert_path, device="cpu", cache_size=7)
    engine.close()
    fresh = get_engine(bert_path, device="cpu", cache_size=7)
    assert fresh is not engine and not fresh.closed
    assert fresh.score("what is rag?", ["rag"])


def test_info_says_which_backend_auto_picked(bert_engine: RerankEngine) -> None:
    info = bert_engine.info
    assert info.backend == "sentence-transformers"
    assert info.backend_reason
    assert info.device == "cpu" and info.precision == "fp32"
    assert info.max_length == 512


@pytest.mark.parametrize(
    ("query", "texts", "error", "match"),
    [
        (None, ["a"], TypeError, "query must be a str"),
        ("", ["a"], ValueError, "query is empty"),
        ("q", None, TypeError, "texts must be a list"),
        ("q", "a single string", TypeError, "single string"),
        ("q", ["a", None], TypeError, r"texts\[1\] must be a str"),
        ("q", ["a", 3], TypeError, r"texts\[1\] must be a str, got int"),
    ],
)
def test_bad_input_raises_type_or_value_error_naming_the_problem(
    query: object, texts: object, error: type[Exception], match: str
) -> None:
    with RerankEngine.from_backend(FakeBackend()) as engine:
        with pytest.raises(error, match=match):
            engine.score(query, texts)  # type: ignore[arg-type]
        with pytest.raises(error, match=match):
            asyncio.run(engine.ascore(query, texts))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"backend": "tensorrt"}, ValueError, "unknown backend 'tensorrt'"),
        ({"batch_size": 8}, TypeError, "unknown engine option"),
        ({"cache_size": -1}, ValueError, "cache_size must be >= 0"),
        ({"max_length": 0}, ValueError, "max_length must be a positive int"),
        ({"device": "tpu"}, ValueError, "unknown device"),
        ({"precision": "int4"}, ValueError, "unknown precision"),
        ({"precision": "int8"}, ValueError, "only available with backend='onnx'"),
    ],
)
def test_bad_options_are_refused_by_name(
    bert_path: str, options: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        get_engine(bert_path, **options)


def test_a_missing_model_path_raises_model_load_error(tmp_path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        get_engine(missing)
    with pytest.raises(ValueError):  # ModelLoadError is a ValueError
        RerankEngine(missing, backend="flag")


def test_max_length_above_the_model_limit_is_refused(bert_path: str) -> None:
    with pytest.raises(ValueError, match="exceeds the model's limit of 512"):
        RerankEngine(bert_path, max_length=4096)


@pytest.mark.slow
def test_importing_the_package_does_not_import_torch() -> None:
    out = python("import sys, rerank_plugins; print('torch' in sys.modules)")
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_a_missing_optional_dependency_names_the_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['FlagEmbedding'] = None\n"
        "from rerank_plugins._imports import require\n"
        "try:\n    require('FlagEmbedding', purpose='the flag backend')\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = python(code)
    assert "pip install 'rerank-plugins[flag]'" in out.stdout


def test_a_backend_missing_part_of_the_interface_is_refused_at_construction() -> None:
    class Half:
        name, device, precision, max_length = "half", "cpu", "fp32", 64

        def encode(self, query, texts):
            return []

        def forward(self, batch):
            return []

    with pytest.raises(TypeError, match=r"lacks supports_windows, cpu_threads, .*BackendBase"):
        RerankEngine.from_backend(Half())  # type: ignore[arg-type]


def test_a_passage_mode_on_a_backend_without_windows_fails_at_construction() -> None:
    backend = FakeBackend()
    assert backend.supports_windows is False  # the declared default
    with pytest.raises(ValueError, match="cannot"):
        RerankEngine.from_backend(backend, long_documents="max")


class _Counted(FakeBackend):
    closed = 0

    def close(self) -> None:
        type(self).closed += 1


def test_get_engine_closes_the_model_it_loaded_when_a_later_option_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rerank_plugins.engine as engine_module

    monkeypatch.setattr(engine_module, "load_backend", lambda config, name: _Counted())
    # get_engine resolves device "auto" by asking the backend class; this test passes "cpu".
    _Counted.closed = 0
    # Two streams need a backend whose passes run side by side; this one declares none.
    with pytest.raises(ValueError, match="streams=2"):
        get_engine("rerank-plugins-tests/never-loaded", device="cpu", streams=2)
    assert _Counted.closed == 1
    with pytest.raises(ValueError, match="streams=2"):
        RerankEngine("rerank-plugins-tests/never-loaded", device="cpu", streams=2)
    assert _Counted.closed == 2


@pytest.mark.slow
def test_each_backend_resolves_auto_devices_itself_and_onnx_without_torch() -> None:
    # A CUDA machine with the CPU build of onnxruntime: torch would say cuda, ORT runs on cpu.
    # get_engine's key resolves "auto" as the backend would, here without importing torch.
    out = python(
        "import json, sys, onnxruntime\n"
        "from rerank_plugins.config import EngineConfig\n"
        "from rerank_plugins.registry import _canonical\n"
        "device = _canonical(EngineConfig.from_options('m', {'backend': 'onnx'})).device\n"
        "cuda = 'CUDAExecutionProvider' in onnxruntime.get_available_providers()\n"
        "print(json.dumps([device, cuda, 'torch' in sys.modules]))\n"
    )
    device, has_cuda, imported_torch = json.loads(out.stdout)
    assert device == ("cuda" if has_cuda else "cpu")
    assert imported_torch is False
