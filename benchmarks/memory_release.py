"""What giving memory back costs: pairs/s, page faults and peak memory per trim policy.

Between CPU forward passes the engine returns freed activation memory to the OS with
``malloc_trim(0)``. The next passes allocate the same buffers again and fault every returned
page back in; the kernel zero-fills each one. This script runs the benchmark MiniLM-L6
reranker on a workload under three policies, each in fresh processes, alternating, and
prints the median pairs/s, minor page faults and CPU time (user and system) per pair, and
the peak resident-set growth over the warmed-up process:

- ``counted`` (the engine's policy): a trim's cost is its call plus the pages it returned
  times the measured cost of one page fault; it runs once 100 times that cost in forward
  time has passed (at most 1% overhead).
- ``call-only`` (the engine's earlier policy): the same schedule, counting only the call,
  so it trims after nearly every forward pass.
- ``off``: never trims.

Run: ``python benchmarks/memory_release.py 16x50@8`` (about 10 minutes on 2 cores) or
``python benchmarks/memory_release.py 1x100 --rounds 3 --passes 3``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

POLICIES = ("counted", "call-only", "off")

CHILD = r"""
import json, resource, sys, threading, time
import psutil
from transformers import AutoTokenizer
from rerank_plugins import RerankEngine
from benchmarks.harness.models import model_path
from benchmarks.harness.runners import drive
from benchmarks.harness.workloads import build_workload, parse_shape

shape, policy, passes = sys.argv[1], sys.argv[2], int(sys.argv[3])
path = str(model_path("minilm"))
workload = build_workload(AutoTokenizer.from_pretrained(path), parse_shape(shape), "synthetic")
engine = RerankEngine(path, device="cpu", cache_size=0)
runner = engine.backend.runner
if policy == "off":
    runner.releaser = None
elif policy == "call-only":
    runner.releaser._resident = lambda: None  # returned pages are not counted
engine.score(workload.queries[0], list(workload.docs[0][:16]))  # warm-up
proc = psutil.Process()
before = proc.memory_info().rss
peak = before
done = threading.Event()

def sample():
    global peak
    while not done.is_set():
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.01)

sampler = threading.Thread(target=sample)
sampler.start()
rates, faults, user, system = [], [], [], []
for _ in range(passes):
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    drive(engine.score, workload)
    rates.append(workload.pairs / (time.perf_counter() - start))
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    faults.append((u1.ru_minflt - u0.ru_minflt) / workload.pairs)
    user.append((u1.ru_utime - u0.ru_utime) / workload.pairs * 1e3)
    system.append((u1.ru_stime - u0.ru_stime) / workload.pairs * 1e3)
done.set()
sampler.join()
trims = getattr(runner.releaser, "trims", 0)
print(json.dumps({"rates": rates, "faults": faults, "user": user, "system": system,
                  "growth": (peak - before) / 2**20, "trims": trims}))
"""


def run_child(shape: str, policy: str, passes: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, shape, policy, str(passes)],
        cwd=Path(__file__).resolve().parents[1],  # the child imports benchmarks.harness
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", nargs="?", default="16x50@8", help="workload, e.g. 1x100")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per policy")
    parser.add_argument("--passes", type=int, default=1, help="timed passes per process")
    args = parser.parse_args()
    results: dict[str, list[dict[str, object]]] = {p: [] for p in POLICIES}
    for i in range(args.rounds):
        order = POLICIES[i % len(POLICIES) :] + POLICIES[: i % len(POLICIES)]
        for policy in order:
            results[policy].append(run_child(args.shape, policy, args.passes))
    print(f"{args.shape} synthetic, MiniLM-L6 fp32, {args.rounds} processes per policy:")
    print(
        "| policy | pairs/s, median | min–max | page faults / pair | CPU ms / pair, user + "
        "system | peak growth (MiB) | trims |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for policy, runs in results.items():
        rates = [r for run in runs for r in run["rates"]]  # type: ignore[attr-defined]
        faults = [f for run in runs for f in run["faults"]]  # type: ignore[attr-defined]
        growth = [float(run["growth"]) for run in runs]  # type: ignore[arg-type]
        trims = [int(run["trims"]) for run in runs]  # type: ignore[call-overload]
        user = statistics.median(u for run in runs for u in run["user"])  # type: ignore[attr-defined]
        system = statistics.median(s for run in runs for s in run["system"])  # type: ignore[attr-defined]
        print(
            f"| {policy} | {statistics.median(rates):.1f} | {min(rates):.1f}–{max(rates):.1f} | "
            f"{statistics.median(faults):.0f} | {user:.1f} + {system:.1f} | "
            f"{statistics.median(growth):.0f} "
            f"({min(growth):.0f}–{max(growth):.0f}) | {statistics.median(trims):.0f} |"
        )


if __name__ == "__main__":
    main()
