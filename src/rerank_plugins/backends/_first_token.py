"""Exact work-skipping: run a classifier's last encoder layer for the first token only.

A BERT-family sequence classifier reads one vector, the last layer's output at position 0
(``[CLS]`` / ``<s>``). In that last layer only the first token needs a query, an attention
output and a feed-forward pass. The other tokens supply keys and values, and for a single
query those need not be computed either: the query folds into the key weights and the
attention weights fold into the value weights (see ``_first_token_forward``), leaving two
products with the layer's input. What remains of the last layer is about 1% of its full
cost, so skipping the rest saves 16% of a 6-layer MiniLM's forward pass and 8% of a
12-layer base model's. It is the same arithmetic in another order, not an approximation:
scores stay within float32 rounding of the full forward pass.

The layer's own modules and weights do the work, so a model whose layout is not the one
checked below keeps its full forward pass; and every installation is checked against the full
pass on a probe batch, so a transformers release that changes the layer's calling convention
(4.x layers return tuples and take ``head_mask``, 5.x return tensors) costs the speed-up, never
a score.
"""

from __future__ import annotations

import inspect
import logging
import types
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FIRST_TOKEN_HEADS",
    "LastLayer",
    "install_first_token_last_layer",
    "last_layer_label",
    "restrict_last_layer_to_first_token",
]

logger = logging.getLogger("rerank_plugins")

# Heads that read nothing but position 0 of the last hidden state (the BERT pooler, and the
# RoBERTa / XLM-RoBERTa / Electra classification heads: ``features[:, 0, :]``).
FIRST_TOKEN_HEADS = frozenset(
    {
        "BertForSequenceClassification",
        "RobertaForSequenceClassification",
        "XLMRobertaForSequenceClassification",
        "CamembertForSequenceClassification",
        "ElectraForSequenceClassification",
    }
)

# The check run when the restriction is installed (see `_install_checked`): errors relative to
# 1 + |value|. A layer whose calling convention or mask layout differs from what this module
# was written for gives errors orders of magnitude above the fp32 one, or raises, and keeps its
# full forward pass. The half-precision one only bounds the model-level sanity run: bf16
# rounds the two orders of arithmetic differently (0.06 on a logit of 0.65 seen on a random
# 2-layer model), and the layer-level check has already run in fp32.
_CHECK_TOLERANCE_FP32 = 1e-4
_CHECK_TOLERANCE_HALF = 0.25


@dataclass(frozen=True)
class LastLayer:
    """How much of a model's last encoder layer runs, and why.

    Attributes:
        first_token_only: Whether the restriction is installed.
        reason: Why it is not installed (None when it is), for logs and ``engine.info``.
    """

    first_token_only: bool
    reason: str | None = None

    @property
    def label(self) -> str:
        """What ``engine.info.details["last_layer"]`` says (the reason has its own key)."""
        return last_layer_label(self.first_token_only)

    def details(self) -> dict[str, str]:
        """The ``engine.info.details`` entries: ``last_layer``, and ``last_layer_reason`` if off."""
        out = {"last_layer": self.label}
        if self.reason is not None:
            out["last_layer_reason"] = self.reason
        return out


def install_first_token_last_layer(model: Any) -> LastLayer:
    """Make ``model``'s last encoder layer compute position 0 only, where that is exact.

    The layout is checked first (a first-token head, a bidirectional self-attention encoder
    with absolute positions and eager or SDPA attention, a BERT-style last layer). Then the
    restriction is checked on a small padded probe batch against the full pass (see
    `_install_checked`); if it raises or its output differs, the layer's own forward pass is
    put back. So a transformers release or a model that changed the layer's calling
    convention costs the speed-up, never a wrong score or a crash. A first-token model that
    keeps its full pass this way gets one warning; other kinds of model one info line.

    Args:
        model: A Hugging Face sequence-classification model, in eval mode, on its device and
            in its dtype.

    Returns:
        Whether the restriction is installed, and if not, why.

    Examples:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                  intermediate_size=64, num_labels=1)
        >>> install_first_token_last_layer(BertForSequenceClassification(cfg).eval())
        LastLayer(first_token_only=True, reason=None)
    """
    reason = _unsupported(model)
    if reason is not None:
        # A kind of model the restriction is not for: by design, so not worth a warning.
        logger.info("rerank-plugins: full last layer for %s (%s).", type(model).__name__, reason)
        return LastLayer(False, reason)
    layer = _bert_shaped_last_layer(model)
    if layer is None:
        # A first-token head whose last layer is not laid out as this module expects: a
        # transformers release that moved things, or a remote-code variant.
        reason = "last layer not BERT-shaped"
    elif "_full_forward" in layer.__dict__:  # installed (and checked) already
        return LastLayer(True)
    else:
        try:
            reason = _install_checked(model, layer)
        except Exception as exc:  # any failure of the probe means: keep the full pass
            reason = f"check failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]
        if reason is None:
            return LastLayer(True)
        _uninstall(layer)
    # A model of the kind the restriction is written for did not check out (a transformers
    # release that changed the layer, say): the user loses speed, so say so once.
    logger.warning(
        "rerank-plugins: the first-token last layer is off for %s (%s); using the full "
        "forward pass (exact, about 8-16%% slower).",
        type(model).__name__,
        reason,
    )
    return LastLayer(False, reason)


def restrict_last_layer_to_first_token(model: Any) -> bool:
    """Install the first-token last layer where it is exact; returns whether it is installed.

    See `install_first_token_last_layer`, which also says why not.

    Args:
        model: A Hugging Face sequence-classification model, in eval mode.

    Returns:
        Whether the restriction was installed. It is not installed if the head reads more
        than the first token, if the layer is not a standard bidirectional self-attention
        layer with absolute positions and eager or SDPA attention, or if the restricted
        model does not reproduce the full model's logits on a probe batch. Those models
        keep the full forward pass.

    Examples:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                  intermediate_size=64, num_labels=1)
        >>> restrict_last_layer_to_first_token(BertForSequenceClassification(cfg).eval())
        True
    """
    return install_first_token_last_layer(model).first_token_only


def last_layer_label(first_token_only: bool) -> str:
    """How much of the last layer a backend runs, as ``engine.info.details["last_layer"]`` says.

    Examples:
        >>> last_layer_label(True), last_layer_label(False)
        ('first token only', 'all tokens')
    """
    return "first token only" if first_token_only else "all tokens"


def _unsupported(model: Any) -> str | None:
    """Why the model's kind rules the restriction out, or None when it may apply."""
    if type(model).__name__ not in FIRST_TOKEN_HEADS:
        return "head reads more than the first token"
    if model.training:
        return "model in training mode"
    config = model.config
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "decoder layers"
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return "relative positions"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return f"{getattr(config, '_attn_implementation', None)} attention"
    return None


def _bert_shaped_last_layer(model: Any) -> Any:
    """The model's last encoder layer if it is laid out as `_first_token_forward` expects."""
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    return layers[-1] if layers and _has_bert_layout(layers[-1]) else None


def _install_checked(model: Any, layer: Any) -> str | None:
    """Install the restriction and check it on a probe batch; returns why it fails, or None.

    The check runs in two parts. First, the last layer's inputs from a full forward pass of
    the probe batch (hidden states, the mask as the model builds it, whatever else the
    model hands its layers) go through an fp32 copy of the layer, full and restricted, whose
    first rows must agree to float32 rounding: this pins the calling convention and the mask
    layout at any model dtype. Then the model itself runs restricted and must give the full
    pass's logits (to float32 rounding in fp32, loosely in bf16/fp16, whose own rounding
    differs between the two orders of arithmetic).
    """
    import copy

    import torch

    full_signature = inspect.signature(layer.forward)
    inputs = _probe_batch(model)
    seen: list[Any] = []
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    pre = layer.register_forward_pre_hook(
        lambda _m, args, kwargs: calls.append((args, dict(kwargs))), with_kwargs=True
    )
    post = layer.register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        with torch.inference_mode():
            full = model(**inputs).logits.float()
    finally:
        pre.remove()
        post.remove()
    if len(seen) != 1 or len(calls) != 1:
        return "last layer not called once per forward pass"
    # transformers 4.x layers return a tuple (hidden_states, ...); 5.x return the tensor.
    returns_tuple = isinstance(seen[0], tuple)
    if not isinstance(seen[0][0] if returns_tuple else seen[0], torch.Tensor):
        return "unknown last-layer output"

    args, kwargs = _to_fp32(calls[0])
    reference = copy.deepcopy(layer).float()
    _attach(reference, full_signature, returns_tuple)
    with torch.inference_mode():
        whole = _hidden(reference._full_forward(*args, **kwargs), returns_tuple)
        first = _hidden(reference.forward(*args, **kwargs), returns_tuple)
    del reference
    if first.shape != whole[:, :1].shape:
        return "restricted layer output has another shape"
    error = _relative_error(first, whole[:, :1])
    if not error <= _CHECK_TOLERANCE_FP32:  # also catches NaN
        return f"restricted layer output differs by {error:.2g}"

    _attach(layer, full_signature, returns_tuple)
    with torch.inference_mode():
        restricted = model(**inputs).logits.float()
    if restricted.shape != full.shape:
        return "restricted logits have another shape"
    half = next(model.parameters()).dtype != torch.float32
    tolerance = _CHECK_TOLERANCE_HALF if half else _CHECK_TOLERANCE_FP32
    error = _relative_error(restricted, full)
    if not error <= tolerance:
        return f"restricted logits differ by {error:.2g}"
    return None


def _attach(layer: Any, full_signature: inspect.Signature, returns_tuple: bool) -> None:
    layer._own_forward = layer.__dict__.get("forward")  # e.g. an accelerate hook's wrapper
    layer._full_forward = layer.forward
    layer._full_signature = full_signature
    layer._var_keyword = next(
        (p.name for p in full_signature.parameters.values() if p.kind is p.VAR_KEYWORD), None
    )
    layer._returns_tuple = returns_tuple
    layer._outputs_requested = _output_capture_probe()
    layer.forward = types.MethodType(_first_token_forward, layer)


def _to_fp32(
    call: tuple[tuple[Any, ...], dict[str, Any]],
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The layer's captured inputs with floating-point tensors in fp32 (masks included)."""
    import torch

    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.float()
        return value

    args, kwargs = call
    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def _relative_error(value: Any, reference: Any) -> float:
    """The largest ``|value - reference| / (1 + |reference|)``; NaN if either has a NaN."""
    return float(((value - reference).abs() / (1 + reference.abs())).max())


def _hidden(output: Any, returns_tuple: bool) -> Any:
    return output[0] if returns_tuple else output


_INSTALLED = (
    "_own_forward",
    "_full_forward",
    "_full_signature",
    "_var_keyword",
    "_returns_tuple",
    "_outputs_requested",
)


def _uninstall(layer: Any) -> None:
    own = layer.__dict__.get("_own_forward")
    if "_full_forward" in layer.__dict__:
        if own is not None:
            layer.forward = own
        else:
            layer.__dict__.pop("forward", None)
    for name in _INSTALLED:
        layer.__dict__.pop(name, None)


def _probe_batch(model: Any) -> dict[str, Any]:
    """Two rows of different lengths (so one is padded), of ordinary token ids."""
    import torch

    config = model.config
    device = next(model.parameters()).device
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    pad = getattr(config, "pad_token_id", None)
    pad = int(pad) if isinstance(pad, int) else 0
    if vocab < 8:
        msg = "vocabulary too small for a probe batch"
        raise ValueError(msg)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab // 4, vocab, (2, 12), generator=generator)
    ids[ids == pad] = (pad + 1) % vocab
    mask = torch.ones_like(ids)
    ids[1, 7:] = pad
    mask[1, 7:] = 0
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _output_capture_probe() -> Any:
    """A function telling whether transformers 5 is recording per-layer outputs, or None.

    transformers 5 records attentions and hidden states with hooks while a model call that
    asked for them runs (``output_attentions=True``...); the last layer then runs in full so
    that what is recorded is what the full model records.
    """
    try:
        from transformers.utils import output_capturing
    except ImportError:  # transformers 4.x passes output_attentions to the layer instead
        return None
    collector = getattr(output_capturing, "_active_collector", None)
    if collector is None or not hasattr(collector, "get"):
        return None

    def requested() -> bool:
        collected = collector.get()
        return bool(collected) and any(not str(k).startswith("_") for k in collected)

    return requested


def _has_bert_layout(layer: Any) -> bool:
    attention = getattr(layer, "attention", None)
    attn = getattr(attention, "self", None)
    return (
        all(hasattr(attn, n) for n in ("query", "key", "value", "num_attention_heads"))
        and hasattr(attention, "output")
        and hasattr(layer, "intermediate")
        and hasattr(layer, "output")
        and getattr(layer, "chunk_size_feed_forward", 0) == 0
        and not getattr(attention, "pruned_heads", None)
    )


def _first_token_forward(self: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
    """``BertLayer.forward`` for the row at position 0; returns hidden states of length 1.

    The arguments are read by name from the layer's own signature, so this serves transformers
    4.x (``head_mask``, ``output_attentions``, tuple output) and 5.x (tensor output). The
    ``attention_mask`` is the mask the model hands its layers: additive ``(B, 1, 1, S)``
    (eager, 4.x) or ``(B, 1, S, S)``, or boolean, or None when nothing is padded. A call that
    asks for more than the first token's output (a head mask, attention weights, encoder
    states, recorded outputs) runs the layer's full forward pass.
    """
    import torch

    bound = self._full_signature.bind(hidden_states, *args, **kwargs).arguments
    nested = bound.get(self._var_keyword, {}) if self._var_keyword else {}
    wants_more = (
        bound.get("head_mask") is not None
        or bound.get("encoder_hidden_states") is not None
        or bound.get("output_attentions")
        or nested.get("output_attentions")
        or (self._outputs_requested is not None and self._outputs_requested())
    )
    if wants_more:
        return self._full_forward(hidden_states, *args, **kwargs)
    attention_mask = bound.get("attention_mask")

    attn = self.attention.self
    batch, _, width = hidden_states.shape
    heads = attn.num_attention_heads
    head_size = attn.attention_head_size
    first = hidden_states[:, :1]

    # One query row needs no key or value rows. Its scores q . (x Wk^T + bk) equal
    # (q Wk) . x, up to q . bk, the same for every key, which softmax ignores; and its output
    # p . (x Wv^T + bv) equals (p . x) Wv^T + bv, as p sums to one. So the keys and values of
    # all S tokens (2 S h^2 multiply-adds per pair) become two products with x.
    # These products are small (no h x h work per token), so in bf16 / fp16 they run in fp32.
    dtype = hidden_states.dtype
    x = hidden_states.float()
    query = attn.query(first).float().view(batch, heads, head_size).transpose(0, 1)  # (H, B, d)
    key_weight = attn.key.weight.float().view(heads, head_size, width)  # (H, d, h)
    query_in_x = torch.bmm(query, key_weight).transpose(0, 1)  # (B, H, h)
    scores = torch.bmm(query_in_x, x.transpose(1, 2))  # (B, H, S)
    scores = scores * (head_size**-0.5)
    mask = attention_mask
    if mask is not None:
        mask = mask[:, :, :1, :] if mask.dim() == 4 else mask  # (B, 1, 1, S): keys only
        mask = mask.reshape(mask.shape[0], 1, mask.shape[-1])  # broadcasts over heads
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    weights = torch.softmax(scores, dim=-1)
    mixed = torch.bmm(weights, x).transpose(0, 1)  # (H, B, h)
    value_weight = attn.value.weight.float().view(heads, head_size, width)
    context = torch.bmm(mixed, value_weight.transpose(1, 2))  # (H, B, d)
    context = context.transpose(0, 1).reshape(batch, 1, heads * head_size)
    if attn.value.bias is not None:
        context = context + attn.value.bias.float()
    context = context.to(dtype)
    attended = self.attention.output(context, first)
    out = self.output(self.intermediate(attended), attended)
    return (out,) if self._returns_tuple else out
