"""Scale out on one machine: N worker processes each with its own model vs N sharing one server.

    python benchmarks/scale_out.py                      # 4 workers, MiniLM-L6 reranker
    python benchmarks/scale_out.py --workers 2 --requests 8 --out /tmp/scale_out.md

Each worker process reranks its own stream of requests (a query and --docs candidate chunks of
~200 tokens, English text, no request repeated, so no cache hits) one after another, as a web
worker would. Scenarios:

- own engine: every worker loads the model (get_engine) with torch's default thread count;
- own engine, 1 thread: the same, with torch.set_num_threads(1) in each worker (the tuned
  setting for several model-holding processes on few cores);
- shared server: one `rerank-plugins serve` process holds the model; the workers are thin
  clients (RemoteEngine over loopback HTTP) and their requests meet in the server's batches.

Memory is the sum over every process of the scenario (workers, plus the server): RSS, which
counts shared library pages once per process, and PSS, which splits them fairly. Throughput is
pairs scored by all workers over the wall time from the common start to the last finish.
Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the harness is a package of the repository root


@dataclass
class Result:
    scenario: str
    processes: int
    models: int
    rss_mb: float
    pss_mb: float
    pairs: int
    seconds: float
    latencies_ms: list[float]

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.seconds

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies_ms)
        return data[min(int(q * len(data)), len(data) - 1)]


# ---------------------------------------------------------------------- the worker process


def _worker(
    mode: str,
    target: str,
    threads: int | None,
    queries: list[str],
    docs: list[list[str]],
    ready: Any,
    start: Any,
    results: Any,
    finish: Any,
) -> None:
    if mode == "local":
        import torch

        from rerank_plugins import get_engine

        if threads is not None:
            torch.set_num_threads(threads)
        engine: Any = get_engine(target, device="cpu")
    else:
        from rerank_plugins.remote import RemoteEngine

        engine = RemoteEngine(target, batch_size=1000, timeout=600)
    engine.score("warm up", ["a first request loads lazily initialised pieces."])
    ready.put(os.getpid())
    start.wait()
    began = time.monotonic()
    latencies = []
    pairs = 0
    for query, texts in zip(queries, docs, strict=True):
        t = time.perf_counter()
        engine.score(query, texts)
        latencies.append((time.perf_counter() - t) * 1000)
        pairs += len(texts)
    results.put(
        {
            "pid": os.getpid(),
            "began": began,
            "ended": time.monotonic(),
            "pairs": pairs,
            "latencies": latencies,
        }
    )
    finish.wait()  # stay alive until the parent has measured memory


# ---------------------------------------------------------------------- scenarios


def _memory(pids: list[int]) -> tuple[float, float]:
    rss = pss = 0.0
    for pid in pids:
        info = psutil.Process(pid).memory_full_info()
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss / 2**20, pss / 2**20


def _run_workers(
    mode: str,
    target: str,
    threads: int | None,
    work: list[tuple[list[str], list[list[str]]]],
    extra_pids: list[int],
) -> tuple[list[dict[str, Any]], float, float]:
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    start, finish = ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(
            target=_worker,
            args=(mode, target, threads, queries, docs, ready, start, results, finish),
        )
        for queries, docs in work
    ]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=600)
        start.set()
        done = [results.get(timeout=3600) for _ in procs]
        rss, pss = _memory([p.pid for p in procs if p.pid is not None] + extra_pids)
    finally:
        finish.set()
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    return done, rss, pss


def _summarise(
    name: str, done: list[dict[str, Any]], rss: float, pss: float, processes: int, models: int
) -> Result:
    seconds = max(d["ended"] for d in done) - min(d["began"] for d in done)
    return Result(
        scenario=name,
        processes=processes,
        models=models,
        rss_mb=rss,
        pss_mb=pss,
        pairs=sum(d["pairs"] for d in done),
        seconds=seconds,
        latencies_ms=[x for d in done for x in d["latencies"]],
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(model: str, port: int, threads: int | None) -> subprocess.Popen[bytes]:
    code = textwrap.dedent(
        f"""
        import torch
        from rerank_plugins.server import serve
        threads = {threads!r}
        if threads is not None:
            torch.set_num_threads(threads)
        serve({model!r}, host="127.0.0.1", port={port}, device="cpu", log_level="warning")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def run(args: argparse.Namespace) -> list[Result]:
    from transformers import AutoTokenizer

    from benchmarks.harness.models import model_path
    from benchmarks.harness.workloads import Shape, build_workload

    model = str(model_path(args.model) if args.model in ("minilm", "base") else Path(args.model))
    tokenizer = AutoTokenizer.from_pretrained(model)
    work = []
    for w in range(args.workers):
        wl = build_workload(tokenizer, Shape(args.requests, args.docs), "english", seed=100 + w)
        # Tag each query with its worker: no pair repeats across workers, so no cache hits.
        work.append(([f"{q} [{w}]" for q in wl.queries], [list(d) for d in wl.docs]))

    results = []
    scenarios: list[tuple[str, int | None]] = [
        (f"{args.workers} workers, own engine each", None),
        (f"{args.workers} workers, own engine each, 1 torch thread", 1),
    ]
    for name, threads in scenarios:
        print(f"running: {name} ...", file=sys.stderr, flush=True)
        done, rss, pss = _run_workers("local", model, threads, work, [])
        results.append(_summarise(name, done, rss, pss, args.workers, args.workers))

    for label, threads in [("", None), (", 1 torch thread", 1)]:
        name = f"{args.workers} workers -> 1 shared server{label}"
        print(f"running: {name} ...", file=sys.stderr, flush=True)
        port = _free_port()
        server = _start_server(model, port, threads)
        try:
            done, rss, pss = _run_workers(
                "remote", f"http://127.0.0.1:{port}", None, work, [server.pid]
            )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        results.append(_summarise(name, done, rss, pss, args.workers + 1, 1))
    return results


# ---------------------------------------------------------------------- report


def table(results: list[Result]) -> str:
    head = (
        "| scenario | processes | models loaded | RSS sum (MiB) | PSS sum (MiB) | pairs/s "
        "| p50 latency (ms) | p95 latency (ms) |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.processes} | {r.models} | {r.rss_mb:,.0f} | {r.pss_mb:,.0f} "
            f"| {r.pairs_per_s:,.1f} | {r.percentile(0.5):,.0f} | {r.percentile(0.95):,.0f} |"
        )
    return "\n".join(lines)


def report(results: list[Result], args: argparse.Namespace, command: str) -> str:
    from benchmarks.harness import machine_info

    info = machine_info("cpu", threads=0)
    private = [r for r in results if r.models > 1]
    shared = [r for r in results if r.models == 1]
    best_private = max(private, key=lambda r: r.pairs_per_s)
    best_shared = max(shared, key=lambda r: r.pairs_per_s)
    return textwrap.dedent(
        """\
        # Scale-out benchmark: one model per worker vs one shared server

        {workers} worker processes each rerank {requests} requests (a query and {docs}
        English candidate chunks of ~200 tokens; {pairs:,} pairs in all, none repeated) one
        request after another. Either every worker loads the cross-encoder itself
        (`get_engine`), or one `rerank-plugins serve` process holds it and the workers call it
        with `RemoteEngine` over loopback HTTP. Memory is summed over every process of the
        scenario, server included; PSS splits shared library pages between processes, RSS
        counts them in each. "1 torch thread" sets `torch.set_num_threads(1)` in each process
        holding a model.

        {table}

        Memory: the shared server setup needs {pss_ratio:.1f}x less (PSS {shared_pss:,.0f} vs
        {private_pss:,.0f} MiB, best of each). Throughput, best of each: {shared_tp:,.1f} pairs/s
        shared vs {private_tp:,.1f} pairs/s private ({tp_ratio:.2f}x).

        Machine: {cpu}, {cores} cores, {memory} GiB RAM; {versions}; model: MiniLM-L6
        cross-encoder (`benchmarks.harness.models`, 22.7M parameters, fp32, CPU). {date}.

        Command: `{command}`
        """
    ).format(
        workers=args.workers,
        requests=args.requests,
        docs=args.docs,
        pairs=results[0].pairs,
        table=table(results),
        pss_ratio=min(r.pss_mb for r in private) / min(r.pss_mb for r in shared),
        shared_pss=min(r.pss_mb for r in shared),
        private_pss=min(r.pss_mb for r in private),
        shared_tp=best_shared.pairs_per_s,
        private_tp=best_private.pairs_per_s,
        tp_ratio=best_shared.pairs_per_s / best_private.pairs_per_s,
        cores=info["cores"],
        cpu=info["cpu"],
        memory=info.get("memory_gib", "?"),
        versions=info["versions"],
        date=info["date"],
        command=command,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--requests", type=int, default=8, help="requests per worker")
    parser.add_argument("--docs", type=int, default=20, help="candidates per request")
    parser.add_argument(
        "--model", default="minilm", help="minilm, base, or a local cross-encoder folder"
    )
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    args = parser.parse_args(argv)
    if min(args.workers, args.requests, args.docs) < 1:
        parser.error("--workers, --requests and --docs must be positive")
    results = run(args)
    print(table(results))
    if args.out is not None:
        command = shlex.join(["python", "benchmarks/scale_out.py", *argv])
        args.out.write_text(report(results, args, command), encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
