"""The benchmark's results: rows, fidelity, memory, goals, and their markdown, JSON and chart."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.harness.memory import MemoryResult

__all__ = ["BenchReport", "Fidelity", "Goal", "Row", "evaluate_goals", "fidelity"]

EXACT_TOLERANCE = 1e-4
"""Largest score difference (probability scale) an exact mode may show against its reference."""


@dataclass(frozen=True)
class Fidelity:
    """How close a competitor's scores are to a reference's, over every query of a workload.

    Attributes:
        reference: Whose scores were compared against (``CrossEncoder.predict`` ...).
        max_abs_diff: Largest absolute score difference (probability scale); None when the
            comparison is of rankings only.
        spearman: Smallest per-query Spearman rank correlation against fp32.
        top10: Smallest per-query overlap of the top-10 sets against fp32 (out of 10, or out of
            the number of texts when fewer).
        top10_of: What ``top10`` is out of.
    """

    reference: str
    max_abs_diff: float | None
    spearman: float
    top10: int
    top10_of: int


def fidelity(
    scores: Sequence[Sequence[float]],
    fp32: Sequence[Sequence[float]],
    exact: Sequence[Sequence[float]] | None,
    reference: str,
) -> Fidelity:
    """Compare per-query scores with the fp32 reference (ranking) and an exact reference.

    Args:
        scores: The competitor's scores, one list per query.
        fp32: The fp32 reference's scores (``CrossEncoder.predict``).
        exact: The scores this mode must reproduce, or None for ranking-only modes.
        reference: Name of the exact reference, for the report.

    Returns:
        The fidelity summary.
    """
    from scipy.stats import spearmanr

    rhos, overlaps, k = [], [], 10
    for ours, ref in zip(scores, fp32, strict=True):
        k = min(10, len(ref))
        rho = spearmanr(ours, ref).statistic if len(ref) > 1 else 1.0
        rhos.append(1.0 if math.isnan(rho) else float(rho))
        top_ours = sorted(range(len(ours)), key=lambda i: -ours[i])[:k]
        top_ref = sorted(range(len(ref)), key=lambda i: -ref[i])[:k]
        overlaps.append(len(set(top_ours) & set(top_ref)))
    diff = None
    if exact is not None:
        diff = max(
            abs(a - b)
            for row, ref_row in zip(scores, exact, strict=True)
            for a, b in zip(row, ref_row, strict=True)
        )
    return Fidelity(reference, diff, min(rhos), min(overlaps), k)


@dataclass
class Row:
    """One competitor on one workload of one model.

    Attributes:
        model: Model name in the report.
        workload: Workload name (shape and kind).
        key: Competitor key.
        label: Competitor name.
        role: ``"anchor"`` or ``"ours"``.
        dtype: Arithmetic of the forward pass.
        pairs: Pairs per run.
        useful_flops: Useful FLOPs per run (unpadded tokens, see `flops_per_pair`).
        seconds: Wall-clock seconds of each timed run.
        cpu_seconds: Process CPU seconds of each timed run (all threads).
        skipped: Why the competitor did not run, if it did not.
        note: What a reader should know about the row.
        fidelity: Score fidelity, where the scores could be read.
        ratio: Speed over the LangChain row's on the same workload (median of per-repeat
            wall-clock ratios).
        cpu_ratio: The same from process CPU time: steadier when other processes load the
            machine, blind to idle cores.
    """

    model: str
    workload: str
    key: str
    label: str
    role: str
    dtype: str
    pairs: int
    useful_flops: float
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    skipped: str | None = None
    note: str = ""
    fidelity: Fidelity | None = None
    ratio: float | None = None
    cpu_ratio: float | None = None

    @property
    def median_s(self) -> float | None:
        """Median seconds per run."""
        return statistics.median(self.seconds) if self.seconds else None

    @property
    def pairs_per_s(self) -> float | None:
        """Median throughput."""
        m = self.median_s
        return self.pairs / m if m else None

    @property
    def pps_range(self) -> tuple[float, float] | None:
        """(slowest, fastest) throughput over the runs."""
        if not self.seconds:
            return None
        return self.pairs / max(self.seconds), self.pairs / min(self.seconds)

    @property
    def flops_per_s(self) -> float | None:
        """Useful FLOP/s at the median."""
        m = self.median_s
        return self.useful_flops / m if m else None


@dataclass(frozen=True)
class Goal:
    """One target from the performance issue, with what this run measured.

    Attributes:
        goal: The target in words.
        measured: The numbers that decide it.
        status: ``"met"``, ``"missed"`` or ``"not measured"``.
    """

    goal: str
    measured: str
    status: str


@dataclass
class BenchReport:
    """Everything one benchmark run measured.

    Attributes:
        machine: CPU, cores, flags, library versions, threads, load averages, date.
        command: The command line that reproduces the run.
        peaks: Measured GEMM peak per dtype (FLOP/s; int8 in OP/s).
        rows: One per competitor per workload per model.
        memory: RSS per memory scenario.
        workloads: Per workload: pairs, mean tokens per pair.
        elapsed_s: Wall-clock seconds of the whole run.
        goals: The issue's targets, evaluated on this run.

    Examples:
        >>> report = BenchReport(machine={}, command="python benchmarks/run.py --quick")
        >>> report.to_markdown().startswith("## ")
        True
    """

    machine: dict[str, Any]
    command: str
    peaks: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    elapsed_s: float = 0.0
    goals: list[Goal] = field(default_factory=list)

    def row(self, model: str, workload: str, key: str) -> Row | None:
        """The row of a competitor on a workload, if it ran."""
        for r in self.rows:
            if (r.model, r.workload, r.key) == (model, workload, key) and r.seconds:
                return r
        return None

    def peak_fraction(self, row: Row) -> float | None:
        """The row's useful FLOP/s over the measured GEMM peak of its dtype."""
        peak = self.peaks.get(row.dtype)
        fps = row.flops_per_s
        return fps / peak if peak and fps else None

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole report, with derived numbers included."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d.update(
                median_s=r.median_s,
                pairs_per_s=r.pairs_per_s,
                flops_per_s=r.flops_per_s,
                peak_fraction=self.peak_fraction(r),
            )
            rows.append(d)
        return {
            "machine": self.machine,
            "command": self.command,
            "peaks": self.peaks,
            "workloads": self.workloads,
            "elapsed_s": self.elapsed_s,
            "rows": rows,
            "memory": [asdict(m) for m in self.memory],
            "goals": [asdict(g) for g in self.goals],
        }

    def to_json(self) -> str:
        """`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        """The results as markdown: machine, peaks, one table per workload, memory, goals."""
        out = ["## Machine", ""]
        m = self.machine
        for key in (
            "cpu",
            "cores",
            "cpu_flags",
            "memory_gib",
            "device",
            "threads",
            "versions",
            "load_before",
            "load_after",
            "other_load",
            "date",
        ):
            if key in m:
                out.append(f"- {key.replace('_', ' ')}: {m[key]}")
        if self.peaks:
            peaks = ", ".join(
                f"{k} {v / 1e9:,.0f} G{'OP' if k == 'int8' else 'FLOP'}/s"
                for k, v in self.peaks.items()
            )
            out.append(f"- measured GEMM peak ({m.get('threads', '?')} threads): {peaks}")
        out += ["", f"Command: `{self.command}` ({self.elapsed_s / 60:.1f} min)", ""]
        out += [
            "Columns: pairs/s is the median over repeats (min–max beside it). × LangChain is "
            "the median of per-repeat speed ratios against LangChain's `CrossEncoderReranker` "
            "in the same run; × (CPU time) is the same from process CPU time, steadier when "
            "other processes share the machine. GFLOP/s counts useful work (unpadded tokens); "
            "% peak divides it by the GEMM peak of the row's dtype. max abs Δ is against the "
            "mode's reference library (probability scale); Spearman and top-10 are the worst "
            "query's against fp32 `CrossEncoder.predict`. Bold rows are ours.",
            "",
        ]
        out += self._tables()
        if self.memory:
            out += [
                "## Memory",
                "",
                "Each scenario in a fresh process; Δ is the RSS the rerankers add to a process "
                "with every library already imported.",
                "",
                "| scenario | RSS MiB | Δ MiB | built with |",
                "|---|---:|---:|---|",
            ]
            for mem in self.memory:
                if mem.error:
                    out.append(f"| {mem.scenario} | — | — | failed: {mem.error} |")
                else:
                    out.append(
                        f"| {mem.scenario} | {mem.rss_mb:,.0f} | {mem.delta_mb:,.0f} | {mem.via} |"
                    )
            out.append("")
        if self.goals:
            out += ["## Goals", "", "| goal | measured | status |", "|---|---|---|"]
            out += [f"| {g.goal} | {g.measured} | {g.status} |" for g in self.goals]
            out.append("")
        return "\n".join(out)

    def _tables(self) -> list[str]:
        out: list[str] = []
        seen: list[tuple[str, str]] = []
        for r in self.rows:
            if (r.model, r.workload) not in seen:
                seen.append((r.model, r.workload))
        for model, workload in seen:
            info = self.workloads.get(f"{model} / {workload}", {})
            tokens = info.get("mean_tokens")
            desc = f" — {info.get('pairs', '?')} pairs, mean {tokens:.0f} tokens" if tokens else ""
            out += [
                f"### {model}: {workload}{desc}",
                "",
                "| competitor | pairs/s | min–max | × LangChain | × (CPU time) | GFLOP/s "
                "| % peak | max abs Δ | Spearman | top-10 |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            skipped = []
            for r in self.rows:
                if (r.model, r.workload) != (model, workload):
                    continue
                if not r.seconds:
                    skipped.append(f"- {r.label}: not run ({r.skipped})")
                    continue
                out.append(self._table_row(r))
            out += ["", *skipped, ""] if skipped else [""]
        return out

    def _table_row(self, r: Row) -> str:
        lo_hi = r.pps_range or (0.0, 0.0)
        frac = self.peak_fraction(r)
        fid = r.fidelity
        cached = r.key == "ours-cache"  # cache hits do no forward pass: no FLOP/s to speak of
        name = f"**{r.label}**" if r.role == "ours" else r.label
        cells = [
            f"{name} ({r.dtype})",
            _num(r.pairs_per_s),
            f"{_num(lo_hi[0])}–{_num(lo_hi[1])}",
            f"{r.ratio:.2f}×" if r.ratio else "—",
            f"{r.cpu_ratio:.2f}×" if r.cpu_ratio else "—",
            f"{r.flops_per_s / 1e9:,.0f}" if r.flops_per_s and not cached else "—",
            f"{frac:.0%}" if frac is not None and not cached else "—",
            _diff(fid.max_abs_diff) if fid else "—",
            f"{fid.spearman:.4f}" if fid else "—",
            f"{fid.top10}/{fid.top10_of}" if fid else "—",
        ]
        return "| " + " | ".join(cells) + " |"

    def save_chart(self, path: str | Path) -> Path | None:
        """Draw median throughput with min–max whiskers, one panel per workload, to a PNG.

        Args:
            path: Where to write the PNG.

        Returns:
            The path, or None when matplotlib is not installed or there is nothing to draw.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        panels: list[tuple[str, str]] = []
        for r in self.rows:
            if r.seconds and r.key != "ours-cache" and (r.model, r.workload) not in panels:
                panels.append((r.model, r.workload))
        if not panels:
            return None
        cols = 2 if len(panels) > 1 else 1
        rows_n = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(7 * cols, 2.6 * rows_n + 0.6))
        flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
        for ax, (model, workload) in zip(flat, panels, strict=False):
            rows = [
                r
                for r in self.rows
                if (r.model, r.workload) == (model, workload)
                and r.seconds
                and r.key != "ours-cache"
            ]
            meds = [r.pairs_per_s or 0.0 for r in rows]
            ranges = [r.pps_range or (0.0, 0.0) for r in rows]
            err = [[m - lo for m, (lo, _) in zip(meds, ranges, strict=True)]]
            err.append([hi - m for m, (_, hi) in zip(meds, ranges, strict=True)])
            colors = ["#4c72b0" if r.role == "ours" else "#999999" for r in rows]
            labels = [f"{r.label} ({r.dtype})" for r in rows]
            ax.barh(range(len(rows)), meds, xerr=err, color=colors, capsize=3)
            ax.set_yticks(range(len(rows)), labels, fontsize=8)
            ax.invert_yaxis()
            ax.set_title(f"{model}: {workload}", fontsize=9)
            ax.set_xlabel("pairs/s (median, min–max)", fontsize=8)
        for ax in flat[len(panels) :]:
            ax.axis("off")
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def _num(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _diff(x: float | None) -> str:
    if x is None:
        return "—"
    return "0" if x == 0 else f"{x:.1e}"


# ---------------------------------------------------------------------- goals


def _single_workloads(report: BenchReport, model: str, docs: set[int]) -> list[str]:
    names = []
    for r in report.rows:
        if r.model != model or r.workload in names:
            continue
        shape = r.workload.split(" ")[0]
        if "threads" in r.workload:
            continue
        q, _, d = shape.partition("×")
        if q == "1" and d.isdigit() and int(d) in docs:
            names.append(r.workload)
    return names


def _ratio_goal(
    report: BenchReport,
    model: str,
    key: str,
    workloads: list[str],
    target: float,
    goal: str,
    exact: bool = False,
    ranking: bool = False,
) -> Goal:
    parts, ok, seen = [], True, False
    for w in workloads:
        r = report.row(model, w, key)
        if r is None or r.ratio is None:
            continue
        seen = True
        text = f"{w}: {r.ratio:.2f}×"
        ok &= r.ratio >= target
        fid = r.fidelity
        if exact and fid is not None and fid.max_abs_diff is not None:
            text += f", max Δ {_diff(fid.max_abs_diff)}"
            ok &= fid.max_abs_diff <= EXACT_TOLERANCE
        if ranking and fid is not None:
            text += f", Spearman {fid.spearman:.4f}, top-10 {fid.top10}/{fid.top10_of}"
            ok &= fid.spearman >= 0.999 and fid.top10 == fid.top10_of
        parts.append(text)
    if not seen:
        return Goal(goal, "—", "not measured")
    return Goal(goal, "; ".join(parts), "met" if ok else "missed")


def evaluate_goals(report: BenchReport) -> list[Goal]:
    """Check the performance issue's targets against this run, per model.

    Args:
        report: A report with rows (and memory results, if measured).

    Returns:
        One `Goal` per target per model that has rows.
    """
    goals: list[Goal] = []
    models = list(dict.fromkeys(r.model for r in report.rows))
    for n, model in enumerate(models):
        before = len(goals)
        tag = f"[{model}] "
        single = _single_workloads(report, model, {50, 100}) or _single_workloads(
            report, model, set(range(1, 10_000))
        )
        concurrent = [w for w in dict.fromkeys(r.workload for r in report.rows) if "threads" in w]
        goals.append(
            _ratio_goal(
                report, model, "ours", single, 1.3, tag + "exact ≥ 1.3× LangChain, Δ ≤ 1e-4", True
            )
        )
        goals.append(
            _ratio_goal(
                report, model, "ours", concurrent, 1.4, tag + "exact ≥ 1.4× LangChain, concurrent"
            )
        )
        goals.append(
            _ratio_goal(
                report,
                model,
                "ours-bf16",
                single,
                2.0,
                tag + "bf16 ≥ 2× LangChain, Spearman ≥ 0.999, top-10 10/10",
                ranking=True,
            )
        )
        goals.append(_onnx_goal(report, model, tag))
        goals.append(_flag_goal(report, model, tag))
        goals.append(_cache_goal(report, model, tag))
        goals.append(_peak_goal(report, model, tag))
        if n > 0:  # the first model lists every goal; later ones only what they measured
            goals[before:] = [g for g in goals[before:] if g.status != "not measured"]
    if report.memory:
        goals.append(_memory_goal(report))
    return goals


def _onnx_goal(report: BenchReport, model: str, tag: str) -> Goal:
    goal = tag + "onnx fp32 within 1e-4 of CrossEncoder"
    rows = [r for r in report.rows if r.model == model and r.key == "ours-onnx"]
    ran = [r for r in rows if r.seconds and r.fidelity and r.fidelity.max_abs_diff is not None]
    if not ran:
        why = rows[0].skipped if rows and rows[0].skipped else "—"
        return Goal(goal, f"not run: {why}", "not measured")
    parts = [
        f"{r.workload}: max Δ {_diff(r.fidelity.max_abs_diff)}, "  # type: ignore[union-attr]
        f"{r.ratio or 0:.2f}× LangChain"
        for r in ran
    ]
    ok = all(r.fidelity.max_abs_diff <= EXACT_TOLERANCE for r in ran)  # type: ignore[union-attr, operator]
    return Goal(goal, "; ".join(parts), "met" if ok else "missed")


def _flag_goal(report: BenchReport, model: str, tag: str) -> Goal:
    goal = tag + "flag backend: FlagReranker's scores, ≥ 3× faster"
    parts, ok = [], True
    for r in report.rows:
        if r.model != model or r.key != "ours-flag" or not r.seconds:
            continue
        ref = report.row(model, r.workload, "flagreranker")
        if ref is None or not ref.pairs_per_s or not r.pairs_per_s:
            continue
        speed = r.pairs_per_s / ref.pairs_per_s
        ok &= speed >= 3.0
        text = f"{r.workload}: {speed:.2f}×"
        if r.fidelity and r.fidelity.max_abs_diff is not None:
            text += f", max Δ {_diff(r.fidelity.max_abs_diff)}"
            ok &= r.fidelity.max_abs_diff <= EXACT_TOLERANCE
        parts.append(text)
    if not parts:
        return Goal(goal, "—", "not measured")
    return Goal(goal, "; ".join(parts), "met" if ok else "missed")


def _cache_goal(report: BenchReport, model: str, tag: str) -> Goal:
    goal = tag + "repeated query ≤ 1% of a cold one"
    parts, ok = [], True
    for r in report.rows:
        if r.model != model or r.key != "ours-cache" or not r.median_s:
            continue
        cold = report.row(model, r.workload, "ours")
        if cold is None or not cold.median_s:
            continue
        share = r.median_s / cold.median_s
        ok &= share <= 0.01
        parts.append(
            f"{r.workload}: {r.median_s * 1e3:.2f} ms vs {cold.median_s:.2f} s = {share:.3%}"
        )
    if not parts:
        return Goal(goal, "—", "not measured")
    return Goal(goal, "; ".join(parts), "met" if ok else "missed")


def _peak_goal(report: BenchReport, model: str, tag: str) -> Goal:
    goal = tag + "≥ 60% of the GEMM peak (fp32, bf16)"
    parts, ok = [], True
    for key in ("ours", "ours-bf16"):
        for r in report.rows:
            if r.model != model or r.key != key or not r.seconds:
                continue
            frac = report.peak_fraction(r)
            if frac is None:
                continue
            ok &= frac >= 0.6
            parts.append(f"{r.dtype} {r.workload}: {frac:.0%}")
    if not parts:
        return Goal(goal, "—", "not measured")
    return Goal(goal, "; ".join(parts), "met" if ok else "missed")


def _memory_goal(report: BenchReport) -> Goal:
    goal = "5 adapters on one model hold one model"
    by = {m.scenario: m for m in report.memory if m.delta_mb is not None}
    one, five = by.get("ours x1"), by.get("ours x5")
    if one is None or five is None or one.delta_mb is None or five.delta_mb is None:
        return Goal(goal, "—", "not measured")
    text = f"ours: +{one.delta_mb:,.0f} MiB for 1, +{five.delta_mb:,.0f} MiB for 5"
    li = by.get("LlamaIndex SentenceTransformerRerank x5")
    if li is not None and li.delta_mb is not None:
        text += f"; 5 SentenceTransformerRerank: +{li.delta_mb:,.0f} MiB"
    ok = five.delta_mb <= one.delta_mb * 1.1 + 16
    return Goal(goal, text, "met" if ok else "missed")
