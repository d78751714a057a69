"""The ONNX Runtime backend: the cross-encoder exported once to ONNX, cached on disk, run by ORT."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank_plugins import builds
from rerank_plugins._imports import require
from rerank_plugins.backends._first_token import (
    install_first_token_last_layer,
    last_layer_label,
)
from rerank_plugins.backends._heads import head_warnings
from rerank_plugins.backends._hf import (
    DEFAULT_MAX_LENGTH_CAP,
    PairEncoder,
    check_model_reference,
    model_token_limit,
    pad_batch,
    resolve_max_length,
)
from rerank_plugins.backends._onnx_int8 import (
    SMOOTH_ALPHA,
    calibration_batches,
    quantize_int8,
    signed_weights_are_safe,
)
from rerank_plugins.backends.base import BackendBase, Encoded
from rerank_plugins.config import EngineConfig
from rerank_plugins.errors import ModelLoadError, error_clause

CACHE_ENV = builds.CACHE_ENV  # re-exported; the cache folder is rerank_plugins.builds'

__all__ = [
    "CACHE_ENV",
    "LAST_LAYER_KEY",
    "OnnxBackend",
    "build_once",
    "cache_root",
    "export_key",
    "export_onnx",
    "open_session",
    "thread_count",
]

logger = logging.getLogger("rerank_plugins")


OPSET = 17
MODEL_FILE = "model.onnx"
# Bump when the export or quantization recipe changes, so caches built by an older recipe are
# rebuilt instead of reused. 2: the last layer is exported for the first token only.
RECIPE_VERSION = 2
# Files whose change means the model changed; their size and mtime enter the cache key.
_MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".py")
# torch.onnx.export and transformers' loading use process-global state, so builds in one
# process take turns; builds in separate processes are kept apart by the atomic rename.
_BUILD_LOCK = threading.Lock()


def cache_root() -> Path:
    """The folder holding exported models: ``$RERANK_PLUGINS_CACHE/onnx``.

    Without the variable it is ``~/.cache/rerank-plugins/onnx``.
    """
    return builds.cache_root() / "onnx"


def thread_count() -> int:
    """Threads for ONNX Runtime: ``OMP_NUM_THREADS`` if set, else the CPUs this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.strip().isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _files_fingerprint(model: str) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of the files that define a local model; empty for a hub id."""
    if not os.path.isdir(model):
        return []
    out = []
    for name in sorted(os.listdir(model)):
        path = os.path.join(model, name)
        if name.endswith(_MODEL_FILE_SUFFIXES) and os.path.isfile(path):
            st = os.stat(path)
            out.append((name, st.st_size, st.st_mtime_ns))
    return out


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def export_key(
    model: str,
    *,
    revision: str | None,
    commit: str | None,
    trust_remote_code: bool,
    input_names: Sequence[str],
    precision: str,
) -> str:
    """The cache key of one exported model: equal keys mean an identical ONNX file.

    It covers what decides the file's content: the model (hub id or resolved folder), the
    revision and the commit it resolved to, size and mtime of a local folder's files, the
    graph inputs, the precision and the versions of the exporter. ``max_length`` is not part
    of it: the graph has dynamic batch and sequence axes.
    """
    facts = {
        "model": model,
        "revision": revision,
        "commit": commit,
        "files": _files_fingerprint(model),
        "trust_remote_code": trust_remote_code,
        "inputs": list(input_names),
        "precision": precision,
        "opset": OPSET,
        "recipe": RECIPE_VERSION,
        # Versions from package metadata, so a cache hit never has to import torch.
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "onnx": _version("onnx"),
    }
    blob = json.dumps(facts, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def export_onnx(
    model: str,
    folder: Path,
    input_names: Sequence[str],
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Path:
    """Export a sequence-classification model to ``folder/model.onnx`` in fp32.

    The last encoder layer is traced for the first token only where that is exact (BERT,
    RoBERTa and XLM-R style classifiers, see `install_first_token_last_layer`): the graph
    then computes no key or value rows there, as the torch backends do. The file's metadata
    (`LAST_LAYER_KEY`) records whether it was.

    Args:
        model: Hub id or local folder.
        folder: Where to write the model (with its external data, for models over 2 GB).
        input_names: Graph inputs in this order: ``input_ids``, ``attention_mask``, then
            ``token_type_ids`` when the tokenizer produces them.
        revision: Hub revision.
        trust_remote_code: Run model code shipped with the weights.

    Returns:
        The path of the ONNX file. Its output ``logits`` has shape (batch, num_labels).
    """
    torch = require("torch", extra="onnx", purpose="exporting a model to ONNX")
    transformers = require("transformers", extra="onnx", purpose="exporting a model to ONNX")
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        model,
        revision=revision,
        trust_remote_code=trust_remote_code,
        dtype=torch.float32,
        # Eager attention traces to plain MatMul/Softmax that is exact for every padding
        # pattern (and was faster under ORT than the traced sdpa path in our measurements).
        attn_implementation="eager",
    ).eval()
    last_layer = install_first_token_last_layer(hf)
    names = list(input_names)
    use_types = "token_type_ids" in names

    class Logits(torch.nn.Module):  # type: ignore[name-defined]
        # Fixes the positional order of the graph inputs and returns a bare tensor.
        def __init__(self) -> None:
            super().__init__()
            self.model = hf

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if use_types:
                kwargs["token_type_ids"] = token_type_ids
            return self.model(**kwargs, return_dict=True).logits

    # A padded batch of two, so that the trace records a real attention mask.
    ids = torch.full((2, 8), 5, dtype=torch.int64)
    mask = torch.ones((2, 8), dtype=torch.int64)
    mask[1, 5:] = 0
    args: tuple[Any, ...] = (ids, mask)
    if use_types:
        args = (*args, torch.zeros((2, 8), dtype=torch.int64))
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    path = folder / MODEL_FILE
    with torch.no_grad(), warnings.catch_warnings():
        # The trace warns about Python-level checks it freezes (shape asserts, padding-index
        # checks) and the exporter that it is the legacy one, from its own internals too; the
        # fidelity tests pin that the result is exact, so users are spared the noise.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # The TorchScript exporter (dynamo=False). The torch.export-based default needs the
        # onnxscript package, which the onnx extra does not install, and trips on the
        # data-dependent branches of some Hugging Face models; a trace of an eager-attention
        # encoder classifier is exact (scores within 1e-5 of torch) and ORT fuses it well.
        # Models over 2 GB are written with their weights as external data in ``folder``.
        torch.onnx.export(
            Logits(),
            args,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    _label_last_layer(path, last_layer.label)
    return path


LAST_LAYER_KEY = "rerank_plugins.last_layer"
"""ONNX metadata key saying how much of the last layer the graph computes."""


def _label_last_layer(path: Path, label: str) -> None:
    # The fact travels inside the file (and into the int8 copy made from it), so an engine that
    # loads a cached export reports it without the model in torch.
    onnx = require("onnx", extra="onnx", purpose="exporting a model to ONNX")
    proto = onnx.load(str(path), load_external_data=False)
    entry = proto.metadata_props.add()
    entry.key = LAST_LAYER_KEY
    entry.value = label
    onnx.save(proto, str(path))


def build_once(key: str, label: str, build: Callable[[Path], object]) -> tuple[Path, bool]:
    """The cache folder for ``key``; calls ``build(folder)`` only when it is not there yet.

    See `rerank_plugins.builds.build_once`: the model is written to a private temporary
    folder that is renamed into place in one step; the first rename wins.

    Returns:
        The folder and whether this call built it.
    """
    final = cache_root() / key

    def complete(folder: Path) -> bool:
        return (folder / MODEL_FILE).is_file()

    with _BUILD_LOCK:
        if complete(final):
            logger.info("onnx: reusing the cached %s model in %s", label, final)
            return final, False
        logger.info(
            "onnx: building the %s model into %s (once per model and revision)", label, final
        )
        built = builds.build_once(final, complete=complete, build=build)
        if not built:
            logger.info("onnx: the %s model was built concurrently; using %s", label, final)
    return final, built


def open_session(path: Path, providers: Sequence[Any], threads: int) -> Any:
    """An ONNX Runtime session as the backend runs it: all graph optimizations, no spinning.

    Args:
        path: The ONNX file.
        providers: Execution providers, in order of preference.
        threads: Intra-op threads (one operator at a time: encoder graphs are a chain).

    Returns:
        The ``onnxruntime.InferenceSession``.
    """
    ort = require("onnxruntime", extra="onnx", purpose="the onnx backend")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # No busy-waiting between operators: spinning pool threads take the cores from the Python
    # work between forward passes (tokenizing, padding) and from everything else in the
    # process; on a shared 2-core machine that cost up to 30% of throughput.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


def _providers(device: str, ort: Any) -> tuple[str, list[Any]]:
    """Resolve the device to (device name, ORT execution providers)."""
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "auto":
        device = "cuda" if has_cuda else "cpu"
    if device == "cpu":
        return "cpu", ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if not has_cuda:
            msg = (
                f"device={device!r} needs ONNX Runtime's CUDAExecutionProvider, which this "
                f"onnxruntime does not have (available: {', '.join(available)}); "
                "install onnxruntime-gpu or pass device='cpu'."
            )
            raise ValueError(msg)
        index = int(device.split(":")[1]) if ":" in device else 0
        cuda = ("CUDAExecutionProvider", {"device_id": index})
        return device, [cuda, "CPUExecutionProvider"]
    msg = f"the onnx backend runs on 'cpu' or 'cuda', got device={device!r}."
    raise ValueError(msg)


def _precision(requested: str, device: str) -> str:
    if requested in ("auto", "fp32"):
        return "fp32"
    if requested == "int8":
        if device != "cpu":
            msg = (
                "precision='int8' runs on CPU only (its int8 kernels are CPU kernels); "
                "pass device='cpu', or precision='fp32' on CUDA."
            )
            raise ValueError(msg)
        return "int8"
    msg = (
        f"the onnx backend runs precision 'fp32' or 'int8', got {requested!r}; "
        "use backend='sentence-transformers' for fp16 or bf16."
    )
    raise ValueError(msg)


class OnnxBackend(BackendBase):
    """Scores pairs with an ONNX export of a cross-encoder on ONNX Runtime.

    The model is exported from ``transformers`` once per model, revision and precision, and
    kept in ``$RERANK_PLUGINS_CACHE/onnx`` (default ``~/.cache/rerank-plugins/onnx``); later
    engines load the cached file. Tokenization is the same `PairEncoder` as the torch
    backends', so fp32 scores equal theirs within 1e-4. ``precision="int8"`` runs a
    dynamically quantized copy (CPU only; see docs/onnx.md for its speed and fidelity).

    Args:
        config: Engine settings; ``device`` is ``auto``, ``cpu`` or ``cuda[:N]``,
            ``precision`` is ``auto`` (fp32), ``fp32`` or ``int8``.

    Raises:
        ModelLoadError: The model is missing, cannot be exported, or has more than one label.
        ValueError: A device or precision this backend does not run.
        MissingDependencyError: onnxruntime, onnx or torch is not installed.

    Examples:
        >>> from rerank_plugins import RerankEngine
        >>> engine = RerankEngine(  # doctest: +SKIP
        ...     "cross-encoder/ms-marco-MiniLM-L-6-v2", backend="onnx", precision="int8"
        ... )
        >>> engine.info.backend, engine.info.precision  # doctest: +SKIP
        ('onnx', 'int8')
    """

    name = "onnx"
    supports_windows = True

    @classmethod
    def resolve_device(cls, device: str) -> str:
        """``auto``: cuda where ONNX Runtime has its CUDA provider, else cpu (no torch)."""
        ort = require("onnxruntime", extra="onnx", purpose="the onnx backend")
        resolved, _ = _providers(device, ort)
        return resolved

    def __init__(self, config: EngineConfig) -> None:
        check_model_reference(config.model)
        ort = require("onnxruntime", extra="onnx", purpose="the onnx backend")
        transformers = require("transformers", extra="onnx", purpose="the onnx backend")
        self.device, providers = _providers(config.device, ort)
        self.precision = _precision(config.precision, self.device)
        try:
            hf_config = transformers.AutoConfig.from_pretrained(
                config.model, revision=config.revision, trust_remote_code=config.trust_remote_code
            )
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                config.model, revision=config.revision, trust_remote_code=config.trust_remote_code
            )
        except Exception as exc:
            msg = (
                f"could not load cross-encoder {config.model!r}: {error_clause(exc)}. Pass a "
                "local folder, or a hub id with network access to the Hugging Face hub."
            )
            raise ModelLoadError(msg) from exc
        num_labels = getattr(hf_config, "num_labels", 1)
        if num_labels != 1:
            msg = (
                f"the model has num_labels={num_labels}; reranking needs a single relevance "
                "logit (num_labels=1), as cross-encoder rerankers have."
            )
            raise ModelLoadError(msg)
        limit = model_token_limit(tokenizer, hf_config)
        self.max_length = resolve_max_length(config.max_length, limit, cap=DEFAULT_MAX_LENGTH_CAP)
        self._calibration_length = min(limit, DEFAULT_MAX_LENGTH_CAP)
        self.encoder = PairEncoder(tokenizer, self.max_length)
        pad_id = tokenizer.pad_token_id
        self.pad_id = int(pad_id) if pad_id is not None else 0
        self.input_names = ["input_ids", "attention_mask"]
        if self.encoder.use_token_types:
            self.input_names.append("token_type_ids")
        self._model_class = (getattr(hf_config, "architectures", None) or ["?"])[0]
        # The exported graph holds whatever head the checkpoint had: the config tells.
        self.warnings = head_warnings(config.model, None, config.revision)
        self.path, self.built = self._cached_model(config, getattr(hf_config, "_commit_hash", None))
        self.threads = thread_count()
        try:
            self.session: Any = open_session(self.path, providers, self.threads)
        except Exception as exc:
            msg = (
                f"ONNX Runtime could not load the exported model {self.path}: {error_clause(exc)}. "
                "Delete that folder to rebuild it."
            )
            raise ModelLoadError(msg) from exc
        self.providers: list[str] = list(self.session.get_providers())
        labels = self.session.get_modelmeta().custom_metadata_map
        self.last_layer: str = labels.get(LAST_LAYER_KEY, last_layer_label(False))

    def _cached_model(self, config: EngineConfig, commit: str | None) -> tuple[Path, bool]:
        def key(precision: str) -> str:
            return export_key(
                config.model,
                revision=config.revision,
                commit=commit,
                trust_remote_code=config.trust_remote_code,
                input_names=self.input_names,
                precision=precision,
            )

        def export(folder: Path) -> None:
            try:
                export_onnx(
                    config.model,
                    folder,
                    self.input_names,
                    revision=config.revision,
                    trust_remote_code=config.trust_remote_code,
                )
            except ImportError:
                raise
            except Exception as exc:
                msg = (
                    f"could not export {config.model!r} to ONNX: {error_clause(exc)}; check that "
                    "the model loads with transformers, or use backend='sentence-transformers'."
                )
                raise ModelLoadError(msg) from exc
            _write_meta(folder, config, commit, "fp32")

        fp32, built = build_once(key("fp32"), "fp32", export)
        if self.precision == "fp32":
            return fp32 / MODEL_FILE, built
        signed = signed_weights_are_safe()
        variant = "int8" if signed else "int8-u8-weights"
        if not signed:
            logger.warning(
                "onnx int8: this CPU has no VNNI (or its flags cannot be read), so int8 uses "
                "uint8 weights to avoid the 16-bit saturation of its int8 kernels; scores are "
                "the same but it may be no faster than fp32 (see docs/onnx.md)."
            )

        def quantize(folder: Path) -> None:
            # Calibrate at the model's full length, not this engine's max_length: the cached
            # file is shared by engines of every max_length.
            encoder = PairEncoder(self.encoder.tokenizer, self._calibration_length)
            batches = calibration_batches(encoder, self.pad_id)
            quantize_int8(fp32 / MODEL_FILE, folder, batches, signed=signed, file_name=MODEL_FILE)
            _write_meta(folder, config, commit, variant)

        int8, built = build_once(key(variant), variant, quantize)
        return int8 / MODEL_FILE, built

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        """Tokenize and truncate each (query, text) pair."""
        return self.encoder.encode(query, texts)

    def encode_windows(self, query: str, texts: Sequence[str]) -> list[list[Encoded]]:
        """Encode each text as overlapping windows (long-document passage modes)."""
        return self.encoder.encode_windows(query, texts)

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        """Raw logits for a batch of encoded pairs."""
        arrays = pad_batch(batch, self.pad_id, self.encoder.use_token_types)
        logits = self.session.run(["logits"], arrays)[0]
        values: list[float] = np.asarray(logits[:, 0], dtype=np.float32).tolist()
        return values

    def describe(self) -> dict[str, Any]:
        """Backend facts for the engine's info."""
        return {
            "model_class": self._model_class,
            "warnings": list(self.warnings),
            "onnx_file": str(self.path),
            "built_now": self.built,
            "execution_provider": self.providers[0] if self.providers else "?",
            "threads": self.threads,
            "opset": OPSET,
            "last_layer": self.last_layer,
            "quantization": (
                f"dynamic int8 MatMuls, SmoothQuant alpha={SMOOTH_ALPHA}, per-token scaling"
                if self.precision == "int8"
                else None
            ),
        }

    def close(self) -> None:
        """Drop the ONNX Runtime session so its memory can be freed."""
        self.session = None


def _write_meta(folder: Path, config: EngineConfig, commit: str | None, precision: str) -> None:
    # For people looking into the cache: what each hashed folder holds.
    meta = {
        "model": config.model,
        "revision": config.revision,
        "commit": commit,
        "precision": precision,
        "opset": OPSET,
        "recipe": RECIPE_VERSION,
        "torch": _version("torch"),
        "transformers": _version("transformers"),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
