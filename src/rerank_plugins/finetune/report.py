"""What a fine-tune reports: the metrics table, the model card and the plot."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["REPORT_FILE", "SYSTEMS", "FinetuneReport", "metrics_table", "model_card", "plot"]

REPORT_FILE = "finetune_report.json"
"""The report's file in the output folder; its presence marks a finished fine-tune."""

PLOT_FILE = "finetune_metrics.png"

SYSTEMS: tuple[str, ...] = ("first stage", "base reranker", "fine-tuned")
"""The rankings compared on the held-out queries, in table order."""

# Columns of the printed table and the model card (all of `evaluation.METRICS` are in the JSON).
_SHOWN = ("ndcg@10", "mrr@10", "recall@10", "recall@50")


@dataclass
class FinetuneReport:
    """What a fine-tune did and how the result compares, saved as ``finetune_report.json``.

    Attributes:
        output: The folder of the fine-tuned model.
        base: The model it started from.
        bi_encoder: The first stage: hard negatives came from it, and it is the baseline.
        data: The data it trained on (a folder, a file, or ``"records"``).
        method: How the training and held-out queries were obtained.
        fingerprint: SHA-256 of the inputs and settings; the same fingerprint reuses a folder.
        settings: The `FinetuneSettings` used, as a dict.
        train_queries: Queries trained on.
        train_pairs: Labelled pairs per epoch (positives and hard negatives).
        held_out_queries: Queries evaluated on (never trained on).
        candidates: First-stage candidates reranked per held-out query.
        metrics: System (`SYSTEMS`) -> metric (``ndcg@10``, ``mrr@10``, ``recall@10``,
            ``recall@50``, ``recall@100``) -> mean over the held-out queries; empty when
            nothing was held out.
        device: Where it trained.
        precision: ``"bf16 mixed"`` or ``"fp32"`` (bf16 where the GPU or CPU runs it natively).
        steps: Optimizer steps.
        resumed_from_step: The checkpoint step the training resumed from (None: it did not).
        train_loss: The trainer's mean training loss.
        seconds: Wall-clock seconds per phase (``prepare``, ``train``, ``evaluate``,
            ``total``) of the run that built the folder.
        base_untrained: Whether the base was the untrained offline fallback.
        plot: The plot's path, or None.
        notes: Anything the reader should know (e.g. why there is no plot).
        reused: True when this call found the folder already built and trained nothing.

    Examples:
        >>> report = FinetuneReport(output="out", base="b", bi_encoder="e", data="d", method="m",
        ...     fingerprint="f", metrics={"fine-tuned": {"ndcg@10": 0.9}})
        >>> report.metric("fine-tuned", "ndcg@10")
        0.9
    """

    output: str
    base: str
    bi_encoder: str
    data: str
    method: str
    fingerprint: str
    settings: dict[str, Any] = field(default_factory=dict)
    train_queries: int = 0
    train_pairs: int = 0
    held_out_queries: int = 0
    candidates: int = 0
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    device: str = ""
    precision: str = ""
    steps: int = 0
    resumed_from_step: int | None = None
    train_loss: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    base_untrained: bool = False
    plot: str | None = None
    notes: list[str] = field(default_factory=list)
    reused: bool = False

    def metric(self, system: str, name: str) -> float:
        """One number of the table, e.g. ``metric("fine-tuned", "ndcg@10")``.

        Raises:
            KeyError: No such system or metric (nothing was held out, or a typo).
        """
        return self.metrics[system][name]

    def table(self) -> str:
        """The metrics as an aligned text table (one row per system)."""
        return metrics_table(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what ``finetune_report.json`` holds; ``reused`` is left out)."""
        data = asdict(self)
        del data["reused"]
        return data

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> FinetuneReport:
        """Read the report of a fine-tuned folder.

        The folder it is read from is its ``output`` (and holds its ``plot``), wherever the
        folder was when it was written: a moved folder or cache still loads.

        Raises:
            FileNotFoundError: The folder holds no ``finetune_report.json``.
            ValueError: The file is not a report this version can read.
        """
        file = Path(folder) / REPORT_FILE
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            known = set(cls.__dataclass_fields__)
            report = cls(**{k: v for k, v in data.items() if k in known})
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            msg = (
                f"{file} is not a fine-tune report ({type(exc).__name__}); remove the folder, "
                "or pass another output folder."
            )
            raise ValueError(msg) from None
        report.output = str(Path(folder))
        if report.plot is not None:
            report.plot = str(Path(folder) / PLOT_FILE)
        return report

    def save(self, folder: Path) -> None:
        """Write ``finetune_report.json`` into ``folder``."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False)
        (folder / REPORT_FILE).write_text(text + "\n", encoding="utf-8")


def metrics_table(metrics: dict[str, dict[str, float]], *, markdown: bool = False) -> str:
    """The systems' metrics, one row each, as text columns or a Markdown table.

    Examples:
        >>> print(metrics_table({"fine-tuned": {"ndcg@10": 0.5, "mrr@10": 0.4,
        ...     "recall@10": 0.9, "recall@50": 1.0}}))
        system      nDCG@10  MRR@10  Recall@10  Recall@50
        ----------  -------  ------  ---------  ---------
        fine-tuned   0.5000  0.4000     0.9000     1.0000
    """
    headers = ["system", "nDCG@10", "MRR@10", "Recall@10", "Recall@50"]
    rows = [
        [system, *(f"{metrics[system].get(m, float('nan')):.4f}" for m in _SHOWN)]
        for system in (*SYSTEMS, *(s for s in metrics if s not in SYSTEMS))
        if system in metrics
    ]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def model_card(report: FinetuneReport) -> str:
    """The README.md of the fine-tuned folder: base, data, method, settings, metrics, limits."""
    settings = report.settings
    hub_base = (
        report.base.count("/") == 1
        and not report.base.startswith((".", "/", "~"))
        and not os.path.exists(report.base)
    )
    front = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: text-ranking",
        "tags:",
        "- cross-encoder",
        "- reranker",
        "- rerank-plugins",
    ]
    if hub_base:
        front.append(f"base_model: {report.base}")
    front.append("---")
    base = f"`{report.base}`"
    if report.base_untrained:
        base += (
            " (rerank-plugins' offline fallback: all-MiniLM-L6-v2's encoder under an "
            "untrained classification head)"
        )
    if report.metrics:
        results = (
            f"On {report.held_out_queries} held-out queries, never trained on; each system "
            f"ranks the bi-encoder's top {report.candidates} candidates:\n\n"
            + metrics_table(report.metrics, markdown=True)
        )
    else:
        results = "Not evaluated: no queries were held out."
    lines = [
        *front,
        "",
        "# Fine-tuned cross-encoder (rerank-plugins)",
        "",
        "A reranker fine-tuned with `rerank-plugins finetune`. It scores a (query, passage) "
        "pair with one logit; `rerank_plugins.get_engine`, its LangChain and LlamaIndex "
        "adapters and `sentence_transformers.CrossEncoder` load this folder as it is.",
        "",
        "## Base model",
        "",
        f"{base}, trained further with the first-stage bi-encoder `{report.bi_encoder}` "
        "supplying hard negatives.",
        "",
        "## Data",
        "",
        f"`{report.data}`: {report.method}. {report.train_queries} training queries, "
        f"{report.train_pairs} labelled pairs per epoch, {report.held_out_queries} held-out "
        "queries.",
        "",
        "## Method",
        "",
        f"For each training query, its judged passages are positives (label 1) and the "
        f"{settings.get('negatives')} passages the bi-encoder ranks highest among its top "
        f"{settings.get('depth')} that are not judged relevant are hard negatives (label 0)"
        + _filters(settings)
        + ". "
        f"Loss: {_loss_sentence(settings)} {float(settings.get('epochs') or 0):g} epochs, "
        f"batch size {settings.get('batch_size')} queries, "
        f"learning rate {settings.get('learning_rate')} (linear warm-up over "
        f"{round(100 * float(settings.get('warmup', 0)))}% of the steps, then linear decay), "
        f"pairs cut to {settings.get('max_length')} tokens while training, seed "
        f"{settings.get('seed')}; "
        f"{report.steps} steps on {report.device}"
        + (f" ({report.precision} precision)." if report.precision else "."),
        "",
        "## Results",
        "",
        results,
        "",
        "## Limits",
        "",
        "This is a small fine-tune on one collection, with queries that are "
        + (
            "generated from the passages"
            if "self-supervised" in report.method
            else "this collection's judged ones"
        )
        + ". It adapts the reranker to this collection's vocabulary and to queries like the "
        "training ones; it is not a general-purpose reranker trained on millions of real "
        "queries (such as MS MARCO), and its scores on other collections are untested.",
        "",
        "## Use",
        "",
        "```python",
        "from rerank_plugins import get_engine",
        "",
        f"engine = get_engine({report.output!r})",
        'print(engine.rerank("your question", ["passage one", "passage two"]))',
        "```",
        "",
    ]
    return "\n".join(lines)


def _filters(settings: dict[str, Any]) -> str:
    """The optional negative filters that were on, as a clause."""
    parts = []
    if settings.get("margin") is not None:
        parts.append(
            f"skipping candidates within {settings['margin']} cosine similarity of the best answer"
        )
    if settings.get("denoise"):
        parts.append("skipping candidates the base reranker scores as high as the answer")
    return (", " + " and ".join(parts)) if parts else ""


def _loss_sentence(settings: dict[str, Any]) -> str:
    """The loss in words, as `rerank_plugins.finetune.train.train_cross_encoder` applies it."""
    if settings.get("loss") == "bce":
        return (
            "binary cross-entropy on the logit of each (query, passage) pair, positives "
            "weighted by the negatives per positive."
        )
    text = (
        "listwise softmax cross-entropy over each positive and its hard negatives (the "
        "positive is the target)"
    )
    distill = float(settings.get("distill") or 0)
    if distill:
        text += (
            f", plus {distill:g} times the KL divergence to the softmax of the bi-encoder's "
            "similarities over the same passages (distillation)"
        )
    return text + "."


def plot(metrics: dict[str, dict[str, float]], path: Path) -> str | None:
    """Bar chart of the systems' nDCG@10, MRR@10 and Recall@10; None if matplotlib is missing.

    Args:
        metrics: System -> metric -> value (`FinetuneReport.metrics`).
        path: The PNG file to write.

    Returns:
        The path written, or None when matplotlib (extra ``eval``) is not installed.
    """
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("ndcg@10", "mrr@10", "recall@10")
    systems = [s for s in (*SYSTEMS, *metrics) if s in metrics]
    systems = list(dict.fromkeys(systems))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(systems), 1)
    for k, system in enumerate(systems):
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(shown))]
        values = [metrics[system].get(m, 0.0) for m in shown]
        bars = ax.bar(xs, values, width=width, label=system)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(shown)))
    ax.set_xticklabels(["nDCG@10", "MRR@10", "Recall@10"])
    ax.set_ylim(0, 1.1)
    ax.set_title("Held-out queries: first stage, base reranker, fine-tuned")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
