"""The HTTP rerank server: a FastAPI app around one shared engine, and `serve` to run it."""

from __future__ import annotations

from rerank_plugins._imports import require

require("fastapi", extra="server", purpose="rerank_plugins.server")

import hmac  # noqa: E402
import ipaddress  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import asdict, is_dataclass  # noqa: E402
from typing import Any  # noqa: E402

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, PlainTextResponse, Response  # noqa: E402

from rerank_plugins.contract import Scorer, check_scorer  # noqa: E402
from rerank_plugins.engine import RerankEngine  # noqa: E402
from rerank_plugins.errors import BackendError, EngineClosedError  # noqa: E402
from rerank_plugins.registry import get_engine  # noqa: E402
from rerank_plugins.server.metrics import ServerMetrics  # noqa: E402
from rerank_plugins.server.protocol import (  # noqa: E402
    ApiError,
    Limits,
    RerankCall,
    answer,
    parse_request,
)

__all__ = ["RERANK_PATHS", "create_app", "serve"]

logger = logging.getLogger("rerank_plugins.server")

RERANK_PATHS: tuple[str, ...] = ("/rerank", "/v1/rerank", "/v2/rerank")
"""Where the server answers rerank requests: TEI's path and Cohere's versioned paths."""

_PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


def create_app(
    engine: Scorer,
    *,
    api_key: str | None = None,
    max_documents: int = 1000,
    max_text_bytes: int = 64 * 1024,
    max_request_bytes: int = 32 * 1024 * 1024,
    max_concurrent_requests: int = 512,
    model_id: str | None = None,
) -> FastAPI:
    """Build the rerank HTTP app around ``engine``.

    Routes: ``POST /rerank`` (also ``/v1/rerank`` and ``/v2/rerank``) in the
    text-embeddings-inference shape (``texts``) or the Cohere shape (``documents``), answered
    in the same shape; ``GET /health``; ``GET /info``; ``GET /metrics`` (Prometheus text).
    Errors are JSON ``{"error": ..., "error_type": ...}`` with TEI's status codes: 400 no
    documents, 401 missing or wrong token, 413 a limit exceeded (or an over-long text with
    ``truncate=false``), 422 a malformed request, 429 too many requests at once, 500 the model
    failed, 503 the engine is closed.

    The app never closes ``engine``: whoever built it owns it.

    Args:
        engine: The engine that scores (a `RerankEngine`, or any `Scorer`).
        api_key: When set, every route but ``/health`` needs ``Authorization: Bearer <key>``
            (the scheme in any case, as RFC 7235 has it).
        max_documents: Texts per request (TEI's ``max_client_batch_size``).
        max_text_bytes: UTF-8 bytes of the query and of each text.
        max_request_bytes: Bytes of a whole request body.
        max_concurrent_requests: Rerank requests answered at once; more get 429.
        model_id: Model name reported by ``/info`` and Cohere answers (default: the engine's).

    Returns:
        The FastAPI app; run it with `serve`, uvicorn, or any ASGI server.

    Raises:
        ValueError: A limit is not a positive integer, or ``api_key`` is empty.

    Examples:
        >>> from fastapi.testclient import TestClient  # doctest: +SKIP
        >>> app = create_app(get_engine("cross-encoder/ms-marco-MiniLM-L-6-v2"))  # doctest: +SKIP
        >>> TestClient(app).post("/rerank", json={"query": "q", "texts": ["a"]}).json()
        ... # doctest: +SKIP
        [{'index': 0, 'score': 0.12}]
    """
    limits = Limits(max_documents, max_text_bytes, max_request_bytes, max_concurrent_requests)
    if api_key is not None and not api_key.strip():
        msg = "api_key is empty; pass a secret token, or None to serve without authentication."
        raise ValueError(msg)
    check_scorer(engine, "create_app")
    name = model_id or engine.info.model
    normalized = engine.info.normalize
    metrics = ServerMetrics()
    expected = api_key.encode() if api_key is not None else None

    app = FastAPI(
        title="rerank-plugins",
        summary="Rerank texts with one shared cross-encoder engine.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.limits = limits

    def check_auth(request: Request) -> None:
        if expected is None:
            return
        if not hmac.compare_digest(_bearer_token(request.headers.get("authorization")), expected):
            msg = (
                "missing or wrong API key; send the header 'Authorization: Bearer <key>' "
                "with the key the server was started with."
            )
            raise ApiError(401, "auth", msg)

    async def rerank(request: Request) -> Response:
        start = time.perf_counter()
        api, documents = "unknown", 0
        metrics.in_flight += 1
        try:
            check_auth(request)
            if metrics.in_flight > limits.max_concurrent_requests:
                msg = (
                    f"Model is overloaded: more than {limits.max_concurrent_requests} requests "
                    "at once; retry after a short wait."
                )
                raise ApiError(429, "overloaded", msg)
            body = await _read_body(request, limits.max_request_bytes)
            call = parse_request(_decode(body), limits)
            api, documents = call.api, len(call.texts)
            content = await _score(engine, call, normalized=normalized, model=name)
            response: Response = JSONResponse(content)
        except ApiError as exc:
            response = _error(exc)
        except Exception:  # the client gets a JSON error; the traceback goes to the log only
            logger.exception("rerank request failed")
            response = _error(ApiError(500, "backend", "internal error; see the server log."))
        finally:
            metrics.in_flight -= 1
        metrics.record(
            api, response.status_code, documents=documents, seconds=time.perf_counter() - start
        )
        return response

    for path in RERANK_PATHS:
        app.add_api_route(path, rerank, methods=["POST"], include_in_schema=False)

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        if engine.closed:
            return _error(ApiError(503, "unhealthy", "the engine is closed."))
        return JSONResponse({"status": "ok"})

    @app.get("/info", include_in_schema=False)
    async def describe(request: Request) -> Response:
        try:
            check_auth(request)
        except ApiError as exc:
            return _error(exc)
        from rerank_plugins import __version__

        info = engine.info
        details: dict[str, Any] = (
            asdict(info) if is_dataclass(info) and not isinstance(info, type) else {}
        )
        return JSONResponse(
            {
                "model_id": name,
                "model_type": "reranker",
                "max_input_length": details.get("max_length"),
                "max_client_batch_size": limits.max_documents,
                "max_text_bytes": limits.max_text_bytes,
                "max_request_bytes": limits.max_request_bytes,
                "max_concurrent_requests": limits.max_concurrent_requests,
                "score_scale": "probability" if normalized else "raw logit",
                "apis": ["tei", "cohere"],
                "auth": expected is not None,
                "version": __version__,
                # What makes the scores untrustworthy (an untrained head), found at load.
                "warnings": list(details.get("warnings", ())),
                "engine": _jsonable(details),
            }
        )

    @app.get("/metrics", include_in_schema=False)
    async def render_metrics(request: Request) -> Response:
        try:
            check_auth(request)
        except ApiError as exc:
            return _error(exc)
        stats = engine.stats()
        return PlainTextResponse(metrics.render(stats), media_type=_PROMETHEUS)

    return app


def _bearer_token(header: str | None) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` header; ``b""`` for any other header.

    Auth schemes are case-insensitive (RFC 7235), so ``bearer`` and ``BEARER`` count, and any
    run of spaces or tabs may separate the scheme from the token.
    """
    parts = (header or "").split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return b""
    return parts[1].strip().encode()


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "validation", _too_big(int(declared), limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "validation", _too_big(size, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_big(size: int, limit: int) -> str:
    return (
        f"the request body is {size} bytes or more; the limit is {limit} bytes. Send fewer or "
        "shorter texts per request."
    )


def _decode(body: bytes) -> object:
    if not body.strip():
        msg = 'the request body is empty; send JSON like {"query": "...", "texts": ["..."]}.'
        raise ApiError(422, "validation", msg)
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(422, "validation", "the request body is not UTF-8 text.") from None
    except json.JSONDecodeError as exc:
        msg = f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} col {exc.colno}."
        raise ApiError(422, "validation", msg) from None


async def _score(engine: Scorer, call: RerankCall, *, normalized: bool, model: str) -> Any:
    try:
        results = await engine.arerank(
            call.query, call.texts, top_n=call.top_n, instruction=call.instruction
        )
    except EngineClosedError:
        raise ApiError(503, "unhealthy", "the engine is closed; restart the server.") from None
    except BackendError as exc:
        logger.warning("the model failed on a request: %s", exc)
        raise ApiError(500, "backend", f"the model failed: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "validation", str(exc)) from None
    if not call.truncate:
        for r in results:
            if r.truncated:
                limit = engine.info.max_length or "the model's"
                msg = (
                    f"Input validation error: texts[{r.index}] with the query is longer than "
                    f"{limit} tokens; send truncate=true to score its beginning, or split it."
                )
                raise ApiError(413, "validation", msg)
    return answer(call, results, normalized=normalized, model=model)


def _error(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(exc.body, status_code=exc.status, headers=headers)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def serve(
    model: str | RerankEngine,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    max_documents: int = 1000,
    max_text_bytes: int = 64 * 1024,
    max_request_bytes: int = 32 * 1024 * 1024,
    max_concurrent_requests: int = 512,
    graceful_timeout: float | None = None,
    log_level: str = "info",
    access_log: bool = False,
    **engine_options: Any,
) -> None:
    """Serve one engine over HTTP until SIGTERM or Ctrl-C, then finish in-flight requests.

    One process, one engine: every client on the machine reranks through the same model and
    batching queue. On SIGTERM or SIGINT the server stops accepting connections, answers the
    requests it already has, closes the engine if it built it, and returns normally.

    Args:
        model: Hub id or local folder (loaded with `get_engine` and closed on exit), or an
            engine you built (left open).
        host: Address to bind; the default serves this machine only. Binding another address
            without ``api_key`` logs a warning.
        port: TCP port (0: any free port).
        api_key: Bearer token every route but ``/health`` requires.
        max_documents: Texts per request.
        max_text_bytes: UTF-8 bytes per text.
        max_request_bytes: Bytes per request body.
        max_concurrent_requests: Requests answered at once; more get 429.
        graceful_timeout: Seconds to wait for in-flight requests on shutdown (None: as long as
            they take).
        log_level: uvicorn's log level (``"info"`` shows where it listens, start and stop).
        access_log: Log one line per request.
        **engine_options: Engine options for ``model`` (``device``, ``max_length`` ...).

    Raises:
        TypeError: Engine options given together with an engine.

    Examples:
        >>> from rerank_plugins.server import serve
        >>> serve("cross-encoder/ms-marco-MiniLM-L-6-v2", port=8080)  # doctest: +SKIP
    """
    uvicorn = require("uvicorn", extra="server", purpose="rerank_plugins.server.serve")
    if isinstance(model, str):
        engine, owned = get_engine(model, **engine_options), True
    else:
        if engine_options:
            msg = (
                f"engine options ({', '.join(sorted(engine_options))}) only apply when serve() "
                "is given a model name; the given engine was built with its own options."
            )
            raise TypeError(msg)
        engine, owned = model, False
    if api_key is None and not _is_loopback(host):
        logger.warning(
            "serving on %s without an API key: anyone who can reach port %d can use the model; "
            "pass api_key (--api-key) or bind 127.0.0.1.",
            host,
            port,
        )
    app = create_app(
        engine,
        api_key=api_key,
        max_documents=max_documents,
        max_text_bytes=max_text_bytes,
        max_request_bytes=max_request_bytes,
        max_concurrent_requests=max_concurrent_requests,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=graceful_timeout,
        server_header=False,
    )
    server = uvicorn.Server(config)
    try:
        with _clean_exit_on_signals():
            server.run()
    finally:
        if owned:
            engine.close()
    logger.info("rerank server stopped")


@contextmanager
def _clean_exit_on_signals() -> Iterator[None]:
    """Make a requested shutdown end `serve` normally.

    uvicorn finishes in-flight requests on SIGTERM/SIGINT, then re-raises the signal to the
    handler that was installed before it started; with Python's defaults that kills the process
    (SIGTERM) or raises KeyboardInterrupt (SIGINT). Installing no-op handlers here lets the
    shutdown that uvicorn already completed end with exit status 0.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
