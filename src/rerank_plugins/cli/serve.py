"""``rerank-plugins serve``: one shared engine behind an HTTP API (TEI and Cohere shapes)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from rerank_plugins.cli._common import (
    CliError,
    add_engine_arguments,
    check_engine_options,
    engine_options,
)

__all__ = ["API_KEY_ENV", "register", "run"]

DEFAULT_MODEL = "cross-encoder/ms-marco-MiniLM-L-6-v2"
API_KEY_ENV = "RERANK_PLUGINS_API_KEY"
"""Environment variable read for the API key when ``--api-key`` is not given."""


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="serve one shared engine over HTTP (TEI and Cohere rerank APIs)",
        description=(
            "Load MODEL once and answer POST /rerank in the text-embeddings-inference shape "
            "(query, texts) and the Cohere shape (query, documents), plus GET /health, /info "
            "and /metrics. Every process on the machine can then rerank through one model and "
            "one batching queue (rerank_plugins.RemoteEngine is the client). Binds 127.0.0.1 "
            "unless --host says otherwise; SIGTERM or Ctrl-C finishes in-flight requests, then "
            "exits 0."
        ),
    )
    parser.add_argument(
        "-m",
        "--model",
        default=DEFAULT_MODEL,
        help=f"cross-encoder hub id or local folder (default: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine)"
    )
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default: 8080)")
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=(
            "require 'Authorization: Bearer KEY' on every route but /health (default: "
            f"${API_KEY_ENV} if set; prefer the variable, arguments show in 'ps')"
        ),
    )
    parser.add_argument(
        "--max-documents",
        type=int,
        default=1000,
        metavar="N",
        help="texts per request; more is answered 413 (default: 1000)",
    )
    parser.add_argument(
        "--max-text-bytes",
        type=int,
        default=64 * 1024,
        metavar="B",
        help="UTF-8 bytes per text or query; more is answered 413 (default: 65536)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=32 * 1024 * 1024,
        metavar="B",
        help="bytes per request body; more is answered 413 (default: 33554432)",
    )
    parser.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=512,
        metavar="N",
        help="requests answered at once; more are answered 429 (default: 512)",
    )
    parser.add_argument(
        "--graceful-timeout",
        type=float,
        metavar="S",
        help="on shutdown, wait at most S seconds for in-flight requests (default: no limit)",
    )
    add_engine_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the arguments, load the engine, serve until told to stop."""
    if not 0 <= args.port <= 65535:
        msg = f"--port must be between 0 and 65535, got {args.port}."
        raise CliError(msg)
    for flag in ("max_documents", "max_text_bytes", "max_request_bytes", "max_concurrent_requests"):
        value = getattr(args, flag)
        if value < 1:
            msg = f"--{flag.replace('_', '-')} must be at least 1, got {value}."
            raise CliError(msg)
    if args.graceful_timeout is not None and args.graceful_timeout < 0:
        msg = f"--graceful-timeout must be >= 0, got {args.graceful_timeout}."
        raise CliError(msg)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if api_key is not None and not api_key.strip():
        msg = "the API key is empty; pass a secret token, or leave --api-key out."
        raise CliError(msg)

    options = engine_options(args)
    check_engine_options(args.model, options)

    from rerank_plugins.server import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        api_key=api_key,
        max_documents=args.max_documents,
        max_text_bytes=args.max_text_bytes,
        max_request_bytes=args.max_request_bytes,
        max_concurrent_requests=args.max_concurrent_requests,
        graceful_timeout=args.graceful_timeout,
        access_log=bool(args.verbose),
        **options,
    )
    return 0
