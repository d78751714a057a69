"""Decoder (LLM) rerankers: each protocol scores exactly as its reference, on tiny local models.

References run in the same process on the same weights: ``FlagLLMReranker.compute_score``
(bge-reranker-v2-gemma's library), ``CrossEncoder.predict`` (sentence-transformers'
``LogitScore`` models), and the Qwen3-Reranker model card's code, copied below.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from rerank_plugins import RerankEngine
from rerank_plugins.backends.decoder import choose_protocol
from tests._models import SENTENCES, random_text

PARITY = 1e-5  # on probabilities; the issue asks for 1e-4

QUERY = "what is rag retrieval"
INSTRUCTION = "Given a question about machine learning, find passages that define the term"


@pytest.fixture(scope="module")
def docs() -> list[str]:
    rng = random.Random(7)
    return SENTENCES[:6] + [random_text(rng, rng.randint(2, 90)) for _ in range(14)]


@pytest.fixture(scope="module")
def gemma_engine(gemma_path: str):
    with RerankEngine(gemma_path, device="cpu", cache_size=0) as engine:
        yield engine


@pytest.fixture(scope="module")
def qwen3_engine(qwen3_path: str):
    with RerankEngine(qwen3_path, device="cpu", cache_size=0) as engine:
        yield engine


@pytest.fixture(scope="module")
def qwen3_st_engine(qwen3_st_path: str):
    with RerankEngine(qwen3_st_path, device="cpu", cache_size=0) as engine:
        yield engine


def model_card_scores(
    path: str, pairs: list[tuple[str, str]], instruction: str | None = None, max_length: int = 8192
) -> list[float]:
    """The Qwen3-Reranker model card's transformers example, unchanged but for the path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        "<|im_end|>\n<|im_start|>user\n"
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    prefix_tokens = tokenizer.encode(prefix, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(suffix, add_special_tokens=False)

    def format_instruction(instruction, query, doc):
        if instruction is None:
            instruction = (
                "Given a web search query, retrieve relevant passages that answer the query"
            )
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    texts = [format_instruction(instruction, q, d) for q, d in pairs]
    inputs = tokenizer(
        texts,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
    )
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
    with torch.no_grad():
        batch_scores = model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().tolist()


def flag_scores(path: str, pairs: list[tuple[str, str]], **kwargs) -> np.ndarray:
    from FlagEmbedding import FlagLLMReranker

    reranker = FlagLLMReranker(path, devices="cpu")
    return np.asarray(reranker.compute_score(pairs, normalize=True, **kwargs))


def assert_spread(scores) -> None:
    """Scores that all sit together would make any parity check pass."""
    assert float(np.std(scores)) > 0.05, scores


# -- protocol detection -----------------------------------------------------------------------


def test_auto_detects_each_family_and_says_why(gemma_engine, qwen3_engine, qwen3_st_engine):
    seen = {
        e.info.details["protocol"]: (e.info.backend, e.info.details["protocol_reason"])
        for e in (gemma_engine, qwen3_engine, qwen3_st_engine)
    }
    assert seen["flag-llm"][0] == seen["qwen3"][0] == seen["sentence-transformers"][0] == "decoder"
    assert "FlagLLMReranker" in seen["flag-llm"][1]
    assert "model card" in seen["qwen3"][1]
    assert "LogitScore" in seen["sentence-transformers"][1]


def test_a_causal_lm_no_rule_places_gets_an_error_naming_the_options(llama_path):
    with pytest.raises(
        ValueError, match=r"decoder_protocol='flag-llm'.*'qwen3'.*'sentence-transformers'"
    ):
        RerankEngine(llama_path, device="cpu")


@pytest.mark.parametrize(
    ("name", "architectures", "use"),
    [
        (
            "BAAI/bge-reranker-v2-minicpm-layerwise",
            ["LayerWiseMiniCPMForCausalLM"],
            "LayerWiseFlagLLMReranker",
        ),
        (
            "BAAI/bge-reranker-v2.5-gemma2-lightweight",
            ["CostWiseGemmaForCausalLM"],
            "LightWeightFlagLLMReranker",
        ),
    ],
)
def test_layerwise_and_lightweight_bge_rerankers_are_refused_with_what_to_use(
    name, architectures, use
):
    with pytest.raises(ValueError, match=use):
        choose_protocol(name, "auto", {"architectures": architectures})


def test_an_explicit_protocol_overrides_detection(qwen3_path):
    with RerankEngine(qwen3_path, device="cpu", decoder_protocol="flag-llm") as engine:
        assert engine.info.details["protocol"] == "flag-llm"
        assert engine.info.details["protocol_reason"] == "requested (decoder_protocol)"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"decoder_protocol": "chatml"}, ValueError, "unknown decoder_protocol 'chatml'"),
        ({"decoder_tokens": ("yes",)}, TypeError, "decoder_tokens must be a .true, false. pair"),
        ({"decoder_tokens": ("yes", 3)}, TypeError, "decoder_tokens must be"),
        (
            {"backend": "sentence-transformers", "decoder_protocol": "qwen3"},
            ValueError,
            "backend='decoder' only",
        ),
    ],
)
def test_decoder_options_are_checked_with_a_one_line_error(options, error, match):
    with pytest.raises(error, match=match):
        RerankEngine("some/model", **options)


def test_decoder_options_on_an_encoder_folder_are_an_error(bert_path):
    with pytest.raises(ValueError, match="apply to decoder"):
        RerankEngine(bert_path, decoder_protocol="qwen3")


# -- parity with each reference ---------------------------------------------------------------


def test_flag_llm_protocol_scores_as_flag_llm_reranker_compute_score(
    gemma_engine, gemma_path, docs
):
    pairs = [(QUERY, d) for d in docs]
    ours = np.asarray(gemma_engine.score(QUERY, docs))
    assert_spread(ours)
    assert np.abs(ours - flag_scores(gemma_path, pairs)).max() < PARITY


def test_an_instruction_is_flag_llm_rerankers_prompt(gemma_engine, gemma_path, docs):
    pairs = [(QUERY, d) for d in docs]
    ours = np.asarray(gemma_engine.score(QUERY, docs, instruction=INSTRUCTION))
    ref = flag_scores(gemma_path, pairs, prompt=INSTRUCTION)
    assert np.abs(ours - ref).max() < PARITY
    assert np.abs(ours - np.asarray(gemma_engine.score(QUERY, docs))).max() > 1e-3


def test_flag_llm_truncation_matches_at_a_short_max_length(gemma_path, docs):
    long_docs = [d + " " + random_text(random.Random(i), 80) for i, d in enumerate(docs[:6])]
    pairs = [(QUERY, d) for d in long_docs]
    with RerankEngine(gemma_path, device="cpu", max_length=48) as engine:
        results = engine.rerank(QUERY, long_docs)
        ours = np.asarray(engine.score(QUERY, long_docs))
    assert all(r.truncated for r in results)
    assert np.abs(ours - flag_scores(gemma_path, pairs, max_length=48)).max() < PARITY


def test_a_llama_folder_with_the_protocol_named_scores_as_flag_llm_reranker(llama_path, docs):
    pairs = [(QUERY, d) for d in docs]
    with RerankEngine(
        llama_path, device="cpu", decoder_protocol="flag-llm", decoder_tokens=("yes", None)
    ) as engine:
        ours = np.asarray(engine.score(QUERY, docs))
    from FlagEmbedding import FlagLLMReranker

    reranker = FlagLLMReranker(llama_path, devices="cpu")
    reranker.yes_loc = reranker.tokenizer("yes", add_special_tokens=False)["input_ids"][0]
    ref = np.asarray(reranker.compute_score(pairs, normalize=True))
    assert_spread(ours)
    assert np.abs(ours - ref).max() < PARITY


def test_cross_encoder_folder_scores_as_cross_encoder_predict(qwen3_st_engine, qwen3_st_path, docs):
    from sentence_transformers import CrossEncoder

    pairs = [(QUERY, d) for d in docs]
    reference = CrossEncoder(qwen3_st_path, device="cpu")
    ours = np.asarray(qwen3_st_engine.score(QUERY, docs))
    assert_spread(ours)
    assert np.abs(ours - reference.predict(pairs)).max() < PARITY
    with_prompt = np.asarray(qwen3_st_engine.score(QUERY, docs, instruction=INSTRUCTION))
    assert np.abs(with_prompt - reference.predict(pairs, prompt=INSTRUCTION)).max() < PARITY


def test_a_cross_encoder_chat_template_and_its_prompt_apply_as_in_predict(
    qwen3_template_st_path, docs
):
    from sentence_transformers import CrossEncoder

    pairs = [(QUERY, d) for d in docs]
    reference = CrossEncoder(qwen3_template_st_path, device="cpu")
    with RerankEngine(qwen3_template_st_path, device="cpu", cache_size=0) as engine:
        ours = np.asarray(engine.score(QUERY, docs))
        instructed = np.asarray(engine.score(QUERY, docs, instruction=INSTRUCTION))
        prefix, _ = engine.backend.encode(QUERY, docs[:1])[0].payload
    assert_spread(ours)
    assert np.abs(ours - reference.predict(pairs)).max() < PARITY
    assert np.abs(instructed - reference.predict(pairs, prompt=INSTRUCTION)).max() < PARITY
    rendered = reference.tokenizer.decode(list(prefix))
    assert rendered.startswith("<|im_start|>system") and "<Query>: " + QUERY in rendered


def test_a_cross_encoder_folder_truncates_as_predict(qwen3_template_st_path, docs):
    from sentence_transformers import CrossEncoder

    long_docs = [d + " " + random_text(random.Random(i), 120) for i, d in enumerate(docs[:6])]
    pairs = [(QUERY, d) for d in long_docs]
    reference = CrossEncoder(qwen3_template_st_path, device="cpu", max_length=128)
    with RerankEngine(qwen3_template_st_path, device="cpu", max_length=128) as engine:
        ours = np.asarray(engine.score(QUERY, long_docs))
        results = engine.rerank(QUERY, long_docs)
        lengths = [e.length for e in engine.backend.encode(QUERY, long_docs)]
    assert all(r.truncated for r in results)
    assert max(lengths) == 128
    assert np.abs(ours - reference.predict(pairs)).max() < PARITY


def test_qwen3_protocol_scores_as_the_model_card(qwen3_engine, qwen3_path, docs):
    pairs = [(QUERY, d) for d in docs]
    ours = np.asarray(qwen3_engine.score(QUERY, docs))
    assert_spread(ours)
    assert np.abs(ours - model_card_scores(qwen3_path, pairs)).max() < PARITY
    instructed = np.asarray(qwen3_engine.score(QUERY, docs, instruction=INSTRUCTION))
    ref = model_card_scores(qwen3_path, pairs, instruction=INSTRUCTION)
    assert np.abs(instructed - ref).max() < PARITY


def test_qwen3_truncation_matches_the_model_card(qwen3_path, docs):
    long_docs = [d + " " + random_text(random.Random(i), 120) for i, d in enumerate(docs[:6])]
    pairs = [(QUERY, d) for d in long_docs]
    with RerankEngine(qwen3_path, device="cpu", max_length=128) as engine:
        ours = np.asarray(engine.score(QUERY, long_docs))
        assert all(r.truncated for r in engine.rerank(QUERY, long_docs))
    assert np.abs(ours - model_card_scores(qwen3_path, pairs, max_length=128)).max() < PARITY


def test_decoder_tokens_choose_the_rows_the_score_reads(qwen3_path, docs):
    """mxbai-style models answer with other tokens; the option names them."""
    import torch
    from transformers import AutoModelForCausalLM

    with RerankEngine(
        qwen3_path, device="cpu", decoder_tokens=("1", "0"), normalize=False, cache_size=0
    ) as engine:
        encoded = engine.backend.encode(QUERY, docs[:4])
        ours = engine.score(QUERY, docs[:4])
        tok = engine.backend.format.tokenizer
    model = AutoModelForCausalLM.from_pretrained(qwen3_path).eval()
    one, zero = tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("0")
    with torch.no_grad():
        for enc, score in zip(encoded, ours, strict=True):
            ids = torch.tensor([list(enc.payload[0] + enc.payload[1])])
            logits = model(input_ids=ids).logits[0, -1]
            assert score == pytest.approx(float(logits[one] - logits[zero]), abs=1e-4)


# -- exact and batch-independent --------------------------------------------------------------


@pytest.mark.parametrize("family", ["gemma", "qwen3", "qwen3_st", "qwen3_template_st"])
def test_a_documents_score_does_not_depend_on_its_batch(family, request, docs):
    path = request.getfixturevalue(f"{family}_path")
    with RerankEngine(path, device="cpu", cache_size=0, streams=1) as engine:
        together = np.asarray(engine.score(QUERY, docs))
        alone = np.asarray([engine.score(QUERY, [d])[0] for d in docs])
        reversed_ = np.asarray(engine.score(QUERY, docs[::-1])[::-1])
    with RerankEngine(path, device="cpu", cache_size=0, max_batch_size=3, streams=1) as engine:
        small = np.asarray(engine.score(QUERY, docs))
    for other in (alone, reversed_, small):
        assert np.abs(together - other).max() < 1e-6


def test_shared_prefix_runs_once_and_changes_no_score(qwen3_engine, docs):
    runner = qwen3_engine.backend.runner
    assert qwen3_engine.info.details["prefix_reuse"].startswith("on")
    assert qwen3_engine.info.details["lm_head"].startswith("restricted")
    before = runner.tokens_reused
    reused = np.asarray(qwen3_engine.score(QUERY, docs))
    assert runner.tokens_reused > before
    runner.prefix_reuse = False
    try:
        plain = np.asarray(qwen3_engine.score(QUERY, docs))
    finally:
        runner.prefix_reuse = True
    assert np.abs(reused - plain).max() < 1e-6


def test_pairs_of_different_queries_share_a_batch_exactly(qwen3_engine, docs):
    """Cross-request batching: two prefixes in one forward pass."""
    from rerank_plugins.backends.base import Encoded

    backend = qwen3_engine.backend
    first = backend.encode(QUERY, docs[:3])
    second = backend.encode("weather in paris", docs[3:6], instruction=INSTRUCTION)
    mixed: list[Encoded] = [first[0], second[0], first[1], second[1], first[2], second[2]]
    together = backend.forward(mixed)
    apart = backend.forward(first) + backend.forward(second)
    order = [0, 3, 1, 4, 2, 5]
    assert np.abs(np.asarray(together) - np.asarray([apart[i] for i in order])).max() < 1e-6


# -- instructions -----------------------------------------------------------------------------


def test_the_cache_keys_on_the_instruction(qwen3_path, docs):
    with RerankEngine(qwen3_path, device="cpu") as engine:
        plain = engine.score(QUERY, docs[:2])
        instructed = engine.score(QUERY, docs[:2], instruction=INSTRUCTION)
        again = engine.score(QUERY, docs[:2], instruction=INSTRUCTION)
        assert engine.stats()["cache_hits"] == 2
        assert engine.stats()["cache_misses"] == 4
    assert plain != instructed
    assert again == instructed


def test_a_blank_instruction_means_the_models_default(qwen3_engine, docs):
    assert qwen3_engine.score(QUERY, docs[:2], instruction="  ") == qwen3_engine.score(
        QUERY, docs[:2]
    )


def test_an_encoder_cross_encoder_refuses_an_instruction(bert_engine):
    with pytest.raises(ValueError, match="takes no instruction"):
        bert_engine.score("q", ["a"], instruction="Find code.")
    with pytest.raises(TypeError, match="instruction must be a string"):
        bert_engine.score("q", ["a"], instruction=3)
    assert bert_engine.score("q", ["a"], instruction="") == bert_engine.score("q", ["a"])


def test_long_document_passage_modes_are_refused_for_decoders(qwen3_path):
    with pytest.raises(ValueError, match="windows"):
        RerankEngine(qwen3_path, device="cpu", long_documents="max")


# -- the instruction through every caller ----------------------------------------------------


def test_the_langchain_compressor_passes_its_instruction(qwen3_engine, docs):
    from langchain_core.documents import Document

    from rerank_plugins.langchain import RerankCompressor

    compressor = RerankCompressor(engine=qwen3_engine, top_n=3, instruction=INSTRUCTION)
    out = compressor.compress_documents([Document(page_content=d) for d in docs[:5]], QUERY)
    expected = sorted(qwen3_engine.score(QUERY, docs[:5], instruction=INSTRUCTION), reverse=True)
    assert [d.metadata["relevance_score"] for d in out] == expected[:3]


def test_the_llama_index_postprocessor_passes_its_instruction(qwen3_engine, docs):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from rerank_plugins.llama_index import RerankPostprocessor

    post = RerankPostprocessor(engine=qwen3_engine, top_n=2, instruction=INSTRUCTION)
    nodes = [NodeWithScore(node=TextNode(text=d), score=0.0) for d in docs[:4]]
    out = post.postprocess_nodes(nodes, QueryBundle(QUERY))
    expected = sorted(qwen3_engine.score(QUERY, docs[:4], instruction=INSTRUCTION), reverse=True)
    assert [n.score for n in out] == expected[:2]


@pytest.mark.parametrize("adapter", ["langchain", "llama_index"])
def test_an_adapter_rejects_a_non_string_instruction(adapter, qwen3_engine):
    module = __import__(f"rerank_plugins.{adapter}", fromlist=["x"])
    cls = module.RerankCompressor if adapter == "langchain" else module.RerankPostprocessor
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="instruction must be a string"):
        cls(engine=qwen3_engine, instruction=["find"])


@pytest.mark.slow
def test_the_server_reads_an_instruction_field_in_both_shapes(qwen3_engine, docs):
    # The oldest-line venv (make test-oldest) has no server extra; make test runs this.
    pytest.importorskip("fastapi")
    import httpx

    from rerank_plugins.remote import RemoteEngine
    from rerank_plugins.server import create_app
    from tests._serving import running

    expected = qwen3_engine.score(QUERY, docs[:3], instruction=INSTRUCTION)
    with running(create_app(qwen3_engine)) as base:
        tei = httpx.post(
            f"{base}/rerank",
            json={"query": QUERY, "texts": docs[:3], "instruction": INSTRUCTION},
        ).json()
        cohere = httpx.post(
            f"{base}/v1/rerank",
            json={"query": QUERY, "documents": docs[:3], "instruction": INSTRUCTION},
        ).json()
        bad = httpx.post(f"{base}/rerank", json={"query": QUERY, "texts": ["a"], "instruction": 3})
        with RemoteEngine(base) as remote:
            remote_scores = remote.score(QUERY, docs[:3], instruction=INSTRUCTION)
    assert sorted(r["score"] for r in tei) == pytest.approx(sorted(expected), abs=1e-6)
    got = sorted(r["relevance_score"] for r in cohere["results"])
    assert got == pytest.approx(sorted(expected), abs=1e-6)
    assert bad.status_code == 422
    assert "'instruction' must be a string" in bad.json()["error"]
    assert remote_scores == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_the_rerank_command_takes_an_instruction(qwen3_path, docs, tmp_path):
    import json

    from tests._process import python

    source = tmp_path / "docs.jsonl"
    source.write_text("\n".join(json.dumps({"text": d}) for d in docs[:3]) + "\n")
    with RerankEngine(qwen3_path, device="cpu") as engine:
        expected = engine.score(QUERY, docs[:3], instruction=INSTRUCTION)
    code = (
        "import sys; from rerank_plugins.cli import main; "
        f"sys.exit(main(['rerank', '-m', {qwen3_path!r}, '-q', {QUERY!r}, '--docs', "
        f"{str(source)!r}, '--instruction', {INSTRUCTION!r}, '--json']))"
    )
    done = python(code, timeout=300)
    assert done.returncode == 0, done.stderr
    scores = sorted(r["score"] for r in json.loads(done.stdout))
    assert scores == pytest.approx(sorted(expected), abs=1e-6)


def test_the_flag_backend_scores_llm_rerankers_as_compute_score(gemma_path, docs):
    """Not compute_score_single_gpu, which skips the "A: "/"B: " prefixes compute_score adds."""
    pairs = [(QUERY, d) for d in docs]
    with RerankEngine(gemma_path, device="cpu", backend="flag") as engine:
        ours = np.asarray(engine.score(QUERY, docs))
        assert engine.info.max_length == 512
    assert np.abs(ours - flag_scores(gemma_path, pairs)).max() < PARITY


def test_a_lone_surrogate_fails_no_pair_and_a_huge_passage_is_cut(gemma_engine, docs):
    huge = "the " * 200_000
    scores = gemma_engine.score(QUERY, [docs[0], "broken \ud800 text", huge])
    assert scores[0] == pytest.approx(gemma_engine.score(QUERY, [docs[0]])[0], abs=1e-6)
    assert gemma_engine.rerank(QUERY, [huge])[0].truncated
    assert len(scores) == 3
