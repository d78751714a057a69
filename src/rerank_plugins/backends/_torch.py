"""Device and dtype resolution shared by the torch backends."""

from __future__ import annotations

import logging
import threading
from typing import Any

from rerank_plugins._imports import require

__all__ = ["bind_thread_count", "cpu_supports_bf16", "resolve_device", "resolve_dtype"]

logger = logging.getLogger("rerank_plugins")


def resolve_device(device: str) -> str:
    """Turn ``"auto"`` into cuda, then mps, then cpu; check an explicit device exists."""
    torch = require("torch", purpose="the torch backends")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        msg = f"device={device!r} was requested but CUDA is not available; pass device='cpu'."
        raise ValueError(msg)
    return device


_BIND_LOCK = threading.Lock()


def bind_thread_count(threads: int) -> None:
    """Give the calling thread's torch CPU ops ``threads`` intra-op threads, and no one else's.

    ``torch.set_num_threads`` sets the calling thread's OpenMP team size, and also the default
    that threads which have not run a torch op yet pick up on their first one. This sets the
    former and puts the latter back, so the caller's other threads keep their thread count.

    Args:
        threads: Intra-op threads for this thread's ops (>= 1).

    Examples:
        >>> import threading, torch
        >>> before = torch.get_num_threads()
        >>> seen = []
        >>> def stream():
        ...     bind_thread_count(1)
        ...     seen.append(torch.get_num_threads())
        >>> t = threading.Thread(target=stream)
        >>> t.start(); t.join()
        >>> seen, torch.get_num_threads() == before
        ([1], True)
    """
    torch = require("torch", purpose="the torch backends")
    with _BIND_LOCK:
        default = _process_default(torch)
        torch.get_num_threads()  # this thread's lazy init first, or it would undo the next line
        torch.set_num_threads(threads)
        restore = threading.Thread(target=torch.set_num_threads, args=(default,))
        restore.start()
        restore.join()


def _process_default(torch: Any) -> int:
    """The thread count a fresh thread would get (read from a fresh thread)."""
    out: list[int] = []
    probe = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    probe.start()
    probe.join()
    return out[0]


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bf16 matrix multiplies natively (AVX512-BF16 or AMX)."""
    torch = require("torch", purpose="the torch backends")
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(precision: str, device: str) -> tuple[Any, str]:
    """Map a precision name to a torch dtype for ``device``; returns (dtype, effective name).

    ``auto`` is fp32 on CPU (exact scores), bf16 on CUDA where supported (else fp16) and fp16 on
    MPS. An explicit ``bf16`` on a CPU without native bf16 falls back to fp32 with a log line.
    """
    torch = require("torch", purpose="the torch backends")
    if precision == "auto":
        if device.startswith("cuda"):
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.startswith("mps"):
            precision = "fp16"
        else:
            precision = "fp32"
    if precision == "bf16" and device.startswith("cpu") and not cpu_supports_bf16():
        logger.warning("precision='bf16' requested but this CPU lacks native bf16; using fp32.")
        precision = "fp32"
    if precision == "fp16" and device.startswith("cpu"):
        logger.warning("precision='fp16' is slow and inexact on CPU; using fp32 (try 'bf16').")
        precision = "fp32"
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    return dtypes[precision], precision
