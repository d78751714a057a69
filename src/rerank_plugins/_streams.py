"""The engine's CPU streams: daemon threads that run forward passes side by side.

Not a `concurrent.futures.ThreadPoolExecutor`: that pool refuses work once the interpreter
starts shutting down ("cannot schedule new futures after interpreter shutdown") and joins its
threads at exit, so a pass still running then would hold the exit. These threads are daemons,
know nothing of interpreter shutdown, and an engine re-creates them in a forked child, where
its parent's threads do not exist.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["StreamPool"]

logger = logging.getLogger("rerank_plugins")

T = TypeVar("T")


class _Latch:
    """Counts tasks down; remembers the first error."""

    def __init__(self, count: int) -> None:
        self._count = count
        self._done = threading.Condition()
        self.error: BaseException | None = None

    def finish(self, error: BaseException | None) -> None:
        with self._done:
            if error is not None and self.error is None:
                self.error = error
            self._count -= 1
            if self._count == 0:
                self._done.notify_all()

    def wait(self) -> None:
        with self._done:
            self._done.wait_for(lambda: self._count == 0)


class StreamPool(Generic[T]):
    """``size`` daemon threads, each set up by ``initializer``, running ``fn`` on given items.

    Args:
        size: Threads (streams).
        name: Thread name prefix.
        initializer: Run once in each thread before its first task (binds its torch threads);
            a failure is logged and the thread serves anyway.

    Examples:
        >>> pool: StreamPool[int] = StreamPool(2, "demo", lambda: None)
        >>> seen = []
        >>> pool.map(seen.append, [1, 2, 3])
        >>> sorted(seen)
        [1, 2, 3]
        >>> pool.shutdown()
    """

    def __init__(self, size: int, name: str, initializer: Callable[[], object]) -> None:
        self._tasks: queue.SimpleQueue[tuple[Callable[[T], object], T, _Latch] | None] = (
            queue.SimpleQueue()
        )
        self._size = size
        self._name = name
        self._initializer = initializer
        # Started on the first map, as ThreadPoolExecutor does: a stream's set-up binds torch
        # threads, which must not race the engine worker's own first torch op at start-up.
        self._threads: list[threading.Thread] = []

    def _serve(self, initializer: Callable[[], object]) -> None:
        try:
            initializer()
        except Exception:
            logger.warning("rerank stream set-up failed; it runs unbound", exc_info=True)
        while True:
            task = self._tasks.get()
            if task is None:
                return
            fn, item, latch = task
            error: BaseException | None = None
            try:
                fn(item)
            except BaseException as exc:  # handed to the caller of map, never lost
                error = exc
            latch.finish(error)

    def map(self, fn: Callable[[T], object], items: Sequence[T]) -> None:
        """Run ``fn`` on every item across the streams; return when all are done.

        Raises:
            BaseException: The first error any call raised (after all calls finished).
        """
        if not items:
            return
        if not self._threads:
            self._threads = [
                threading.Thread(
                    target=self._serve,
                    args=(self._initializer,),
                    name=f"{self._name}-{i}",
                    daemon=True,
                )
                for i in range(self._size)
            ]
            for thread in self._threads:
                thread.start()
        latch = _Latch(len(items))
        for item in items:
            self._tasks.put((fn, item, latch))
        latch.wait()
        if latch.error is not None:
            raise latch.error

    def shutdown(self, *, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Let each thread finish its current task and exit.

        Args:
            wait: Join the threads (each for ``timeout`` seconds at most).
            timeout: Seconds to wait per thread.
        """
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            for thread in self._threads:
                if thread is not threading.current_thread():
                    thread.join(timeout)
