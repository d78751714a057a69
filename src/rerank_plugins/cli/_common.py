"""Shared pieces of the command line: the one-line error, the parser, and text output helpers."""

from __future__ import annotations

import argparse
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = [
    "USAGE_ERROR",
    "ArgumentParser",
    "CliError",
    "add_engine_arguments",
    "add_instruction_argument",
    "boxed",
    "engine_options",
    "err",
    "one_line",
    "out",
    "shorten",
    "table",
    "terminal_width",
]

USAGE_ERROR = 2
RUNTIME_ERROR = 1


class CliError(Exception):
    """A failure to report as one ``error: ...`` line, with the process exit code.

    Args:
        message: What went wrong and what to do instead.
        exit_code: 2 for bad input or usage (default), 1 for a failure while running.

    Examples:
        >>> error = CliError("--docs file 'x.txt' does not exist.")
        >>> str(error), error.exit_code
        ("--docs file 'x.txt' does not exist.", 2)
    """

    def __init__(self, message: str, exit_code: int = USAGE_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: <message>`` with a pointer to ``--help``, then exit with 2."""
        err(f"error: {message} (see '{self.prog} --help')")
        raise SystemExit(USAGE_ERROR)


def out(line: str = "") -> None:
    """Write one line to stdout."""
    sys.stdout.write(line + "\n")


def err(line: str) -> None:
    """Write one line to stderr."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def one_line(exc: BaseException) -> str:
    """An exception's message on a single line (library errors can span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def terminal_width(default: int = 120) -> int:
    """Columns of the terminal, or ``default`` when output is not a terminal ($COLUMNS wins)."""
    return max(60, shutil.get_terminal_size((default, 24)).columns)


def shorten(text: str, width: int) -> str:
    r"""``text`` on one line, cut to ``width`` characters with an ellipsis.

    Examples:
        >>> shorten("a  long\ntext here", 10)
        'a long te…'
    """
    text = " ".join(text.split())
    if width <= 0:
        return ""
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Rows as aligned text columns under a header and a rule; ``right``: right-aligned columns.

    Examples:
        >>> print(table(["#", "name"], [["1", "a"], ["10", "b"]], right=[0]))
         #  name
        --  ----
         1  a
        10  b
    """
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def fmt(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(headers), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in rows]
    return "\n".join(lines)


def boxed(text: str, width: int) -> str:
    """``text`` wrapped to ``width`` inside a frame of ``!``, for notices nobody should miss."""
    inner = max(width - 4, 20)
    lines = textwrap.wrap(text, inner)
    rule = "!" * (inner + 4)
    return "\n".join([rule, *(f"! {line.ljust(inner)} !" for line in lines), rule])


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that builds a reranking engine; choices read from the config.

    Args:
        parser: The command's parser; the flags go into an "engine options" group.

    Examples:
        >>> parser = argparse.ArgumentParser()
        >>> add_engine_arguments(parser)
        >>> args = parser.parse_args(["--precision", "fp32", "--max-length", "9"])
        >>> options = engine_options(args)
        >>> options["precision"], options["max_length"], options["long_documents"]
        ('fp32', 9, 'truncate')
    """
    from rerank_plugins.config import BACKENDS, DECODER_PROTOCOLS, DEVICES, PRECISIONS
    from rerank_plugins.windows import LONG_DOCUMENT_MODES

    group = parser.add_argument_group("engine options")
    group.add_argument(
        "--device", default="auto", help=f"{', '.join(DEVICES)} or cuda:N (default: auto)"
    )
    group.add_argument("--backend", default="auto", help=f"{', '.join(BACKENDS)} (default: auto)")
    group.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: fp32 on CPU, bf16 or fp16 on CUDA; int8 with --backend onnx",
    )
    group.add_argument("--max-length", type=int, metavar="T", help="tokens per pair")
    group.add_argument(
        "--long-documents",
        default="truncate",
        choices=LONG_DOCUMENT_MODES,
        help="how documents longer than max_length are scored (default: truncate)",
    )
    group.add_argument(
        "--decoder-protocol",
        default="auto",
        choices=DECODER_PROTOCOLS,
        help="how a decoder (LLM) reranker reads a pair (default: auto, detected)",
    )


def add_instruction_argument(parser: argparse.ArgumentParser) -> None:
    """``--instruction``: the task for instruction-aware (decoder) rerankers."""
    parser.add_argument(
        "--instruction",
        metavar="TEXT",
        help="the task, for instruction-aware rerankers such as Qwen3-Reranker "
        "(default: the model's own)",
    )


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options that `add_engine_arguments`' flags ask for."""
    options: dict[str, Any] = {
        "device": args.device,
        "backend": args.backend,
        "precision": args.precision,
        "long_documents": args.long_documents,
    }
    if args.decoder_protocol != "auto":
        options["decoder_protocol"] = args.decoder_protocol
    if args.max_length is not None:
        options["max_length"] = args.max_length
    return options
