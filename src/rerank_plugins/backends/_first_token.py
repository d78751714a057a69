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
checked below keeps its full forward pass.
"""

from __future__ import annotations

import types
from typing import Any

__all__ = ["FIRST_TOKEN_HEADS", "last_layer_label", "restrict_last_layer_to_first_token"]

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


def restrict_last_layer_to_first_token(model: Any) -> bool:
    """Make ``model``'s last encoder layer compute position 0 only, where that is exact.

    Args:
        model: A Hugging Face sequence-classification model, in eval mode.

    Returns:
        Whether the restriction was installed. It is not installed if the head reads more
        than the first token, or if the layer is not a standard bidirectional self-attention
        layer with absolute positions and eager or SDPA attention. Those models keep the
        full forward pass.

    Examples:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ...                  intermediate_size=64, num_labels=1)
        >>> restrict_last_layer_to_first_token(BertForSequenceClassification(cfg).eval())
        True
    """
    if type(model).__name__ not in FIRST_TOKEN_HEADS or model.training:
        return False
    config = model.config
    if (
        getattr(config, "is_decoder", False)
        or getattr(config, "add_cross_attention", False)
        or getattr(config, "position_embedding_type", "absolute") != "absolute"
        or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager")
    ):
        return False
    encoder = getattr(getattr(model, "base_model", None), "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not layers:
        return False
    layer = layers[-1]
    if not _has_bert_layout(layer):
        return False
    layer._full_forward = layer.forward
    layer.forward = types.MethodType(_first_token_forward, layer)
    return True


def last_layer_label(first_token_only: bool) -> str:
    """How much of the last layer a backend runs, as ``engine.info.details["last_layer"]`` says.

    Examples:
        >>> last_layer_label(True), last_layer_label(False)
        ('first token only', 'all tokens')
    """
    return "first token only" if first_token_only else "all tokens"


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


def _first_token_forward(
    self: Any, hidden_states: Any, attention_mask: Any = None, *args: Any, **kwargs: Any
) -> tuple[Any]:
    """``BertLayer.forward`` for the row at position 0; returns hidden states of length 1.

    ``attention_mask`` is the additive mask the model hands its layers: ``(B, 1, 1, S)``
    (eager) or ``(B, 1, S, S)`` (SDPA), or None when nothing is padded. A call that asks for
    more than the first token's output (a head mask, attention weights, encoder states) runs
    the layer's full forward pass.
    """
    import torch

    head_mask = args[0] if args else kwargs.get("head_mask")
    encoder_states = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
    if head_mask is not None or encoder_states is not None or kwargs.get("output_attentions"):
        full: tuple[Any] = self._full_forward(hidden_states, attention_mask, *args, **kwargs)
        return full

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
    return (self.output(self.intermediate(attended), attended),)
