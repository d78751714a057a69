"""Length-sorted, token-budget batch planning: the policy that decides each forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BatchPolicy", "plan_batches"]


@dataclass(frozen=True)
class BatchPolicy:
    """How pairs are grouped into forward passes, and how many passes run at once.

    Attributes:
        batch_tokens: Budget of padded tokens per forward pass (pairs x longest pair).
        max_batch_size: Upper bound on pairs per forward pass.
        streams: Forward passes run side by side (CPU: each on a share of the threads).

    Examples:
        >>> BatchPolicy(batch_tokens=2048, max_batch_size=16).batch_tokens
        2048
        >>> BatchPolicy.for_device("cpu", streams=2)
        BatchPolicy(batch_tokens=1024, max_batch_size=8, streams=2)
    """

    batch_tokens: int
    max_batch_size: int
    streams: int = 1

    @classmethod
    def for_device(
        cls,
        device: str,
        batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        streams: int = 1,
    ) -> BatchPolicy:
        """Defaults measured per device kind, overridden by explicit values.

        On CPU small batches win (padding and cache pressure cost more than the per-call
        overhead saves; see docs/benchmarks.md), and two passes of 1,024 tokens side by side,
        one thread each, beat one pass of 2,048 tokens on two threads: the tokens in flight
        stay the same. On GPUs large batches win.
        """
        if device.startswith("cpu"):
            tokens, size = max(2048 // streams, 256), max(16 // streams, 2)
        else:
            tokens, size = 65_536, 256
        return cls(batch_tokens or tokens, max_batch_size or size, streams)


def plan_batches(lengths: Sequence[int], policy: BatchPolicy) -> list[list[int]]:
    """Group item indices into batches, longest first, within the token budget.

    Each batch is padded to its first (longest) item, so its cost is ``len(batch) * lengths[0]``;
    an item longer than the budget still gets a batch of its own.

    Args:
        lengths: Token length of each item.
        policy: Budget and pair limit.

    Returns:
        Batches of indices into ``lengths``; every index appears exactly once.

    Examples:
        >>> plan_batches([10, 300, 20, 290], BatchPolicy(batch_tokens=600, max_batch_size=8))
        [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current and (
            len(current) >= policy.max_batch_size
            or (len(current) + 1) * width > policy.batch_tokens
        ):
            batches.append(current)
            current = []
        if not current:
            width = max(lengths[i], 1)
        current.append(i)
    if current:
        batches.append(current)
    return batches
