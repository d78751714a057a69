"""The rerank engine: one loaded cross-encoder serving every caller, batching their work.

The contract callers see (`Scorer`, `EngineInfo`) is in `rerank_plugins.contract`; the
process-wide registry of shared engines (`get_engine`) in `rerank_plugins.registry`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from functools import partial
from typing import Any

from rerank_plugins import registry
from rerank_plugins._streams import StreamPool
from rerank_plugins.backends import (
    Backend,
    Encoded,
    load_backend,
    missing_members,
    pick_backend,
)
from rerank_plugins.batching import BatchPolicy, plan_batches
from rerank_plugins.cache import ScoreCache, pair_key
from rerank_plugins.config import EngineConfig
from rerank_plugins.contract import EngineInfo, Scorer, ScorerInfo, check_scorer
from rerank_plugins.errors import BackendError, EngineClosedError
from rerank_plugins.results import (
    RerankResult,
    check_instruction,
    check_query,
    check_texts,
    select,
    to_probability,
)
from rerank_plugins.windows import aggregate

__all__ = [
    "EngineInfo",
    "RerankEngine",
    "Scorer",
    "ScorerInfo",
    "check_scorer",
    "close_all_engines",
    "get_engine",
]

logger = logging.getLogger("rerank_plugins")
# Load-time warnings about the model itself (an untrained head): a logger of their own, so an
# application that shows them its own way (the demo's banner) can route them.
model_logger = logging.getLogger("rerank_plugins.model")

# Largest slice of one request handed to the worker at a time: bounds the memory one call can
# pin (token ids of 1,024 pairs) and lets other callers' pairs interleave with a huge request.
_CHUNK = 1024
# The worker stops draining the queue once a cycle holds this many pairs.
_CYCLE_PAIRS = 4096


@dataclass
class _Request:
    query: str
    texts: list[str]
    future: Future[list[Scored]]
    instruction: str | None = None
    # Set by a caller that stopped waiting (timeout, cancellation): the worker skips what of
    # this request has not run yet, at the next batch boundary.
    withdrawn: bool = False


@dataclass
class _Item:
    encoded: Encoded
    doc: _Doc
    logit: float | None = None
    error: BaseException | None = None
    skipped: bool = False


@dataclass(frozen=True, slots=True)
class Scored:
    """A document's raw result: its logit and how much of it was read."""

    logit: float
    windows: int
    truncated: bool


@dataclass
class _Doc:
    owners: list[_Request]
    items: list[_Item]

    def wanted(self) -> bool:
        """Whether a request still waits for this document."""
        return any(not r.withdrawn for r in self.owners)

    def outcome(self, mode: str) -> Scored | BaseException | None:
        """The document's result, its error, or None where a pass was skipped (withdrawn)."""
        for it in self.items:
            if it.error is not None:
                return it.error
        if any(it.skipped for it in self.items):
            return None
        logits = [it.logit for it in self.items if it.logit is not None]
        return Scored(aggregate(logits, mode), len(self.items), self.items[0].encoded.truncated)


_STOP = object()


class RerankEngine:
    """A loaded cross-encoder that batches, dedups and caches the work of all its callers.

    Calls from any number of threads and coroutines go through one worker thread, which merges
    whatever is waiting into shared, length-sorted forward passes within a token budget, and
    hands each caller exactly its own scores. Use `get_engine` to share one engine per model
    and settings across a process; build ``RerankEngine(...)`` for a private one.

    Score scale: with ``normalize=True`` (default) a score is the model's probability of
    relevance, ``sigmoid(logit)`` in [0, 1], as ``CrossEncoder.predict`` and
    ``FlagReranker.compute_score(normalize=True)`` return; with ``normalize=False`` it is the
    raw logit (unbounded, about -10..10 for ms-marco models). Pick thresholds on that scale.

    Args:
        model: Hugging Face hub id or local folder of a cross-encoder.
        **options: Engine options; see `EngineConfig` (``backend``, ``device``, ``max_length``,
            ``normalize``, ``cache_size``, ``precision``, ``batch_tokens``, ``max_batch_size``,
            ``streams``, ``trust_remote_code``, ``revision``, ``long_documents``).

    Raises:
        TypeError: An unknown option or a wrongly typed value.
        ValueError: A bad option value; `ModelLoadError` (a ``ValueError``) for a missing model.

    Examples:
        >>> from rerank_plugins import RerankEngine
        >>> with RerankEngine("cross-encoder/ms-marco-MiniLM-L-6-v2") as engine:  # doctest: +SKIP
        ...     engine.score("what is rag?", ["RAG combines retrieval ...", "The weather ..."])
        [0.97, 0.0003]
    """

    def __init__(self, model: str, **options: Any) -> None:
        config = EngineConfig.from_options(model, options)
        name, reason = pick_backend(config)
        self._start(config, load_backend(config, name), reason, owns_backend=True)

    @classmethod
    def from_backend(cls, backend: Backend, **options: Any) -> RerankEngine:
        """Build an engine around an already constructed backend (tests, custom runtimes).

        Args:
            backend: Any object implementing the `Backend` interface.
            **options: Engine options that apply to the engine itself (``normalize``,
                ``cache_size``, ``batch_tokens``, ``max_batch_size``, ``streams``).

        Returns:
            A private engine (not registered with `get_engine`).
        """
        config = EngineConfig.from_options(f"<{backend.name}>", options)
        engine = cls.__new__(cls)
        engine._start(config, backend, "given", owns_backend=False)
        return engine

    @classmethod
    def _load(cls, config: EngineConfig, name: str, reason: str) -> RerankEngine:
        """Load backend ``name`` for ``config`` and build the engine around it (the registry)."""
        engine = cls.__new__(cls)
        engine._start(config, load_backend(config, name), reason, owns_backend=True)
        return engine

    def _start(
        self, config: EngineConfig, backend: Backend, reason: str, *, owns_backend: bool
    ) -> None:
        """The one construction path: check the backend, set up, start the worker.

        A backend the engine loaded itself is closed when anything after loading fails, so a
        bad option never leaves a model in memory.
        """
        try:
            missing = missing_members(backend)
            if missing:
                msg = (
                    f"backend {type(backend).__name__} lacks {', '.join(missing)}; implement "
                    "rerank_plugins.backends.Backend (subclass BackendBase for the defaults)."
                )
                raise TypeError(msg)
            self._setup(config, backend, reason)
        except BaseException:
            if owns_backend:
                backend.close()
            raise

    def _setup(self, config: EngineConfig, backend: Backend, reason: str) -> None:
        self.config = config
        self._backend = backend
        streams, threads = _resolve_streams(config, backend)
        self.policy = BatchPolicy.for_device(
            backend.device, config.batch_tokens, config.max_batch_size, streams
        )
        self._cache: ScoreCache[Scored] = ScoreCache(config.cache_size)
        self._passages = config.long_documents in ("max", "mean")
        if self._passages and not backend.supports_windows:
            msg = (
                f"long_documents={config.long_documents!r} needs a backend that can split "
                f"documents into windows; the {backend.name!r} backend cannot for this model "
                "(decoder and FlagEmbedding LLM rerankers truncate, as their references do). Use "
                "long_documents='truncate'."
            )
            raise ValueError(msg)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        # close(cancel_pending=True), and interpreter exit: queued work fails at once and
        # running work stops at the next batch boundary.
        self._aborting = False
        # Set in a forked child when this engine cannot run there (a model on a GPU).
        self._fork_error: str | None = None
        self._inflight: list[_Request] = []
        self._warned_truncation = False
        self._stats = {"requests": 0, "pairs": 0, "forward_passes": 0, "forward_pairs": 0}
        self._stats_lock = threading.Lock()
        # Streams beyond the first: threads that each bind their share of the CPU threads.
        self._stream_shape = (streams, threads) if streams > 1 and threads is not None else None
        self._streams: StreamPool[list[_Item]] | None = None
        self._worker: threading.Thread | None = None
        details = dict(backend.describe())
        warnings = tuple(str(w) for w in details.pop("warnings", ()))
        self.info = EngineInfo(
            model=config.model,
            backend=backend.name,
            backend_reason=reason,
            device=backend.device,
            precision=backend.precision,
            max_length=backend.max_length,
            normalize=config.normalize,
            score_scale="probability in [0, 1] (sigmoid of the logit)"
            if config.normalize
            else "raw logit (unbounded)",
            cache_size=config.cache_size,
            batch_tokens=self.policy.batch_tokens,
            max_batch_size=self.policy.max_batch_size,
            streams=streams,
            threads_per_stream=threads,
            details=details,
            warnings=warnings,
        )
        self._start_worker()
        registry.track(self)
        for warning in self.info.warnings:
            model_logger.warning("%s", warning)
        logger.info(
            "rerank engine ready: model=%s backend=%s (%s) device=%s precision=%s "
            "max_length=%d batch_tokens=%d max_batch_size=%d streams=%d cache_size=%d",
            config.model,
            backend.name,
            reason,
            backend.device,
            backend.precision,
            backend.max_length,
            self.policy.batch_tokens,
            self.policy.max_batch_size,
            streams,
            config.cache_size,
        )

    # ------------------------------------------------------------------ public API

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    @property
    def backend(self) -> Backend:
        """The backend this engine drives."""
        return self._backend

    def score(
        self,
        query: str,
        texts: Sequence[str],
        *,
        timeout: float | None = None,
        instruction: str | None = None,
    ) -> list[float]:
        """Score each text against ``query``.

        Args:
            query: The question.
            texts: Documents to score; an empty list returns ``[]`` without touching the model.
            timeout: Seconds to wait at most; pairs not yet run are withdrawn on timeout.
            instruction: The task, for instruction-aware (decoder) rerankers, e.g. "Given a
                code question, retrieve snippets that answer it". None (or blank): the model's
                default. Encoder cross-encoders take none and raise ``ValueError`` on one.

        Returns:
            One plain ``float`` per text, in the order of ``texts`` (see the class docstring
            for the scale).

        Raises:
            TypeError: ``query``, a text or ``instruction`` is not a string.
            ValueError: ``query`` is empty, or an instruction for a model that takes none.
            TimeoutError: ``timeout`` passed first.
            EngineClosedError: The engine was closed.
            BackendError: The model failed on these pairs (the cause is chained).

        Examples:
            >>> engine.score("what is rag?", ["RAG is ...", "Paris is ..."])  # doctest: +SKIP
            [0.98, 0.01]
        """
        scored = self._collect(query, texts, timeout, instruction)
        return [self._scale(r.logit) for r in scored]

    async def ascore(
        self,
        query: str,
        texts: Sequence[str],
        *,
        timeout: float | None = None,
        instruction: str | None = None,
    ) -> list[float]:
        """Async `score`: awaits the worker without blocking the loop or parking a thread.

        Cancelling the awaiting task withdraws the pairs that have not run yet.

        Examples:
            >>> scores = await engine.ascore("what is rag?", ["RAG is ..."])  # doctest: +SKIP
        """
        scored = await self._acollect(query, texts, timeout, instruction)
        return [self._scale(r.logit) for r in scored]

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
            timeout: Seconds to wait at most.
            instruction: The task, for instruction-aware rerankers (see `score`).

        Returns:
            `RerankResult` s (index into ``texts``, score, text), best first.

        Examples:
            >>> [r.index for r in engine.rerank("q", ["a", "b", "c"], top_n=2)]  # doctest: +SKIP
            [2, 0]
        """
        texts = check_texts(texts)
        scored = self._collect(query, texts, timeout, instruction)
        return self._results(scored, texts, top_n, score_threshold)

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
        texts = check_texts(texts)
        scored = await self._acollect(query, texts, timeout, instruction)
        return self._results(scored, texts, top_n, score_threshold)

    def stats(self) -> dict[str, int]:
        """Counters since start: requests, pairs, forward passes, cache hits and misses."""
        out = dict(self._stats)
        out.update(cache_hits=self._cache.hits, cache_misses=self._cache.misses)
        out["cache_entries"] = len(self._cache)
        return out

    def clear_cache(self) -> None:
        """Forget every cached score."""
        self._cache.clear()

    def close(self, timeout: float | None = 30.0, *, cancel_pending: bool = False) -> None:
        """Stop the worker, then release the model. Idempotent.

        By default the requests already queued finish first. Any call after `close` raises
        `EngineClosedError`.

        Args:
            timeout: Seconds to wait for the worker at most; requests it still holds then fail
                with `EngineClosedError` rather than wait on.
            cancel_pending: Fail queued requests at once with `EngineClosedError`, and stop
                running ones at their next batch boundary (what interpreter exit does).
        """
        error = EngineClosedError(self._closed_message())
        with self._lock:
            if self._closed:
                return
            if cancel_pending:  # before closed: whoever sees the engine closed sees it abort
                self._aborting = True
                self._fail_queued(error)
            self._closed = True
            self._queue.put(_STOP)
        worker = self._worker
        if worker is not None and threading.current_thread() is not worker:
            worker.join(timeout)
        busy = worker is not None and worker.is_alive()
        if busy:
            # The worker is stuck in a forward pass: fail its callers rather than strand them.
            log = logger.debug if cancel_pending else logger.warning
            log("rerank worker still busy after %ss; failing its requests", timeout)
            for req in list(self._inflight):
                _settle(req.future, error=error)
        self._fail_queued(error)
        if self._streams is not None:
            self._streams.shutdown(wait=not busy, timeout=timeout)
        registry.forget(self)
        self._backend.close()
        logger.info("rerank engine closed: %s", self.config.model)

    def __enter__(self) -> RerankEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"RerankEngine(model={self.config.model!r}, backend={self.info.backend!r}, "
            f"device={self.info.device!r}, {state})"
        )

    # ------------------------------------------------------------------ internals

    def _closed_message(self) -> str:
        return (
            f"the rerank engine for {self.config.model!r} is closed; "
            "create a new one (get_engine(...) returns a fresh engine after close)."
        )

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError(self._closed_message())
        if self._fork_error is not None:
            raise EngineClosedError(self._fork_error)

    def _start_worker(self) -> None:
        """Start the worker thread (and the stream threads) of this process."""
        if self._stream_shape is not None:
            streams, threads = self._stream_shape
            self._streams = StreamPool(
                streams,
                f"rerank-stream[{self._backend.name}]",
                partial(self._backend.bind_thread, threads),
            )
        self._worker = threading.Thread(
            target=self._run, name=f"rerank-engine[{self._backend.name}]", daemon=True
        )
        self._worker.start()

    def _after_fork(self) -> None:
        """In a forked child (the registry calls this): a fresh, idle engine of the same model.

        The parent's threads, and so its worker, queue and locks, do not exist in the child:
        re-create them (the worker starts on the child's first call), keeping the loaded
        model and the cached scores. A model on a GPU cannot be used after a fork (CUDA
        cannot be re-initialised in a forked child): calls then raise `EngineClosedError`
        saying what to do.
        """
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        self._inflight = []
        self._worker = None
        self._streams = None
        self._cache.after_fork()
        if self._backend.device != "cpu" and not self._closed:
            self._fork_error = (
                f"the rerank engine for {self.config.model!r} runs on {self._backend.device!r} "
                f"and was created before this process forked (pid {os.getpid()}); a GPU "
                "cannot be used after a fork. Create the engine in the child (gunicorn without "
                "--preload, Celery's worker_process_init) or use the 'spawn' start method."
            )

    def _instruction(self, instruction: object) -> str | None:
        checked = check_instruction(instruction)
        if checked is not None and not self._backend.supports_instructions:
            msg = (
                f"the {self._backend.name!r} backend's model takes no instruction (encoder "
                "cross-encoders read only the query and the text); drop instruction=, or use "
                "an instruction-aware decoder reranker such as Qwen3-Reranker."
            )
            raise ValueError(msg)
        return checked

    def _submit(self, query: str, texts: list[str], instruction: str | None) -> list[_Request]:
        requests: list[_Request] = []
        with self._lock:
            self._check_open()
            if self._worker is None:  # the first call in a forked child
                self._start_worker()
            self._stats["requests"] += 1
            self._stats["pairs"] += len(texts)
            for start in range(0, len(texts), _CHUNK):
                req = _Request(query, texts[start : start + _CHUNK], Future(), instruction)
                self._queue.put(req)
                requests.append(req)
        return requests

    def _scale(self, logit: float) -> float:
        return to_probability(logit) if self.config.normalize else float(logit)

    def _results(
        self,
        scored: list[Scored],
        texts: list[str],
        top_n: int | None,
        score_threshold: float | None,
    ) -> list[RerankResult]:
        scores = [self._scale(r.logit) for r in scored]
        return [
            RerankResult(i, scores[i], texts[i], scored[i].windows, scored[i].truncated)
            for i in select(scores, top_n, score_threshold)
        ]

    def _collect(
        self, query: str, texts: Sequence[str], timeout: float | None, instruction: object
    ) -> list[Scored]:
        query = check_query(query)
        texts = check_texts(texts)
        checked = self._instruction(instruction)
        if not texts:
            self._check_open()
            return []
        requests = self._submit(query, texts, checked)
        deadline = None if timeout is None else time.monotonic() + timeout
        out: list[Scored] = []
        try:
            for req in requests:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                out.extend(req.future.result(timeout=remaining))
        except FutureTimeout:
            _withdraw(requests)
            msg = f"scoring {len(texts)} texts did not finish within timeout={timeout}s."
            raise TimeoutError(msg) from None
        except BaseException:
            _withdraw(requests)
            raise
        return out

    async def _acollect(
        self, query: str, texts: Sequence[str], timeout: float | None, instruction: object
    ) -> list[Scored]:
        query = check_query(query)
        texts = check_texts(texts)
        checked = self._instruction(instruction)
        if not texts:
            self._check_open()
            return []
        requests = self._submit(query, texts, checked)
        gathered = asyncio.gather(*(asyncio.wrap_future(r.future) for r in requests))
        try:
            parts = await asyncio.wait_for(gathered, timeout)
        except asyncio.TimeoutError:
            _withdraw(requests)
            msg = f"scoring {len(texts)} texts did not finish within timeout={timeout}s."
            raise TimeoutError(msg) from None
        except BaseException:
            _withdraw(requests)
            raise
        return [x for part in parts for x in part]

    def _fail_queued(self, error: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Request):
                _settle(item.future, error=error)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            cycle = [first]
            pairs = len(first.texts)  # type: ignore[attr-defined]
            stop = False
            while pairs < _CYCLE_PAIRS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                cycle.append(item)
                pairs += len(item.texts)  # type: ignore[attr-defined]
            requests = [r for r in cycle if isinstance(r, _Request)]
            if self._aborting:
                error = EngineClosedError(self._closed_message())
                for r in requests:
                    _settle(r.future, error=error)
                return
            self._inflight = requests
            try:
                self._run_cycle(requests)
            except BaseException as exc:  # a bug here must fail callers, never strand them
                logger.exception("rerank worker cycle failed")
                for r in requests:
                    _settle(r.future, error=BackendError(f"rerank worker failed: {exc}"))
            finally:
                self._inflight = []
            if stop:
                return

    def _encode(self, query: str, texts: list[str], instruction: str | None) -> list[list[Encoded]]:
        """One list of windows per text.

        A single (maybe truncated) pair, unless a passage mode asks for every window.
        Backends that take instructions get the request's (None: the model's default).
        """
        if self._passages:
            windows: list[list[Encoded]] = self._backend.encode_windows(query, texts)
        elif self._backend.supports_instructions:
            encoded = self._backend.encode(query, texts, instruction=instruction)  # type: ignore[call-arg]
            windows = [[e] for e in encoded]
        else:
            windows = [[e] for e in self._backend.encode(query, texts)]
        if len(windows) != len(texts):
            msg = f"backend encoded {len(windows)} documents for {len(texts)} texts."
            raise BackendError(msg)
        return windows

    def _run_cycle(self, requests: list[_Request]) -> None:
        pending: dict[bytes, _Doc] = {}
        plans: list[tuple[_Request, list[bytes], list[Scored | None]]] = []
        for req in requests:
            if req.withdrawn or not req.future.set_running_or_notify_cancel():
                continue  # timed out or cancelled before it ran: withdrawn
            try:
                keys = [pair_key(req.query, t, req.instruction) for t in req.texts]
                values: list[Scored | None] = [self._cache.get(k) for k in keys]
                new: dict[bytes, str] = {}
                for key, text, value in zip(keys, req.texts, values, strict=True):
                    if value is not None:
                        continue
                    if key in pending:  # another request of this cycle needs it too
                        if req not in pending[key].owners:
                            pending[key].owners.append(req)
                    elif key not in new:
                        new[key] = text
                if new:
                    encoded = self._encode(req.query, list(new.values()), req.instruction)
                    for key, windows in zip(new, encoded, strict=True):
                        doc = _Doc([req], [])
                        doc.items = [_Item(e, doc) for e in windows]
                        pending[key] = doc
                        if windows[0].truncated and not self._warned_truncation:
                            self._warned_truncation = True
                            logger.warning(
                                "some documents are longer than max_length=%d tokens and were "
                                "truncated (logged once per engine; long_documents='max' "
                                "scores every window instead).",
                                self._backend.max_length,
                            )
            except Exception as exc:
                _settle(req.future, error=exc)
                continue
            plans.append((req, keys, values))

        items = [it for doc in pending.values() for it in doc.items]
        if items:
            plan = plan_batches([it.encoded.length for it in items], self.policy)
            batches = [[items[i] for i in batch] for batch in plan]
            if self._streams is None or len(batches) == 1:
                for batch in batches:
                    self._forward_wanted(batch)
            else:  # longest first, each stream taking the next batch as it frees up
                self._streams.map(self._forward_wanted, batches)
        done: dict[bytes, Scored | BaseException | None] = {}
        for key, doc in pending.items():
            done[key] = outcome = doc.outcome(self.config.long_documents)
            if isinstance(outcome, Scored):
                self._cache.put(key, outcome)

        for req, keys, values in plans:
            out: list[Scored] = []
            error: BaseException | None = None
            for key, value in zip(keys, values, strict=True):
                got = value if value is not None else done[key]
                if got is None:  # skipped: this request was withdrawn, or the engine aborts
                    error = self._withdrawn_error()
                    break
                if isinstance(got, BaseException):
                    msg = f"the model failed on a pair of this request: {got}"
                    error = BackendError(msg)
                    error.__cause__ = got
                    break
                out.append(got)
            if error is not None:
                _settle(req.future, error=error)
            else:
                _settle(req.future, result=out)

    def _withdrawn_error(self) -> BaseException:
        if self._aborting:
            return EngineClosedError(self._closed_message())
        return TimeoutError("the request was withdrawn before all its pairs ran.")

    def _forward_wanted(self, batch: list[_Item]) -> None:
        """Run the pairs of a batch that a request still waits for; skip the rest.

        The batch boundary is where withdrawn work stops: a timed-out or cancelled request's
        pairs that no other request shares are not run, nor is anything once the engine
        aborts (``close(cancel_pending=True)``, interpreter exit).
        """
        wanted: list[_Item] = []
        for it in batch:
            if not self._aborting and it.doc.wanted():
                wanted.append(it)
            else:
                it.skipped = True
        if wanted:
            self._forward(wanted)

    def _forward(self, items: list[_Item]) -> None:
        """Run one batch; on failure split it in halves down to single pairs."""
        try:
            logits = self._backend.forward([it.encoded for it in items])
            if len(logits) != len(items):
                msg = f"backend returned {len(logits)} scores for {len(items)} pairs."
                raise BackendError(msg)
        except Exception as exc:
            if len(items) == 1:
                items[0].error = exc
                return
            logger.debug("forward of %d pairs failed (%s); splitting", len(items), exc)
            mid = len(items) // 2
            self._forward(items[:mid])
            self._forward(items[mid:])
            return
        with self._stats_lock:
            self._stats["forward_passes"] += 1
            self._stats["forward_pairs"] += len(items)
        for it, value in zip(items, logits, strict=True):
            it.logit = float(value)


def _resolve_streams(config: EngineConfig, backend: Backend) -> tuple[int, int | None]:
    """Forward passes to run side by side, and the intra-op threads each gets."""
    threads = backend.cpu_threads
    if config.streams is None:
        streams = 2 if threads is not None and threads >= 2 else 1
    else:
        streams = config.streams
        if streams > 1 and threads is None:
            msg = (
                f"streams={streams} needs forward passes that can run side by side: the torch "
                f"backends on CPU; the {backend.name!r} backend on {backend.device!r} runs one "
                "at a time. Leave streams unset (or 1)."
            )
            raise ValueError(msg)
    if threads is None or streams == 1:
        return streams, threads
    return streams, max(threads // streams, 1)


def _withdraw(requests: list[_Request]) -> None:
    """The caller stopped waiting: unstarted requests are cancelled, started ones stop early."""
    for req in requests:
        req.withdrawn = True
        req.future.cancel()


def _settle(
    fut: Future[list[Scored]],
    result: list[Scored] | None = None,
    error: BaseException | None = None,
) -> None:
    """Resolve a future unless it already is (closed, cancelled or failed meanwhile)."""
    if fut.done():
        return
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result or [])
    except InvalidStateError:
        pass


# The registry (`get_engine`) and the contract (`Scorer`, `EngineInfo`) have modules of their
# own; their names stay importable from here, where they have always been.
from rerank_plugins.registry import close_all_engines, get_engine  # noqa: E402
