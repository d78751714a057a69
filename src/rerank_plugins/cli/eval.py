"""``rerank-plugins eval``: first stage vs reranked on a BEIR-layout data set."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rerank_plugins.cli._common import (
    CliError,
    add_engine_arguments,
    add_instruction_argument,
    check_engine_options,
    engine_options,
    err,
    load_engine,
    out,
    plural,
    table,
)

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``eval`` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="measure nDCG/MRR/recall before and after reranking on your own data",
        description=(
            "Evaluate on DATA_DIR in the BEIR layout (corpus.jsonl, queries.jsonl, "
            "qrels/test.tsv). First-stage candidates come from a bi-encoder (--bi-encoder) or "
            "a TREC run file (--run); the reranker reorders them. Prints nDCG@10, MRR@10 and "
            "Recall@10/50/100 before and after, the latency of reranking with the score cache "
            "off (every pair a forward pass), and score thresholds that keep 80/90/95% of the "
            "relevant documents."
        ),
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", help="folder in the BEIR layout")
    parser.add_argument("--reranker", "-m", required=True, help="cross-encoder id or folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bi-encoder", help="sentence-transformers id or folder (first stage)")
    # dest differs from "run": the CLI keeps each subcommand's entry point in args.run.
    source.add_argument(
        "--run", dest="run_file", metavar="RUN_FILE", help="TREC run file (first stage)"
    )
    parser.add_argument("--candidates", type=int, default=100, help="reranked per query")
    parser.add_argument("--split", default="test", help="qrels split (default: test)")
    parser.add_argument("--output", "-o", metavar="FILE", help="write the JSON results here")
    parser.add_argument("--plot", metavar="PNG", help="per-query nDCG@10 before vs after")
    parser.add_argument("--per-query", action="store_true", help="include per-query metrics")
    add_instruction_argument(parser)
    add_engine_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load, retrieve or read the run, rerank, report."""
    if args.candidates < 1:
        msg = f"--candidates must be at least 1, got {args.candidates}."
        raise CliError(msg)
    # The cache off: every timed pair is a forward pass, so the latency is the cold path's.
    options = {**engine_options(args), "cache_size": 0}
    check_engine_options(args.reranker, options)
    from rerank_plugins.evaluation import evaluate, load_beir, load_trec_run

    try:
        data = load_beir(args.data_dir, split=args.split)
        run_file = load_trec_run(args.run_file) if args.run_file else None
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    if not data.queries:
        msg = f"no judged queries in {args.data_dir}; check qrels/{args.split}.tsv."
        raise CliError(msg)

    engine = load_engine(args.reranker, options)
    first_stage: Any = run_file
    if run_file is None:
        first_stage = _bi_encoder_first_stage(args, data)

    from tqdm import tqdm

    bar = tqdm(total=len(data.queries), desc="rerank", unit="query", disable=None, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.update(1)

    report = evaluate(
        data,
        engine,
        first_stage,
        candidates=args.candidates,
        per_query=args.per_query or bool(args.plot),
        progress=progress,
        instruction=args.instruction,
    )
    bar.close()
    rows = [
        [
            m,
            f"{report.first_stage[m]:.4f}",
            f"{report.reranked[m]:.4f}",
            f"{report.difference[m]:+.4f}",
        ]
        for m in report.first_stage
    ]
    out(table(["metric", "first stage", "reranked", "difference"], rows, right=[1, 2, 3]))
    lat = report.latency_ms
    out(
        f"{plural(report.queries, 'query', 'queries')} x "
        f"{plural(report.candidates, 'candidate')}; rerank latency median "
        f"{lat['median']:.1f} ms, p95 {lat['p95']:.1f} ms; {report.pairs_per_second:.1f} pairs/s"
    )
    timed = report.rerank_stats
    if "forward_pairs" in timed:
        out(
            f"timed: {plural(timed['forward_pairs'], 'pair')} in "
            f"{plural(timed.get('forward_passes', 0), 'forward pass', 'forward passes')}, "
            f"{plural(timed.get('cache_hits', 0), 'cache hit')}"
        )
    if report.thresholds:
        shown = ", ".join(f"{k}: {v:.4f}" for k, v in report.thresholds.items())
        out(f"score_threshold suggestions (share of relevant candidates kept): {shown}")
    payload = report.to_dict()
    payload["reranker"] = engine.info.model
    payload["engine_stats"] = engine.stats()
    if args.output:
        Path(args.output).write_text(json.dumps(payload, indent=2), encoding="utf-8")
        err(f"wrote {args.output}")
    if args.plot:
        _plot(report.per_query, args.plot)
        err(f"wrote {args.plot}")
    return 0


def _bi_encoder_first_stage(args: argparse.Namespace, data: Any) -> Any:
    """Index the corpus; the first stage then searches it without reranking anything."""
    from rerank_plugins.retrieval import BiEncoder, TwoStageRetriever

    retriever = TwoStageRetriever(BiEncoder(args.bi_encoder, device=args.device))
    ids = list(data.corpus)
    retriever.index([data.corpus[i] for i in ids], ids=ids)

    def first_stage(qid: str, query: str, k: int) -> list[str]:
        return [match.id for match in retriever.first_stage(query, candidates=k)]

    return first_stage


def _plot(per_query: dict[str, dict[str, dict[str, float]]], path: str) -> None:
    from rerank_plugins._imports import require

    matplotlib = require("matplotlib", extra="eval", purpose="--plot")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", extra="eval", purpose="--plot")
    qids = sorted(per_query, key=lambda q: per_query[q]["first_stage"]["ndcg@10"])
    before = [per_query[q]["first_stage"]["ndcg@10"] for q in qids]
    after = [per_query[q]["reranked"]["ndcg@10"] for q in qids]
    fig, ax = plt.subplots(figsize=(max(6, len(qids) * 0.35), 4))
    xs = range(len(qids))
    ax.bar([x - 0.2 for x in xs], before, width=0.4, label="first stage")
    ax.bar([x + 0.2 for x in xs], after, width=0.4, label="reranked")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(qids, rotation=90, fontsize=7)
    ax.set_ylabel("nDCG@10")
    ax.set_ylim(0, 1.05)
    ax.set_title("Per-query nDCG@10, before and after reranking")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
