"""``rerank-plugins finetune``: fine-tune a reranker on a BEIR folder or a corpus alone."""

from __future__ import annotations

import argparse
from typing import Any

from rerank_plugins.cli._common import CliError, err, out, plural, positive_int

__all__ = ["register", "run"]


def _share(text: str) -> float:
    """An argparse ``type=``: a share from 0 to 0.9."""
    try:
        value = float(text)
    except ValueError:
        msg = f"expected a share such as 0.2, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0 <= value <= 0.9:
        msg = f"must be between 0 and 0.9, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_float(text: str) -> float:
    """An argparse ``type=``: a number above 0."""
    try:
        value = float(text)
    except ValueError:
        msg = f"expected a number above 0, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not value > 0:
        msg = f"must be above 0, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def register(subparsers: Any) -> None:
    """Add the ``finetune`` subcommand."""
    from rerank_plugins.finetune.runner import LOSSES, FinetuneSettings

    defaults = FinetuneSettings()
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a reranker on your own corpus, with hard negatives from a bi-encoder",
        description=(
            "Fine-tune the reranker --base on DATA_DIR: a BEIR folder (corpus.jsonl, "
            "queries.jsonl, qrels/train.tsv and/or test.tsv), or a folder holding only "
            "corpus.jsonl, whose training queries are then generated from the passages (a "
            "passage's title is the query for its text; without a title, a held-out sentence "
            "is the query for the rest). Hard negatives come from --bi-encoder. Prints nDCG@10, "
            "MRR@10 and Recall@10/50 of the first stage, the base reranker and the fine-tuned "
            "one on held-out queries, and writes --output: the model, a model card, "
            "finetune_report.json and (with the eval extra) finetune_metrics.png. Run the "
            "same command again to resume an interrupted run, or to reuse a finished one."
        ),
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="BEIR or corpus.jsonl folder")
    parser.add_argument(
        "--base", "-m", required=True, metavar="MODEL", help="reranker to start from (id/folder)"
    )
    parser.add_argument(
        "--bi-encoder",
        required=True,
        metavar="MODEL",
        help="sentence-transformers first stage (id or folder)",
    )
    parser.add_argument(
        "--output", "-o", required=True, metavar="DIR", help="folder to write the model into"
    )
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an --output holding another fine-tune"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    group = parser.add_argument_group("training options (defaults tuned for MiniLM on a CPU)")
    group.add_argument(
        "--epochs", type=_positive_float, default=defaults.epochs, help="(default: %(default)s)"
    )
    group.add_argument(
        "--negatives",
        type=positive_int,
        default=defaults.negatives,
        help="hard negatives per query (default: %(default)s)",
    )
    group.add_argument(
        "--depth",
        type=positive_int,
        default=defaults.depth,
        help="look for them in the bi-encoder's top N (default: %(default)s)",
    )
    group.add_argument(
        "--batch-size",
        type=positive_int,
        default=defaults.batch_size,
        help="queries per step (default: %(default)s)",
    )
    group.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=defaults.learning_rate,
        help="(default: %(default)s)",
    )
    group.add_argument(
        "--max-length",
        type=positive_int,
        default=defaults.max_length,
        help="tokens per pair (default: %(default)s)",
    )
    group.add_argument(
        "--loss", choices=LOSSES, default=defaults.loss, help="(default: %(default)s)"
    )
    group.add_argument(
        "--distill",
        type=float,
        default=defaults.distill,
        help="weight of the bi-encoder's scores as soft targets, 0 for none (default: %(default)s)",
    )
    group.add_argument(
        "--denoise",
        action="store_true",
        help="skip negatives the base reranker scores as high as the answer",
    )
    group.add_argument(
        "--held-out",
        type=_share,
        default=defaults.held_out,
        help="share of the queries held out for evaluation (default: %(default)s)",
    )
    group.add_argument(
        "--candidates",
        type=positive_int,
        default=defaults.candidates,
        help="reranked per held-out query (default: %(default)s)",
    )
    group.add_argument("--seed", type=int, default=defaults.seed, help="(default: %(default)s)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the inputs (bad input exits 2), fine-tune, print the table."""
    from rerank_plugins.finetune import FinetuneSettings, plan_finetune

    try:
        settings = FinetuneSettings(
            epochs=args.epochs,
            negatives=args.negatives,
            depth=args.depth,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            max_length=args.max_length,
            loss=args.loss,
            distill=args.distill,
            denoise=args.denoise,
            held_out=args.held_out,
            candidates=args.candidates,
            seed=args.seed,
        )
        plan = plan_finetune(
            args.data_dir,
            base=args.base,
            bi_encoder=args.bi_encoder,
            output=args.output,
            settings=settings,
            overwrite=args.overwrite,
        )
    except (FileNotFoundError, ValueError) as exc:  # ModelLoadError is a ValueError too
        raise CliError(_flags(str(exc))) from exc
    training = plan.training
    if plan.finished is None:
        err(
            f"fine-tuning {plan.base} on {plan.data}: "
            f"{plural(len(training.train_queries), 'training query', 'training queries')}, "
            f"{plural(len(training.eval_queries), 'held-out query', 'held-out queries')} "
            f"({training.method})"
        )
    try:
        report = plan.run(device=args.device, progress=not args.quiet)
    except KeyboardInterrupt:
        msg = (
            "interrupted; run the same command again to resume from the last checkpoint in "
            f"{plan.checkpoints}"
        )
        raise CliError(msg, exit_code=130) from None
    if report.reused:
        err(f"{report.output} already holds this fine-tune; showing its report")
    if report.metrics:
        out(
            f"held-out queries: {report.held_out_queries}, each reranking the bi-encoder's top "
            f"{report.candidates}"
        )
        out(report.table())
    else:
        out("no held-out queries, so nothing was evaluated")
    if report.base_untrained:
        out("(the base reranker is the offline fallback: its head is untrained)")
    seconds = report.seconds.get("total")
    took = f" in {seconds:.0f} s" if seconds is not None and not report.reused else ""
    out(
        f"trained {plural(report.steps, 'step')} on {report.device}"
        + (f" ({report.precision})" if report.precision else "")
        + f"{took}; wrote "
        f"{report.output} (model, README.md model card, finetune_report.json"
        + (", finetune_metrics.png)" if report.plot else ")")
    )
    for note in report.notes:
        out(f"note: {note}")
    return 0


def _flags(message: str) -> str:
    """Library wording (``overwrite=True``) as the flag that does the same."""
    for library, flag in (
        ("overwrite=True (--overwrite)", "--overwrite"),
        ("held_out=0 (--held-out 0)", "--held-out 0"),
    ):
        message = message.replace(library, flag)
    return message
