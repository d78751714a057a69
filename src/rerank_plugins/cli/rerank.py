"""``rerank-plugins rerank``: score documents from a file or stdin against one query."""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    shorten,
    table,
    terminal_width,
)
from rerank_plugins.models import error_clause

__all__ = ["read_documents", "register", "run"]

DEFAULT_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"
# Documents per engine call, so a long input shows progress; the engine batches within a call.
_CHUNK = 256


def register(subparsers: Any) -> None:
    """Add the ``rerank`` subcommand."""
    parser = subparsers.add_parser(
        "rerank",
        help="rank documents against a query with a cross-encoder",
        description=(
            "Score every document against QUERY with a cross-encoder and print them best "
            "first. Documents are read from --docs FILE or stdin: one document per non-empty "
            "line, or JSON lines with a text field. 'index' is the document's position in the "
            "input, counting from 0 (blank lines are skipped and not counted)."
        ),
    )
    parser.add_argument(
        "-m",
        "--model",
        default=DEFAULT_MODEL,
        help=f"cross-encoder hub id or local folder (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("-q", "--query", required=True, help="the query to rank against")
    parser.add_argument(
        "-d",
        "--docs",
        default="-",
        metavar="FILE",
        help="documents: plain lines or JSONL; '-' or omitted reads stdin",
    )
    parser.add_argument(
        "--text-field",
        default="text",
        metavar="NAME",
        help="field holding the text in JSONL input (default: text)",
    )
    parser.add_argument("-n", "--top-n", type=int, metavar="N", help="print only the best N")
    parser.add_argument(
        "--min-score",
        type=float,
        metavar="S",
        help="drop documents scoring below S (applied before --top-n)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list of {index, score, text}"
    )
    add_instruction_argument(parser)
    add_engine_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Read, validate, score, print."""
    if not args.query.strip():
        msg = "--query is empty; pass the question to rank the documents against."
        raise CliError(msg)
    if args.top_n is not None and args.top_n < 1:
        msg = f"--top-n must be at least 1, got {args.top_n}."
        raise CliError(msg)
    options = engine_options(args)
    check_engine_options(args.model, options)
    source, raw = _read_source(args.docs)
    texts = read_documents(raw, source, text_field=args.text_field)
    if not texts:
        msg = f"no documents in {source}; pass one document per line, or JSON lines."
        raise CliError(msg)

    from rerank_plugins.results import select

    # A model that cannot rank (the offline fallback, an embedding model) is named by the
    # engine's load warning, which the command line always shows.
    engine = load_engine(args.model, options)

    start = time.perf_counter()
    scores = _score(engine, args.query, texts, args.instruction)
    elapsed_ms = (time.perf_counter() - start) * 1000
    order = select(scores, top_n=args.top_n, score_threshold=args.min_score)

    if args.json:
        results = [{"index": i, "score": scores[i], "text": texts[i]} for i in order]
        out(json.dumps(results, ensure_ascii=False, indent=2))
    else:
        width = terminal_width()
        text_width = max(width - 24, 20)
        rows = [
            [str(rank), str(i), f"{scores[i]:.4f}", shorten(texts[i], text_width)]
            for rank, i in enumerate(order, start=1)
        ]
        out(table(["rank", "index", "score", "text"], rows, right=[0, 1, 2]))
    info = engine.info
    err(
        f"reranked {plural(len(texts), 'document')} in {elapsed_ms:.0f} ms with {info.model} "
        f"(backend={info.backend}, device={info.device}, precision={info.precision}; "
        f"scores: {info.score_scale})"
    )
    return 0


def _read_source(docs: str) -> tuple[str, str]:
    if docs == "-":
        if sys.stdin is None:
            msg = "no --docs FILE given and there is no stdin to read documents from."
            raise CliError(msg)
        if sys.stdin.isatty():
            err("reading documents from stdin, one per line (end with Ctrl-D) ...")
        return "stdin", sys.stdin.read()
    try:
        with open(docs, encoding="utf-8") as f:
            return f"--docs {docs!r}", f.read()
    except FileNotFoundError:
        msg = f"--docs file {docs!r} does not exist; pass an existing file, or '-' for stdin."
        raise CliError(msg) from None
    except IsADirectoryError:
        msg = f"--docs {docs!r} is a directory; pass a text or JSONL file."
        raise CliError(msg) from None
    except UnicodeDecodeError as exc:
        msg = f"--docs file {docs!r} is not UTF-8 text ({exc.reason})."
        raise CliError(msg) from None
    except OSError as exc:
        msg = f"cannot read --docs file {docs!r}: {exc.strerror or error_clause(exc)}."
        raise CliError(msg) from None


def read_documents(raw: str, source: str = "input", *, text_field: str = "text") -> list[str]:
    r"""Documents from plain lines, or from JSON lines when the first non-blank line is an object.

    Args:
        raw: The whole input.
        source: How to name the input in error messages.
        text_field: The JSONL field holding each document's text.

    Returns:
        One text per non-blank line, in input order.

    Raises:
        CliError: A JSONL line is not an object or lacks a string ``text_field``.

    Examples:
        >>> read_documents("first doc\n\nsecond doc\n")
        ['first doc', 'second doc']
        >>> read_documents('{"text": "a"}\n{"text": "b", "id": 2}\n')
        ['a', 'b']
    """
    lines = [(n, line) for n, line in enumerate(raw.splitlines(), start=1) if line.strip()]
    if not lines or not lines[0][1].lstrip().startswith("{"):
        return [line for _, line in lines]
    texts = []
    for n, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            msg = f"{source} line {n} is not valid JSON ({exc.msg}); use JSON lines throughout."
            raise CliError(msg) from None
        if not isinstance(record, dict):
            msg = f"{source} line {n} is not a JSON object; each line must be {{...}}."
            raise CliError(msg)
        text = record.get(text_field)
        if not isinstance(text, str):
            msg = (
                f"{source} line {n} has no string field {text_field!r}; name the text field "
                "with --text-field."
            )
            raise CliError(msg)
        texts.append(text)
    return texts


def _score(engine: Any, query: str, texts: list[str], instruction: str | None) -> list[float]:
    from tqdm.auto import tqdm

    scores: list[float] = []
    with tqdm(
        total=len(texts),
        desc="reranking",
        unit="doc",
        disable=len(texts) <= 2 * _CHUNK or None,
        leave=False,
    ) as bar:
        for start in range(0, len(texts), _CHUNK):
            chunk = texts[start : start + _CHUNK]
            scores.extend(engine.score(query, chunk, instruction=instruction))
            bar.update(len(chunk))
    return scores
