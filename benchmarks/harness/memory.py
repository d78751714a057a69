"""Resident memory of N rerankers on one model, each scenario measured in a fresh process.

Run as ``python -m benchmarks.harness.memory SCENARIO MODEL DEVICE``; the process imports
every library first (so all scenarios start from the same baseline), builds the rerankers,
scores a few nodes with each, and writes one JSON line with its RSS before and after.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SCENARIOS", "MemoryResult", "measure_memory"]

SCENARIOS: dict[str, tuple[str, int]] = {
    "ours x1": ("ours", 1),
    "ours x5": ("ours", 5),
    "LlamaIndex SentenceTransformerRerank x1": ("llamaindex", 1),
    "LlamaIndex SentenceTransformerRerank x5": ("llamaindex", 5),
}
"""Scenario name -> (kind, number of rerankers)."""


@dataclass(frozen=True)
class MemoryResult:
    """RSS of one scenario.

    Attributes:
        scenario: Name (a key of `SCENARIOS`).
        rss_mb: Resident set size after building and using the rerankers, MiB.
        delta_mb: RSS added by the rerankers over the process with every library imported.
        via: What "ours" was built with (adapter class or ``get_engine``).
        error: Why the scenario failed, if it did.
    """

    scenario: str
    rss_mb: float | None
    delta_mb: float | None
    via: str = ""
    error: str | None = None


def measure_memory(
    model: str, device: str = "cpu", scenarios: list[str] | None = None, timeout: float = 600
) -> list[MemoryResult]:
    """Measure each scenario in its own fresh Python process.

    Args:
        model: Local cross-encoder folder.
        device: Device for the rerankers.
        scenarios: Names from `SCENARIOS` (default: all).
        timeout: Seconds each process may take.

    Returns:
        One result per scenario, in order.
    """
    out = []
    for name in scenarios or list(SCENARIOS):
        cmd = [sys.executable, "-m", "benchmarks.harness.memory", name, model, device]
        # The harness is a package of the repository, not of the installed library: the child
        # finds it from the repository root.
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": path,
        }
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            out.append(MemoryResult(name, None, None, error=f"timed out after {timeout}s"))
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
            out.append(MemoryResult(name, None, None, error=f"exit {proc.returncode}: {tail}"))
            continue
        data = json.loads(lines[-1])
        out.append(MemoryResult(name, data["rss_mb"], data["delta_mb"], data.get("via", "")))
    return out


def _rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def _probe(scenario: str, model: str, device: str) -> dict[str, Any]:
    import torch
    from llama_index.core.postprocessor import SentenceTransformerRerank
    from llama_index.core.schema import NodeWithScore, TextNode

    import rerank_plugins

    torch.set_num_threads(2)
    kind, n = SCENARIOS[scenario]
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in ("a cat", "the weather", "rag")]
    via = ""
    gc.collect()
    before = _rss_mb()
    rerankers: list[Any] = []
    if kind == "llamaindex":
        for _ in range(n):
            rerankers.append(SentenceTransformerRerank(model=model, top_n=2, device=device))
            rerankers[-1].postprocess_nodes(nodes, query_str="what is rag?")
        via = "SentenceTransformerRerank"
    else:
        try:
            from rerank_plugins.llama_index import RerankPostprocessor

            for _ in range(n):
                rerankers.append(
                    RerankPostprocessor(model=model, top_n=2, engine_options={"device": device})
                )
                rerankers[-1].postprocess_nodes(nodes, query_str="what is rag?")
            via = "RerankPostprocessor"
        except ImportError:
            for _ in range(n):
                rerankers.append(rerank_plugins.get_engine(model, device=device))
                rerankers[-1].score("what is rag?", ["a cat", "the weather", "rag"])
            via = "get_engine"
    gc.collect()
    after = _rss_mb()
    return {"rss_mb": after, "delta_mb": after - before, "via": via}


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in SCENARIOS:
        sys.stderr.write(f"usage: SCENARIO MODEL DEVICE; scenarios: {', '.join(SCENARIOS)}\n")
        return 2
    result = _probe(*argv)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    # Skip interpreter teardown of torch threads; nothing is left to flush.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
