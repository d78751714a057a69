"""The offline fallback models: the shipped bi-encoder and the untrained-head MiniLM cross-encoder."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from rerank_plugins import get_engine
from rerank_plugins.errors import ModelLoadError
from rerank_plugins.models.offline import (
    ResolvedModel,
    bi_encoder_path,
    build_minilm_cross_encoder,
    default_cache_dir,
    describe,
    hub_problem,
    is_untrained_fallback,
    resolve_model,
)


def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder per test session, so the fallback is built once (see test_cli too)."""
    return tmp_path_factory.getbasetemp() / "rerank-plugins-cache"


@pytest.fixture(scope="module")
def fallback_ce(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_minilm_cross_encoder(shared_cache(tmp_path_factory) / "fallback-minilm-ce")


def _config(folder: str) -> dict:
    return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))


def test_the_fallback_has_the_ms_marco_minilm_cross_encoder_architecture(fallback_ce) -> None:
    config = _config(fallback_ce)
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["model_type"] == "bert"
    assert len(config["id2label"]) == 1  # num_labels=1: one relevance logit
    # cross-encoder/ms-marco-MiniLM-L-6-v2's config.json, field by field
    expected = {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
        "vocab_size": 30522,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
    }
    assert {k: config[k] for k in expected} == expected


def test_the_fallback_encoder_weights_are_all_minilm_l6_v2s(fallback_ce) -> None:
    from safetensors.numpy import load_file

    source = load_file(str(Path(bi_encoder_path()) / "model.safetensors"))
    built = load_file(str(Path(fallback_ce) / "model.safetensors"))
    encoder = {k.removeprefix("bert."): v for k, v in built.items() if k.startswith("bert.")}
    shared = [k for k in source if not k.endswith("position_ids")]
    assert len(shared) > 100
    for key in shared:
        assert (encoder[key] == source[key]).all(), key
    assert built["classifier.weight"].shape == (1, 384)


def test_the_fallback_is_marked_untrained_and_says_so(fallback_ce) -> None:
    assert is_untrained_fallback(fallback_ce)
    assert _config(fallback_ce)["rerank_plugins_fallback"]["head"] == "untrained"
    assert "untrained" in (Path(fallback_ce) / "README.md").read_text(encoding="utf-8")
    assert not is_untrained_fallback(bi_encoder_path())
    assert not is_untrained_fallback("cross-encoder/ms-marco-MiniLM-L-6-v2")


def test_the_fallback_is_built_once_and_reused(fallback_ce) -> None:
    weights = Path(fallback_ce) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_minilm_cross_encoder(fallback_ce) == fallback_ce
    assert weights.stat().st_mtime_ns == before


def test_the_fallback_head_is_deterministic(fallback_ce, tmp_path) -> None:
    from safetensors.numpy import load_file

    again = build_minilm_cross_encoder(tmp_path / "again")
    a = load_file(str(Path(fallback_ce) / "model.safetensors"))
    b = load_file(str(Path(again) / "model.safetensors"))
    assert (a["classifier.weight"] == b["classifier.weight"]).all()
    assert (a["classifier.bias"] == b["classifier.bias"]).all()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left over


def test_the_engine_runs_the_fallback_with_spread_finite_scores(fallback_ce) -> None:
    from rerank_plugins.data import load_corpus

    engine = get_engine(fallback_ce, device="cpu")
    texts = [p.text for p in load_corpus()[:20]]
    scores = engine.score("What is retrieval-augmented generation?", texts)
    assert all(0.0 < s < 1.0 and math.isfinite(s) for s in scores)
    assert max(scores) - min(scores) > 0.1  # a spread, not 0.47 everywhere
    assert engine.info.details["model_class"] == "BertForSequenceClassification"


def test_the_default_folder_honours_RERANK_PLUGINS_CACHE(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RERANK_PLUGINS_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("RERANK_PLUGINS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "rerank-plugins"


def test_resolve_model_uses_a_local_folder_as_given(bert_path, fallback_ce) -> None:
    resolved = resolve_model(bert_path, "cross-encoder")
    assert resolved == ResolvedModel(bert_path, bert_path)
    assert describe(resolved) == bert_path
    assert resolve_model(fallback_ce, "cross-encoder").untrained


def test_resolve_model_falls_back_for_a_hub_id_when_offline(
    monkeypatch, tmp_path_factory, fallback_ce
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RERANK_PLUGINS_CACHE", str(shared_cache(tmp_path_factory)))
    ce = resolve_model("rerank-plugins-tests/no-such-reranker", "cross-encoder")
    assert ce.fallback and ce.untrained
    assert ce.model == fallback_ce
    assert "HF_HUB_OFFLINE=1" in (ce.reason or "")
    assert "is not available" in describe(ce)
    bi = resolve_model("rerank-plugins-tests/no-such-encoder", "bi-encoder")
    assert bi.fallback and not bi.untrained
    assert bi.model == bi_encoder_path()


def test_resolve_model_without_fallback_raises_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="cannot load cross-encoder 'org/model'"):
        resolve_model("org/model", "cross-encoder", allow_fallback=False)


def test_resolve_model_rejects_a_missing_folder_and_an_unknown_kind(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model(str(tmp_path / "no" / "such" / "model"), "cross-encoder")
    with pytest.raises(ValueError, match="kind must be"):
        resolve_model("org/model", "reranker")  # type: ignore[arg-type]


def test_an_unreachable_hub_is_reported_after_one_quick_request(monkeypatch) -> None:
    import huggingface_hub

    import rerank_plugins.models.offline as fallback

    calls = []

    def unreachable(self, repo_id, timeout=None, **kwargs):
        calls.append(timeout)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(fallback, "_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    reason = hub_problem("rerank-plugins-tests/not-cached")
    assert reason == "the Hugging Face hub is unreachable (ConnectionError)"
    assert calls == [5.0]


def test_a_model_the_hub_does_not_have_is_an_error_not_a_fallback(monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub.utils import RepositoryNotFoundError

    import rerank_plugins.models.offline as fallback

    def missing(self, repo_id, timeout=None, **kwargs):
        # Built without __init__: huggingface_hub 1.x and later require a real HTTP response.
        error = RepositoryNotFoundError.__new__(RepositoryNotFoundError)
        Exception.__init__(error, "404")
        raise error

    monkeypatch.setattr(fallback, "_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", missing)
    with pytest.raises(ModelLoadError, match="is not a model on the Hugging Face hub"):
        resolve_model("rerank-plugins-tests/typo", "cross-encoder")


def test_hf_hub_offline_is_read_from_the_environment(monkeypatch) -> None:
    import rerank_plugins.models.offline as fallback

    for value in ("1", "true", "ON"):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert fallback._offline()
    assert os.environ["HF_HUB_OFFLINE"] == "ON"


def test_the_old_module_name_gives_the_offline_models() -> None:
    import rerank_plugins.fallback as old
    import rerank_plugins.models.offline as offline

    # The names code written against 0.1.0 imports from there, and the private ones too.
    assert old._offline is offline._offline
    names = "UNTRAINED_HEAD_NOTICE ResolvedModel bi_encoder_path build_minilm_cross_encoder"
    for name in [*names.split(), "default_cache_dir", "is_untrained_fallback", "resolve_model"]:
        assert getattr(old, name) is getattr(offline, name)
