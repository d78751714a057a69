"""The competitors of the benchmark, how each is driven, and the interleaved timing loop.

Every competitor is a function from (query, texts) to scores (or ``None`` where the library
hides them), built by a factory that imports its library lazily. A competitor that cannot be
built (a missing optional library, a backend not implemented yet, a precision the engine
rejects) is reported as skipped with the reason, never silently dropped.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from benchmarks.harness.workloads import Workload

__all__ = [
    "ANCHORS",
    "COMPETITORS",
    "Competitor",
    "Setup",
    "Timing",
    "build_competitor",
    "drive",
    "measure_peaks",
    "time_interleaved",
]

logger = logging.getLogger("rerank_plugins")

ScoreFn = Callable[[str, Sequence[str]], "list[float] | None"]


@dataclass(frozen=True)
class Setup:
    """What every competitor factory needs.

    Attributes:
        model: Local cross-encoder folder.
        device: ``"cpu"``, ``"cuda"`` ...
        top_n: ``top_n`` given to the framework rerankers (they still score every text).
        max_batch_size: Engine ``max_batch_size`` override (None: the engine default).
        batch_tokens: Engine ``batch_tokens`` override (None: the engine default).
    """

    model: str
    device: str = "cpu"
    top_n: int = 10
    max_batch_size: int | None = None
    batch_tokens: int | None = None

    def engine_options(self, **extra: Any) -> dict[str, Any]:
        """Engine options for a cold-throughput engine (cache off) plus ``extra``."""
        options: dict[str, Any] = {"device": self.device, "cache_size": 0}
        if self.max_batch_size is not None:
            options["max_batch_size"] = self.max_batch_size
        if self.batch_tokens is not None:
            options["batch_tokens"] = self.batch_tokens
        options.update(extra)
        return options


@dataclass
class Competitor:
    """One way of scoring a workload, timed side by side with the others.

    Attributes:
        key: Short id used on the command line (``langchain``, ``ours-bf16`` ...).
        label: Name in the report.
        role: ``"anchor"`` (a library we compare against) or ``"ours"``.
        dtype: Arithmetic the forward pass runs in (``fp32``, ``bf16``, ``int8``), for the
            fraction of the GEMM peak.
        score: Scores one query's texts; returns the scores, or None when the library
            keeps them to itself.
        exact_reference: Whose scores this mode must reproduce within 1e-4 (``"st"``:
            ``CrossEncoder.predict``; ``"flag"``: ``FlagReranker.compute_score``), or
            ``""`` for modes judged on ranking fidelity only.
        warm_full: Warm up on the whole workload rather than a slice (the cache row: its
            timed runs then measure repeated queries).
        note: Anything a reader of the report should know about this row.
        close: Releases the model.
        details: Backend facts (engine info) for the report.
    """

    key: str
    label: str
    role: str
    dtype: str
    score: ScoreFn
    exact_reference: str = ""
    warm_full: bool = False
    note: str = ""
    close: Callable[[], None] = lambda: None
    details: dict[str, Any] = field(default_factory=dict)


Factory = Callable[[Setup], Competitor]


# ---------------------------------------------------------------------- anchors


def _langchain(setup: Setup) -> Competitor:
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_core.documents import Document

    note = ""
    try:
        from langchain_community.cross_encoders import HuggingFaceCrossEncoder

        cross_encoder: Any = HuggingFaceCrossEncoder(
            model_name=setup.model, model_kwargs={"device": setup.device}
        )
    except ImportError:
        cross_encoder = _plain_cross_encoder(setup)
        note = "langchain-community missing: its 10-line HuggingFaceCrossEncoder, reproduced"
    reranker = CrossEncoderReranker(model=cross_encoder, top_n=setup.top_n)

    def score(query: str, texts: Sequence[str]) -> None:
        # CrossEncoderReranker throws the scores away: nothing to return.
        reranker.compress_documents([Document(page_content=t) for t in texts], query)

    return Competitor(
        "langchain",
        "LangChain CrossEncoderReranker",
        "anchor",
        "fp32",
        score,
        note=note or "HuggingFaceCrossEncoder → CrossEncoder.predict, batch 32 (the ratio base)",
    )


def _plain_cross_encoder(setup: Setup) -> Any:
    """LangChain-community's ``HuggingFaceCrossEncoder``, line for line, for when it is missing."""
    from langchain_core.cross_encoders import BaseCrossEncoder
    from sentence_transformers import CrossEncoder

    class _HuggingFaceCrossEncoder(BaseCrossEncoder):
        def __init__(self) -> None:
            self.client = CrossEncoder(setup.model, device=setup.device)

        def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
            scores = self.client.predict(text_pairs)
            if len(scores.shape) > 1:
                scores = scores[:, 1]
            return list(scores)

    return _HuggingFaceCrossEncoder()


def _llamaindex(setup: Setup) -> Competitor:
    from llama_index.core.postprocessor import SentenceTransformerRerank
    from llama_index.core.schema import NodeWithScore, TextNode

    reranker = SentenceTransformerRerank(model=setup.model, top_n=10**9, device=setup.device)

    def score(query: str, texts: Sequence[str]) -> list[float]:
        nodes = [NodeWithScore(node=TextNode(text=t, id_=str(i))) for i, t in enumerate(texts)]
        out = reranker.postprocess_nodes(nodes, query_str=query)
        by_id = {n.node.node_id: float(n.score or 0.0) for n in out}
        return [by_id[str(i)] for i in range(len(texts))]

    return Competitor(
        "llamaindex",
        "LlamaIndex SentenceTransformerRerank",
        "anchor",
        "fp32",
        score,
        note="top_n set to all nodes so the scores can be read back; same cost",
    )


def _sentence_transformers(setup: Setup) -> Competitor:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(setup.model, device=setup.device)

    def score(query: str, texts: Sequence[str]) -> list[float]:
        return [float(s) for s in model.predict([(query, t) for t in texts])]

    return Competitor(
        "st",
        "CrossEncoder.predict",
        "anchor",
        "fp32",
        score,
        note="sentence-transformers defaults (batch 32); the exact reference",
    )


def _flag_reranker(setup: Setup) -> Competitor:
    from FlagEmbedding import FlagReranker

    reranker = FlagReranker(setup.model, use_fp16=False, devices=[setup.device])

    def score(query: str, texts: Sequence[str]) -> list[float]:
        scores = reranker.compute_score([[query, t] for t in texts], normalize=True)
        return [float(s) for s in scores]

    return Competitor(
        "flagreranker",
        "FlagEmbedding FlagReranker.compute_score",
        "anchor",
        "fp32",
        score,
        note="FlagEmbedding defaults (batch 128, trial pass on the first batch)",
    )


# ---------------------------------------------------------------------- ours


def _engine_competitor(
    key: str, label: str, setup: Setup, *, exact_reference: str = "", **options: Any
) -> Competitor:
    from rerank_plugins import RerankEngine

    engine = RerankEngine(setup.model, **setup.engine_options(**options))
    info = engine.info
    details = {
        "backend": info.backend,
        "precision": info.precision,
        "batch_tokens": info.batch_tokens,
        "max_batch_size": info.max_batch_size,
        **info.details,
    }
    return Competitor(
        key,
        label,
        "ours",
        info.precision,
        engine.score,
        exact_reference=exact_reference,
        close=engine.close,
        details=details,
        note=f"batch {info.max_batch_size} / {info.batch_tokens} tokens",
    )


def _ours(setup: Setup) -> Competitor:
    return _engine_competitor("ours", "ours fp32", setup, exact_reference="st", precision="fp32")


def _ours_bf16(setup: Setup) -> Competitor:
    comp = _engine_competitor("ours-bf16", "ours bf16", setup, precision="bf16")
    if comp.dtype != "bf16":
        comp.close()
        msg = f"the engine ran precision={comp.dtype!r}, not bf16, on this device."
        raise ValueError(msg)
    return comp


def _ours_flag(setup: Setup) -> Competitor:
    return _engine_competitor(
        "ours-flag", "ours flag backend", setup, exact_reference="flag", backend="flag",
        precision="fp32",
    )  # fmt: skip


def _ours_onnx(setup: Setup) -> Competitor:
    return _engine_competitor(
        "ours-onnx", "ours onnx fp32", setup, exact_reference="st", backend="onnx",
        precision="fp32",
    )  # fmt: skip


def _ours_onnx_int8(setup: Setup) -> Competitor:
    return _engine_competitor(
        "ours-onnx-int8", "ours onnx int8", setup, backend="onnx", precision="int8"
    )


def _ours_cache(setup: Setup) -> Competitor:
    comp = _engine_competitor(
        "ours-cache", "ours fp32, repeated query (cache)", setup, exact_reference="st",
        precision="fp32", cache_size=100_000,
    )  # fmt: skip
    comp.warm_full = True
    comp.note = "warmed on the whole workload; every timed call repeats a query"
    return comp


def _ours_langchain(setup: Setup) -> Competitor:
    from langchain_core.documents import Document

    from rerank_plugins.langchain import RerankCompressor

    compressor = RerankCompressor(
        model=setup.model, top_n=setup.top_n, **setup.engine_options(precision="fp32")
    )

    def score(query: str, texts: Sequence[str]) -> None:
        compressor.compress_documents([Document(page_content=t) for t in texts], query)

    return Competitor(
        "ours-langchain",
        "ours via LangChain RerankCompressor",
        "ours",
        "fp32",
        score,
        close=compressor.engine.close,
        note="the drop-in for the LangChain row: same call, shared engine",
    )


def _ours_llamaindex(setup: Setup) -> Competitor:
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerank_plugins.llama_index import RerankPostprocessor

    reranker = RerankPostprocessor(
        model=setup.model, top_n=setup.top_n, **setup.engine_options(precision="fp32")
    )

    def score(query: str, texts: Sequence[str]) -> None:
        nodes = [NodeWithScore(node=TextNode(text=t)) for t in texts]
        reranker.postprocess_nodes(nodes, query_str=query)

    return Competitor(
        "ours-llamaindex",
        "ours via LlamaIndex RerankPostprocessor",
        "ours",
        "fp32",
        score,
        close=reranker.engine.close,
        note="the drop-in for the LlamaIndex row",
    )


ANCHORS: tuple[str, ...] = ("langchain", "llamaindex", "st", "flagreranker")
"""Keys of the reference libraries."""

COMPETITORS: dict[str, Factory] = {
    "langchain": _langchain,
    "llamaindex": _llamaindex,
    "st": _sentence_transformers,
    "flagreranker": _flag_reranker,
    "ours": _ours,
    "ours-bf16": _ours_bf16,
    "ours-flag": _ours_flag,
    "ours-onnx": _ours_onnx,
    "ours-onnx-int8": _ours_onnx_int8,
    "ours-cache": _ours_cache,
    "ours-langchain": _ours_langchain,
    "ours-llamaindex": _ours_llamaindex,
}
"""Every competitor by key, in report order."""


def build_competitor(key: str, setup: Setup) -> Competitor | str:
    """Build a competitor, or return why it cannot run here.

    Args:
        key: A key of `COMPETITORS`, or ``ours-b<N>`` / ``ours-bf16-b<N>`` for the engine
            with ``max_batch_size=N`` (batch-size sweeps).
        setup: Model and device.

    Returns:
        The competitor, or a one-line reason it was skipped (missing dependency, backend not
        available, precision not accepted).

    Raises:
        ValueError: ``key`` names no competitor.
    """
    factory = COMPETITORS.get(key) or _sweep_factory(key)
    if factory is None:
        msg = f"unknown competitor {key!r}; expected one of {', '.join(COMPETITORS)}."
        raise ValueError(msg)
    from rerank_plugins.errors import MissingDependencyError

    try:
        return factory(setup)
    except (MissingDependencyError, ImportError, ValueError, NotImplementedError) as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        logger.info("benchmark competitor %s skipped: %s", key, reason)
        return reason[:200]


def _sweep_factory(key: str) -> Factory | None:
    for prefix, precision in (("ours-bf16-b", "bf16"), ("ours-b", "fp32")):
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            size = int(key[len(prefix) :])

            def factory(setup: Setup, size: int = size, precision: str = precision) -> Competitor:
                return _engine_competitor(
                    key,
                    f"ours {precision} batch {size}",
                    setup,
                    precision=precision,
                    max_batch_size=size,
                    batch_tokens=size * 512,
                )

            return factory
    return None


# ---------------------------------------------------------------------- timing


def drive(score: ScoreFn, workload: Workload) -> list[list[float] | None]:
    """Submit a workload the way its shape says: in sequence, or from concurrent threads.

    Args:
        score: The competitor's scoring call.
        workload: Queries and texts; ``shape.threads`` callers at once.

    Returns:
        The scores of each query (None where the competitor hides them).
    """
    jobs = list(zip(workload.queries, workload.docs, strict=True))
    if workload.shape.threads == 1:
        return [score(q, d) for q, d in jobs]
    with ThreadPoolExecutor(workload.shape.threads, thread_name_prefix="bench-caller") as pool:
        return list(pool.map(lambda job: score(*job), jobs))


@dataclass
class Timing:
    """Seconds of each repeat of one competitor on one workload, and its last scores.

    ``cpu_seconds`` is the process's CPU time over each run (all threads): less sensitive than
    wall-clock time to other load on the machine, but blind to idle cores.
    """

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    scores: list[list[float] | None] | None = None
    error: str | None = None


def _warm(comp: Competitor, workload: Workload) -> None:
    if comp.warm_full:
        drive(comp.score, workload)
        return
    # One small call loads lazy kernels and allocator pools without costing a full pass.
    comp.score(workload.queries[0], workload.docs[0][:8])


def time_interleaved(
    competitors: Sequence[Competitor],
    workload: Workload,
    repeats: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Timing]:
    """Time every competitor on a workload, interleaved: each repeat runs each one once.

    The order rotates from repeat to repeat, so slow drift of the machine (thermal state,
    other load) spreads over all competitors instead of favouring whoever runs first.

    Args:
        competitors: Built competitors.
        workload: The workload.
        repeats: Timed runs per competitor.
        progress: Called with a line of text after each repeat.

    Returns:
        Timing per competitor key; a competitor that fails records the error and drops out.
    """
    timings = {c.key: Timing() for c in competitors}
    live = list(competitors)
    for comp in list(live):
        try:
            _warm(comp, workload)
        except Exception as exc:  # a broken competitor is reported, not fatal
            timings[comp.key].error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            live.remove(comp)
    for r in range(repeats):
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        for comp in order:
            if timings[comp.key].error:
                continue
            gc.collect()
            start, cpu = time.perf_counter(), time.process_time()
            try:
                scores = drive(comp.score, workload)
            except Exception as exc:
                timings[comp.key].error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                continue
            timings[comp.key].seconds.append(time.perf_counter() - start)
            timings[comp.key].cpu_seconds.append(time.process_time() - cpu)
            timings[comp.key].scores = scores
        if progress is not None:
            progress(f"  {workload.name}: repeat {r + 1}/{repeats} done")
    return timings


# ---------------------------------------------------------------------- machine peak


def measure_peaks(device: str = "cpu", *, quick: bool = False) -> dict[str, float]:
    """The machine's best GEMM throughput per dtype, in FLOP/s (int8: integer OP/s).

    Multiplies large square matrices with the current torch thread setting and keeps the
    best run over a few sizes: the ceiling a transformer's matmuls can approach.

    Args:
        device: Where to multiply.
        quick: Fewer sizes and repeats.

    Returns:
        ``{"fp32": ..., "bf16": ..., "int8": ...}``; a dtype the device cannot multiply, or
        (on CPU) cannot multiply natively, is left out: an emulated bf16 or int8 GEMM is
        no ceiling worth quoting, and takes many minutes at these sizes.
    """
    from rerank_plugins._imports import require
    from rerank_plugins.backends._onnx_int8 import signed_weights_are_safe
    from rerank_plugins.backends._torch import cpu_supports_bf16

    torch = require("torch", purpose="the benchmark")
    cuda = device.startswith("cuda")
    native_bf16 = cuda or cpu_supports_bf16()
    native_int8 = cuda or signed_weights_are_safe()  # VNNI / AMX on x86
    sizes = (2048,) if quick else ((4096, 8192) if cuda else (1024, 2048, 3072))
    reps = 3 if quick else 6

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def best(fn: Callable[[], Any], n: int) -> float:
        fn()
        sync()
        fastest = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            sync()
            fastest = min(fastest, time.perf_counter() - start)
        return 2.0 * n**3 / fastest

    peaks: dict[str, float] = {}
    dtypes = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if native_bf16 else [])
    for name, dtype in dtypes:
        for n in sizes:
            try:
                a = torch.randn(n, n, dtype=dtype, device=device)
                b = torch.randn(n, n, dtype=dtype, device=device)
                peaks[name] = max(peaks.get(name, 0.0), best(partial(torch.matmul, a, b), n))
            except RuntimeError:
                break
    int_mm = getattr(torch, "_int_mm", None)
    if int_mm is not None and native_int8:
        for n in sizes:
            try:
                a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
                b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
                peaks["int8"] = max(peaks.get("int8", 0.0), best(partial(int_mm, a, b), n))
            except RuntimeError:
                break
    return peaks
