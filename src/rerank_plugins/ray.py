"""Ray integration: rerank a large table with Ray Data, or serve the engine with Ray Serve.

Ray is an optional extra (``pip install 'rerank-plugins[ray]'``); it is imported only when a
function here needs it. Each Ray actor or Serve replica holds one engine, loaded once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.contract import Scorer
from rerank_plugins.registry import get_engine
from rerank_plugins.results import RerankResult, check_query, check_texts, select

__all__ = ["RerankBatch", "build_deployment", "rerank_dataset"]

_PURPOSE = "rerank_plugins.ray"


class RerankBatch:
    """A Ray Data callable class: scores and ranks the candidates of each (query, candidates) row.

    Give it to ``Dataset.map_batches``; Ray builds one instance per actor, so each actor loads
    the model once (through `get_engine`) and reuses it for every batch. All rows of a batch
    are submitted together, so the engine packs pairs of different queries into shared forward
    passes. Batches may be pandas DataFrames, pyarrow Tables or dicts of numpy arrays (Ray's
    ``batch_format``); the answer has the same kind, with two new columns:

    - ``scores``: one float per candidate, in candidate order (the engine's scale);
    - ``ranks``: each candidate's rank, 1 for the best (ties keep candidate order).

    Args:
        model: Hub id or local folder of a cross-encoder.
        query_column: Column holding the query of each row.
        candidates_column: Column holding each row's list of candidate texts.
        scores_column: Name of the new scores column.
        ranks_column: Name of the new ranks column.
        engine: An existing scorer instead of ``model`` (for use outside Ray, or tests).
        **engine_options: Engine options (``device``, ``max_length``, ``batch_tokens`` ...).

    Raises:
        TypeError: Not exactly one of ``model`` and ``engine``.

    Examples:
        >>> import pandas as pd
        >>> from rerank_plugins.ray import RerankBatch
        >>> rerank = RerankBatch("cross-encoder/ms-marco-MiniLM-L-6-v2")  # doctest: +SKIP
        >>> table = pd.DataFrame({"query": ["what is rag?"], "candidates": [["RAG is", "Cats"]]})
        >>> rerank(table)[["scores", "ranks"]]  # doctest: +SKIP
                         scores   ranks
        0  [0.97, 0.0003]  [1, 2]
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        query_column: str = "query",
        candidates_column: str = "candidates",
        scores_column: str = "scores",
        ranks_column: str = "ranks",
        engine: Scorer | None = None,
        **engine_options: Any,
    ) -> None:
        if (model is None) == (engine is None):
            msg = "RerankBatch needs exactly one of model= (a hub id or folder) and engine=."
            raise TypeError(msg)
        if engine is not None and engine_options:
            msg = "engine options only apply with model=; the given engine has its own."
            raise TypeError(msg)
        if engine is None:
            engine = get_engine(str(model), **engine_options)
        self.engine: Scorer = engine
        self.query_column = query_column
        self.candidates_column = candidates_column
        self.scores_column = scores_column
        self.ranks_column = ranks_column

    def __call__(self, batch: Any) -> Any:
        """Score one batch; returns a new batch of the same kind with scores and ranks added.

        Raises:
            KeyError: The query or candidates column is missing.
            TypeError: A query is not a string, or a candidate is not a string.
            ValueError: A query is empty.
        """
        queries, candidates = self._columns(batch)
        scores = score_rows(self.engine, queries, candidates)
        ranks = [_ranks(row) for row in scores]
        return self._attach(batch, scores, ranks)

    def _columns(self, batch: Any) -> tuple[list[str], list[list[str]]]:
        names = list(batch.column_names) if hasattr(batch, "column_names") else list(batch)
        for column in (self.query_column, self.candidates_column):
            if column not in names:
                msg = (
                    f"the batch has no column {column!r} (it has: {', '.join(map(str, names))}); "
                    "name the columns with query_column= and candidates_column=."
                )
                raise KeyError(msg)
        queries, candidates = batch[self.query_column], batch[self.candidates_column]
        if hasattr(queries, "to_pylist"):  # pyarrow
            queries, candidates = queries.to_pylist(), candidates.to_pylist()
        rows: list[list[str]] = []
        for i, cands in enumerate(candidates):
            if cands is None:
                rows.append([])
                continue
            try:
                rows.append([_plain(t) for t in check_texts(list(cands))])
            except TypeError as exc:
                msg = f"row {i} of {self.candidates_column!r}: {exc}"
                raise TypeError(msg) from None
        return [_plain(q) for q in queries], rows

    def _attach(self, batch: Any, scores: list[list[float]], ranks: list[list[int]]) -> Any:
        if hasattr(batch, "assign"):  # pandas: a new frame, the caller's is left as it was
            return batch.assign(**{self.scores_column: scores, self.ranks_column: ranks})
        if hasattr(batch, "append_column"):  # pyarrow
            pa = require("pyarrow", extra="ray", purpose=_PURPOSE)
            table = batch.append_column(
                self.scores_column, pa.array(scores, pa.list_(pa.float64()))
            )
            return table.append_column(self.ranks_column, pa.array(ranks, pa.list_(pa.int64())))
        np = require("numpy")
        out = dict(batch)
        out[self.scores_column] = _object_array(
            np, [np.asarray(s, dtype=np.float64) for s in scores]
        )
        out[self.ranks_column] = _object_array(np, [np.asarray(r, dtype=np.int64) for r in ranks])
        return out


def score_rows(
    engine: Scorer, queries: Sequence[str], candidates: Sequence[Sequence[str]]
) -> list[list[float]]:
    """Score many (query, candidates) rows at once, so the engine batches across rows.

    Args:
        engine: Any scorer.
        queries: One query per row.
        candidates: One list of texts per row.

    Returns:
        One list of scores per row, each in candidate order.

    Raises:
        ValueError: ``queries`` and ``candidates`` differ in length, or a query is empty.

    Examples:
        >>> score_rows(engine, ["q1", "q2"], [["a", "b"], ["c"]])  # doctest: +SKIP
        [[0.91, 0.12], [0.55]]
    """
    if len(queries) != len(candidates):
        msg = f"got {len(queries)} queries for {len(candidates)} candidate lists."
        raise ValueError(msg)
    for q in queries:
        check_query(q)

    async def gather() -> list[list[float]]:
        return list(
            await asyncio.gather(
                *(engine.ascore(q, list(c)) for q, c in zip(queries, candidates, strict=True))
            )
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    # Called from inside an event loop (a notebook, an async actor): run on a fresh loop in a
    # helper thread rather than nesting loops.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, gather()).result()


def rerank_dataset(
    dataset: Any,
    model: str,
    *,
    concurrency: int = 1,
    batch_size: int = 64,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    query_column: str = "query",
    candidates_column: str = "candidates",
    scores_column: str = "scores",
    ranks_column: str = "ranks",
    **engine_options: Any,
) -> Any:
    """Add scores and ranks to every row of a Ray Dataset, with ``concurrency`` engine actors.

    The same call runs on a laptop's local Ray and on a cluster (``ray.init(address=...)``):
    Ray places the actors, each loads the model once.

    Args:
        dataset: A ``ray.data.Dataset`` with a query column and a candidates column.
        model: Hub id or local folder of a cross-encoder.
        concurrency: Actors (engines) to run; one per GPU, or a few per CPU node.
        batch_size: Rows per batch handed to an actor.
        num_cpus: CPUs to reserve per actor.
        num_gpus: GPUs to reserve per actor (1 puts each engine on its own GPU).
        query_column: Column holding the query of each row.
        candidates_column: Column holding each row's candidate texts.
        scores_column: Name of the new scores column.
        ranks_column: Name of the new ranks column.
        **engine_options: Engine options (``device``, ``max_length`` ...).

    Returns:
        The lazily transformed dataset (write it with ``write_parquet`` or iterate it).

    Raises:
        TypeError: An unknown engine option.

    Examples:
        >>> import ray
        >>> from rerank_plugins.ray import rerank_dataset
        >>> ds = ray.data.read_parquet("pairs.parquet")  # doctest: +SKIP
        >>> rerank_dataset(ds, "cross-encoder/ms-marco-MiniLM-L-6-v2").write_parquet("out/")
        ... # doctest: +SKIP
    """
    ray_data = require("ray.data", extra="ray", purpose=_PURPOSE)
    from rerank_plugins.config import EngineConfig

    EngineConfig.from_options(model, engine_options)  # fail here, not in every actor
    resources: dict[str, float] = {}
    if num_cpus is not None:
        resources["num_cpus"] = num_cpus
    if num_gpus is not None:
        resources["num_gpus"] = num_gpus
    return dataset.map_batches(
        RerankBatch,
        fn_constructor_kwargs={
            "model": model,
            "query_column": query_column,
            "candidates_column": candidates_column,
            "scores_column": scores_column,
            "ranks_column": ranks_column,
            **engine_options,
        },
        compute=ray_data.ActorPoolStrategy(size=concurrency),
        batch_size=batch_size,
        batch_format="pandas",
        **resources,
    )


def build_deployment(
    model: str,
    *,
    name: str = "RerankDeployment",
    num_replicas: int | str | None = None,
    autoscaling_config: dict[str, Any] | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    server_options: dict[str, Any] | None = None,
    **engine_options: Any,
) -> Any:
    """A Ray Serve application serving the engine: the HTTP API of `rerank-plugins serve`.

    Each replica loads one engine and answers ``POST /rerank`` (TEI and Cohere shapes),
    ``/health``, ``/info`` and ``/metrics`` exactly like the standalone server, so
    `RemoteEngine` works against it unchanged. From Python in the cluster, call it by handle:
    ``await handle.rerank.remote(query, texts, top_n)`` returns `RerankResult` s and
    ``handle.score.remote(query, texts)`` the scores.

    Args:
        model: Hub id or local folder of a cross-encoder.
        name: Deployment name.
        num_replicas: Fixed replica count, or ``"auto"`` (Ray's default autoscaling).
        autoscaling_config: Ray Serve autoscaling settings, passed through
            (``{"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}``).
        ray_actor_options: Resources per replica, passed through (``{"num_gpus": 1}``).
        max_ongoing_requests: Requests one replica takes at once (Ray's default otherwise);
            keep it high enough for the engine to batch across requests.
        server_options: `create_app` options (``api_key``, ``max_documents`` ...).
        **engine_options: Engine options (``device``, ``max_length`` ...).

    Returns:
        A bound Ray Serve application for ``serve.run``.

    Raises:
        TypeError: An unknown engine or server option.

    Examples:
        >>> from ray import serve
        >>> from rerank_plugins.ray import build_deployment
        >>> app = build_deployment("cross-encoder/ms-marco-MiniLM-L-6-v2", num_replicas=2)
        ... # doctest: +SKIP
        >>> handle = serve.run(app, route_prefix="/")  # doctest: +SKIP
    """
    serve = require("ray.serve", extra="ray", purpose=_PURPOSE)
    from rerank_plugins.config import EngineConfig

    EngineConfig.from_options(model, engine_options)  # fail here, not in every replica
    app_options = dict(server_options or {})
    _check_server_options(app_options)

    def build_app() -> Any:
        from rerank_plugins.server import create_app

        return create_app(get_engine(model, **engine_options), **app_options)

    class RerankDeployment:
        def __init__(self) -> None:
            # get_engine shares one engine per process, so the HTTP app built next (by
            # build_app, in this replica) scores with this very engine.
            self.engine = get_engine(model, **engine_options)

        async def rerank(
            self,
            query: str,
            texts: list[str],
            top_n: int | None = None,
            score_threshold: float | None = None,
            instruction: str | None = None,
        ) -> list[RerankResult]:
            return await self.engine.arerank(
                query, texts, top_n, score_threshold, instruction=instruction
            )

        async def score(
            self, query: str, texts: list[str], instruction: str | None = None
        ) -> list[float]:
            return await self.engine.ascore(query, texts, instruction=instruction)

    RerankDeployment.__name__ = RerankDeployment.__qualname__ = name
    options: dict[str, Any] = {"name": name}
    if num_replicas is not None:
        options["num_replicas"] = num_replicas
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    if ray_actor_options is not None:
        options["ray_actor_options"] = ray_actor_options
    if max_ongoing_requests is not None:
        options["max_ongoing_requests"] = max_ongoing_requests
    deployment = serve.deployment(serve.ingress(build_app)(RerankDeployment), **options)
    return deployment.bind()


def _check_server_options(options: dict[str, Any]) -> None:
    import inspect

    from rerank_plugins.server.app import create_app

    # The app's own keyword options, read from its signature: one list, kept by create_app.
    parameters = inspect.signature(create_app).parameters.values()
    allowed = {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - allowed)
    if unknown:
        msg = (
            f"unknown server option(s) {', '.join(map(repr, unknown))}; expected some of "
            f"{', '.join(sorted(allowed))}."
        )
        raise TypeError(msg)


def _ranks(scores: list[float]) -> list[int]:
    ranks = [0] * len(scores)
    for position, index in enumerate(select(scores)):
        ranks[index] = position + 1
    return ranks


def _plain(value: Any) -> Any:
    """A plain ``str`` for string subclasses (``numpy.str_``); anything else as it is."""
    return str(value) if isinstance(value, str) and type(value) is not str else value


def _object_array(np: Any, items: list[Any]) -> Any:
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out
