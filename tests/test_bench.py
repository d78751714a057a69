"""The benchmark harness, smoke-tested on the tiny model: rows, ratios, fidelity, outputs.

Nothing here is timed: the assertions are about the report's structure and the exactness of
our scores, never about speed.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
from benchmarks.harness import Plan, PlanItem, add_arguments, main, run_bench
from benchmarks.harness.models import flops_per_pair, spread_head
from benchmarks.harness.report import fidelity
from benchmarks.harness.runners import Setup, build_competitor
from benchmarks.harness.workloads import Shape, build_workload, parse_shape

# Processes, servers, Ray, ONNX exports or the benchmark harness: the full lane only.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(bert_path: str):
    plan = Plan(
        bert_path,
        (
            PlanItem(
                Shape(1, 6),
                "synthetic",
                ("langchain", "st", "ours", "ours-bf16", "ours-cache", "ours-onnx"),
            ),
            PlanItem(Shape(2, 4, 2), "english", ("langchain", "ours")),
        ),
    )
    return run_bench([plan], quick=True, repeats=2, memory=False, command="pytest")


def test_every_planned_competitor_gets_a_row(report) -> None:
    keys = [(r.workload, r.key) for r in report.rows]
    assert keys == [
        ("1×6 synthetic", "langchain"),
        ("1×6 synthetic", "st"),
        ("1×6 synthetic", "ours"),
        ("1×6 synthetic", "ours-bf16"),
        ("1×6 synthetic", "ours-cache"),
        ("1×6 synthetic", "ours-onnx"),
        ("2×4 / 2 threads english", "langchain"),
        ("2×4 / 2 threads english", "ours"),
    ]


def test_rows_that_ran_have_repeats_and_a_ratio_against_langchain(report) -> None:
    for row in report.rows:
        if row.key == "ours-onnx" or (row.key == "ours-bf16" and row.skipped):
            continue  # may be unavailable here; then it carries the reason
        assert len(row.seconds) == 2, row
        assert row.pairs_per_s and row.pairs_per_s > 0
        assert row.ratio is not None and row.ratio > 0
    for row in report.rows:
        if row.key == "langchain":
            assert row.ratio == pytest.approx(1.0)


def test_a_competitor_that_cannot_run_is_reported_with_its_reason(report) -> None:
    onnx = next(r for r in report.rows if r.key == "ours-onnx")
    assert bool(onnx.seconds) != bool(onnx.skipped)


def test_exact_mode_matches_cross_encoder_within_1e_4(report) -> None:
    ours = next(r for r in report.rows if r.key == "ours" and r.workload == "1×6 synthetic")
    assert ours.fidelity is not None
    assert ours.fidelity.max_abs_diff is not None and ours.fidelity.max_abs_diff <= 1e-4
    assert ours.fidelity.spearman > 0.999
    assert ours.fidelity.top10 == ours.fidelity.top10_of == 6
    cached = next(r for r in report.rows if r.key == "ours-cache")
    assert cached.fidelity is not None and cached.fidelity.max_abs_diff <= 1e-4


def test_concurrent_workloads_report_throughput_but_no_fidelity(report) -> None:
    rows = [r for r in report.rows if "threads" in r.workload]
    assert all(r.pairs == 8 and r.fidelity is None for r in rows)


def test_useful_flops_and_peaks_are_reported(report) -> None:
    from rerank_plugins.backends._torch import cpu_supports_bf16

    assert "fp32" in report.peaks
    assert ("bf16" in report.peaks) == cpu_supports_bf16()  # no emulated-bf16 "peak"
    ours = next(r for r in report.rows if r.key == "ours")
    assert ours.useful_flops > 0
    assert report.peak_fraction(ours) is not None


def test_goals_name_each_target_with_a_status(report) -> None:
    statuses = {g.status for g in report.goals}
    assert statuses <= {"met", "missed", "not measured"}
    assert any("exact" in g.goal for g in report.goals)
    assert any("cache" in g.goal or "repeated" in g.goal for g in report.goals)


def test_markdown_json_and_chart(report, tmp_path) -> None:
    text = report.to_markdown()
    assert "## Machine" in text and "## Goals" in text
    assert "| competitor | pairs/s |" in text
    assert "LangChain CrossEncoderReranker" in text
    data = json.loads(report.to_json())
    assert len(data["rows"]) == len(report.rows)
    chart = report.save_chart(tmp_path / "bench.png")
    assert chart is not None and chart.stat().st_size > 1000


def test_command_line_writes_the_report_files(bert_path: str, tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--models",
            bert_path,
            "--shapes",
            "1x3",
            "--kinds",
            "synthetic",
            "--competitors",
            "langchain,ours",
            "--repeats",
            "1",
            "--no-memory",
            "--no-peak",
            "--out",
            str(tmp_path),
        ]
    )
    assert main(args, command="rerank-plugins bench ...") == 0
    assert "1×3 synthetic" in capsys.readouterr().out
    assert {p.name for p in tmp_path.iterdir()} >= {"bench.md", "bench.json", "bench.png"}


def test_unknown_competitor_is_rejected_by_name(bert_path: str) -> None:
    with pytest.raises(ValueError, match="unknown competitor 'nope'"):
        run_bench([Plan(bert_path, (PlanItem(Shape(1, 2), "synthetic", ("nope",)),))])


def test_shapes_parse_and_bad_ones_say_what_to_write() -> None:
    assert parse_shape("16x50@8") == Shape(16, 50, 8)
    assert parse_shape("1x100").label == "1×100"
    with pytest.raises(ValueError, match="1x100 or 16x50@8"):
        parse_shape("100")


@pytest.mark.parametrize("kind", ["synthetic", "english"])
def test_workload_texts_are_distinct_and_near_the_token_target(bert_path: str, kind: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_path)
    w = build_workload(tok, Shape(3, 10), kind, doc_tokens=(40, 60))
    texts = [t for row in w.docs for t in row]
    assert len(texts) == len(set(texts)) == 30
    assert all(n >= 40 for row in w.pair_tokens for n in row)
    assert build_workload(tok, Shape(3, 10), kind, doc_tokens=(40, 60)) == w  # seeded


def test_flop_count_matches_the_issue_for_minilm() -> None:
    cfg = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}
    assert 4.5e9 < flops_per_pair(cfg, 205) < 4.9e9  # the issue: ~4.75 GFLOP per pair


def test_fidelity_counts_rank_agreement_and_differences() -> None:
    ref = [[float(i) for i in range(12)]]
    swapped = [[*ref[0][:-2], ref[0][-1], ref[0][-2]]]
    f = fidelity(swapped, ref, ref, "x")
    assert f.max_abs_diff == 1.0
    assert f.top10 == 10 and f.top10_of == 10
    assert f.spearman < 1.0
    assert not math.isnan(fidelity(ref, ref, None, "x").spearman)


def test_spread_head_gives_logits_a_trained_looking_spread(bert_path: str) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(bert_path)
    tok = AutoTokenizer.from_pretrained(bert_path)
    torch.nn.init.zeros_(model.classifier.weight)
    pairs = [
        ("what is rag", f"rag {'cat ' * i} the weather {'dog ' * (20 - i)}") for i in range(20)
    ]
    spread_head(model, tok, model.classifier, pairs=pairs, logit_std=1.5)
    with torch.no_grad():
        enc = tok([p[0] for p in pairs], [p[1] for p in pairs], padding=True, return_tensors="pt")
        logits = model(**enc).logits[:, 0]
    assert float(logits.std()) == pytest.approx(1.5, rel=0.05)


def test_build_competitor_rejects_unknown_keys(bert_path: str) -> None:
    with pytest.raises(ValueError, match="unknown competitor"):
        build_competitor("bogus", Setup(bert_path))


def test_the_gemm_peak_leaves_out_dtypes_the_cpu_only_emulates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks.harness.runners import measure_peaks

    import rerank_plugins.backends._onnx_int8 as int8_module
    import rerank_plugins.backends._torch as torch_module

    monkeypatch.setattr(torch_module, "cpu_supports_bf16", lambda: False)
    monkeypatch.setattr(int8_module, "signed_weights_are_safe", lambda: False)
    peaks = measure_peaks("cpu", quick=True)
    assert set(peaks) == {"fp32"}
    assert peaks["fp32"] > 1e9  # a real multiply ran: over 1 GFLOP/s on any CPU we support
