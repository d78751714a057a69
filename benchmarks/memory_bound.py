"""Peak memory of huge inputs: 20,000 documents in one call, and 1 MB documents.

Each case runs in a fresh process, which loads the MiniLM-L6 cross-encoder (the offline
fallback built from all-MiniLM-L6-v2), warms it up on one full batch of other texts (so
one-time costs such as thread pools and per-thread allocator arenas are paid first), reads
every weight once (they are memory-mapped from the safetensors file, and otherwise the call's
new tokens would page in rows of the embedding table: the model's own memory, not the
call's), then records its resident set before the call and its peak during the call (sampled
every 5 ms), so the growth is what the call itself cost (the documents themselves are
allocated before the call).

The yardstick is the first case: the growth of one full CPU batch (the engine's 2,048 tokens
in flight: two streams of 1,024-token passes on 2 cores). That is one batch's worth of
activations plus the buffers the math libraries allocate for it. A huge call passes the
bound if its growth stays within that. Which allocator arenas a process's threads land in
varies, so one batch's growth varies from process to process (27-43 MiB seen): each case
runs in several fresh processes and the medians are compared.

Run: ``python benchmarks/memory_bound.py`` (about 10 minutes on 2 cores, most of it the
20,000 documents; ``--repeats 1`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CASES = {
    "yardstick: one full CPU batch (16 documents of ~110 tokens = 2,048 tokens)": ("batch", 16),
    "20,000 short documents (~20 tokens), one call": ("many", 20_000),
    "4 documents of 1 MB each, one call": ("huge", 4),
}

CHILD = r"""
import json, sys, threading, time
import psutil
from rerank_plugins import RerankEngine
from rerank_plugins.models.offline import build_minilm_cross_encoder

kind, n, reference = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "reference"
path = build_minilm_cross_encoder()
words = "retrieval augmented generation reranks passages with a cross encoder model".split()
if kind == "many":
    docs = [" ".join(words[(i + j) % len(words)] for j in range(12)) + f" {i}" for i in range(n)]
elif kind == "batch":
    docs = [" ".join(words[(i + j) % len(words)] for j in range(105)) for i in range(n)]
else:
    docs = [(" ".join(words) + " ") * (1_000_000 // (len(" ".join(words)) + 1)) for _ in range(n)]
query = "what does a reranker do?"
# Warm up on one full batch of other texts, so that one-time costs (thread pools, kernels,
# allocator arenas of every thread) are paid before the measurement, not counted in it.
warm = [" ".join(words[(i * 3 + j) % len(words)] for j in range(100)) + " warm" for i in range(16)]
if reference:
    from sentence_transformers import CrossEncoder
    model = CrossEncoder(path, device="cpu")
    model.predict([(query, d) for d in warm], batch_size=32)
    torch_model = model.model
    run = lambda: model.predict([(query, d) for d in docs], batch_size=32)
else:
    engine = RerankEngine(path, device="cpu", cache_size=0)
    engine.score(query, warm)
    torch_model = engine._backend.runner.model
    run = lambda: engine.score(query, docs)
# The weights are memory-mapped from model.safetensors, and a forward pass only pages in the
# rows of the 47 MB embedding table that its tokens use: new words would page in more of the
# model itself, not memory the call allocated. Read every weight once so that all of it is
# resident before the measurement.
for tensor in [*torch_model.parameters(), *torch_model.buffers()]:
    float(tensor.float().sum())
proc = psutil.Process()
before = proc.memory_info().rss / 2**20
peak = before
done = threading.Event()

def sample():
    global peak
    while not done.is_set():
        peak = max(peak, proc.memory_info().rss / 2**20)
        time.sleep(0.005)

sampler = threading.Thread(target=sample)
sampler.start()
start = time.perf_counter()
scores = run()
elapsed = time.perf_counter() - start
done.set()
sampler.join()
print(json.dumps({"before": before, "peak": peak, "seconds": elapsed, "n": len(scores)}))
"""


def measure(kind: str, n: int, who: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(n), who],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-reference", action="store_true", help="also CrossEncoder.predict")
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh processes per case for RerankEngine"
    )
    args = parser.parse_args()
    who = ["engine", "reference"] if args.with_reference else ["engine"]
    print("| case | scorer | runs | RSS before (MiB) | growth (MiB), median | min–max | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    medians: dict[str, float] = {}
    for name, (kind, n) in CASES.items():
        for w in who:
            # The reference's growth is far from the bound; one run of it is enough.
            runs = [measure(kind, n, w) for _ in range(args.repeats if w == "engine" else 1)]
            growth = [r["peak"] - r["before"] for r in runs]
            label = "RerankEngine" if w == "engine" else "CrossEncoder.predict"
            if w == "engine":
                medians[kind] = statistics.median(growth)
            print(
                f"| {name} | {label} | {len(runs)} | "
                f"{statistics.median(r['before'] for r in runs):.0f} | "
                f"{statistics.median(growth):.0f} | {min(growth):.0f}–{max(growth):.0f} | "
                f"{statistics.median(r['seconds'] for r in runs):.1f} |"
            )
    bound = medians["batch"]
    for kind, label in (("many", "20,000 documents"), ("huge", "1 MB documents")):
        verdict = "within" if medians[kind] <= bound else "OVER"
        print(
            f"{label}: {medians[kind]:.0f} MiB against one batch's {bound:.0f} MiB "
            f"(medians): {verdict} the bound"
        )


if __name__ == "__main__":
    main()
