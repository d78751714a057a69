"""Shared pieces of the command line: the one-line error, the parser, and text output helpers."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from rerank_plugins.engine import RerankEngine

__all__ = [
    "USAGE_ERROR",
    "ArgumentParser",
    "CliError",
    "add_engine_arguments",
    "add_instruction_argument",
    "boxed",
    "check_engine_options",
    "engine_options",
    "err",
    "load_engine",
    "one_line",
    "out",
    "plural",
    "positive_int",
    "shorten",
    "table",
    "terminal_width",
]

USAGE_ERROR = 2
RUNTIME_ERROR = 1

# The engine options that `add_engine_arguments` sets from flags of the same name.
_ENGINE_FLAGS = (
    "device",
    "backend",
    "precision",
    "max_length",
    "long_documents",
    "decoder_protocol",
)


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


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``count`` and the noun that agrees with it (``plural_form`` default: ``singular + "s"``).

    Examples:
        >>> plural(1, "query", "queries"), plural(2, "query", "queries"), plural(0, "document")
        ('1 query', '2 queries', '0 documents')
    """
    noun = singular if count == 1 else (plural_form or singular + "s")
    return f"{count} {noun}"


def positive_int(text: str) -> int:
    """An argparse ``type=``: a whole number of at least 1 (argparse turns the error into usage).

    Examples:
        >>> positive_int("3")
        3
    """
    try:
        value = int(text)
    except ValueError:
        msg = f"expected a whole number of at least 1, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


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
    group.add_argument("--max-length", type=positive_int, metavar="T", help="tokens per pair")
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


def check_engine_options(model: str, options: dict[str, Any]) -> None:
    """Refuse option values the engine would refuse, before any model loads (exit code 2).

    Args:
        model: The model the options are for.
        options: What `engine_options` returned (and any the command adds).

    Raises:
        CliError: A bad value, named by its flag, with exit code 2.

    Examples:
        >>> check_engine_options("some/model", {"backend": "bogus"})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rerank_plugins.cli._common.CliError: unknown --backend 'bogus'; expected one of auto, ...
    """
    from rerank_plugins.config import EngineConfig

    try:
        EngineConfig.from_options(model, options)
    except (TypeError, ValueError) as exc:
        raise CliError(_flag_names(one_line(exc))) from exc


def load_engine(model: str, options: dict[str, Any]) -> RerankEngine:
    """The shared engine for ``model``: a bad option value exits 2, a model that fails to load 1.

    Option values only the loaded model can judge (``--max-length`` above its limit, ``--device
    cuda`` without CUDA) are plain ``ValueError`` s of the backends, told apart from
    `rerank_plugins.ModelLoadError` (and the other `rerank_plugins.RerankError` s), which stay
    failures while running.

    Args:
        model: Hub id or folder.
        options: Engine options (`engine_options` and any the command adds).

    Raises:
        CliError: A bad option value (exit code 2).
        RerankError: The model cannot be found or loaded, or a dependency is missing.
    """
    from rerank_plugins import get_engine
    from rerank_plugins.errors import RerankError

    check_engine_options(model, options)
    try:
        return get_engine(model, **options)
    except RerankError:
        raise
    except ValueError as exc:
        raise CliError(_flag_names(one_line(exc))) from exc


def _flag_names(message: str) -> str:
    """``message`` with the engine's option names written as the flags that set them.

    Only where a name is the subject (``max_length must ...``, ``unknown backend ...``) or is
    assigned (``backend='onnx'`` becomes ``--backend onnx``), so prose such as "needs a
    backend" stays as it is.

    Examples:
        >>> _flag_names("max_length must be >= 1; pass backend='onnx'.")
        '--max-length must be >= 1; pass --backend onnx.'
    """
    for name in _ENGINE_FLAGS:
        flag = "--" + name.replace("_", "-")
        message = re.sub(rf"(?<![\w-]){name}=('?)([^\s';,]*)\1", rf"{flag} \2", message)
        message = re.sub(rf"^(unknown )?{name}\b", rf"\g<1>{flag}", message)
    return message
