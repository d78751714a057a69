"""The rerank server on a loopback port: both API shapes, concurrency, limits, auth, shutdown."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rerank_plugins import RerankEngine, get_engine
from rerank_plugins.results import select
from rerank_plugins.server import ServerMetrics, create_app
from rerank_plugins.server.protocol import MAX_RAW_SCORE, to_logit, to_probability
from tests._fakes import FakeBackend
from tests._models import SENTENCES, WORDS
from tests._serving import free_port, running

# Processes, servers, Ray, ONNX exports or the benchmark harness: the full lane only.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
QUERY = "what is rag retrieval augmented generation"
KEY = "s3cret-token"


class SlowBackend(FakeBackend):
    """The fake backend, with a pause in every forward pass (to keep requests in flight)."""

    def __init__(self, pause: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pause = pause

    def forward(self, batch):  # type: ignore[no-untyped-def]
        time.sleep(self.pause)
        return super().forward(batch)


@pytest.fixture(scope="module")
def url(bert_engine: RerankEngine) -> Iterator[str]:
    with running(create_app(bert_engine)) as base:
        yield base


@pytest.fixture(scope="module")
def guarded_url(bert_engine: RerankEngine) -> Iterator[str]:
    app = create_app(
        bert_engine, api_key=KEY, max_documents=5, max_text_bytes=200, max_request_bytes=4096
    )
    with running(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _error(response: httpx.Response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == error_type
    assert "Traceback" not in body["error"]
    return str(body["error"])


# ---------------------------------------------------------------------- the two API shapes


def test_tei_shape_answers_the_engines_scores_best_first(
    client: httpx.Client, bert_engine: RerankEngine
) -> None:
    expected = bert_engine.score(QUERY, SENTENCES)
    response = client.post("/rerank", json={"query": QUERY, "texts": SENTENCES})
    assert response.status_code == 200
    ranks = response.json()
    assert [r["index"] for r in ranks] == select(expected)
    assert {r["index"]: r["score"] for r in ranks} == dict(enumerate(expected))
    assert all(set(r) == {"index", "score"} for r in ranks)


def test_tei_return_text_echoes_each_text(client: httpx.Client) -> None:
    ranks = client.post(
        "/rerank", json={"query": QUERY, "texts": SENTENCES[:3], "return_text": True}
    ).json()
    assert all(r["text"] == SENTENCES[r["index"]] for r in ranks)


def test_cohere_shape_answers_the_same_scores(
    client: httpx.Client, bert_engine: RerankEngine
) -> None:
    expected = bert_engine.score(QUERY, SENTENCES)
    body = client.post("/rerank", json={"query": QUERY, "documents": SENTENCES}).json()
    assert set(body) >= {"id", "results"}
    results = body["results"]
    assert [r["index"] for r in results] == select(expected)
    assert {r["index"]: r["relevance_score"] for r in results} == dict(enumerate(expected))
    assert all("document" not in r for r in results)


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_cohere_paths_answer_with_top_n_and_documents(
    client: httpx.Client, bert_engine: RerankEngine, path: str
) -> None:
    documents: list[Any] = [{"text": t, "id": i} for i, t in enumerate(SENTENCES[:4])]
    documents += SENTENCES[4:6]
    payload = {
        "model": "whatever-the-client-sends",
        "query": QUERY,
        "documents": documents,
        "top_n": 3,
        "return_documents": True,
    }
    results = client.post(path, json=payload).json()["results"]
    expected = bert_engine.score(QUERY, SENTENCES[:6])
    assert [r["index"] for r in results] == select(expected, top_n=3)
    for r in results:
        doc = documents[r["index"]]
        assert r["document"] == (doc if isinstance(doc, dict) else {"text": doc})


def test_raw_scores_are_the_models_logits(client: httpx.Client, bert_path: str) -> None:
    raw_engine = get_engine(bert_path, device="cpu", normalize=False)
    logits = raw_engine.score(QUERY, SENTENCES)
    tei = client.post("/rerank", json={"query": QUERY, "texts": SENTENCES, "raw_scores": True})
    for r in tei.json():
        assert r["score"] == pytest.approx(logits[r["index"]], abs=1e-5)
    cohere = client.post(
        "/rerank", json={"query": QUERY, "documents": SENTENCES, "raw_scores": True}
    )
    for r in cohere.json()["results"]:
        assert r["relevance_score"] == pytest.approx(logits[r["index"]], abs=1e-5)


def test_a_raw_logit_engine_still_answers_probabilities_by_default(bert_path: str) -> None:
    raw_engine = get_engine(bert_path, device="cpu", normalize=False)
    probs = get_engine(bert_path, device="cpu").score(QUERY, SENTENCES)
    with running(create_app(raw_engine)) as base:
        ranks = httpx.post(f"{base}/rerank", json={"query": QUERY, "texts": SENTENCES}).json()
        raw = httpx.post(
            f"{base}/rerank", json={"query": QUERY, "texts": SENTENCES, "raw_scores": True}
        ).json()
    assert {r["index"]: r["score"] for r in ranks} == pytest.approx(
        dict(enumerate(probs)), abs=1e-5
    )
    assert {r["index"]: r["score"] for r in raw} == dict(
        enumerate(raw_engine.score(QUERY, SENTENCES))
    )


def test_raw_scores_round_trip_through_probabilities_and_saturate_finitely() -> None:
    for logit in (-200.0, -30.0, -1.5, 0.0, 2.0, 15.0):
        assert to_logit(to_probability(logit)) == pytest.approx(logit, abs=1e-9)
    assert to_logit(1.0) == MAX_RAW_SCORE
    assert 36 < MAX_RAW_SCORE < 37
    assert math.isfinite(to_logit(0.0)) and to_logit(0.0) < -700


def test_over_long_text_is_cut_by_default_and_refused_with_truncate_false(
    client: httpx.Client, long_text: str
) -> None:
    ok = client.post("/rerank", json={"query": QUERY, "texts": [long_text, "short"]})
    assert ok.status_code == 200
    refused = client.post(
        "/rerank", json={"query": QUERY, "texts": ["short", long_text], "truncate": False}
    )
    message = _error(refused, 413, "validation")
    assert "texts[1]" in message and "truncate=true" in message
    short = client.post("/rerank", json={"query": QUERY, "texts": ["short"], "truncate": False})
    assert short.status_code == 200


# ---------------------------------------------------------------------- concurrency


def test_fifty_concurrent_clients_each_get_their_own_answer(
    url: str, bert_engine: RerankEngine
) -> None:
    requests = [
        (f"{WORDS[i % len(WORDS)]} {WORDS[(3 * i) % len(WORDS)]} query {i}", SENTENCES[i % 7 :])
        for i in range(50)
    ]

    async def ask(client: httpx.AsyncClient, i: int) -> list[dict[str, Any]]:
        query, texts = requests[i]
        api = "texts" if i % 2 else "documents"
        response = await client.post("/rerank", json={"query": query, api: texts})
        assert response.status_code == 200
        body = response.json()
        return body if api == "texts" else body["results"]

    async def main() -> list[list[dict[str, Any]]]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(ask(client, i) for i in range(50)))

    answers = asyncio.run(main())
    for (query, texts), answer in zip(requests, answers, strict=True):
        expected = bert_engine.score(query, texts)
        got = {r["index"]: r.get("score", r.get("relevance_score")) for r in answer}
        assert got == dict(enumerate(expected))


def test_more_requests_than_the_concurrency_limit_get_429() -> None:
    engine = RerankEngine.from_backend(SlowBackend(1.5), cache_size=0)
    app = create_app(engine, max_concurrent_requests=1)
    try:
        with running(app) as base:

            async def main() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                    first = asyncio.create_task(
                        client.post("/rerank", json={"query": "q", "texts": ["a"]})
                    )
                    while "rerank_requests_in_flight 1" not in (await client.get("/metrics")).text:
                        await asyncio.sleep(0.01)  # until the first is in the slow forward pass
                    second = await client.post("/rerank", json={"query": "q", "texts": ["b"]})
                    return [await first, second]

            first, second = asyncio.run(main())
    finally:
        engine.close()
    assert first.status_code == 200
    assert "overloaded" in _error(second, 429, "overloaded").lower()


# ---------------------------------------------------------------------- errors and limits

BAD_BODIES = {
    "not json": b"{query: 1",
    "not an object": b'["q", ["a"]]',
    "empty body": b"",
    "neither texts nor documents": b'{"query": "q"}',
    "both texts and documents": b'{"query": "q", "texts": ["a"], "documents": ["a"]}',
    "query not a string": b'{"query": 3, "texts": ["a"]}',
    "query missing": b'{"texts": ["a"]}',
    "query blank": b'{"query": "  ", "texts": ["a"]}',
    "texts not a list": b'{"query": "q", "texts": "a"}',
    "a text not a string": b'{"query": "q", "texts": ["a", 2]}',
    "document object without text": b'{"query": "q", "documents": [{"body": "a"}]}',
    "document a number": b'{"query": "q", "documents": [1]}',
    "flag not boolean": b'{"query": "q", "texts": ["a"], "raw_scores": "yes"}',
    "top_n zero": b'{"query": "q", "documents": ["a"], "top_n": 0}',
    "top_n a string": b'{"query": "q", "documents": ["a"], "top_n": "2"}',
    "left truncation": b'{"query": "q", "texts": ["a"], "truncation_direction": "Left"}',
    "not utf-8": b'{"query": "\xff\xfe", "texts": ["a"]}',
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_malformed_requests_get_422_with_a_json_error(client: httpx.Client, name: str) -> None:
    response = client.post(
        "/rerank", content=BAD_BODIES[name], headers={"content-type": "application/json"}
    )
    message = _error(response, 422, "validation")
    assert message.endswith((".", ")")), message


@pytest.mark.parametrize("field", ["texts", "documents"])
def test_an_empty_list_gets_400(client: httpx.Client, field: str) -> None:
    response = client.post("/rerank", json={"query": "q", field: []})
    assert "cannot be empty" in _error(response, 400, "empty")


def test_too_many_documents_get_413(guarded_url: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    response = httpx.post(
        f"{guarded_url}/rerank", json={"query": "q", "texts": ["a"] * 6}, headers=headers
    )
    assert "batch size 6 > maximum allowed batch size 5" in _error(response, 413, "validation")
    ok = httpx.post(
        f"{guarded_url}/rerank", json={"query": "q", "texts": ["a"] * 5}, headers=headers
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        ({"query": "q", "texts": ["a", "é" * 101]}, "texts[1] is 202 bytes"),
        ({"query": "q", "documents": [{"text": "x" * 201}]}, "documents[0] is 201 bytes"),
        ({"query": "q" * 201, "texts": ["a"]}, "the query is 201 bytes"),
    ],
)
def test_texts_over_the_byte_limit_get_413(
    guarded_url: str, payload: dict[str, Any], where: str
) -> None:
    response = httpx.post(
        f"{guarded_url}/rerank", json=payload, headers={"Authorization": f"Bearer {KEY}"}
    )
    assert where in _error(response, 413, "validation")


def test_a_body_over_the_request_limit_gets_413(guarded_url: str) -> None:
    body = json.dumps({"query": "q", "texts": ["word " * 30] * 40}).encode()
    assert len(body) > 4096
    response = httpx.post(
        f"{guarded_url}/rerank",
        content=body,
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert "limit is 4096 bytes" in _error(response, 413, "validation")


def test_a_chunked_body_over_the_request_limit_gets_413(guarded_url: str) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"query": "q", "texts": ['
        for _ in range(100):
            yield b'"' + b"x" * 60 + b'",'
        yield b'"end"]}'

    response = httpx.post(
        f"{guarded_url}/rerank",
        content=chunks(),
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    _error(response, 413, "validation")


def test_a_model_failure_gets_500_without_a_traceback() -> None:
    engine = RerankEngine.from_backend(FakeBackend(fail=lambda pairs: True), cache_size=0)
    try:
        with running(create_app(engine)) as base:
            response = httpx.post(f"{base}/rerank", json={"query": "q", "texts": ["a", "b"]})
    finally:
        engine.close()
    assert "injected fault" in _error(response, 500, "backend")


def test_a_closed_engine_makes_the_server_unhealthy() -> None:
    engine = RerankEngine.from_backend(FakeBackend())
    with running(create_app(engine)) as base:
        assert httpx.get(f"{base}/health").status_code == 200
        engine.close()
        _error(httpx.get(f"{base}/health"), 503, "unhealthy")
        response = httpx.post(f"{base}/rerank", json={"query": "q", "texts": ["a"]})
        _error(response, 503, "unhealthy")


def test_unknown_fields_are_ignored(client: httpx.Client) -> None:
    payload = {"query": "q", "documents": ["a"], "model": "x", "max_tokens_per_doc": 4096}
    assert client.post("/v2/rerank", json=payload).status_code == 200


# ---------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"X-Api-Key": KEY}],
    ids=["none", "wrong", "no-scheme", "other-header"],
)
@pytest.mark.parametrize("route", ["POST /rerank", "GET /info", "GET /metrics"])
def test_a_missing_or_wrong_token_gets_401(
    guarded_url: str, headers: dict[str, str], route: str
) -> None:
    method, path = route.split()
    response = httpx.request(
        method, f"{guarded_url}{path}", json={"query": "q", "texts": ["a"]}, headers=headers
    )
    assert "Authorization: Bearer" in _error(response, 401, "auth")
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_right_token_is_let_in_and_health_needs_none(guarded_url: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    ok = httpx.post(f"{guarded_url}/rerank", json={"query": "q", "texts": ["a"]}, headers=headers)
    assert ok.status_code == 200
    assert httpx.get(f"{guarded_url}/info", headers=headers).status_code == 200
    assert httpx.get(f"{guarded_url}/health").json() == {"status": "ok"}


@pytest.mark.parametrize(
    "header",
    [f"bearer {KEY}", f"BEARER {KEY}", f"bEaReR {KEY}", f"Bearer   {KEY}", f"bearer\t{KEY}"],
    ids=["lowercase", "uppercase", "mixed-case", "several-spaces", "tab"],
)
def test_the_bearer_scheme_is_case_insensitive(guarded_url: str, header: str) -> None:
    headers = {"Authorization": header}
    ok = httpx.post(f"{guarded_url}/rerank", json={"query": "q", "texts": ["a"]}, headers=headers)
    assert ok.status_code == 200, ok.text
    assert httpx.get(f"{guarded_url}/info", headers=headers).status_code == 200


@pytest.mark.parametrize(
    "header",
    ["bearer wrong", "BEARER wrong", f"bearer {KEY}x", f"bearer {KEY.upper()}", f"Basic {KEY}"],
    ids=["lowercase-wrong", "uppercase-wrong", "longer", "key-case-changed", "other-scheme"],
)
def test_a_wrong_key_gets_401_whatever_the_schemes_case(guarded_url: str, header: str) -> None:
    response = httpx.post(
        f"{guarded_url}/rerank",
        json={"query": "q", "texts": ["a"]},
        headers={"Authorization": header},
    )
    _error(response, 401, "auth")


def test_an_empty_api_key_is_refused(bert_engine: RerankEngine) -> None:
    with pytest.raises(ValueError, match="api_key is empty"):
        create_app(bert_engine, api_key=" ")


@pytest.mark.parametrize("limit", ["max_documents", "max_text_bytes", "max_concurrent_requests"])
def test_limits_must_be_positive(bert_engine: RerankEngine, limit: str) -> None:
    with pytest.raises(ValueError, match=f"{limit} must be a positive int"):
        create_app(bert_engine, **{limit: 0})


# ---------------------------------------------------------------------- health, info, metrics


def test_info_describes_the_model_and_the_limits(
    client: httpx.Client, bert_engine: RerankEngine
) -> None:
    info = client.get("/info").json()
    assert info["model_id"] == bert_engine.info.model
    assert info["model_type"] == "reranker"
    assert info["max_input_length"] == bert_engine.info.max_length
    assert info["max_client_batch_size"] == 1000
    assert info["score_scale"] == "probability"
    assert info["auth"] is False
    assert info["engine"]["backend"] == bert_engine.info.backend


def test_metrics_count_requests_pairs_latency_and_engine_batches(client: httpx.Client) -> None:
    def sample(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{name} not in metrics")

    before = client.get("/metrics").text
    client.post("/rerank", json={"query": "metrics query", "texts": SENTENCES[:4]})
    client.post("/rerank", json={"query": "metrics query", "documents": SENTENCES[:4]})
    client.post("/rerank", content=b"nope")
    response = client.get("/metrics")
    after = response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert sample(after, "rerank_pairs_total") - sample(before, "rerank_pairs_total") == 8
    assert sample(after, "rerank_cache_hits_total") - sample(before, "rerank_cache_hits_total") >= 4
    count = "rerank_request_duration_seconds_count"
    assert sample(after, count) - sample(before, count) == 3
    assert 'rerank_requests_total{api="cohere",status="200"}' in after
    assert 'rerank_requests_total{api="unknown",status="422"}' in after
    assert 'rerank_request_duration_seconds_bucket{le="+Inf"}' in after
    assert sample(after, "rerank_batch_size_mean") > 0
    for line in after.splitlines():  # every line is a comment or "name{labels} number"
        assert line.startswith("#") or float(line.rsplit(" ", 1)[1]) >= 0


def test_histograms_are_cumulative() -> None:
    metrics = ServerMetrics()
    for seconds in (0.001, 0.02, 0.02, 100.0):
        metrics.record("tei", 200, documents=2, seconds=seconds)
    lines = metrics.render().splitlines()
    assert 'rerank_request_duration_seconds_bucket{le="0.005"} 1' in lines
    assert 'rerank_request_duration_seconds_bucket{le="0.025"} 3' in lines
    assert 'rerank_request_duration_seconds_bucket{le="30.0"} 3' in lines
    assert 'rerank_request_duration_seconds_bucket{le="+Inf"} 4' in lines
    assert "rerank_pairs_total 8" in lines


# ---------------------------------------------------------------------- a real process


def _start(code: str, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{proc.stdout.read()}")  # type: ignore[union-attr]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start within 60 s")


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"server did not stop on SIGTERM:\n{out}") from None
    return proc.returncode, out


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_then_exits_0() -> None:
    port = free_port()
    proc = _start(
        f"""
        from rerank_plugins import RerankEngine
        from rerank_plugins.server import serve
        from tests.test_server import SlowBackend

        engine = RerankEngine.from_backend(SlowBackend(1.0), cache_size=0, max_batch_size=1)
        serve(engine, port={port}, log_level="warning")
        assert engine.closed is False  # serve() leaves an engine it did not build open
        print("serve returned", flush=True)
        """,
        port,
    )
    base = f"http://127.0.0.1:{port}"
    answers: dict[int, httpx.Response | BaseException] = {}

    def ask(i: int) -> None:
        try:
            answers[i] = httpx.post(
                f"{base}/rerank", json={"query": f"q{i}", "texts": [f"t{i}"]}, timeout=60
            )
        except BaseException as exc:
            answers[i] = exc

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while "rerank_requests_in_flight 4" not in httpx.get(f"{base}/metrics").text:
        assert time.monotonic() < deadline, "the requests never got in flight"
        time.sleep(0.02)
    code, out = _stop(proc)  # the forward passes take ~4 s in all: they are still running
    for t in threads:
        t.join(30)
    assert code == 0, out
    assert "serve returned" in out
    assert "Traceback" not in out
    for i in range(4):
        response = answers[i]
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200
        assert [r["index"] for r in response.json()] == [0]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/health", timeout=2)


@pytest.mark.slow
def test_serve_command_serves_a_model_and_stops_cleanly(
    bert_path: str, bert_engine: RerankEngine
) -> None:
    port = free_port()
    proc = _start(
        f"""
        from rerank_plugins.cli._common import ArgumentParser
        from rerank_plugins.cli import serve

        parser = ArgumentParser(prog="rerank-plugins")
        serve.register(parser.add_subparsers())
        args = parser.parse_args(["serve", "--model", {bert_path!r}, "--port", "{port}",
                                  "--device", "cpu"])
        args.verbose = 0
        raise SystemExit(args.run(args))
        """,
        port,
    )
    try:
        ranks = httpx.post(
            f"http://127.0.0.1:{port}/rerank", json={"query": QUERY, "texts": SENTENCES}
        ).json()
    finally:
        code, out = _stop(proc)
    # Another process: batches there may differ from this engine's, which moves fp32 scores by
    # ~1e-7, so this compares within a tolerance.
    expected = bert_engine.score(QUERY, SENTENCES)
    assert {r["index"]: r["score"] for r in ranks} == pytest.approx(
        dict(enumerate(expected)), abs=1e-5
    )
    assert code == 0, out
    assert f"http://127.0.0.1:{port}" in out  # uvicorn says where it listens
    assert "Traceback" not in out


def test_serve_command_rejects_bad_arguments() -> None:
    from rerank_plugins.cli import serve
    from rerank_plugins.cli._common import ArgumentParser, CliError

    parser = ArgumentParser(prog="rerank-plugins")
    serve.register(parser.add_subparsers())
    for argv, message in [
        (["serve", "--port", "70000"], "--port must be between 0 and 65535"),
        (["serve", "--max-documents", "0"], "--max-documents must be at least 1"),
        (["serve", "--api-key", " "], "the API key is empty"),
    ]:
        args = parser.parse_args(argv)
        with pytest.raises(CliError, match=message):
            serve.run(args)
