"""How the LangChain adapters report a rerank step to LangChain's callbacks, as a child run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.callbacks.manager import (
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    CallbackManager,
    CallbackManagerForChainRun,
)

RERANK_RUN_NAME = "rerank"
"""Name of the chain run that stands for one rerank step in a trace."""


def run_metadata(
    model: str | None, top_n: int | None, score_threshold: float | None
) -> dict[str, Any]:
    """The rerank run's own metadata: the model and the cut it applies.

    Prefixed, so that a caller's inheritable metadata (``"model"`` of their LLM ...) is
    neither shadowed nor mistaken for ours.
    """
    metadata: dict[str, Any] = {"rerank_top_n": top_n, "rerank_score_threshold": score_threshold}
    if model is not None:
        metadata["rerank_model"] = model
    return metadata


def run_outputs(kept: Sequence[tuple[int, str | None, float | None]]) -> dict[str, list[Any]]:
    """The rerank run's outputs from ``(index, id, score)`` of each kept item, best first.

    ``index`` is the item's position among the candidates the step was given; a score of None
    marks an item passed through unranked (``on_error="passthrough"``).
    """
    return {
        "indices": [index for index, _, _ in kept],
        "ids": [doc_id for _, doc_id, _ in kept],
        "scores": [score for _, _, score in kept],
    }


@contextmanager
def rerank_run(
    callbacks: Callbacks, query: object, candidates: int, metadata: dict[str, Any]
) -> Iterator[CallbackManagerForChainRun]:
    """Report the enclosed rerank step as a chain run named ``"rerank"``.

    The run starts on entry with inputs ``{"query", "candidates"}``; the body ends it with
    `run_outputs` through ``on_chain_end``. An exception escaping the body is reported through
    ``on_chain_error`` and re-raised. ``callbacks`` are those LangChain passed (a parent run's
    child manager, a list of handlers, or None); globally configured tracers join as usual.
    """
    manager = CallbackManager.configure(callbacks, local_metadata=metadata)
    run = manager.on_chain_start(
        None, {"query": query, "candidates": candidates}, name=RERANK_RUN_NAME
    )
    try:
        yield run
    except BaseException as exc:  # a cancellation, too, must not leave the run open
        run.on_chain_error(exc)
        raise


@asynccontextmanager
async def arerank_run(
    callbacks: Callbacks, query: object, candidates: int, metadata: dict[str, Any]
) -> AsyncIterator[AsyncCallbackManagerForChainRun]:
    """Async `rerank_run`: the same run, reported through async handlers."""
    manager = AsyncCallbackManager.configure(callbacks, local_metadata=metadata)
    run = await manager.on_chain_start(
        None, {"query": query, "candidates": candidates}, name=RERANK_RUN_NAME
    )
    try:
        yield run
    except BaseException as exc:
        await run.on_chain_error(exc)
        raise
