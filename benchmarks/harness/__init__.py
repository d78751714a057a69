"""The benchmark behind ``python benchmarks/run.py``: our engine against the libraries it replaces.

`run_bench` builds realistic local models (`benchmarks.harness.models`), the workloads of the
performance issue (`benchmarks.harness.workloads`), runs our engine and the anchors
(LangChain ``CrossEncoderReranker``, LlamaIndex ``SentenceTransformerRerank``,
``CrossEncoder.predict``, ``FlagReranker``) interleaved in one process, and returns a
`BenchReport` with medians, min–max, ratios against LangChain, useful FLOP/s against the
measured GEMM peak, score fidelity, memory per scenario and the issue's goals.

Examples:
    >>> from benchmarks.harness import run_bench
    >>> report = run_bench(quick=True)  # doctest: +SKIP
    >>> print(report.to_markdown())  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness.memory import SCENARIOS, measure_memory
from benchmarks.harness.models import MODEL_KINDS, flops_per_pair, model_path
from benchmarks.harness.report import BenchReport, Row, evaluate_goals, fidelity
from benchmarks.harness.runners import (
    COMPETITORS,
    Competitor,
    Setup,
    Timing,
    build_competitor,
    drive,
    measure_peaks,
    time_interleaved,
)
from benchmarks.harness.workloads import KINDS, Shape, Workload, build_workload, parse_shape

__all__ = [
    "BenchReport",
    "Plan",
    "PlanItem",
    "add_arguments",
    "default_plans",
    "main",
    "run_bench",
]

MODEL_LABELS = {"minilm": "MiniLM-L6", "base": "BERT-base"}

_ALL_SINGLE = (
    "langchain",
    "llamaindex",
    "st",
    "flagreranker",
    "ours",
    "ours-bf16",
    "ours-flag",
    "ours-onnx",
    "ours-onnx-int8",
    "ours-cache",
    "ours-langchain",
    "ours-llamaindex",
)
_SWEEP = (
    "langchain",
    *(f"ours-b{n}" for n in (1, 2, 4, 8, 16, 32)),
    *(f"ours-bf16-b{n}" for n in (4, 8, 16, 32)),
)


@dataclass(frozen=True)
class PlanItem:
    """One workload and the competitors timed on it.

    Attributes:
        shape: Queries x docs at how many callers.
        kind: ``"synthetic"`` or ``"english"``.
        competitors: Keys of `benchmarks.harness.runners.COMPETITORS` (or sweep keys).
        repeats: Timed runs of each competitor here (None: the run's default).
    """

    shape: Shape
    kind: str
    competitors: tuple[str, ...]
    repeats: int | None = None


@dataclass(frozen=True)
class Plan:
    """What to run on one model.

    Attributes:
        model: ``"minilm"``, ``"base"`` (built and cached), or a local cross-encoder folder.
        items: The workloads with their competitors.
    """

    model: str
    items: tuple[PlanItem, ...] = field(default_factory=tuple)


def default_plans(quick: bool = False) -> list[Plan]:
    """The default run: every competitor where the goals need it, within ~10 minutes on 2 cores.

    Args:
        quick: The smoke-test plan: MiniLM only, tiny workloads (about a minute).

    Returns:
        Plans for MiniLM and (unless ``quick``) the base-size model.
    """
    if quick:
        return [
            Plan(
                "minilm",
                (
                    PlanItem(Shape(1, 20), "synthetic", _ALL_SINGLE),
                    PlanItem(Shape(1, 20), "english", ("langchain", "ours", "ours-bf16")),
                    PlanItem(Shape(4, 10, 4), "synthetic", ("langchain", "ours", "ours-bf16")),
                ),
            )
        ]
    return [
        Plan(
            "minilm",
            (
                PlanItem(
                    Shape(1, 50),
                    "synthetic",
                    (
                        "langchain",
                        "llamaindex",
                        "st",
                        "flagreranker",
                        "ours",
                        "ours-bf16",
                        "ours-flag",
                        "ours-onnx",
                        "ours-onnx-int8",
                        "ours-langchain",
                        "ours-llamaindex",
                    ),
                ),
                PlanItem(
                    Shape(1, 100), "synthetic", ("langchain", "ours", "ours-bf16", "ours-cache")
                ),
                PlanItem(Shape(1, 100), "english", ("langchain", "ours", "ours-bf16")),
                # 800 pairs: each repeat takes over a minute, so 3 keep the run near 10 minutes.
                PlanItem(Shape(16, 50, 8), "synthetic", ("langchain", "ours"), repeats=3),
            ),
        ),
        Plan(
            "base",
            (PlanItem(Shape(1, 50), "synthetic", ("langchain", "ours", "ours-bf16"), repeats=3),),
        ),
    ]


def _custom_plans(
    models: Sequence[str],
    shapes: Sequence[Shape] | None,
    kinds: Sequence[str] | None,
    competitors: Sequence[str] | None,
    quick: bool,
) -> list[Plan]:
    defaults = {p.model: p for p in default_plans(quick)}
    fallback = default_plans(quick)[0]
    plans = []
    for model in models:
        base = defaults.get(model, fallback)
        if shapes is None and kinds is None and competitors is None:
            plans.append(Plan(model, base.items))
            continue
        use_shapes = list(shapes or dict.fromkeys(i.shape for i in base.items))
        use_kinds = list(kinds or dict.fromkeys(i.kind for i in base.items))
        items = tuple(
            PlanItem(shape, kind, tuple(competitors or _ALL_SINGLE))
            for shape in use_shapes
            for kind in use_kinds
        )
        plans.append(Plan(model, items))
    return plans


def run_bench(
    plans: Sequence[Plan] | None = None,
    *,
    quick: bool = False,
    repeats: int | None = None,
    threads: int = 2,
    device: str = "cpu",
    memory: bool = True,
    peaks: bool = True,
    seed: int = 0,
    command: str = "python benchmarks/run.py",
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Run the benchmark and return its report.

    Args:
        plans: What to run per model (default `default_plans`).
        quick: Use the quick plan and 2 repeats when ``plans`` / ``repeats`` are not given.
        repeats: Timed runs per competitor per workload, overriding the plan's (default: the
            plan item's, else 5; 2 with ``quick``).
        threads: Torch intra-op threads (``torch.set_num_threads``).
        device: ``"cpu"`` or ``"cuda"`` ...
        memory: Measure RSS per scenario (fresh processes) on the first plan's model.
        peaks: Measure the GEMM peak per dtype.
        seed: Seed of the workload texts.
        command: The command line to print as the way to reproduce the run.
        progress: Called with a line of text as the run advances.

    Returns:
        The report (with goals evaluated).

    Raises:
        ValueError: A plan names an unknown model, workload kind or competitor.
    """
    from rerank_plugins._imports import require

    torch = require("torch", purpose="the benchmark")
    transformers = require("transformers", purpose="the benchmark")
    say = progress or (lambda _line: None)
    started = time.perf_counter()
    torch.set_num_threads(threads)
    plans = list(plans or default_plans(quick))
    default_repeats = 2 if quick else 5
    _check_plans(plans)
    report = BenchReport(machine=machine_info(device, threads), command=command)
    foreign = _ForeignLoad()
    if peaks:
        say("measuring the GEMM peak")
        report.peaks = measure_peaks(device, quick=quick)

    for plan in plans:
        path = _resolve_model(plan.model)
        name = MODEL_LABELS.get(plan.model, os.path.basename(os.path.normpath(plan.model)))
        say(f"{name}: loading competitors from {path}")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        config = transformers.AutoConfig.from_pretrained(str(path))
        setup = Setup(str(path), device)
        keys = list(dict.fromkeys(k for item in plan.items for k in item.competitors))
        built: dict[str, Competitor | str] = {k: build_competitor(k, setup) for k in keys}
        try:
            for item in plan.items:
                workload = build_workload(tokenizer, item.shape, item.kind, seed=seed)
                useful = sum(flops_per_pair(config, n) for r in workload.pair_tokens for n in r)
                report.workloads[f"{name} / {workload.name}"] = {
                    "pairs": workload.pairs,
                    "mean_tokens": workload.mean_tokens,
                    "useful_gflop": useful / 1e9,
                }
                n = repeats or item.repeats or default_repeats
                say(f"{name}: {workload.name} ({workload.pairs} pairs, {n} repeats)")
                comps = [c for k in item.competitors if isinstance(c := built[k], Competitor)]
                timings = time_interleaved(comps, workload, n, say)
                rows = []
                for key in item.competitors:
                    comp = built[key]
                    if isinstance(comp, str):
                        rows.append(_row(name, workload.name, key, useful, workload.pairs, comp))
                        continue
                    t = timings[comp.key]
                    row = Row(
                        name,
                        workload.name,
                        comp.key,
                        comp.label,
                        comp.role,
                        comp.dtype,
                        workload.pairs,
                        useful,
                        t.seconds,
                        t.cpu_seconds,
                        skipped=t.error,
                        note=comp.note,
                    )
                    rows.append(row)
                if workload.shape.threads == 1:
                    _add_fidelity(rows, timings, built, setup, workload)
                _add_ratios(rows)
                report.rows.extend(rows)
        finally:
            for comp in built.values():
                if isinstance(comp, Competitor):
                    comp.close()

    share = foreign.share()
    if share is not None:
        report.machine["other_load"] = (
            f"{share:.0%} of the machine's CPU time went to other processes"
        )
    if peaks:
        # Other load on the machine only ever lowers a peak: keep the best of two measurements.
        for dtype, value in measure_peaks(device, quick=quick).items():
            report.peaks[dtype] = max(report.peaks.get(dtype, 0.0), value)
    if memory and plans:
        say("measuring memory in fresh processes")
        names = list(SCENARIOS) if not quick else ["ours x1", "ours x5", *list(SCENARIOS)[3:]]
        report.memory = measure_memory(str(_resolve_model(plans[0].model)), device, names)
    report.machine["load_after"] = _load()
    report.elapsed_s = time.perf_counter() - started
    report.goals = evaluate_goals(report)
    return report


def _add_ratios(rows: list[Row]) -> None:
    """Speed over the LangChain row: the median of per-repeat ratios.

    Runs of one repeat are close in time, so pairing them cancels slow changes in the
    machine's load that a ratio of medians would keep.
    """
    base = next((r for r in rows if r.key == "langchain" and r.seconds), None)
    if base is None:
        return
    for r in rows:
        if not r.seconds:
            continue
        if len(r.seconds) == len(base.seconds):
            r.ratio = statistics.median(b / t for b, t in zip(base.seconds, r.seconds, strict=True))
        elif base.pairs_per_s and r.pairs_per_s:
            r.ratio = r.pairs_per_s / base.pairs_per_s
        pairs = list(zip(base.cpu_seconds, r.cpu_seconds, strict=False))
        if pairs and len(r.cpu_seconds) == len(base.cpu_seconds) and all(t > 0 for _, t in pairs):
            r.cpu_ratio = statistics.median(b / t for b, t in pairs)


def _row(model: str, workload: str, key: str, useful: float, pairs: int, why: str) -> Row:
    label = key
    return Row(model, workload, key, label, "ours" if key.startswith("ours") else "anchor",
               "—", pairs, useful, [], skipped=why)  # fmt: skip


def _check_plans(plans: Sequence[Plan]) -> None:
    for plan in plans:
        if plan.model not in MODEL_KINDS and not os.path.isdir(plan.model):
            msg = (
                f"benchmark model {plan.model!r} is neither one of {', '.join(MODEL_KINDS)} "
                "nor a local folder."
            )
            raise ValueError(msg)
        for item in plan.items:
            if item.kind not in KINDS:
                msg = f"unknown workload kind {item.kind!r}; expected one of {', '.join(KINDS)}."
                raise ValueError(msg)
            for key in item.competitors:
                if key not in COMPETITORS and not key.startswith("ours-b"):
                    msg = f"unknown competitor {key!r}; expected one of {', '.join(COMPETITORS)}."
                    raise ValueError(msg)


def _resolve_model(model: str) -> Path:
    return model_path(model) if model in MODEL_KINDS else Path(model)


def _complete(scores: list[list[float] | None] | None) -> list[list[float]] | None:
    """The per-query scores if every query returned them, else None."""
    if not scores or any(s is None for s in scores):
        return None
    return [s for s in scores if s is not None]


def _add_fidelity(
    rows: list[Row],
    timings: dict[str, Timing],
    built: dict[str, Competitor | str],
    setup: Setup,
    workload: Workload,
) -> None:
    """Attach score fidelity to the rows whose competitor returned scores.

    Ranking fidelity is against ``CrossEncoder.predict`` in fp32 (its timed run's scores when
    it ran, else one untimed pass); exactness is against each mode's own reference library.
    """
    scored = {r.key: s for r in rows if r.seconds and (s := _complete(timings[r.key].scores))}
    if not scored:
        return
    fp32 = _complete(timings["st"].scores) if "st" in timings else None
    if fp32 is None:
        ref = built.get("st")
        if not isinstance(ref, Competitor):
            ref = build_competitor("st", setup)
            if not isinstance(ref, Competitor):
                return
            built["st"] = ref
        fp32 = _complete(drive(ref.score, workload))
        if fp32 is None:
            return
    flag = _complete(timings["flagreranker"].scores) if "flagreranker" in timings else None
    references = {"st": fp32, "flag": flag or fp32}
    for r in rows:
        comp = built.get(r.key)
        if r.key not in scored or not isinstance(comp, Competitor):
            continue
        kind = "st" if comp.role == "anchor" else comp.exact_reference
        name = "FlagReranker" if kind == "flag" and flag else "CrossEncoder.predict"
        r.fidelity = fidelity(scored[r.key], fp32, references.get(kind), name)


class _ForeignLoad:
    """How much CPU other processes took while the benchmark ran: a noisy run says so."""

    def __init__(self) -> None:
        self._psutil: Any = None
        try:
            import psutil
        except ImportError:
            return
        self._psutil = psutil
        self._start = (time.perf_counter(), self._busy(), self._own())

    def _busy(self) -> float:
        t = self._psutil.cpu_times()
        return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))

    def _own(self) -> float:
        t = self._psutil.Process().cpu_times()
        return float(t.user + t.system)

    def share(self) -> float | None:
        """Other processes' share of all cores' time since construction (0..1), if known."""
        if self._psutil is None:
            return None
        wall0, busy0, own0 = self._start
        wall = (time.perf_counter() - wall0) * (os.cpu_count() or 1)
        other = (self._busy() - busy0) - (self._own() - own0)
        return min(max(other / wall, 0.0), 1.0) if wall > 0 else None


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def machine_info(device: str = "cpu", threads: int = 2) -> dict[str, Any]:
    """What the numbers were measured on: CPU model and flags, cores, memory, versions, load.

    Args:
        device: The benchmark device.
        threads: Torch threads used.

    Returns:
        A dict for the report's machine section.
    """
    from importlib import metadata

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine(), "x86_64"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    versions = []
    for dist in (
        "torch",
        "transformers",
        "sentence-transformers",
        "FlagEmbedding",
        "onnxruntime",
        "langchain-classic",
        "langchain-community",
        "llama-index-core",
    ):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_flags": ", ".join(f for f in wanted if f in flags) or "—",
        "device": device,
        "threads": threads,
        "versions": ", ".join(versions),
        "load_before": _load(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if device.startswith("cuda"):
        import torch

        info["device"] = f"{device} ({torch.cuda.get_device_name(device)})"
    return info


# ---------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``parser`` (for `main`).

    Args:
        parser: The (sub)command's parser.
    """
    parser.add_argument("--quick", action="store_true", help="tiny workloads, 2 repeats (~1 min)")
    parser.add_argument(
        "--models",
        default=None,
        help=f"comma-separated: {', '.join(MODEL_KINDS)} or local folders (default: minilm,base)",
    )
    parser.add_argument(
        "--shapes", default=None, help="comma-separated QxD or QxD@T, e.g. 1x100,16x50@8"
    )
    parser.add_argument("--kinds", default=None, help=f"comma-separated: {', '.join(KINDS)}")
    parser.add_argument(
        "--competitors",
        default=None,
        help=f"comma-separated: {', '.join(COMPETITORS)}, or ours-bN / ours-bf16-bN",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs (default 5; 3 for the long ones)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--sweep", action="store_true", help="add a batch-size sweep (1×100)")
    parser.add_argument("--no-memory", action="store_true", help="skip the RSS scenarios")
    parser.add_argument("--no-peak", action="store_true", help="skip the GEMM peak")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--out", default=None, help="folder for bench.md, bench.json and bench.png")


def main(args: argparse.Namespace, command: str | None = None) -> int:
    """Run ``python benchmarks/run.py`` with parsed options; print the markdown report.

    Args:
        args: Options from a parser set up by `add_arguments`.
        command: The command line to record (default: rebuilt from ``sys.argv``).

    Returns:
        The exit status (0).
    """

    def split(value: str | None) -> list[str] | None:
        return [v.strip() for v in value.split(",") if v.strip()] if value else None

    models = split(args.models)
    shapes = [parse_shape(s) for s in split(args.shapes) or []] or None
    kinds = split(args.kinds)
    competitors = split(args.competitors)
    if args.threads < 1 or (args.repeats is not None and args.repeats < 1):
        msg = f"--threads and --repeats must be >= 1, got {args.threads} and {args.repeats}."
        raise ValueError(msg)
    if models or shapes or kinds or competitors:
        default_models = [p.model for p in default_plans(args.quick)]
        plans = _custom_plans(models or default_models, shapes, kinds, competitors, args.quick)
    else:
        plans = default_plans(args.quick)
    if args.sweep:
        first = plans[0]
        sweep = PlanItem(Shape(1, 20 if args.quick else 100), "synthetic", _SWEEP)
        plans[0] = Plan(first.model, (*first.items, sweep))

    started = time.perf_counter()

    def progress(line: str) -> None:
        sys.stderr.write(f"[{time.perf_counter() - started:6.0f}s] {line}\n")
        sys.stderr.flush()

    report = run_bench(
        plans,
        quick=args.quick,
        repeats=args.repeats,
        threads=args.threads,
        device=args.device,
        memory=not args.no_memory,
        peaks=not args.no_peak,
        seed=args.seed,
        command=command or shlex.join(["rerank-plugins", "bench", *sys.argv[2:]]),
        progress=progress,
    )
    text = report.to_markdown()
    sys.stdout.write(text + "\n")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench.md").write_text(text + "\n", encoding="utf-8")
        (out / "bench.json").write_text(report.to_json() + "\n", encoding="utf-8")
        chart = report.save_chart(out / "bench.png")
        written = [out / "bench.md", out / "bench.json", *([chart] if chart else [])]
        progress("wrote " + ", ".join(map(str, written)))
    return 0
