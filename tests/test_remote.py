"""RemoteEngine against the rerank server on loopback: same scores, same adapters, retries."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rerank_plugins import RerankEngine, Scorer
from rerank_plugins.langchain import RerankCompressor
from rerank_plugins.llama_index import RerankPostprocessor
from rerank_plugins.remote import RemoteApi, RemoteEngine, RemoteError
from rerank_plugins.results import RerankResult
from rerank_plugins.server import create_app
from tests._models import SENTENCES
from tests._serving import ClientPorts, free_port, running

# Processes, servers, Ray, ONNX exports or the benchmark harness: the full lane only.
pytestmark = pytest.mark.slow

QUERY = "what is rag retrieval augmented generation"
KEY = "remote-key"


@pytest.fixture(scope="module")
def url(bert_engine: RerankEngine) -> Iterator[str]:
    with running(create_app(bert_engine, api_key=KEY)) as base:
        yield base


@pytest.fixture(params=["tei", "cohere", "infinity"])
def remote(request: pytest.FixtureRequest, url: str) -> Iterator[RemoteEngine]:
    with RemoteEngine(url, api=request.param, api_key=KEY, batch_size=4) as engine:
        yield engine


class Scripted:
    """A stand-in server that answers a scripted sequence of statuses, counting the calls."""

    def __init__(
        self,
        statuses: list[int],
        *,
        delay: float = 0.0,
        body: Any = None,
        info: Any = None,
        info_failures: int = 0,
    ) -> None:
        self.statuses = statuses
        self.delay = delay
        self.body = body
        self.info = info
        self.info_failures = info_failures
        self.calls = 0
        self.info_calls = 0
        self.sizes: list[int] = []

    async def rerank(self, request: Request) -> Response:
        self.calls += 1
        status = self.statuses[min(self.calls - 1, len(self.statuses) - 1)]
        if self.delay:
            await asyncio.sleep(self.delay)
        if status != 200:
            headers = {"Retry-After": "0"} if status == 429 else None
            return JSONResponse({"error": f"scripted {status}"}, status, headers=headers)
        if self.body is not None:
            return JSONResponse(self.body)
        payload = await request.json()
        self.sizes.append(len(payload["texts"]))
        return JSONResponse([{"index": i, "score": 0.5} for i in range(len(payload["texts"]))])

    async def describe(self, request: Request) -> Response:
        self.info_calls += 1
        if self.info_calls <= self.info_failures:
            return JSONResponse({"error": "scripted 503"}, 503)
        return JSONResponse(self.info)

    def app(self) -> Starlette:
        routes = [Route("/rerank", self.rerank, methods=["POST"])]
        if self.info is not None:  # else GET /info is a 404, as on servers without it
            routes.append(Route("/info", self.describe, methods=["GET"]))
        return Starlette(routes=routes)


# ---------------------------------------------------------------------- same answers as local


def test_a_remote_engine_is_a_scorer(remote: RemoteEngine) -> None:
    assert isinstance(remote, Scorer)


def test_scores_equal_the_local_engines_in_input_order(
    remote: RemoteEngine, bert_engine: RerankEngine
) -> None:
    assert remote.score(QUERY, SENTENCES) == bert_engine.score(QUERY, SENTENCES)


def test_rerank_equals_the_local_engines(remote: RemoteEngine, bert_engine: RerankEngine) -> None:
    for top_n, threshold in [(None, None), (3, None), (None, 0.5), (2, 0.3)]:
        got = remote.rerank(QUERY, SENTENCES, top_n=top_n, score_threshold=threshold)
        want = bert_engine.rerank(QUERY, SENTENCES, top_n=top_n, score_threshold=threshold)
        assert [(r.index, r.score, r.text) for r in got] == [
            (r.index, r.score, r.text) for r in want
        ]


def test_async_methods_match_and_run_concurrently(
    remote: RemoteEngine, bert_engine: RerankEngine
) -> None:
    async def main() -> tuple[list[float], list[Any]]:
        scores, ranked = await asyncio.gather(
            remote.ascore(QUERY, SENTENCES), remote.arerank(QUERY, SENTENCES, top_n=2)
        )
        return scores, ranked

    scores, ranked = asyncio.run(main())
    assert scores == bert_engine.score(QUERY, SENTENCES)
    assert [r.index for r in ranked] == [r.index for r in bert_engine.rerank(QUERY, SENTENCES, 2)]
    # A second event loop gets its own connection pool rather than the closed loop's.
    assert asyncio.run(remote.ascore(QUERY, SENTENCES[:2])) == scores[:2]


def test_long_lists_are_split_into_batch_size_requests(url: str) -> None:
    with RemoteEngine(url, api_key=KEY, batch_size=3) as engine:
        engine.score(QUERY, SENTENCES)
        assert engine.stats()["requests"] == 4  # 10 texts in 3 + 3 + 3 + 1
        assert engine.stats()["pairs"] == 10


# ---------------------------------------------------------------------- the server's limits


@pytest.fixture(scope="module")
def five_per_request_url(bert_engine: RerankEngine) -> Iterator[str]:
    with running(create_app(bert_engine, api_key=KEY, max_documents=5)) as base:
        yield base


@pytest.mark.parametrize("api", ["tei", "cohere", "infinity"])
def test_requests_stay_within_the_max_documents_the_server_advertises(
    five_per_request_url: str, bert_engine: RerankEngine, api: RemoteApi
) -> None:
    texts = [f"{SENTENCES[i % len(SENTENCES)]} ({i})" for i in range(23)]
    want = bert_engine.score(QUERY, texts)
    threshold = sorted(want)[8]

    def ranked(results: list[RerankResult]) -> list[tuple[int, float, str]]:
        return [(r.index, r.score, r.text) for r in results]

    # The default batch (32 texts for TEI, 1,000 for the others) is over the server's 5.
    with RemoteEngine(five_per_request_url, api=api, api_key=KEY) as engine:
        assert engine.score(QUERY, texts) == want
        assert engine.stats()["requests"] == 5  # 5 + 5 + 5 + 5 + 3
        assert engine.info.batch_size == 5
        got = engine.rerank(QUERY, texts, top_n=7, score_threshold=threshold)
        assert ranked(got) == ranked(bert_engine.rerank(QUERY, texts, 7, threshold))
        assert asyncio.run(engine.ascore(QUERY, texts)) == want
        got = asyncio.run(engine.arerank(QUERY, texts, top_n=7, score_threshold=threshold))
        assert ranked(got) == ranked(bert_engine.rerank(QUERY, texts, 7, threshold))


@pytest.mark.parametrize(
    ("advertised", "batch_size", "sizes"),
    [(2, None, [2, 2, 1]), (2, 1, [1] * 5), (1000, 3, [3, 2]), ("many", 3, [3, 2])],
    ids=["server-limit-wins", "smaller-batch-size-wins", "larger-limit-ignored", "not-a-number"],
)
def test_the_servers_limit_is_read_once_and_caps_batch_size(
    advertised: Any, batch_size: int | None, sizes: list[int]
) -> None:
    script = Scripted([200], info={"max_client_batch_size": advertised})
    with running(script.app()) as base, RemoteEngine(base, batch_size=batch_size) as engine:
        assert engine.score(QUERY, list("abcde")) == [0.5] * 5
        assert asyncio.run(engine.ascore(QUERY, list("abcde"))) == [0.5] * 5
        assert engine.score(QUERY, list("abcde")) == [0.5] * 5
    assert script.info_calls == 1
    assert sorted(script.sizes, reverse=True) == sorted(sizes * 3, reverse=True)


def test_an_info_answer_that_may_pass_is_asked_again_on_the_next_call() -> None:
    script = Scripted([200], info={"max_client_batch_size": 2}, info_failures=1)
    with running(script.app()) as base, RemoteEngine(base) as engine:
        assert engine.score(QUERY, list("abcde")) == [0.5] * 5  # /info said 503: batch_size
        assert engine.score(QUERY, list("abcde")) == [0.5] * 5
        assert engine.score(QUERY, list("abcde")) == [0.5] * 5
    assert script.info_calls == 2
    assert script.sizes == [5, 2, 2, 1, 2, 2, 1]


def test_a_server_without_info_gets_batch_size_requests() -> None:
    script = Scripted([200])
    with running(script.app()) as base, RemoteEngine(base, batch_size=3) as engine:
        assert engine.score(QUERY, list("abcdefg")) == [0.5] * 7
        assert engine.score(QUERY, list("abcdefg")) == [0.5] * 7
        assert engine.info.batch_size == 3
    assert script.sizes == [3, 3, 1, 3, 3, 1]


# ---------------------------------------------------------------------- forked workers

# The engine a fork-context pool's workers inherit, as a module-level engine made at import
# time would be.
_PRE_FORK: RemoteEngine | None = None


def _score_in_child(calls: int) -> tuple[int, list[list[float]]]:
    """A pool worker: score through the inherited engine, sync and async."""
    if _PRE_FORK is None:
        msg = "_PRE_FORK is not set; the test sets it before it forks."
        raise RuntimeError(msg)
    answers = [_PRE_FORK.score(QUERY, SENTENCES[:3]) for _ in range(calls)]
    answers.append(asyncio.run(_PRE_FORK.ascore(QUERY, SENTENCES[:3])))
    return os.getpid(), answers


@pytest.mark.timeout(300)
def test_an_engine_made_before_a_fork_opens_its_own_connections_in_each_child(
    bert_engine: RerankEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ClientPorts(create_app(bert_engine))
    with running(server) as base, RemoteEngine(base, max_retries=0) as engine:
        want = engine.score(QUERY, SENTENCES[:3])
        (parent_port,) = server.ports  # the keep-alive connection the children inherit
        monkeypatch.setattr(sys.modules[__name__], "_PRE_FORK", engine)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            # The timeout only guards against a hang; the answers come back in seconds.
            done = pool.map_async(_score_in_child, [30] * 4, chunksize=1).get(timeout=240)
        # The parent's own connection pool still works after its children have gone.
        assert engine.score(QUERY, SENTENCES[:3]) == want

    assert {pid for pid, _ in done}.isdisjoint({os.getpid()})
    assert all(answer == want for _, answers in done for answer in answers)
    children_ports = server.ports[1 : 1 + 4 * 31]
    assert len(children_ports) == 4 * 31
    assert parent_port not in children_ports


def test_empty_texts_answer_empty_without_a_request(remote: RemoteEngine) -> None:
    assert remote.score(QUERY, []) == []
    assert remote.rerank(QUERY, []) == []
    assert asyncio.run(remote.arerank(QUERY, [])) == []
    assert remote.stats()["requests"] == 0


def test_bad_input_fails_before_any_request(remote: RemoteEngine) -> None:
    with pytest.raises(ValueError, match="query is empty"):
        remote.score("  ", ["a"])
    with pytest.raises(TypeError, match="single string"):
        remote.score(QUERY, "a text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        remote.rerank(QUERY, ["a", 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="top_n must be >= 1"):
        remote.rerank(QUERY, ["a"], top_n=0)
    assert remote.stats()["requests"] == 0


# ---------------------------------------------------------------------- behind the adapters


def test_langchain_compressor_works_unchanged_against_the_server(
    url: str, bert_engine: RerankEngine
) -> None:
    docs = [Document(page_content=t, metadata={"n": i}) for i, t in enumerate(SENTENCES)]
    with RemoteEngine(url, api_key=KEY) as remote:
        over_http = RerankCompressor(engine=remote, top_n=3)
        local = RerankCompressor(engine=bert_engine, top_n=3)
        got = over_http.compress_documents(docs, QUERY)
        assert got == local.compress_documents(docs, QUERY)
        assert asyncio.run(over_http.acompress_documents(docs, QUERY)) == got
    assert [d.metadata["relevance_score"] for d in got] == sorted(
        bert_engine.score(QUERY, SENTENCES), reverse=True
    )[:3]


def test_llama_index_postprocessor_works_unchanged_against_the_server(
    url: str, bert_engine: RerankEngine
) -> None:
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}")) for i, t in enumerate(SENTENCES)]
    bundle = QueryBundle(QUERY)

    def summary(ranked: list[NodeWithScore]) -> list[tuple[str, float | None]]:
        return [(n.node.node_id, n.score) for n in ranked]

    with RemoteEngine(url, api="cohere", api_key=KEY) as remote:
        over_http = RerankPostprocessor(engine=remote, top_n=4)
        local = RerankPostprocessor(engine=bert_engine, top_n=4)
        got = over_http.postprocess_nodes(nodes, bundle)
        assert summary(got) == summary(local.postprocess_nodes(nodes, bundle))
        again = asyncio.run(over_http.apostprocess_nodes(nodes, bundle))
        assert summary(again) == summary(got)


# ---------------------------------------------------------------------- failures and retries


def test_a_wrong_key_fails_at_once_with_the_status(url: str) -> None:
    with RemoteEngine(url, api_key="wrong", backoff=0.01) as engine:
        with pytest.raises(RemoteError, match="answered 401") as info:
            engine.score(QUERY, ["a"])
        assert info.value.status == 401
        assert info.value.url == f"{url}/rerank"
        assert "api_key" in str(info.value)
        assert engine.stats() == {"requests": 1, "pairs": 0, "retries": 0, "failures": 1}


def test_a_validation_error_is_not_retried_and_names_the_servers_message(url: str) -> None:
    too_long = "a" * (64 * 1024 + 1)  # the server's default max_text_bytes is 64 KiB
    with RemoteEngine(url, api_key=KEY) as engine:
        with pytest.raises(RemoteError, match="the limit is 65536 bytes per text") as info:
            engine.score(QUERY, ["a", too_long])
        assert info.value.status == 413
        assert engine.stats()["requests"] == 1


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_and_rate_limits_are_retried(status: int) -> None:
    script = Scripted([status, status, 200])
    with running(script.app()) as base, RemoteEngine(base, backoff=0.01) as engine:
        assert engine.score(QUERY, ["a", "b"]) == [0.5, 0.5]
        assert asyncio.run(engine.ascore(QUERY, ["a"])) == [0.5]
    assert script.calls == 4
    assert engine.stats()["retries"] == 2


def test_retries_give_up_after_max_retries_with_the_last_status() -> None:
    script = Scripted([503])
    with (
        running(script.app()) as base,
        RemoteEngine(base, max_retries=2, backoff=0.01) as engine,
        pytest.raises(RemoteError, match="answered 503: scripted 503") as info,
    ):
        engine.score(QUERY, ["a"])
    assert info.value.status == 503
    assert script.calls == 3


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    engine = RemoteEngine("http://127.0.0.1:9", backoff=0.1, max_backoff=0.3)
    waits = [engine._delay(attempt, None) for attempt in range(4)]
    for wait, ceiling in zip(waits, [0.1, 0.2, 0.3, 0.3], strict=True):
        assert ceiling / 2 <= wait <= ceiling
    assert engine._delay(0, "2") == 2.0  # Retry-After wins


def test_an_unreachable_server_fails_after_the_retries_naming_the_url() -> None:
    port = free_port()
    engine = RemoteEngine(f"http://127.0.0.1:{port}", max_retries=2, backoff=0.01)
    with pytest.raises(RemoteError, match=f"could not reach .*127.0.0.1:{port}.* 3 attempt"):
        engine.score(QUERY, ["a"])
    with pytest.raises(RemoteError, match="3 attempt") as info:
        asyncio.run(engine.ascore(QUERY, ["a"]))
    assert info.value.status is None
    assert engine.stats()["retries"] == 4


def test_a_slow_server_times_out() -> None:
    script = Scripted([200], delay=1.0)
    with running(script.app()) as base:
        engine = RemoteEngine(base, timeout=0.2, max_retries=0)
        # Waiting out the server's delay would get its 200: only the timeout raises.
        with pytest.raises(RemoteError, match="ReadTimeout"):
            engine.score(QUERY, ["a"])
        engine.close()


def test_a_call_timeout_bounds_the_whole_call_retries_included() -> None:
    script = Scripted([200], delay=1.0)
    with running(script.app()) as base:
        engine = RemoteEngine(base, timeout=5.0, max_retries=5)
        # Each attempt would get the server's 200 after its delay, well within the per-attempt
        # timeout: only the call's own timeout raises.
        with pytest.raises(TimeoutError, match="did not finish within its timeout"):
            engine.score(QUERY, ["a"], timeout=0.3)
        with pytest.raises(TimeoutError):
            asyncio.run(engine.arerank(QUERY, ["a"], timeout=0.3))
        engine.close()


@pytest.mark.parametrize(
    "body",
    [{"unexpected": True}, [{"index": 5, "score": 0.1}], [{"index": 0}], []],
    ids=["wrong-shape", "index-out-of-range", "no-score", "missing-results"],
)
def test_a_malformed_answer_is_an_error_not_wrong_scores(body: Any) -> None:
    script = Scripted([200], body=body)
    with (
        running(script.app()) as base,
        RemoteEngine(base) as engine,
        pytest.raises(RemoteError, match="rerank server at"),
    ):
        engine.score(QUERY, ["a"])


def test_a_closed_engine_refuses_calls(url: str) -> None:
    engine = RemoteEngine(url, api_key=KEY)
    assert engine.score(QUERY, ["a"])
    engine.close()
    assert engine.closed
    with pytest.raises(RemoteError, match="is closed"):
        engine.score(QUERY, ["a"])
    engine.close()  # idempotent


def test_aclose_closes_the_async_pool(url: str) -> None:
    async def main() -> None:
        async with RemoteEngine(url, api_key=KEY) as engine:
            assert await engine.ascore(QUERY, ["a"])
        assert engine.closed

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "127.0.0.1:8080"}, "url must start with http"),
        ({"api": "openai"}, "unknown api 'openai'"),
        ({"path": "rerank"}, "path must start with '/'"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"max_retries": -1}, "max_retries must be an int >= 0"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    kwargs = {"url": "http://127.0.0.1:8080", **kwargs}
    with pytest.raises(ValueError, match=message):
        RemoteEngine(**kwargs)


def test_the_request_shape_follows_the_api() -> None:
    tei = RemoteEngine("http://h", api="tei")._payload("q", ["a"])
    assert tei == {
        "query": "q",
        "texts": ["a"],
        "truncate": True,
        "raw_scores": False,
        "return_text": False,
    }
    cohere = RemoteEngine("http://h", api="cohere", model="rerank-v3.5")
    assert cohere.url == "http://h/v1/rerank"
    assert cohere._payload("q", ["a", "b"]) == {
        "query": "q",
        "documents": ["a", "b"],
        "top_n": 2,
        "return_documents": False,
        "model": "rerank-v3.5",
    }
    infinity = RemoteEngine("http://h/", api="infinity", raw_scores=True)
    assert infinity.url == "http://h/rerank"
    assert infinity._payload("q", ["a"])["raw_scores"] is True
