"""``rerank-plugins bench``: says where the benchmark harness lives (not in the package).

The harness (our engine side by side with the rerankers it replaces) is a tool of the
repository, ``benchmarks/``: it needs packages no extra of the library declares, and users who
install the library do not need it. From a clone, ``make bench`` or
``python benchmarks/run.py`` runs it.
"""

from __future__ import annotations

import argparse
from typing import Any

from rerank_plugins.cli._common import CliError, out

__all__ = ["register", "run"]

WHERE = (
    "the benchmark harness is not part of the installed package; from a clone of the "
    "repository run `make bench`, or `python benchmarks/run.py --quick` (same options)."
)


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand, which points at the repository's harness."""
    # The harness's own options (--quick, --models ...) are taken as they come, whatever they
    # are, so that an old command line gets the pointer rather than a parsing error.
    parser = subparsers.add_parser(
        "bench",
        help="where the benchmark harness is (a repository tool: make bench)",
        description=WHERE,
        prefix_chars="+",
        add_help=False,
    )
    parser.add_argument("options", nargs="*", metavar="OPTION", help="the harness's options")
    parser.set_defaults(run=run, help_text=parser.format_help().rstrip("\n"))


def run(args: argparse.Namespace) -> int:
    """Say where the benchmark is: on stdout for ``--help``, else as a one-line error."""
    if set(args.options) & {"-h", "--help"}:
        out(args.help_text)
        return 0
    raise CliError(WHERE, exit_code=2)
