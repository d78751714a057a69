"""Hand freed activation memory back to the operating system between CPU forward passes.

Every batch shape allocates differently sized activation buffers. After the first large
free, glibc raises its mmap threshold, so later buffers come from heap arenas, and a stream
of differently shaped batches fragments those arenas. The process then keeps tens of MiB
that it has already freed (measured in docs/benchmarks.md: 82 MiB after 64 batches of 32
widths, 15-20 MiB with the memory returned). ``malloc_trim(0)`` gives free arena pages back
without changing any allocator policy of the caller's process. It costs about a millisecond,
so it runs only after enough forward time that it stays under 1% of it. Elsewhere than glibc
this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable

__all__ = ["MemoryReleaser"]

# Trim only after this many times the last trim's cost in forward time: <= 1% overhead.
_OVERHEAD_RATIO = 100


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
    return fn


class MemoryReleaser:
    """Calls ``malloc_trim(0)`` once enough forward time has passed to keep it under 1%.

    Examples:
        >>> releaser = MemoryReleaser()
        >>> releaser.after_forward(0.5)  # trims (on glibc) once 100x its last cost has passed
    """

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._lock = threading.Lock()  # forward passes may run on several threads
        self._owed = 0.0
        self._cost = 0.001
        self.trims = 0

    @property
    def available(self) -> bool:
        """Whether this platform's allocator can be trimmed (glibc)."""
        return self._trim is not None

    def after_forward(self, seconds: float) -> None:
        """Account ``seconds`` of forward time; trim when the budget allows."""
        if self._trim is None:
            return
        with self._lock:
            self._owed += seconds
            if self._owed < _OVERHEAD_RATIO * self._cost:
                return
            self._owed = 0.0
        start = time.perf_counter()
        self._trim(0)
        with self._lock:
            self._cost = max(time.perf_counter() - start, 1e-5)
            self.trims += 1
