"""Long documents: passage modes score every window in the shared batches; truncate loses
what lies past max_length, as the reference libraries do."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

import pytest

from rerank_plugins import RerankEngine
from rerank_plugins.backends.base import BackendBase, Encoded
from rerank_plugins.windows import aggregate, window_spans


class MarkerBackend(BackendBase):
    """Whitespace tokens; a window scores 5 if it holds the word 'marker', else -5."""

    name = "marker"
    supports_windows = True
    device = "cpu"
    precision = "fp32"
    max_length = 512
    n_special = 3

    def __init__(self) -> None:
        self.batches: list[int] = []

    def _budget(self, query: str) -> int:
        return self.max_length - self.n_special - len(query.split())

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        out = []
        for text in texts:
            words = text.split()[: self._budget(query)]
            truncated = len(text.split()) > self._budget(query)
            out.append(Encoded(len(words) + 3, truncated, words))
        return out

    def encode_windows(self, query: str, texts: Sequence[str]) -> list[list[Encoded]]:
        out = []
        for text in texts:
            words = text.split()
            spans = window_spans(len(words), self._budget(query))
            out.append([Encoded(b - a + 3, False, words[a:b]) for a, b in spans])
        return out

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        self.batches.append(len(batch))
        return [5.0 if "marker" in e.payload else -5.0 for e in batch]

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _long_document(marker_at: int = 1500, n: int = 2000) -> str:
    words = [f"w{i}" for i in range(n)]
    words[marker_at] = "marker"
    return " ".join(words)


def test_a_passage_at_token_1500_is_found_by_max_and_lost_by_truncate() -> None:
    doc = _long_document()
    with RerankEngine.from_backend(MarkerBackend(), long_documents="truncate") as engine:
        [cut] = engine.rerank("where is it", [doc])
    with RerankEngine.from_backend(MarkerBackend(), long_documents="max") as engine:
        [found] = engine.rerank("where is it", [doc])
    assert cut.score < 0.01 and cut.truncated and cut.windows == 1
    assert found.score > 0.99 and not found.truncated and found.windows > 1


def test_first_mode_scores_only_the_first_window_like_truncate() -> None:
    doc = _long_document()
    with RerankEngine.from_backend(MarkerBackend(), long_documents="first") as engine:
        [first] = engine.rerank("q", [doc])
    assert first.score < 0.01 and first.truncated


def test_mean_mode_averages_window_logits() -> None:
    doc = _long_document()
    backend = MarkerBackend()
    with RerankEngine.from_backend(backend, long_documents="mean", normalize=False) as engine:
        [mean] = engine.rerank("q", [doc])
    spans = window_spans(2000, 512 - 3 - 1)
    hits = [a <= 1500 < b for a, b in spans]
    assert mean.windows == len(spans)
    assert mean.score == pytest.approx(sum(5.0 if h else -5.0 for h in hits) / len(spans))


def test_a_document_that_fits_is_one_window_in_every_mode() -> None:
    for mode in ("truncate", "max", "first", "mean"):
        with RerankEngine.from_backend(MarkerBackend(), long_documents=mode) as engine:
            [r] = engine.rerank("q", ["short marker text"])
        assert r.windows == 1 and not r.truncated and r.score > 0.99


def test_windows_overlap_so_a_passage_on_a_boundary_is_whole_in_one_window() -> None:
    spans = window_spans(1000, 100)
    assert spans[0] == (0, 100) and spans[-1][1] == 1000
    for (_, b0), (a1, _) in pairwise(spans):
        assert b0 - a1 == 25  # a quarter of the budget is shared
    assert aggregate([1.0, -2.0], "first") == 1.0


def test_an_unknown_mode_is_refused() -> None:
    from tests._fakes import FakeBackend

    with pytest.raises(ValueError, match="unknown long_documents mode 'best'"):
        RerankEngine.from_backend(FakeBackend(), long_documents="best")
    with pytest.raises(ValueError, match="cannot"):
        RerankEngine.from_backend(FakeBackend(), long_documents="max")


def test_real_model_windows_share_batches_and_match_scoring_each_window_alone(
    bert_path: str, long_text: str
) -> None:
    query = "what is rag?"
    texts = [long_text, "rag combines retrieval and generation", "the weather in paris"]
    with RerankEngine(
        bert_path,
        device="cpu",
        long_documents="max",
        normalize=False,
        cache_size=0,
        batch_tokens=100_000,
        max_batch_size=64,
    ) as engine:
        results = engine.rerank(query, texts)
        passes = engine.stats()["forward_passes"]
        windows = engine.backend.encode_windows(query, [long_text])[0]  # type: ignore[attr-defined]
        alone = [engine.backend.forward([w])[0] for w in windows]
    by_index = {r.index: r for r in results}
    assert by_index[0].windows == len(windows) > 1
    assert by_index[0].score == pytest.approx(max(alone), abs=1e-5)
    assert passes == 1  # every window and both short documents went through one forward pass


def test_the_onnx_backend_scores_windows_too(
    bert_path: str, long_text: str, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("RERANK_PLUGINS_CACHE", str(tmp_path))
    with (
        RerankEngine(bert_path, backend="onnx", device="cpu", long_documents="max") as onnx,
        RerankEngine(bert_path, device="cpu", long_documents="max") as torch_engine,
    ):
        [a] = onnx.rerank("what is rag?", [long_text])
        [b] = torch_engine.rerank("what is rag?", [long_text])
    assert a.windows == b.windows > 1
    assert a.score == pytest.approx(b.score, abs=1e-4)
