"""Hand freed activation memory back to the operating system between CPU forward passes.

Every batch shape allocates differently sized activation buffers. After the first large
free, glibc raises its mmap threshold, so later buffers come from heap arenas, and a stream
of differently shaped batches fragments those arenas. The process then keeps tens of MiB
that it has already freed (measured in docs/benchmarks.md: 82 MiB after 64 batches of 32
widths, 15-20 MiB with the memory returned). ``malloc_trim(0)`` gives free arena pages back
without changing any allocator policy of the caller's process.

A trim costs more than its own call. The next forward passes allocate the same buffers again
and fault every returned page back in: the kernel zero-fills each one, about 5 us a page on a
VM. A trim after every batch of eight 220-token pairs returns about 50 MiB, and faulting it
back cost far more than the trim call itself (about 1 ms): 8% of the CPU time per pair
(``benchmarks/memory_release.py``, docs/benchmarks.md). So the cost of a trim here is its
call time plus the pages it returned times the measured cost of one page fault, and a trim
runs only after 100 times its last cost in forward time: at most 1% overhead, all of it
counted. Elsewhere than glibc on Linux this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading
import time
from collections.abc import Callable

__all__ = ["MemoryReleaser", "page_fault_seconds", "resident_pages"]

# Trim only after this many times the last trim's cost in forward time: <= 1% overhead.
_OVERHEAD_RATIO = 100
_PAGE = mmap.PAGESIZE


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
    return fn


def resident_pages() -> int | None:
    """The process's resident pages (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


def page_fault_seconds(pages: int = 256) -> float:
    """Measured time to fault in one fresh anonymous page (the kernel zero-fills it).

    Args:
        pages: How many pages to touch for the measurement (1 MiB by default).

    Returns:
        Seconds per page, the median of three runs.

    Examples:
        >>> 0 < page_fault_seconds(16) < 0.01
        True
    """
    runs = []
    for _ in range(3):
        buf = mmap.mmap(-1, pages * _PAGE)
        try:
            start = time.perf_counter()
            for offset in range(0, pages * _PAGE, _PAGE):
                buf[offset] = 1
            runs.append((time.perf_counter() - start) / pages)
        finally:
            buf.close()
    return sorted(runs)[1]


class MemoryReleaser:
    """Calls ``malloc_trim(0)`` once enough forward time has passed to keep it under 1%.

    A trim's cost is the call plus re-faulting the pages it returned (pages returned, read
    from the resident set before and after, times :func:`page_fault_seconds`, measured at the
    first trim).

    Examples:
        >>> releaser = MemoryReleaser()
        >>> releaser.after_forward(0.5)  # trims (on glibc) once 100x its last cost has passed
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        """Create a releaser.

        Args:
            clock: Seconds, monotonic; what a trim's own cost is timed with (tests pass a
                clock they advance themselves).
        """
        self._clock = clock
        self._trim = _malloc_trim()
        self._resident: Callable[[], int | None] = resident_pages
        self._fault_seconds: float | None = None
        self._lock = threading.Lock()  # forward passes may run on several threads
        self._owed = 0.0
        self._cost = 0.001
        self.trims = 0
        self.released_pages = 0

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
            if self._fault_seconds is None:
                self._fault_seconds = page_fault_seconds()
        before = self._resident()
        start = self._clock()
        self._trim(0)
        took = self._clock() - start
        after = self._resident()
        released = max(before - after, 0) if before is not None and after is not None else 0
        with self._lock:
            self._cost = max(took + released * self._fault_seconds, 1e-5)
            self.trims += 1
            self.released_pages += released
