"""The ``rerank-plugins`` command line: one module per subcommand, listed in `COMMANDS`.

To add a subcommand, write ``rerank_plugins/cli/<name>.py`` with ``register(subparsers)``
(adding its parser and ``set_defaults(run=...)``) and a ``run(args) -> int``, then add the
name to `COMMANDS`. Subcommand modules import heavy libraries inside ``run`` only, so
``--help`` stays instant.

Examples:
    >>> from rerank_plugins.cli import main
    >>> main(["rerank", "--query", "what is rag?", "--docs", "docs.txt"])  # doctest: +SKIP
    0
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from collections.abc import Sequence

from rerank_plugins import __version__
from rerank_plugins.cli._common import RUNTIME_ERROR, ArgumentParser, CliError, err, one_line
from rerank_plugins.errors import RerankError

__all__ = ["COMMANDS", "build_parser", "main"]

# The subcommands, in the order `--help` lists them: each is a module of this package.
COMMANDS: tuple[str, ...] = ("demo", "rerank", "eval", "finetune", "bench", "serve")

logger = logging.getLogger("rerank_plugins")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand in `COMMANDS` registered."""
    parser = ArgumentParser(
        prog="rerank-plugins",
        description=(
            "Rerank with one shared, batched cross-encoder engine. Run 'rerank-plugins demo' "
            "to see the two-stage pipeline on a corpus that ships with the package."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v: info, -vv: debug)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback when a command fails"
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"rerank_plugins.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failed while running, 2 bad input).

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code: int = args.run(args)
    except CliError as exc:
        err(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        err("error: interrupted")
        return 130
    except (RerankError, OSError, ValueError, TypeError) as exc:
        if args.debug:
            raise
        logger.debug("command failed", exc_info=True)
        err(f"error: {one_line(exc)}")
        return RUNTIME_ERROR
    return code


def _configure_logging(verbosity: int) -> None:
    if verbosity == 0:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        # transformers' load reports ("Some weights ... newly initialized") are for library
        # users debugging a model, not for someone running a command; -v brings them back.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # Nor transformers 5's "Loading weights" bar on every model load (it reads this
        # variable when it is imported, which the commands do lazily, after this).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        return
    level = logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("rerank_plugins").setLevel(level)
