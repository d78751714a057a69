"""The last encoder layer runs for the first token only, with the full model's scores."""

from __future__ import annotations

import json

import pytest

from rerank_plugins import RerankEngine
from rerank_plugins.backends._first_token import (
    install_first_token_last_layer,
    restrict_last_layer_to_first_token,
)
from tests._models import TRANSFORMERS_MAJOR

QUERY = "what is rag and how does retrieval help generation?"
TEXTS = [
    "rag combines retrieval and generation to answer a question",
    "cats",
    "the weather in paris is rain and cloud " * 6,
    "python code for a rerank engine with a cache and a batch of pairs",
]


def _load(path: str, attention: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(
        path, attn_implementation=attention
    ).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _logits(model, tokenizer) -> list[float]:
    import torch

    # Pairs of different lengths, so that rows are padded and the mask matters.
    inputs = tokenizer([QUERY] * len(TEXTS), TEXTS, padding=True, return_tensors="pt")
    assert int(inputs["attention_mask"].sum()) < inputs["attention_mask"].numel()
    with torch.inference_mode():
        return model(**inputs).logits[:, 0].tolist()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("model", ["bert_path", "xlmr_path"])
def test_first_token_last_layer_gives_the_full_forward_logits_on_padded_batches(
    model: str, attention: str, request: pytest.FixtureRequest
) -> None:
    path = request.getfixturevalue(model)
    hf, tokenizer = _load(path, attention)
    full = _logits(hf, tokenizer)

    assert restrict_last_layer_to_first_token(hf) is True
    restricted = _logits(hf, tokenizer)

    assert restricted == pytest.approx(full, abs=1e-5)
    assert max(full) - min(full) > 0.05  # distinct scores: the comparison can fail


def test_the_last_layer_really_computes_one_position(bert_path: str) -> None:
    import torch

    hf, tokenizer = _load(bert_path, "sdpa")
    restrict_last_layer_to_first_token(hf)
    inputs = tokenizer([QUERY] * 2, TEXTS[:2], padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = hf.base_model(**inputs)
    assert out.last_hidden_state.shape[:2] == (2, 1)


def test_a_bf16_model_with_the_first_token_last_layer_is_as_close_to_fp32_as_without(
    bert_path: str,
) -> None:
    import torch

    hf, tokenizer = _load(bert_path, "sdpa")
    exact = _logits(hf, tokenizer)
    hf = hf.to(torch.bfloat16)
    full = _logits(hf, tokenizer)
    assert restrict_last_layer_to_first_token(hf) is True
    restricted = _logits(hf, tokenizer)
    # bf16 rounds differently in the two orders of arithmetic (the restricted attention runs
    # in fp32): the restriction must add no error beyond what bf16 itself makes.
    bf16_error = max(abs(a - b) for a, b in zip(full, exact, strict=True))
    restricted_error = max(abs(a - b) for a, b in zip(restricted, exact, strict=True))
    assert restricted_error <= 1.5 * bf16_error + 0.01


def test_the_last_layer_projects_no_key_or_value_rows(bert_path: str) -> None:
    # Its one query folds into the key weights and its attention weights into the value
    # weights, so the key and value layers never run on the tokens.
    import torch

    hf, tokenizer = _load(bert_path, "sdpa")
    restrict_last_layer_to_first_token(hf)
    attention = hf.base_model.encoder.layer[-1].attention.self
    calls: list[str] = []
    attention.key.register_forward_hook(lambda *_: calls.append("key"))
    attention.value.register_forward_hook(lambda *_: calls.append("value"))
    attention.query.register_forward_hook(lambda *_: calls.append("query"))
    inputs = tokenizer([QUERY] * 2, TEXTS[:2], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hf(**inputs)
    assert calls == ["query"]


def test_engines_of_both_torch_backends_report_the_restricted_last_layer(
    bert_path: str, xlmr_path: str
) -> None:
    for path, backend in [(bert_path, "sentence-transformers"), (xlmr_path, "flag")]:
        with RerankEngine(path, device="cpu", backend=backend, cache_size=0) as engine:
            assert engine.info.details["last_layer"] == "first token only"


def test_a_model_in_training_mode_keeps_its_full_forward(bert_path: str) -> None:
    hf, _ = _load(bert_path, "sdpa")
    assert restrict_last_layer_to_first_token(hf.train()) is False


@pytest.mark.skipif(
    TRANSFORMERS_MAJOR >= 5, reason="transformers 5 removed relative positions from BERT"
)
def test_relative_position_attention_keeps_its_full_forward(bert_path: str) -> None:
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(
        bert_path, position_embedding_type="relative_key", attn_implementation="eager"
    ).eval()
    assert restrict_last_layer_to_first_token(hf) is False


def test_an_architecture_outside_the_checked_layouts_keeps_its_full_forward() -> None:
    # DistilBERT's head reads position 0 too, but its layers are laid out differently.
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=1
    )
    model = DistilBertForSequenceClassification(config).eval()
    assert restrict_last_layer_to_first_token(model) is False


def test_a_call_asking_for_more_than_the_first_token_gets_the_full_last_layer(
    bert_path: str,
) -> None:
    import torch

    hf, tokenizer = _load(bert_path, "eager")
    full = _logits(hf, tokenizer)
    restrict_last_layer_to_first_token(hf)
    inputs = tokenizer([QUERY] * len(TEXTS), TEXTS, padding=True, return_tensors="pt")
    config = hf.config
    head_mask = torch.ones(config.num_hidden_layers, config.num_attention_heads)
    with torch.inference_mode():
        out = hf.base_model(**inputs, head_mask=head_mask, output_attentions=True)
        logits = hf(**inputs, head_mask=head_mask).logits[:, 0].tolist()
    assert out.last_hidden_state.shape[1] == inputs["input_ids"].shape[1]
    assert out.attentions[-1] is not None
    assert logits == pytest.approx(full, abs=1e-5)


def _change_the_last_layers_calling_convention(hf) -> None:
    """What a transformers release that renames the layer's mask argument would look like."""
    layer = hf.base_model.encoder.layer[-1]
    original = layer.forward

    def forward(hidden_states, *args, keys_mask=None, **kwargs):
        if args:
            keys_mask, args = args[0], args[1:]
        return original(hidden_states, keys_mask, *args, **kwargs)

    layer.forward = forward


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_last_layer_with_an_unknown_calling_convention_keeps_its_full_forward(
    bert_path: str, attention: str, caplog: pytest.LogCaptureFixture
) -> None:
    hf, tokenizer = _load(bert_path, attention)
    full = _logits(hf, tokenizer)
    _change_the_last_layers_calling_convention(hf)

    with caplog.at_level("WARNING", logger="rerank_plugins"):
        last_layer = install_first_token_last_layer(hf)

    assert last_layer.first_token_only is False
    assert last_layer.label == "all tokens"
    assert (last_layer.reason or "").startswith("restricted layer output differs by")
    assert _logits(hf, tokenizer) == pytest.approx(full, abs=1e-6)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "full forward pass" in warnings[0].getMessage()


def test_a_last_layer_that_fails_under_the_restriction_keeps_its_full_forward(
    bert_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rerank_plugins.backends import _first_token

    hf, tokenizer = _load(bert_path, "sdpa")
    full = _logits(hf, tokenizer)

    def fails(self, *args, **kwargs):  # as the restricted path would on a changed layer
        raise AttributeError("'BertSelfAttention' object has no attribute 'attention_head_size'")

    monkeypatch.setattr(_first_token, "_first_token_forward", fails)
    last_layer = install_first_token_last_layer(hf)

    assert last_layer.first_token_only is False
    assert "check failed: AttributeError" in (last_layer.reason or "")
    assert "forward" not in hf.base_model.encoder.layer[-1].__dict__
    assert _logits(hf, tokenizer) == pytest.approx(full, abs=1e-6)


def test_an_engine_says_when_and_why_the_last_layer_runs_in_full(
    bert_path: str, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    # Chunked feed-forward is a layout the restriction does not handle: a first-token head
    # whose last layer is not the one it was written for.
    import shutil

    from sentence_transformers import CrossEncoder

    folder = tmp_path / "chunked"
    shutil.copytree(bert_path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "chunk_size_feed_forward": 1}))

    with caplog.at_level("WARNING", logger="rerank_plugins"):
        engine = RerankEngine(str(folder), device="cpu", cache_size=0)
    with engine:
        assert engine.info.details["last_layer"] == "all tokens"
        assert engine.info.details["last_layer_reason"] == "last layer not BERT-shaped"
        scores = engine.score(QUERY, TEXTS)
    assert any("full forward pass" in r.getMessage() for r in caplog.records)
    reference = CrossEncoder(str(folder), device="cpu").predict([(QUERY, t) for t in TEXTS])
    assert scores == pytest.approx(reference.tolist(), abs=1e-5)


def test_installing_twice_keeps_one_checked_restriction(bert_path: str) -> None:
    # Two engines can be built on one model object; the second install must not wrap the first.
    hf, tokenizer = _load(bert_path, "sdpa")
    full = _logits(hf, tokenizer)
    assert install_first_token_last_layer(hf).first_token_only
    assert install_first_token_last_layer(hf).first_token_only
    assert _logits(hf, tokenizer) == pytest.approx(full, abs=1e-5)
