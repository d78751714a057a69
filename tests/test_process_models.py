"""Process models: engines across fork (pools, gunicorn, Celery), withdrawal, and clean exits.

Every scenario here runs a real model and real processes. Where a test needs the engine in an
exact state (mid-forward, a caller gone), a `HeldBackend` holds a pass until the test lets it
go, so nothing depends on how fast the machine is; timeouts only guard against hangs.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from rerank_plugins import RerankEngine, get_engine
from rerank_plugins.errors import EngineClosedError
from tests._fakes import FakeBackend, HeldBackend
from tests._process import ROOT, python
from tests._serving import free_port

QUERY = "what is retrieval augmented generation"
TEXTS = [
    "Paris is in France.",
    "RAG combines retrieval with generation.",
    "Rerankers score each passage against the query.",
    "The weather is mild today.",
]
# What a forked worker reads: set by a test just before it creates its pool.
_STATE: dict[str, Any] = {}


def _fork_pool(processes: int = 2) -> Any:
    return multiprocessing.get_context("fork").Pool(processes)


# ---------------------------------------------------------------- a fork-context pool


def _compress_in_child(query: str) -> tuple[int, list[tuple[str, float]]]:
    from langchain_core.documents import Document

    docs = [Document(page_content=t) for t in TEXTS]
    out = _STATE["compressor"].compress_documents(docs, query)
    return os.getpid(), [(d.page_content, d.metadata["relevance_score"]) for d in out]


def test_a_compressor_built_before_a_fork_works_in_every_pool_worker(bert_path: str) -> None:
    from langchain_core.documents import Document

    from rerank_plugins.langchain import RerankCompressor

    compressor = RerankCompressor(model=bert_path, engine_options={"device": "cpu"}, top_n=3)
    docs = [Document(page_content=t) for t in TEXTS]
    expected = [
        (d.page_content, d.metadata["relevance_score"])
        for d in compressor.compress_documents(docs, QUERY)
    ]
    _STATE["compressor"] = compressor
    with _fork_pool() as pool:
        got = pool.map_async(_compress_in_child, [QUERY] * 8).get(timeout=120)
    assert {pid for pid, _ in got} - {os.getpid()}, "the pool's workers did the scoring"
    for _, ranked in got:
        assert [t for t, _ in ranked] == [t for t, _ in expected]
        assert [s for _, s in ranked] == pytest.approx([s for _, s in expected], abs=1e-6)
    # The parent's engine was not touched by its children: it still serves.
    assert compressor.compress_documents(docs, QUERY)[0].page_content == expected[0][0]


def _postprocess_in_child(query: str) -> list[str]:
    from llama_index.core.schema import NodeWithScore, TextNode

    nodes = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS]
    out = _STATE["postprocessor"].postprocess_nodes(nodes, query_str=query)
    return [n.node.get_content() for n in out]


def test_a_llama_index_postprocessor_built_before_a_fork_works_in_pool_workers(
    bert_path: str,
) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerank_plugins.llama_index import RerankPostprocessor

    post = RerankPostprocessor(model=bert_path, engine_options={"device": "cpu"}, top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS]
    expected = [n.node.get_content() for n in post.postprocess_nodes(nodes, query_str=QUERY)]
    _STATE["postprocessor"] = post
    with _fork_pool() as pool:
        got = pool.map_async(_postprocess_in_child, [QUERY] * 4).get(timeout=120)
    assert got == [expected] * 4


def _engine_in_child(args: tuple[str, int]) -> tuple[int, list[float]]:
    model, parent_engine_id = args
    engine = get_engine(model, device="cpu")
    return (1 if id(engine) == parent_engine_id else 0), engine.score(QUERY, TEXTS)


def test_get_engine_in_a_forked_child_returns_the_inherited_engine_working(
    bert_path: str,
) -> None:
    engine = get_engine(bert_path, device="cpu")
    expected = engine.score(QUERY, TEXTS)
    with _fork_pool() as pool:
        got = pool.map_async(_engine_in_child, [(bert_path, id(engine))] * 4).get(timeout=120)
    for same, scores in got:
        assert same == 1, "the child's get_engine is the engine it inherited, not a new load"
        assert scores == pytest.approx(expected, abs=1e-6)
    assert engine.score(QUERY, TEXTS) == pytest.approx(expected, abs=1e-6)


def _score_in_child(texts: list[str]) -> list[float]:
    return _STATE["engine"].score(QUERY, texts, timeout=120)


def test_a_child_forked_while_the_parent_is_mid_forward_gets_an_idle_working_engine(
    bert_path: str,
) -> None:
    real = RerankEngine(bert_path, device="cpu")
    held = HeldBackend(real.backend, holds=["held in the parent"])
    engine = RerankEngine.from_backend(held, cache_size=0, streams=1)
    _STATE["engine"] = engine
    try:
        with ThreadPoolExecutor(1) as caller:
            parent_call = caller.submit(engine.score, QUERY, ["held in the parent", TEXTS[1]])
            assert held.entered["held in the parent"].wait(60)
            with _fork_pool(1) as pool:  # forks now: the parent's worker is mid-forward
                child = pool.apply_async(_score_in_child, ([TEXTS[0], TEXTS[2]],)).get(120)
            held.release["held in the parent"].set()
            parent = parent_call.result(timeout=60)
        assert child == pytest.approx(real.score(QUERY, [TEXTS[0], TEXTS[2]]), abs=1e-6)
        assert parent == pytest.approx(
            real.score(QUERY, ["held in the parent", TEXTS[1]]), abs=1e-6
        )
    finally:
        engine.close()
        real.close()


class _GpuBackend(FakeBackend):
    device = "cuda:0"


def _error_in_child(_: object) -> str:
    try:
        _STATE["engine"].score(QUERY, ["a text"])
    except EngineClosedError as exc:
        return f"EngineClosedError: {exc}"
    return "scored"


def test_an_engine_on_a_gpu_refuses_in_a_forked_child_saying_what_to_do() -> None:
    engine = RerankEngine.from_backend(_GpuBackend())
    _STATE["engine"] = engine
    try:
        with _fork_pool(1) as pool:
            message = pool.apply_async(_error_in_child, (None,)).get(timeout=60)
        assert message.startswith("EngineClosedError: ")
        assert "a GPU cannot be used after a fork" in message
        assert "Create the engine in the child" in message
        assert "\n" not in message
        assert engine.score(QUERY, ["a text"])  # the parent's engine is untouched
    finally:
        engine.close()


# ---------------------------------------------------------------- withdrawn work


def test_a_timed_out_request_stops_at_the_next_batch_boundary(bert_path: str) -> None:
    real = RerankEngine(bert_path, device="cpu")
    texts = [f"passage number {i} about {w}" for i, w in enumerate("abcdefgh")]
    first = "a much longer first passage that the length-sorted plan runs before the others"
    held = HeldBackend(real.backend, holds=[first])
    engine = RerankEngine.from_backend(held, cache_size=0, max_batch_size=1, streams=1)
    try:
        # The first pass is held, so the deadline passes while the request is mid-way.
        with pytest.raises(TimeoutError, match="did not finish within timeout"):
            engine.score(QUERY, [first, *texts], timeout=0.05)
        held.release[first].set()
        # The worker runs one cycle at a time: this call's answer means the last one ended.
        assert engine.score(QUERY, ["after"]) == pytest.approx(
            real.score(QUERY, ["after"]), abs=1e-6
        )
        assert held.seen == [first, "after"], "only the pass already running ran"
    finally:
        engine.close()
        real.close()


def test_a_cancelled_request_stops_early_and_its_shared_pairs_still_serve_a_neighbour(
    bert_path: str,
) -> None:
    real = RerankEngine(bert_path, device="cpu")
    gate = "gate holds the worker while the next two requests queue up"
    longest = "the longest passage of the cancelled request runs first, and is held there"
    held = HeldBackend(real.backend, holds=[gate, longest])
    engine = RerankEngine.from_backend(held, cache_size=0, max_batch_size=1, streams=1)
    cancelled_texts = [longest, "only the cancelled one wants this", "shared"]
    neighbour_texts = ["shared", "only the neighbour wants this"]

    async def scenario() -> list[float]:
        gate_task = asyncio.ensure_future(engine.ascore(QUERY, [gate]))
        await asyncio.to_thread(held.entered[gate].wait, 60)
        cancelled = asyncio.ensure_future(engine.ascore(QUERY, cancelled_texts))
        neighbour = asyncio.ensure_future(engine.ascore(QUERY, neighbour_texts))
        await asyncio.sleep(0)  # both are queued behind the gate, in the same next cycle
        held.release[gate].set()
        await gate_task
        await asyncio.to_thread(held.entered[longest].wait, 60)
        cancelled.cancel()
        held.release[longest].set()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return await neighbour

    try:
        neighbour_scores = asyncio.run(scenario())
        assert neighbour_scores == pytest.approx(real.score(QUERY, neighbour_texts), abs=1e-6)
        assert "only the cancelled one wants this" not in held.seen
        assert sorted(held.seen) == sorted(
            [gate, longest, "shared", "only the neighbour wants this"]
        )
    finally:
        engine.close()
        real.close()


# ---------------------------------------------------------------- interpreter exit

_EXIT_PRELUDE = """
import atexit, os, sys
os.environ["HF_HUB_OFFLINE"] = "1"
REPORT = {}
# Registered before rerank_plugins is imported, so it runs after the engines have closed.
atexit.register(lambda: print("REPORT", REPORT.get("engine") and REPORT["engine"].stats()["forward_passes"], REPORT.get("held") and REPORT["held"].seen, flush=True))
from rerank_plugins import RerankEngine
from rerank_plugins.backends import load_backend
from rerank_plugins.config import EngineConfig
from tests._fakes import HeldBackend
# The model under the held engines, loaded without an engine of its own: closing engines at
# exit, in whatever order, must not take the model from under the one still running.
inner = load_backend(EngineConfig.from_options(MODEL, {"device": "cpu"}), "sentence-transformers")
"""

_EXIT_SCENARIOS = {
    "idle": """
engine = RerankEngine(MODEL, device="cpu")
engine.score("q", ["a text", "another"])
REPORT["engine"] = engine
""",
    "after close": """
engine = RerankEngine(MODEL, device="cpu")
engine.score("q", ["a text", "another"])
engine.close()
""",
    # The process ends while a pass runs; the pass goes on until the engine starts closing.
    "mid-forward": """
import threading
class UntilClosed(HeldBackend):
    def hold(self, texts):
        self.entered["x"].set()
        while not REPORT["engine"].closed:
            pass
held = UntilClosed(inner, holds=["x"])
engine = RerankEngine.from_backend(held, cache_size=0, max_batch_size=1, streams=1)
REPORT["engine"], REPORT["held"] = engine, held
def call():
    try:
        engine.score("q", [f"text {i}" for i in range(50)])
    except Exception:  # EngineClosedError, as the process goes: nobody waits for it now
        pass
threading.Thread(target=call, daemon=True).start()
held.entered["x"].wait(60)
""",
    # The caller timed out mid-request and left; the held pass is released as it exits.
    "after a timeout": """
texts = ["a much longer first passage that runs before all the others"] + [f"text {i}" for i in range(50)]
held = HeldBackend(inner, holds=[texts[0]])
engine = RerankEngine.from_backend(held, cache_size=0, max_batch_size=2)
REPORT["engine"], REPORT["held"] = engine, held
try:
    engine.score("q", texts, timeout=0.05)
except TimeoutError:
    print("TIMED OUT", flush=True)
held.release[texts[0]].set()
""",
}


@pytest.mark.slow
@pytest.mark.parametrize("state", list(_EXIT_SCENARIOS))
def test_the_interpreter_exits_cleanly_in_every_engine_state(bert_path: str, state: str) -> None:
    code = f"MODEL = {bert_path!r}\n" + _EXIT_PRELUDE + _EXIT_SCENARIOS[state]
    done = python(code, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert "rerank worker" not in done.stderr, done.stderr
    report = [line for line in done.stdout.splitlines() if line.startswith("REPORT")]
    assert len(report) == 1, done.stdout
    if state == "mid-forward":
        # The running pass finished; the 49 passes queued behind it were withdrawn at exit.
        assert report[0].startswith("REPORT 1 "), report
    if state == "after a timeout":
        assert "TIMED OUT" in done.stdout
        # Streams run up to two passes side by side: only those already started ran.
        passes = int(report[0].split()[1])
        assert 1 <= passes <= 2, report


# ---------------------------------------------------------------- docs/server.md, executed

SECTION_TITLE = "## Running under gunicorn / Celery"
# A file to save: a ```py block (not ```python, which test_docs runs) whose first line names it.
FILE_BLOCK = re.compile(r"^```py\n# (\S+\.py)\n(.*?)^```", re.S | re.M)
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def _subsection(heading: str) -> tuple[dict[str, str], list[str]]:
    """The files and the commands of one subsection of docs/server.md's process-model part."""
    page = (ROOT / "docs" / "server.md").read_text(encoding="utf-8")
    section = page.split(SECTION_TITLE, 1)[1].split("\n## ", 1)[0]
    part = section.split(f"### {heading}", 1)[1].split("\n### ", 1)[0]
    files = {name: body for name, body in FILE_BLOCK.findall(part)}
    commands = [body.strip() for body in BASH_BLOCK.findall(part)]
    return files, commands


def _environment(model: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(RERANK_MODEL=model, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


@contextmanager
def _server(command: str, cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """Run a documented long-running command; SIGTERM it on the way out and check its exit."""
    log = (cwd / "server.log").open("w+")
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        proc.output = log.read()  # type: ignore[attr-defined]
        log.close()


def _run(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _children(pid: int) -> set[int]:
    out = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        match = re.search(r"^PPid:\s+(\d+)$", text, re.M)
        if match and int(match.group(1)) == pid:
            out.add(int(status.parent.name))
    return out


@pytest.mark.slow
def test_the_documented_gunicorn_preload_service_serves_from_both_forked_workers(
    bert_path: str, tmp_path: Path
) -> None:
    pytest.importorskip("gunicorn")
    pytest.importorskip("fastapi")
    files, commands = _subsection("gunicorn")
    assert set(files) == {"app.py"} and len(commands) == 2, (files, commands)
    serve, ask = commands
    assert "--preload" in serve and "--workers 2" in serve
    (tmp_path / "app.py").write_text(files["app.py"])
    port = free_port()
    serve = serve.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    ask = ask.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    env = _environment(bert_path)
    expected = get_engine(bert_path, device="cpu").rerank(
        "what is rag?", ["Paris is in France.", "RAG combines retrieval with generation."]
    )

    with _server(serve, tmp_path, env) as master:
        deadline = time.monotonic() + 120  # a hang guard: the first answer comes when ready
        while (first := _run(ask, tmp_path, env)).returncode != 0 or not first.stdout:
            assert master.poll() is None, "gunicorn exited early"
            assert time.monotonic() < deadline, "gunicorn never answered"
            time.sleep(0.2)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _run(ask, tmp_path, env), range(24)))
        workers = _children(master.pid)
    assert len(workers) == 2, "two uvicorn workers forked from the preloaded master"
    seen = set()
    for done in [first, *answers]:
        assert done.returncode == 0, done.stderr
        body = json.loads(done.stdout)
        seen.add(body["worker"])
        assert [r["text"] for r in body["results"]] == [r.text for r in expected]
        assert [r["score"] for r in body["results"]] == pytest.approx(
            [r.score for r in expected], abs=1e-6
        )
    assert seen <= workers, "every answer came from a forked worker, none from the master"
    assert master.returncode == 0, master.output  # type: ignore[attr-defined]
    assert "Traceback" not in master.output  # type: ignore[attr-defined]


CELERY_TEST_CONFIG = """
broker_url = "filesystem://"
broker_transport_options = {{
    "data_folder_in": "{broker}", "data_folder_out": "{broker}", "control_folder": "{control}",
}}
result_backend = "file://{results}"
"""


@pytest.mark.slow
def test_the_documented_celery_prefork_worker_reranks_in_its_forked_processes(
    bert_path: str, tmp_path: Path
) -> None:
    pytest.importorskip("celery")
    files, commands = _subsection("Celery")
    assert set(files) == {"tasks.py", "celeryconfig.py", "client.py"}, files
    assert "redis://" in files["celeryconfig.py"]  # what the test swaps for a file broker
    worker, client = commands
    assert "--pool prefork --concurrency 2" in worker
    for name in ("tasks.py", "client.py"):
        (tmp_path / name).write_text(files[name])
    folders = {k: tmp_path / k for k in ("broker", "control", "results")}
    for folder in folders.values():
        folder.mkdir()
    (tmp_path / "celeryconfig.py").write_text(CELERY_TEST_CONFIG.format(**folders))
    env = _environment(bert_path)
    texts = ["Paris is in France.", "RAG combines retrieval with generation."]
    expected = get_engine(bert_path, device="cpu").rerank("what is rag?", texts, top_n=3)

    with _server(worker, tmp_path, env) as proc:
        answers = [_run(client, tmp_path, env) for _ in range(3)]
        assert proc.poll() is None, "the worker is still up"
    for done in answers:
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout.strip().replace("'", '"'))
        assert [r["text"] for r in got] == [r.text for r in expected]
        assert [r["score"] for r in got] == pytest.approx([r.score for r in expected], abs=1e-6)
    log = proc.output  # type: ignore[attr-defined]
    assert proc.returncode == 0, log
    assert "Traceback" not in log, log
    assert "succeeded" in log, log
