"""CPU streams: one forward pass at a time on all threads, against passes side by side.

Builds the benchmark MiniLM-L6 reranker and a synthetic workload (as `python benchmarks/run.py`
does), then times `RerankEngine` variants on it, interleaved, and prints the median pairs/s of
each. The default variants are ``streams=1`` (one pass on every torch thread, 2,048-token
batches) and the default engine (two streams, 1,024-token batches); pass your own as
``NAME=JSON`` engine options.

Run: ``python benchmarks/streams.py 16x50@8`` or
``python benchmarks/streams.py 1x100 one='{"streams": 1}' two='{}' three='{"streams": 3}'``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from transformers import AutoTokenizer

# Run as a script, this file sees benchmarks/ first on sys.path; the harness is a package of
# the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness.models import model_path
from benchmarks.harness.runners import drive
from benchmarks.harness.workloads import build_workload, parse_shape
from rerank_plugins import RerankEngine

DEFAULT_VARIANTS = {"streams=1": {"streams": 1}, "default": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", help="workload shape, e.g. 1x100 or 16x50@8")
    parser.add_argument("variants", nargs="*", help="NAME=JSON engine options")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    variants = {
        name: json.loads(options) for name, options in (v.split("=", 1) for v in args.variants)
    } or DEFAULT_VARIANTS
    path = str(model_path("minilm"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    workload = build_workload(tokenizer, parse_shape(args.shape), "synthetic")
    engines = {n: RerankEngine(path, device="cpu", cache_size=0, **o) for n, o in variants.items()}
    for engine in engines.values():  # warm-up: thread pools, kernels
        engine.score(workload.queries[0], list(workload.docs[0][:8]))
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(args.repeats):
        for name, engine in engines.items():
            start = time.perf_counter()
            drive(engine.score, workload)
            rates[name].append(workload.pairs / (time.perf_counter() - start))
    print(f"{workload.name}, {workload.pairs} pairs, median of {args.repeats}:")
    for name, engine in engines.items():
        info = engine.info
        print(
            f"  {name:12s} {statistics.median(rates[name]):6.1f} pairs/s  "
            f"(streams={info.streams} x {info.threads_per_stream} threads, "
            f"batch {info.max_batch_size} / {info.batch_tokens} tokens)"
        )
        engine.close()


if __name__ == "__main__":
    main()
