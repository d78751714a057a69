"""Shared fixtures: tiny local models built once per test session; no hub access."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from tests._decoders import build_gemma, build_llama, build_qwen3, save_as_cross_encoder
from tests._models import build_bert, build_xlmr


@pytest.fixture(scope="session")
def bert_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_bert(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def xlmr_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_xlmr(tmp_path_factory.mktemp("tiny-xlmr")))


@pytest.fixture(scope="session")
def qwen3_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_qwen3(tmp_path_factory.mktemp("tiny-qwen3")))


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_gemma(tmp_path_factory.mktemp("tiny-gemma")))


@pytest.fixture(scope="session")
def llama_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_llama(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def qwen3_st_path(qwen3_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(save_as_cross_encoder(Path(qwen3_path), tmp_path_factory.mktemp("tiny-qwen3-st")))


@pytest.fixture(scope="session")
def qwen3_template_st_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Qwen3-Reranker as a CrossEncoder folder whose chat template lays out the format."""
    source = build_qwen3(tmp_path_factory.mktemp("tiny-qwen3-template"), chat_template=True)
    return str(save_as_cross_encoder(source, tmp_path_factory.mktemp("tiny-qwen3-template-st")))


@pytest.fixture(scope="session")
def bert_engine(bert_path: str):
    from rerank_plugins import get_engine

    return get_engine(bert_path, device="cpu")


@pytest.fixture(scope="session")
def long_text() -> str:
    from tests._models import WORDS

    return " ".join(WORDS[i % len(WORDS)] for i in range(900))


@pytest.fixture()
def data_dir() -> Path:
    return Path(__file__).parent / "data"
