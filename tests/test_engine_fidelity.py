"""Scores equal the reference libraries' on the same weights (real forward passes)."""

from __future__ import annotations

import pytest

from rerank_plugins import RerankEngine

QUERY = "what is rag and how does retrieval help generation?"
SHORT = [
    "rag combines retrieval and generation to answer a question",
    "the weather in paris is rain and cloud",
    "python code for a rerank engine with a cache",
    "",
    "cats and dogs are not fish or birds",
]


# Texts whose tokens do not survive a decode and re-tokenize unchanged (characters outside the
# tiny vocabularies, special-token look-alikes, odd spacing), and empty ones.
AWKWARD = [
    "Héllo   wörld!!  ",
    "   ",
    "a [SEP] b [CLS] c </s> <s> <pad> <unk> <mask>",
    "naïve café — “quotes” 😀 日本語",
    "don't stop-believing... e.g. U.S.A.",
    "tab\tnew\nline ＡＢＣ\u200b zero width \u00a0nbsp",
    "re-rank, re-ranked; (parens) [brackets] {braces}",
]


def _texts(long_text: str) -> list[str]:
    return [*SHORT, long_text, long_text[: len(long_text) // 2]]


@pytest.mark.parametrize("model", ["bert_path", "xlmr_path"])
def test_scores_match_cross_encoder_predict_for_short_and_truncated_documents(
    model: str, request: pytest.FixtureRequest, long_text: str
) -> None:
    from sentence_transformers import CrossEncoder

    path = request.getfixturevalue(model)
    texts = _texts(long_text)
    reference = CrossEncoder(path, max_length=512).predict([(QUERY, t) for t in texts])
    with RerankEngine(path, device="cpu") as engine:
        ours = engine.score(QUERY, texts)
    assert len(ours) == len(texts)
    assert all(type(s) is float for s in ours)
    assert ours == pytest.approx([float(x) for x in reference], abs=1e-4)
    # the check means something only if the scores actually differ from each other
    assert max(ours) - min(ours) > 0.05


@pytest.mark.parametrize("model", ["bert_path", "xlmr_path"])
def test_raw_logits_match_cross_encoder_without_activation(
    model: str, request: pytest.FixtureRequest, long_text: str
) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    path = request.getfixturevalue(model)
    texts = _texts(long_text)
    reference = CrossEncoder(path, max_length=512).predict(
        [(QUERY, t) for t in texts], activation_fn=torch.nn.Identity()
    )
    with RerankEngine(path, device="cpu", normalize=False) as engine:
        ours = engine.score(QUERY, texts)
    assert ours == pytest.approx([float(x) for x in reference], abs=1e-4)
    assert any(s < 0 for s in ours) or any(s > 1 for s in ours)


@pytest.mark.parametrize("model", ["xlmr_path", "bert_path"])
def test_flag_backend_matches_flag_reranker_compute_score(
    model: str, request: pytest.FixtureRequest, long_text: str
) -> None:
    from FlagEmbedding import FlagReranker

    path = request.getfixturevalue(model)
    texts = _texts(long_text)
    reference = FlagReranker(path, use_fp16=False, devices="cpu").compute_score(
        [(QUERY, t) for t in texts], normalize=True, max_length=512
    )
    with RerankEngine(path, backend="flag", device="cpu") as engine:
        assert engine.info.backend == "flag"
        ours = engine.score(QUERY, texts)
    assert ours == pytest.approx(reference, abs=1e-4)
    assert max(ours) - min(ours) > 0.05


def test_long_query_keeps_its_tokens_up_to_three_quarters_of_max_length(bert_path: str) -> None:
    with RerankEngine(bert_path, device="cpu", max_length=64) as engine:
        encoder = engine.backend.encoder  # type: ignore[attr-defined]
        encoded = engine.backend.encode("what is rag " * 10, ["paris " * 200])[0]
        assert encoded.length == 64
        assert encoded.truncated
        query_ids = encoder.query_ids("what is rag " * 10)
        assert len(query_ids) == 30  # short enough: kept whole, the document is cut
        capped = encoder.query_ids("what is rag " * 40)
        assert len(capped) == 48  # 3/4 of max_length


def test_scores_do_not_depend_on_batch_budget(bert_path: str, long_text: str) -> None:
    texts = _texts(long_text) * 3
    with RerankEngine(bert_path, device="cpu", max_batch_size=1, cache_size=0) as one:
        a = one.score(QUERY, texts)
    with RerankEngine(bert_path, device="cpu", batch_tokens=100_000, cache_size=0) as big:
        b = big.score(QUERY, texts)
    assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("backend", ["sentence-transformers", "flag"])
def test_every_backend_gives_probabilities_or_logits_on_the_same_scale(
    backend: str, xlmr_path: str
) -> None:
    import math

    texts = SHORT
    with RerankEngine(xlmr_path, backend=backend, device="cpu") as probs:
        p = probs.score(QUERY, texts)
    with RerankEngine(xlmr_path, backend=backend, device="cpu", normalize=False) as raw:
        z = raw.score(QUERY, texts)
    assert all(0.0 <= x <= 1.0 for x in p)
    assert p == pytest.approx([1 / (1 + math.exp(-v)) for v in z], abs=1e-7)


@pytest.mark.parametrize("model", ["bert_path", "xlmr_path"])
def test_both_torch_backends_match_their_reference_on_awkward_texts(
    model: str, request: pytest.FixtureRequest, long_text: str
) -> None:
    from FlagEmbedding import FlagReranker
    from sentence_transformers import CrossEncoder

    path = request.getfixturevalue(model)
    queries = ["what is rag?", "Ünïcode [SEP] query  "]
    texts = [*AWKWARD, long_text[:1500] + " ü ü"]
    cross_encoder = CrossEncoder(path, max_length=512)
    flag_reranker = FlagReranker(path, use_fp16=False, devices="cpu")
    for query in queries:
        pairs = [(query, t) for t in texts]
        st_reference = [float(x) for x in cross_encoder.predict(pairs)]
        flag_reference = flag_reranker.compute_score(pairs, normalize=True, max_length=512)
        with RerankEngine(path, device="cpu", cache_size=0) as engine:
            assert engine.score(query, texts) == pytest.approx(st_reference, abs=1e-4)
        with RerankEngine(path, backend="flag", device="cpu", cache_size=0) as engine:
            assert engine.score(query, texts) == pytest.approx(flag_reference, abs=1e-4)
