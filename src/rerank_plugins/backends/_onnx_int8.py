"""int8 for the onnx backend: dynamic int8 MatMuls with exact rescaling, from an fp32 export.

The recipe, and the measurements that chose it, are in docs/onnx.md. In short: plain dynamic
int8 (ONNX Runtime's ``quantize_dynamic``) loses too much ranking fidelity on BERT-style
rerankers, because a few hidden dimensions, and a few tokens, carry activations far larger than
the rest, and the one activation scale per tensor that its kernels use then leaves everything
else a handful of int8 steps. Two rescalings that are exact in fp32 fix most of it:
SmoothQuant (Xiao et al., 2023) moves part of each input channel's range into the weights,
``x @ W == (x / s) @ (s * W)``, with ``s`` from calibration maxima; per-token scaling divides
each row by its own maximum before the product and multiplies it back after.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank_plugins._imports import require
from rerank_plugins.backends._hf import PairEncoder, pad_batch

__all__ = [
    "CALIBRATION_PAIRS",
    "SMOOTH_ALPHA",
    "calibration_batches",
    "quantize_int8",
    "signed_weights_are_safe",
]

SMOOTH_ALPHA = 0.65
"""How much of an input channel's range moves into the weights (0: none, 1: all)."""

# Calibration text: varied English, deliberately unrelated to the benchmark corpus so the
# fidelity measured there is not flattered. Only per-channel activation maxima are taken from
# it; those come from the model's own outlier dimensions far more than from the text.
_PASSAGES = (
    "The city council approved the new budget on Tuesday after a long debate about road "
    "repairs, school funding and the cost of replacing the old water pipes downtown.",
    "To reset the router, hold the small button on the back for ten seconds until the lights "
    "flash, then wait two minutes before connecting your laptop again.",
    "Mitochondria produce most of the chemical energy a cell needs, converting nutrients into "
    "adenosine triphosphate through a chain of reactions across their inner membrane.",
    "Her second novel follows three sisters who inherit a failing vineyard in the hills and "
    "must decide whether to sell it or gamble their savings on one more harvest.",
    "Interest rates rose by a quarter of a percentage point, the central bank said, citing "
    "persistent inflation in services and a labour market that remains tight.",
    "Preheat the oven to 200 degrees, slice the potatoes thinly, toss them with olive oil, "
    "garlic and rosemary, and roast for forty minutes, turning them once.",
    "The patch fixes a memory leak in the image decoder and a crash that occurred when users "
    "opened files whose names contained non-ASCII characters.",
    "Glaciers in the Alps have lost more than half of their volume since 1900, and the melt "
    "has accelerated sharply during the last two decades.",
    "Customers may return unused items within thirty days of delivery for a full refund; "
    "shipping costs are refunded only when the item arrived damaged.",
    "The striker scored twice in the second half, turning a one-goal deficit into a win that "
    "lifted the club out of the relegation zone for the first time this season.",
    "Python's garbage collector frees objects whose reference count drops to zero and runs a "
    "separate cycle detector for groups of objects that only refer to each other.",
    "Symptoms of dehydration include thirst, dark urine, dizziness and fatigue; children and "
    "older adults are at greater risk during heat waves.",
    "The treaty, signed by forty nations, commits them to halving plastic waste by 2040 and "
    "to funding recycling plants in countries that import the most scrap.",
    "In the final chapter the detective realises the letter was written before the murder, "
    "which means the gardener could not have known about the will.",
    "Solar eclipses happen only at new moon, when the moon passes directly between the earth "
    "and the sun and casts a narrow shadow across the planet's surface.",
    "Employees working remotely must connect through the company VPN and lock their screens "
    "whenever they step away from their computers.",
)
_QUERIES = (
    "what did the council decide about the budget",
    "how do I reset my router",
    "what do mitochondria do in a cell",
    "why did interest rates go up",
    "how long should potatoes roast",
    "how fast are alpine glaciers melting",
    "can I get a refund for shipping",
    "how does python free memory",
)
CALIBRATION_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (_QUERIES[i % len(_QUERIES)], " ".join(_PASSAGES[(i + k) % len(_PASSAGES)] for k in range(n)))
    for i, n in enumerate([1, 2, 3, 4, 6, 8, 1, 3, 5, 2, 7, 4, 1, 6, 3, 2] * 2)
)
"""(query, passage) pairs run through the fp32 model to find each channel's activation range."""


def calibration_batches(
    encoder: PairEncoder, pad_id: int, batch_size: int = 8
) -> list[dict[str, np.ndarray]]:
    """`CALIBRATION_PAIRS` encoded like the backend encodes, in padded batches."""
    encoded = [encoder.encode(q, [t])[0] for q, t in CALIBRATION_PAIRS]
    return [
        pad_batch(encoded[i : i + batch_size], pad_id, encoder.use_token_types)
        for i in range(0, len(encoded), batch_size)
    ]


def signed_weights_are_safe() -> bool:
    """Whether int8 (not uint8) weights are exact on this CPU's int8 kernels.

    x86 CPUs without VNNI multiply uint8 activations by int8 weights with an instruction that
    saturates pairs of products at 16 bits; uint8 weights take another path there. CPUs with
    AVX512-VNNI, AVX-VNNI or AMX, and non-x86 CPUs, do not have that problem.
    """
    if platform.machine().lower() not in {"x86_64", "amd64", "i386", "i686", "x86"}:
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:  # not Linux: assume the worst, uint8 is only slower
        return False
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags.split()))


def quantize_int8(
    source: Path,
    folder: Path,
    calibration: Sequence[dict[str, np.ndarray]],
    *,
    alpha: float | None = SMOOTH_ALPHA,
    per_token: bool = True,
    signed: bool = True,
    file_name: str = "model.onnx",
) -> Path:
    """Write an int8 copy of the fp32 model ``source`` to ``folder/file_name``.

    Every MatMul with a constant 2-D weight (the attention projections and the feed-forward
    layers) becomes a ``DynamicQuantizeMatMul``: per-output-channel symmetric int8 weights,
    activations quantized to uint8 at run time with one scale per tensor. Two exact fp32
    rewrites come first, so that this one scale fits every part of the tensor:

    - SmoothQuant: the input is divided per channel by ``s`` and the weight rows multiplied
      by it, which tames the few outlier channels of BERT-style models.
    - Per-token scaling, for inputs that do not come straight out of a LayerNorm (the
      attention context and the feed-forward activations, whose magnitude varies a lot from
      token to token): each row is divided by its largest magnitude before the product and
      the output row multiplied by it afterwards.

    Embeddings, LayerNorms, attention score products and the pooler/classifier ``Gemm`` stay
    fp32: they cost little and the classifier sees every error.

    Args:
        source: The fp32 ONNX file.
        folder: Where to write the quantized model (calibration scratch files go there too).
        calibration: Input batches for the fp32 model, to measure activation ranges.
        alpha: SmoothQuant migration strength; None skips SmoothQuant.
        per_token: Apply per-token scaling.
        signed: int8 weights (True) or the same values as uint8 with zero point 128 (for x86
            CPUs without VNNI; see `signed_weights_are_safe`).
        file_name: Name of the written file.

    Returns:
        The path of the quantized ONNX file.
    """
    onnx = require("onnx", extra="onnx", purpose="quantizing a model to int8")
    model = onnx.load(str(source))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    targets = [
        node
        for node in graph.node
        if node.op_type == "MatMul"
        and node.input[1] in weights
        and len(weights[node.input[1]].dims) == 2
        and uses[node.input[1]] == 1
    ]
    inputs = list(dict.fromkeys(node.input[0] for node in targets))
    arrays = {
        n.input[1]: onnx.numpy_helper.to_array(weights[n.input[1]]).astype(np.float32)
        for n in targets
    }
    factors: dict[str, np.ndarray] = {}
    if alpha is not None:
        ranges = _activation_ranges(source, folder, inputs, calibration)
        for x in inputs:
            fed = [arrays[n.input[1]] for n in targets if n.input[0] == x]
            factors[x] = _smooth_factors(ranges[x], fed, alpha)

    rewrite = _Rewrite(onnx, model)
    target_ids = {id(node) for node in targets}
    prepared: dict[str, tuple[str, str | None]] = {}
    for node in graph.node:
        if id(node) not in target_ids:
            rewrite.nodes.append(node)
            continue
        x, b = node.input[0], node.input[1]
        if x not in prepared:
            # Emitted just before the first consumer: the graph stays topologically sorted.
            producer = producers.get(x)
            normed = producer is not None and producer.op_type.endswith("LayerNormalization")
            inv = 1.0 / factors[x] if x in factors else None
            prepared[x] = rewrite.prepare(x, inv, per_token and not normed)
        a, row_scale = prepared[x]
        w = arrays[b] * factors[x][:, None] if x in factors else arrays[b]
        q, scale = _quantize_columns(w)
        out = node.output[0] if row_scale is None else node.output[0] + "_per_token"
        rewrite.dynamic_matmul(a, b, q, scale, out, signed)
        if row_scale is not None:
            rewrite.node("Mul", [out, row_scale], node.output[0])
    rewrite.finish(dropped=set(arrays))
    return _save(onnx, model, folder / file_name)


class _Rewrite:
    """Collects the nodes and initializers of the rewritten graph."""

    def __init__(self, onnx: Any, model: Any) -> None:
        self.onnx = onnx
        self.model = model
        self.nodes: list[Any] = []
        self.tensors: dict[str, Any] = {}
        opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 17)
        # ReduceMax takes its axes as an attribute up to opset 17 and as an input from 18 on.
        self.axes_as_input = opset >= 18

    def tensor(self, name: str, value: np.ndarray) -> str:
        if name not in self.tensors:
            self.tensors[name] = self.onnx.numpy_helper.from_array(value, name)
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        domain = "com.microsoft" if op == "DynamicQuantizeMatMul" else ""
        self.nodes.append(
            self.onnx.helper.make_node(
                op, inputs, [output], name=output + "_" + op, domain=domain, **attrs
            )
        )
        return output

    def prepare(
        self, x: str, inv_factors: np.ndarray | None, per_token: bool
    ) -> tuple[str, str | None]:
        """Smooth ``x`` (and scale its rows); returns (matmul input, row scale or None)."""
        smoothed = x
        if inv_factors is not None:
            inv = self.tensor(x + "_smooth_inv", inv_factors)
            smoothed = self.node("Mul", [x, inv], x + "_smooth")
        if not per_token:
            return smoothed, None
        magnitude = self.node("Abs", [smoothed], x + "_abs")
        if self.axes_as_input:
            axis = self.tensor("rp_last_axis", np.array([-1], np.int64))
            row_max = self.node("ReduceMax", [magnitude, axis], x + "_row_max")
        else:
            row_max = self.node("ReduceMax", [magnitude], x + "_row_max", axes=[-1])
        eps = self.tensor("rp_eps", np.array(1e-12, np.float32))
        row_scale = self.node("Max", [row_max, eps], x + "_row_scale")
        return self.node("Div", [smoothed, row_scale], x + "_per_token"), row_scale

    def dynamic_matmul(
        self, a: str, b: str, q: np.ndarray, scale: np.ndarray, out: str, signed: bool
    ) -> None:
        inputs = [a, "", self.tensor(b + "_scale", scale)]
        if signed:
            inputs[1] = self.tensor(b + "_int8", q)
        else:
            inputs[1] = self.tensor(b + "_uint8", (q.astype(np.int16) + 128).astype(np.uint8))
            inputs.append(self.tensor(b + "_zero_point", np.full(q.shape[1], 128, np.uint8)))
        self.node("DynamicQuantizeMatMul", inputs, out)

    def finish(self, dropped: set[str]) -> None:
        graph = self.model.graph
        kept = [t for t in graph.initializer if t.name not in dropped]
        del graph.node[:]
        graph.node.extend(self.nodes)
        del graph.initializer[:]
        graph.initializer.extend([*kept, *self.tensors.values()])
        if not any(op.domain == "com.microsoft" for op in self.model.opset_import):
            self.model.opset_import.append(self.onnx.helper.make_opsetid("com.microsoft", 1))


def _smooth_factors(
    activation_max: np.ndarray, weights: list[np.ndarray], alpha: float
) -> np.ndarray:
    """SmoothQuant's ``s_j = max|x_j|^alpha / max|W_j|^(1-alpha)`` over every weight fed by x."""
    w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    factors = np.maximum(activation_max, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
    return factors.astype(np.float32)


def _quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column of a (K, N) weight; returns (int8 values, N scales)."""
    scale = np.abs(w).max(axis=0) / 127.0
    safe = np.where(scale == 0, 1.0, scale)
    q = np.clip(np.rint(w / safe), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def _activation_ranges(
    source: Path, folder: Path, names: list[str], calibration: Sequence[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Largest absolute value of each channel of each named tensor over the calibration."""
    onnx = require("onnx", extra="onnx", purpose="quantizing a model to int8")
    ort = require("onnxruntime", extra="onnx", purpose="quantizing a model to int8")
    model = onnx.load(str(source))
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    probe = _save(onnx, model, folder / "calibrate.onnx")
    try:
        options = ort.SessionOptions()
        # Basic optimizations only: fusions could swallow the tensors we want to read.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        session = ort.InferenceSession(
            str(probe), sess_options=options, providers=["CPUExecutionProvider"]
        )
        ranges: dict[str, np.ndarray] = {}
        for batch in calibration:
            for name, value in zip(names, session.run(names, batch), strict=True):
                channel_max = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
                ranges[name] = np.maximum(ranges.get(name, channel_max), channel_max)
        del session
    finally:
        for path in folder.glob("calibrate.onnx*"):
            os.remove(path)
    return ranges


def _save(onnx: Any, model: Any, path: Path) -> Path:
    # Protobuf cannot hold more than 2 GB; big models keep their weights in a side file.
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    onnx.save(
        model,
        str(path),
        save_as_external_data=size > 1 << 30,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
    )
    return path
