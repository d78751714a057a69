"""A model that cannot rank is named at load: one warning, in the library, CLI and server.

The common mix-up is an embedding model (a bi-encoder) passed as the reranker: transformers
bolts a freshly initialised head onto it and every score is noise around 0.5. The models here
are real: the packaged all-MiniLM-L6-v2 bi-encoder, and a tiny cross-encoder whose checkpoint
lost its head.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rerank_plugins import RerankEngine
from rerank_plugins.backends._heads import checkpoint_keys, untrained_head

QUERY = "what is retrieval augmented generation"
TEXTS = ["RAG combines retrieval with generation.", "Paris is in France."]


@pytest.fixture(scope="module")
def bi_encoder() -> str:
    from rerank_plugins.models.offline import bi_encoder_path

    return str(bi_encoder_path())


@pytest.fixture(scope="module")
def headless(bert_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny cross-encoder, saved again without its classifier tensors."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path_factory.mktemp("tiny-bert-headless")
    for item in Path(bert_path).iterdir():
        if item.is_file():
            shutil.copy(item, folder / item.name)
    tensors = load_file(str(folder / "model.safetensors"))
    kept = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
    assert len(kept) < len(tensors)
    save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return str(folder)


def _warnings_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("rerank_plugins") and r.levelno == logging.WARNING
    ]


def test_a_bi_encoder_passed_as_the_reranker_is_named_once_in_the_log_and_the_info(
    bi_encoder: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="rerank_plugins"):
        engine = RerankEngine(bi_encoder, device="cpu")
    try:
        (warning,) = engine.info.warnings
        assert "BertModel checkpoint with no trained scoring head" in warning
        assert "scores are random" in warning
        assert "cross-encoder/ms-marco-MiniLM-L-6-v2" in warning  # what to use instead
        assert "\n" not in warning
        assert [m for m in _warnings_logged(caplog) if "scoring head" in m] == [warning]
        assert "warnings" not in engine.info.details
        assert len(engine.score(QUERY, TEXTS)) == 2  # it still scores: a warning, not an error
    finally:
        engine.close()


@pytest.mark.parametrize("backend", ["sentence-transformers", "flag"])
def test_a_checkpoint_missing_its_head_is_named_with_the_missing_tensors(
    headless: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backend == "flag":
        pytest.importorskip("FlagEmbedding")
    with caplog.at_level(logging.WARNING, logger="rerank_plugins"):
        engine = RerankEngine(headless, device="cpu", backend=backend)
    try:
        (warning,) = engine.info.warnings
        assert "untrained scoring head" in warning
        assert "classifier.weight" in warning and "classifier.bias" in warning
        assert "freshly initialised" in warning
        assert _warnings_logged(caplog).count(warning) == 1
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("fixture", "options"),
    [
        ("bert_path", {}),
        ("xlmr_path", {}),
        ("xlmr_path", {"backend": "flag"}),
        ("qwen3_path", {}),
        ("gemma_path", {}),
        ("llama_path", {"decoder_protocol": "flag-llm"}),
        ("qwen3_st_path", {}),
    ],
)
def test_trained_rerankers_of_every_kind_load_without_a_warning(
    fixture: str,
    options: dict[str, str],
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = request.getfixturevalue(fixture)
    with caplog.at_level(logging.WARNING, logger="rerank_plugins"):
        engine = RerankEngine(model, device="cpu", **options)
    try:
        assert engine.info.warnings == ()
        assert not [m for m in _warnings_logged(caplog) if "scoring head" in m]
    finally:
        engine.close()


def test_the_head_check_reads_only_what_the_checkpoint_holds(bert_path: str, headless: str) -> None:
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(bert_path)
    assert untrained_head(model, checkpoint_keys(bert_path) or set()) == []
    assert sorted(untrained_head(model, checkpoint_keys(headless) or set())) == [
        "classifier.bias",
        "classifier.weight",
    ]
    assert checkpoint_keys("/no/such/model") is None  # unknown: no warning rather than a guess


def test_the_server_info_carries_the_warning(bi_encoder: str) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from rerank_plugins.server import create_app

    engine = RerankEngine(bi_encoder, device="cpu")
    try:
        info = TestClient(create_app(engine)).get("/info").json()
        assert info["warnings"] == list(engine.info.warnings)
        assert len(info["warnings"]) == 1
    finally:
        engine.close()


@pytest.mark.slow
def test_the_command_line_shows_the_warning_it_used_to_hide(bi_encoder: str) -> None:
    """The CLI silences transformers' load reports; ours still reaches stderr, once."""
    done = subprocess.run(
        [sys.executable, "-m", "rerank_plugins", "rerank", "-m", bi_encoder, "-q", QUERY],
        input="\n".join(TEXTS),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "no trained scoring head" in line]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("WARNING")
    assert "scores are random" in lines[0]
