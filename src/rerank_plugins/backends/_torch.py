"""Device and dtype resolution shared by the torch backends."""

from __future__ import annotations

import logging
from typing import Any

from rerank_plugins._imports import require

__all__ = ["cpu_supports_bf16", "resolve_device", "resolve_dtype"]

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
