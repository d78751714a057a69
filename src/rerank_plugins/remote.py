"""`RemoteEngine`: the scorer interface over HTTP, for our server, TEI, infinity or Cohere."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rerank_plugins._imports import require
from rerank_plugins.errors import RerankError
from rerank_plugins.results import (
    RerankResult,
    check_instruction,
    check_query,
    check_texts,
    select,
)

__all__ = ["APIS", "API_KEY_ENV", "RemoteEngine", "RemoteError", "RemoteInfo"]

logger = logging.getLogger("rerank_plugins.remote")

RemoteApi = Literal["tei", "cohere", "infinity"]

APIS: dict[str, tuple[str, int]] = {
    "tei": ("/rerank", 32),
    "cohere": ("/v1/rerank", 1000),
    "infinity": ("/rerank", 1000),
}
"""API name -> (default path, default texts per request). 32 is TEI's default
``--max-client-batch-size``; Cohere accepts 1,000 documents per call."""

API_KEY_ENV = "RERANK_PLUGINS_API_KEY"
"""The environment variable `RemoteEngine.from_config` reads an API key from: a config never
holds the key itself (``rerank-plugins serve`` reads its key from the same variable)."""

# Header names that carry credentials: `RemoteEngine.to_config` will not write them in clear.
_CREDENTIAL_HEADER = re.compile(r"auth|token|secret|key|cookie|password|credential", re.I)

# Worth another try: rate limited, or the server (or a proxy in front of it) is failing now.
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 30.0

# Guards the per-engine reset after a fork; made anew in each child, since a thread of the
# parent may have held it at the fork.
_FORK_LOCK = threading.Lock()


def _new_fork_lock() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_new_fork_lock)


class RemoteError(RerankError, RuntimeError):
    """A rerank server answered with an error, or could not be reached after the retries.

    Attributes:
        url: The URL that was called.
        status: The HTTP status, or None when no answer came (connection failed, timed out).
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions unpickle as ``cls(*args)``, which cannot pass the keyword-only ``url``: a
        # worker's error sent back by multiprocessing (or Ray, Celery) would fail to load, and
        # a multiprocessing.Pool whose result thread dies that way hangs.
        rebuild = functools.partial(type(self), url=self.url, status=self.status)
        return (rebuild, self.args, self.__dict__)


@dataclass(frozen=True)
class RemoteInfo:
    """What a `RemoteEngine` talks to (the counterpart of `EngineInfo` for remote engines).

    Attributes:
        model: The model name sent to the server, or the server URL when none is set.
        url: The rerank endpoint.
        api: ``"tei"``, ``"cohere"`` or ``"infinity"``.
        batch_size: Texts per request.
        normalize: Whether scores are probabilities (``raw_scores=False``) or raw logits.
        max_length: The server's token limit per pair; None (it is the server's to know).
    """

    model: str
    url: str
    api: str
    batch_size: int
    normalize: bool = True
    max_length: int | None = None


class RemoteEngine:
    """A scorer that reranks on a server: same interface as the local engine, over HTTP.

    Drop it wherever an engine goes (``RerankCompressor(engine=RemoteEngine(...))``,
    ``RerankPostprocessor(engine=...)``), so many worker processes share one model on one
    server. It speaks three wire formats: ``"tei"`` (text-embeddings-inference and our
    ``rerank-plugins serve``: ``POST /rerank`` with ``texts``), ``"cohere"`` (Cohere, and any
    Cohere-compatible server: ``POST /v1/rerank`` with ``documents``) and ``"infinity"``
    (``POST /rerank`` with ``documents``).

    Long lists are split into requests of ``batch_size`` texts (sent concurrently by the async
    methods); scores come back in input order and ranking, thresholds and the ``top_n`` cut are
    done here by the same code as the local engine's. On first use the engine reads the
    server's ``GET /info`` once and keeps its requests within the ``max_client_batch_size`` it
    advertises. Connections are pooled, one pool per process (an engine made before a fork
    opens new connections in the child); a connect error, a timeout, 408, 429 or a 5xx is
    retried with exponential backoff and jitter (honouring ``Retry-After``), other 4xx answers
    fail at once. Scores are on the server's scale: probabilities unless ``raw_scores=True``.

    Args:
        url: Base URL of the server, e.g. ``"http://127.0.0.1:8080"``.
        api: Wire format: ``"tei"``, ``"cohere"`` or ``"infinity"``.
        model: Model name to send (Cohere and infinity; needed by Cohere's own API).
        api_key: Sent as ``Authorization: Bearer <api_key>``.
        path: Endpoint path (default: ``/rerank``, or ``/v1/rerank`` for Cohere).
        timeout: Seconds to wait for an answer, per attempt.
        connect_timeout: Seconds to wait for a connection, per attempt.
        max_retries: Retries after the first attempt (0: none).
        backoff: Seconds before the first retry; doubled at each next one.
        max_backoff: Upper bound of one wait between attempts.
        batch_size: Texts per request (default: 32 for TEI, its default limit; 1,000 else).
            A server that advertises a smaller limit in ``GET /info`` (our server and TEI
            do, as ``max_client_batch_size``) gets batches of that size instead.
        raw_scores: Ask for raw logits instead of probabilities (TEI and infinity).
        truncate: TEI only: let the server cut over-long texts (as the local engine does);
            ``False`` makes an over-long text an error.
        max_connections: Size of the connection pool.
        headers: Extra HTTP headers for every request.

    Raises:
        ValueError: A bad URL, API name or setting.

    Examples:
        >>> from rerank_plugins.remote import RemoteEngine
        >>> with RemoteEngine("http://127.0.0.1:8080") as engine:  # doctest: +SKIP
        ...     engine.rerank("what is rag?", ["RAG combines ...", "Paris is ..."], top_n=1)
        [RerankResult(index=0, score=0.97, text='RAG combines ...', windows=1, truncated=False)]
    """

    def __init__(
        self,
        url: str,
        *,
        api: RemoteApi = "tei",
        model: str | None = None,
        api_key: str | None = None,
        path: str | None = None,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        max_retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        batch_size: int | None = None,
        raw_scores: bool = False,
        truncate: bool = True,
        max_connections: int = 100,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            msg = f"url must start with http:// or https://, got {url!r}."
            raise ValueError(msg)
        if api not in APIS:
            msg = f"unknown api {api!r}; expected one of {', '.join(APIS)}."
            raise ValueError(msg)
        default_path, default_batch = APIS[api]
        path = default_path if path is None else path
        if not path.startswith("/"):
            msg = f"path must start with '/', got {path!r}."
            raise ValueError(msg)
        batch_size = default_batch if batch_size is None else batch_size
        _positive("batch_size", batch_size, integer=True)
        _positive("max_connections", max_connections, integer=True)
        _positive("timeout", timeout)
        _positive("connect_timeout", connect_timeout)
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            msg = f"max_retries must be an int >= 0, got {max_retries!r}."
            raise ValueError(msg)
        if backoff < 0 or max_backoff < 0:
            msg = f"backoff and max_backoff must be >= 0, got {backoff} and {max_backoff}."
            raise ValueError(msg)

        self.url = url.rstrip("/") + path
        self.api: RemoteApi = api
        self.model = model
        self.batch_size = batch_size
        self.raw_scores = raw_scores
        self.truncate = truncate
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._headers = {"Accept": "application/json", **dict(headers or {})}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.info = RemoteInfo(
            model or self.url, self.url, api, batch_size, normalize=not raw_scores
        )
        self._info_url = url.rstrip("/") + "/info"
        # None: not read yet; 0: the server advertises no limit; else its texts per request.
        self._server_max: int | None = None
        self._lock = threading.Lock()
        # The process that opened the pools below: a forked child must not use the parent's
        # sockets (two processes writing one keep-alive connection garble each other's
        # requests), so it opens its own.
        self._pid = os.getpid()
        self._client: Any = None
        # One async client per event loop: an httpx.AsyncClient's pooled connections belong to
        # the loop that opened them, and callers (asyncio.run per call, framework bridges) do
        # use several loops.
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._closed = False
        self._stats = {"requests": 0, "pairs": 0, "retries": 0, "failures": 0}
        # The settings as given, from which `to_config` and pickling rebuild the engine.
        self._settings: dict[str, Any] = {
            "url": url.rstrip("/"),
            "api": api,
            "model": model,
            "path": path,
            "timeout": timeout,
            "connect_timeout": connect_timeout,
            "max_retries": max_retries,
            "backoff": backoff,
            "max_backoff": max_backoff,
            "batch_size": batch_size,
            "raw_scores": raw_scores,
            "truncate": truncate,
            "max_connections": max_connections,
            "headers": dict(headers or {}),
        }
        self._api_key = api_key

    # ------------------------------------------------------------------ scorer interface

    def score(
        self,
        query: str,
        texts: Sequence[str],
        *,
        timeout: float | None = None,
        instruction: str | None = None,
    ) -> list[float]:
        """Score each text against ``query`` on the server.

        Args:
            query: The question.
            texts: Documents; an empty list returns ``[]`` without a request.
            timeout: Seconds this call may take at most, retries included (None: only the
                per-attempt ``timeout`` of the engine applies).
            instruction: The task, for an instruction-aware model (sent as the request's
                ``instruction`` field, which a rerank-plugins server reads).

        Returns:
            One ``float`` per text, in the order of ``texts``.

        Raises:
            TypeError: ``query`` or a text is not a string.
            ValueError: ``query`` is empty.
            RemoteError: The server answered with an error, or could not be reached.
            TimeoutError: ``timeout`` passed first.

        Examples:
            >>> engine.score("what is rag?", ["RAG is ...", "Paris is ..."])  # doctest: +SKIP
            [0.98, 0.01]
        """
        query, texts = self._check(query, texts)
        instruction = check_instruction(instruction)
        deadline = _deadline(timeout)
        if not texts:
            return []
        scores: list[float] = []
        for chunk in _chunks(texts, self._batch_size(deadline)):
            scores += self._post(query, chunk, deadline, instruction)
        return scores

    async def ascore(
        self,
        query: str,
        texts: Sequence[str],
        *,
        timeout: float | None = None,
        instruction: str | None = None,
    ) -> list[float]:
        """Async `score`: requests for the chunks of a long list run concurrently."""
        query, texts = self._check(query, texts)
        instruction = check_instruction(instruction)
        deadline = _deadline(timeout)
        if not texts:
            return []
        chunks = _chunks(texts, await self._abatch_size(deadline))
        parts = await asyncio.gather(
            *(self._apost(query, c, deadline, instruction) for c in chunks)
        )
        return [s for part in parts for s in part]

    def rerank(
        self,
        query: str,
        texts: Sequence[str],
        top_n: int | None = None,
        score_threshold: float | None = None,
        *,
        timeout: float | None = None,
        instruction: str | None = None,
    ) -> list[RerankResult]:
        """Score and rank: threshold first, then best first (ties keep input order), then top-n.

        Args:
            query: The question.
            texts: Documents to rank.
            top_n: Keep at most this many (None: all).
            score_threshold: Drop results scoring below this, before the top-n cut.
            timeout: Seconds this call may take at most, retries included.
            instruction: The task, for an instruction-aware model (see `score`).

        Returns:
            `RerankResult` s, best first.
        """
        select([], top_n, score_threshold)  # validate before paying for a request
        texts = check_texts(texts)
        scores = self.score(query, texts, timeout=timeout, instruction=instruction)
        return _results(scores, texts, top_n, score_threshold)

    async def arerank(
        self,
        query: str,
        texts: Sequence[str],
        top_n: int | None = None,
        score_threshold: float | None = None,
        *,
        timeout: float | None = None,
        instruction: str | None = None,
    ) -> list[RerankResult]:
        """Async `rerank`."""
        select([], top_n, score_threshold)
        texts = check_texts(texts)
        scores = await self.ascore(query, texts, timeout=timeout, instruction=instruction)
        return _results(scores, texts, top_n, score_threshold)

    def stats(self) -> dict[str, int]:
        """Counters since creation: requests, pairs, retries, and failed calls."""
        with self._lock:
            return dict(self._stats)

    # ------------------------------------------------------------------ settings

    def to_config(self) -> dict[str, Any]:
        """The engine's settings as JSON-able data, for `from_config`; never its API key.

        An engine built with ``api_key`` writes ``"api_key": {"env": "RERANK_PLUGINS_API_KEY"}``
        in its place: a reference that `from_config` resolves from the environment, so the
        key stays out of files, logs and traces that hold the config. (Pickling, a copy for
        another process, does carry the key, as it carries every other attribute.)

        Returns:
            ``url`` (the base URL), ``api``, ``model``, ``path``, the timeouts, retry and batch
            settings, ``headers`` and ``api_key`` (None or the reference above).

        Raises:
            ValueError: A header given in ``headers`` looks like a credential (its name has
                "auth", "key", "token", "secret", "cookie" ...): it would be written in clear.
                Pass the key as ``api_key=`` instead.

        Examples:
            >>> engine = RemoteEngine("http://127.0.0.1:8080", api_key="s3cret")
            >>> config = engine.to_config()
            >>> config["url"], config["api_key"]
            ('http://127.0.0.1:8080', {'env': 'RERANK_PLUGINS_API_KEY'})
        """
        secret = sorted(h for h in self._settings["headers"] if _CREDENTIAL_HEADER.search(h))
        if secret:
            msg = (
                f"the RemoteEngine for {self.url} has credential header(s) "
                f"{', '.join(map(repr, secret))}, which a config never holds in clear; pass the "
                f"key as api_key= instead (written as a reference to ${API_KEY_ENV})."
            )
            raise ValueError(msg)
        api_key = None if self._api_key is None else {"env": API_KEY_ENV}
        return {
            **self._settings,
            "headers": dict(self._settings["headers"]),
            "api_key": api_key,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RemoteEngine:
        """A new engine from `to_config`'s data, with its own connections and counters.

        Args:
            config: `to_config`'s dict (or a part of it: only ``url`` is needed). Its
                ``api_key`` may be None, ``{"env": NAME}`` (read from the environment
                variable NAME when the engine is built) or the key itself.

        Returns:
            An open engine with those settings.

        Raises:
            TypeError: ``config`` is not a mapping, lacks ``url``, has an unknown key, or an
                ``api_key`` of another form.
            ValueError: The environment variable ``api_key`` names is not set, or a setting
                is bad (as for the constructor).

        Examples:
            >>> config = {"url": "http://127.0.0.1:8080", "api_key": {"env": "MY_RERANK_KEY"}}
            >>> RemoteEngine.from_config(config)  # doctest: +SKIP
            RemoteEngine(url='http://127.0.0.1:8080/rerank', api='tei', open)
        """
        if not isinstance(config, Mapping):
            kind = type(config).__name__
            msg = f"a RemoteEngine config must be a dict (see to_config), got {kind}."
            raise TypeError(msg)
        known = {*_CONFIG_KEYS, "api_key"}
        unknown = sorted(set(config) - known)
        if unknown or "url" not in config:
            problem = f"unknown key(s) {', '.join(map(repr, unknown))}" if unknown else "no 'url'"
            msg = (
                f"a RemoteEngine config has {problem}; expected 'url' and some of "
                f"{', '.join(sorted(known - {'url'}))}."
            )
            raise TypeError(msg)
        settings = dict(config)
        settings["api_key"] = _resolve_api_key(settings.get("api_key"), settings["url"])
        return cls(**settings)

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy for another process (multiprocessing, Ray): the same settings and key, its own
        # connections, counters and server limit, learnt again on first use.
        return (functools.partial(type(self), **self._settings, api_key=self._api_key), ())

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        """Whether `close` or `aclose` was called."""
        return self._closed

    def close(self) -> None:
        """Close the pooled connections; later calls raise `RemoteError`. Idempotent.

        Async clients opened on event loops that are still running are closed by `aclose`;
        ``close`` drops them (their sockets close when they are collected).
        """
        self._forget_parent_pools()
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            self._aclients = weakref.WeakKeyDictionary()
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the pooled connections, including this event loop's async client."""
        loop = asyncio.get_running_loop()
        self._forget_parent_pools()
        with self._lock:
            aclient = self._aclients.pop(loop, None)
        if aclient is not None:
            await aclient.aclose()
        self.close()

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RemoteEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"RemoteEngine(url={self.url!r}, api={self.api!r}, {state})"

    # ------------------------------------------------------------------ internals

    def _check(self, query: str, texts: Sequence[str]) -> tuple[str, list[str]]:
        query = check_query(query)
        out = check_texts(texts)
        if self._closed:
            raise RemoteError(self._closed_message(), url=self.url)
        return query, out

    def _closed_message(self) -> str:
        return f"this RemoteEngine for {self.url} is closed; create a new one."

    def _timeout(self) -> Any:
        httpx = _httpx()
        return httpx.Timeout(self.timeout, connect=self.connect_timeout)

    def _limits(self) -> Any:
        httpx = _httpx()
        return httpx.Limits(
            max_connections=self.max_connections, max_keepalive_connections=self.max_connections
        )

    def _forget_parent_pools(self) -> None:
        """In a forked child, drop (never close, never use) the pools the parent opened.

        Closing them here would shut down connections the parent still uses; the child's
        copies of their sockets are closed when the dropped clients are collected, which
        leaves the parent's connections open.
        """
        pid = os.getpid()
        if self._pid == pid:
            return
        with _FORK_LOCK:
            if self._pid == pid:
                return
            # A thread of the parent may have held the lock at the fork; it does not exist here.
            self._lock = threading.Lock()
            self._client = None
            self._aclients = weakref.WeakKeyDictionary()
            self._pid = pid

    def _sync_client(self) -> Any:
        self._forget_parent_pools()
        with self._lock:
            if self._closed:
                raise RemoteError(self._closed_message(), url=self.url)
            if self._client is None:
                httpx = _httpx()
                self._client = httpx.Client(
                    headers=self._headers, timeout=self._timeout(), limits=self._limits()
                )
            return self._client

    def _async_client(self) -> Any:
        loop = asyncio.get_running_loop()
        self._forget_parent_pools()
        with self._lock:
            if self._closed:
                raise RemoteError(self._closed_message(), url=self.url)
            client = self._aclients.get(loop)
            if client is None:
                httpx = _httpx()
                client = httpx.AsyncClient(
                    headers=self._headers, timeout=self._timeout(), limits=self._limits()
                )
                self._aclients[loop] = client
            return client

    def _batch_size(self, deadline: float | None) -> int:
        """Texts per request: ``batch_size``, within the limit the server advertises."""
        if self._server_max is None:
            try:
                response = self._sync_client().get(self._info_url, **self._left(deadline))
            except _httpx().TransportError as exc:
                # Not remembered: the rerank request reports an unreachable server, and the
                # next call reads the limit again.
                logger.debug("could not read %s (%s)", self._info_url, exc)
                return self.batch_size
            self._learn_limit(response)
        return self._capped()

    async def _abatch_size(self, deadline: float | None) -> int:
        """Async `_batch_size`."""
        if self._server_max is None:
            try:
                response = await self._async_client().get(self._info_url, **self._left(deadline))
            except _httpx().TransportError as exc:
                logger.debug("could not read %s (%s)", self._info_url, exc)
                return self.batch_size
            self._learn_limit(response)
        return self._capped()

    def _learn_limit(self, response: Any) -> None:
        """Remember the server's texts per request from its ``/info`` answer (0: none given).

        Servers without ``/info`` (Cohere, infinity) answer 404 or something else: that, too,
        is remembered as "no limit advertised", so the lookup happens once per engine. A
        passing failure (429, 5xx) is not remembered: the next call asks again.
        """
        if response.status_code in _RETRY_STATUSES:
            return
        limit = 0
        if response.status_code == 200:
            try:
                body = response.json()
            except ValueError:
                body = None
            value = body.get("max_client_batch_size") if isinstance(body, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                limit = value
        self._server_max = limit
        if 0 < limit < self.batch_size:
            logger.info(
                "the rerank server at %s takes at most %d texts per request; sending batches "
                "of %d instead of %d",
                self.url,
                limit,
                limit,
                self.batch_size,
            )
            self.info = dataclasses.replace(self.info, batch_size=limit)

    def _capped(self) -> int:
        limit = self._server_max
        return min(self.batch_size, limit) if limit else self.batch_size

    def _payload(
        self, query: str, texts: list[str], instruction: str | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {} if instruction is None else {"instruction": instruction}
        if self.api == "tei":
            return {
                "query": query,
                "texts": texts,
                "truncate": self.truncate,
                "raw_scores": self.raw_scores,
                "return_text": False,
                **payload,
            }
        payload = {
            **payload,
            "query": query,
            "documents": texts,
            "top_n": len(texts),
            "return_documents": False,
        }
        if self.api == "infinity" and self.raw_scores:
            payload["raw_scores"] = True
        if self.model is not None:
            payload["model"] = self.model
        return payload

    def _post(
        self,
        query: str,
        texts: list[str],
        deadline: float | None = None,
        instruction: str | None = None,
    ) -> list[float]:
        client = self._sync_client()
        payload = self._payload(query, texts, instruction)
        attempt = 0
        while True:
            try:
                response, error = (
                    client.post(self.url, json=payload, **self._left(deadline)),
                    None,
                )
            except _httpx().TransportError as exc:
                response, error = None, exc
            outcome = self._outcome(attempt, response, error)
            if isinstance(outcome, list):
                return self._scores(outcome, len(texts))
            self._left(deadline, pause=outcome)
            time.sleep(outcome)
            attempt += 1

    async def _apost(
        self,
        query: str,
        texts: list[str],
        deadline: float | None = None,
        instruction: str | None = None,
    ) -> list[float]:
        client = self._async_client()
        payload = self._payload(query, texts, instruction)
        attempt = 0
        while True:
            try:
                response, error = (
                    await client.post(self.url, json=payload, **self._left(deadline)),
                    None,
                )
            except _httpx().TransportError as exc:
                response, error = None, exc
            outcome = self._outcome(attempt, response, error)
            if isinstance(outcome, list):
                return self._scores(outcome, len(texts))
            self._left(deadline, pause=outcome)
            await asyncio.sleep(outcome)
            attempt += 1

    def _left(self, deadline: float | None, pause: float = 0.0) -> dict[str, Any]:
        """Per-request timeout within a call's deadline; TimeoutError once it has passed."""
        if deadline is None:
            return {}
        left = deadline - time.monotonic() - pause
        if left <= 0:
            msg = f"the rerank request to {self.url} did not finish within its timeout."
            raise TimeoutError(msg)
        httpx = _httpx()
        return {"timeout": httpx.Timeout(min(self.timeout, left), connect=self.connect_timeout)}

    def _outcome(
        self, attempt: int, response: Any, error: BaseException | None
    ) -> list[Any] | float:
        """The decoded answer items, or how long to wait before the next attempt.

        Raises:
            RemoteError: A final failure: a 4xx, a bad answer, or the last attempt failed.
        """
        last = attempt >= self.max_retries
        with self._lock:
            self._stats["requests"] += 1
        if error is not None:
            if last:
                self._count("failures")
                tries = attempt + 1
                msg = (
                    f"could not reach the rerank server at {self.url} after {tries} "
                    f"attempt(s): {type(error).__name__}: {error}. Check that it is running "
                    "and the URL is right."
                )
                raise RemoteError(msg, url=self.url) from error
            logger.info("rerank request to %s failed (%s); retrying", self.url, error)
            self._count("retries")
            return self._delay(attempt, None)
        status = response.status_code
        if status < 400:
            return self._items(response)
        if status in _RETRY_STATUSES and not last:
            logger.info("rerank server %s answered %d; retrying", self.url, status)
            self._count("retries")
            return self._delay(attempt, response.headers.get("retry-after"))
        self._count("failures")
        detail = _error_detail(response)
        hint = _HINTS.get(status, "")
        msg = f"the rerank server at {self.url} answered {status}: {detail}{hint}"
        raise RemoteError(msg, url=self.url, status=status)

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), _MAX_RETRY_AFTER)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        ceiling = min(self.backoff * (2**attempt), self.max_backoff)
        # Jitter spreads the retries of many workers that failed at the same moment.
        return ceiling * (0.5 + random.random() / 2)  # noqa: S311 (timing, not secrets)

    def _items(self, response: Any) -> list[Any]:
        try:
            body = response.json()
        except ValueError:
            self._count("failures")
            msg = f"the rerank server at {self.url} answered with a body that is not JSON."
            raise RemoteError(msg, url=self.url, status=response.status_code) from None
        items = body
        if isinstance(body, dict):
            # Cohere and current infinity answer "results"; older infinity releases, "data".
            items = body.get("results", body.get("data"))
        if not isinstance(items, list):
            self._count("failures")
            msg = (
                f"the rerank server at {self.url} answered in an unexpected shape "
                f"({type(body).__name__}); is api={self.api!r} the right wire format?"
            )
            raise RemoteError(msg, url=self.url, status=response.status_code)
        return items

    def _scores(self, items: list[Any], n: int) -> list[float]:
        scores: list[float | None] = [None] * n
        key = "score" if self.api == "tei" else "relevance_score"
        for item in items:
            index = item.get("index") if isinstance(item, dict) else None
            value = item.get(key, item.get("score")) if isinstance(item, dict) else None
            if (
                not isinstance(index, int)
                or not 0 <= index < n
                or not isinstance(value, int | float)
            ):
                self._count("failures")
                msg = (
                    f"the rerank server at {self.url} answered an item without a valid index "
                    f"and {key!r}: {str(item)[:200]}; is api={self.api!r} the right format?"
                )
                raise RemoteError(msg, url=self.url)
            scores[index] = float(value)
        missing = [i for i, s in enumerate(scores) if s is None]
        if missing:
            self._count("failures")
            msg = (
                f"the rerank server at {self.url} scored {n - len(missing)} of {n} texts "
                f"(missing indices {missing[:5]}...); it may cap results per request, so "
                "lower batch_size."
            )
            raise RemoteError(msg, url=self.url)
        with self._lock:
            self._stats["pairs"] += n
        return [s for s in scores if s is not None]


_CONFIG_KEYS = frozenset(
    {
        "url",
        "api",
        "model",
        "path",
        "timeout",
        "connect_timeout",
        "max_retries",
        "backoff",
        "max_backoff",
        "batch_size",
        "raw_scores",
        "truncate",
        "max_connections",
        "headers",
    }
)


def _resolve_api_key(value: object, url: object) -> str | None:
    """The API key a config names: None, the key itself, or ``{"env": NAME}`` read from NAME."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and set(value) == {"env"} and isinstance(value["env"], str):
        name = value["env"]
        key = os.environ.get(name)
        if not key:
            msg = (
                f"the RemoteEngine for {url} takes its API key from the environment variable "
                f"{name}, which is not set; set it to the server's key (a config never holds "
                "the key itself)."
            )
            raise ValueError(msg)
        return key
    msg = (
        "api_key in a RemoteEngine config must be None, the key, or {'env': NAME} (read from "
        f"the environment variable NAME), got {type(value).__name__}."
    )
    raise TypeError(msg)


_HINTS = {
    401: " (pass api_key= with the server's key)",
    403: " (the API key lacks access)",
    404: " (check the URL, and path= or api=)",
    413: " (lower batch_size, or shorten the texts)",
}


def _error_detail(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())
        return text[:300] or "(no body)"
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message", value)
            if value:
                return str(value)[:300]
    return str(body)[:300]


def _results(
    scores: list[float], texts: list[str], top_n: int | None, score_threshold: float | None
) -> list[RerankResult]:
    return [RerankResult(i, scores[i], texts[i]) for i in select(scores, top_n, score_threshold)]


def _chunks(texts: list[str], size: int) -> list[list[str]]:
    return [texts[start : start + size] for start in range(0, len(texts), size)]


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _positive(name: str, value: object, *, integer: bool = False) -> None:
    kinds = int if integer else int | float
    if not isinstance(value, kinds) or isinstance(value, bool) or value <= 0:
        what = "int" if integer else "number"
        msg = f"{name} must be a positive {what}, got {value!r}."
        raise ValueError(msg)


def _httpx() -> Any:
    return require("httpx", extra="remote", purpose="rerank_plugins.RemoteEngine")
