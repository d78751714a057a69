"""Pieces shared by the Hugging Face backends: model lookup, pair encoding, padded forward."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from rerank_plugins.backends._first_token import install_first_token_last_layer
from rerank_plugins.backends._memory import MemoryReleaser
from rerank_plugins.backends.base import BackendBase, Encoded
from rerank_plugins.errors import ModelLoadError
from rerank_plugins.models import check_model_reference, read_config

__all__ = [
    "PairEncoder",
    "TorchBackendBase",
    "TorchClassifier",
    "check_model_reference",
    "model_token_limit",
    "read_config",
    "resolve_max_length",
]

DEFAULT_MAX_LENGTH_CAP = 512


def model_token_limit(tokenizer: Any, config: Any) -> int:
    """The longest pair the model can take: tokenizer limit, else position embeddings."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        return limit
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        # RoBERTa-style models reserve padding_idx + 1 positions.
        if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}:
            positions -= (getattr(config, "pad_token_id", 1) or 1) + 1
        return positions
    return DEFAULT_MAX_LENGTH_CAP


def resolve_max_length(requested: int | None, limit: int, *, cap: int | None) -> int:
    """Pick the pair length: the request (within the model's limit), else the capped limit."""
    if requested is None:
        return min(limit, cap) if cap else limit
    if requested > limit:
        msg = (
            f"max_length={requested} exceeds the model's limit of {limit} tokens; pass <= {limit}."
        )
        raise ValueError(msg)
    return requested


class PairEncoder:
    """Tokenizes (query, text) pairs the way the reference libraries do, but faster.

    The query is tokenized once per request and capped at 3/4 of ``max_length`` (as
    FlagEmbedding does); each text is cut to what is left, so the query keeps its tokens.
    For queries shorter than half the budget this equals the ``longest_first`` truncation of
    ``CrossEncoder`` exactly. Special tokens are laid out from the tokenizer's own pair template.
    """

    def __init__(self, tokenizer: Any, max_length: int, query_max_length: int | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.query_max_length = query_max_length or max_length * 3 // 4
        self.left = getattr(tokenizer, "truncation_side", "right") == "left"
        self.use_token_types = "token_type_ids" in getattr(
            tokenizer, "model_input_names", ["token_type_ids"]
        )
        self._learn_template()

    def _learn_template(self) -> None:
        tok = self.tokenizer
        a_text, b_text = "hello", "world"
        a = tok(a_text, add_special_tokens=False)["input_ids"]
        b = tok(b_text, add_special_tokens=False)["input_ids"]
        pair = tok(a_text, b_text, add_special_tokens=True, return_token_type_ids=True)
        ids: list[int] = list(pair["input_ids"])
        types: list[int] = list(pair.get("token_type_ids") or [0] * len(ids))
        ia = _find(ids, a, 0)
        ib = _find(ids, b, ia + len(a))
        if ia < 0 or ib < 0:
            msg = "could not read the tokenizer's pair template; this tokenizer is not supported."
            raise ModelLoadError(msg)
        self.prefix = np.asarray(ids[:ia], dtype=np.int64)
        self.middle = np.asarray(ids[ia + len(a) : ib], dtype=np.int64)
        self.suffix = np.asarray(ids[ib + len(b) :], dtype=np.int64)
        self.prefix_types = np.asarray(types[:ia], dtype=np.int64)
        self.middle_types = np.asarray(types[ia + len(a) : ib], dtype=np.int64)
        self.suffix_types = np.asarray(types[ib + len(b) :], dtype=np.int64)
        self.query_type = types[ia]
        self.text_type = types[ib]
        self.n_special = len(self.prefix) + len(self.middle) + len(self.suffix)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens and without truncation."""
        if not texts:
            return []
        clean = [_well_formed(t) for t in texts]
        out: list[list[int]] = self.tokenizer(clean, add_special_tokens=False, verbose=False)[
            "input_ids"
        ]
        return out

    def query_ids(self, query: str) -> list[int]:
        """The query's token ids, capped at ``query_max_length``."""
        ids = self.tokenize([query])[0]
        return self._cut(ids, self.query_max_length)

    def text_budget(self, query_len: int) -> int:
        """Tokens left for the text next to a query of ``query_len`` tokens."""
        return max(self.max_length - self.n_special - query_len, 0)

    def _cut(self, ids: list[int], n: int) -> list[int]:
        if len(ids) <= n:
            return ids
        return ids[len(ids) - n :] if self.left else ids[:n]

    def build(self, q: list[int], d: list[int]) -> Encoded:
        """Assemble one pair from already-cut query and text ids."""
        ids = np.concatenate(
            [
                self.prefix,
                np.asarray(q, np.int64),
                self.middle,
                np.asarray(d, np.int64),
                self.suffix,
            ]
        )
        types = None
        if self.use_token_types:
            types = np.concatenate(
                [
                    self.prefix_types,
                    np.full(len(q), self.query_type, np.int64),
                    self.middle_types,
                    np.full(len(d), self.text_type, np.int64),
                    self.suffix_types,
                ]
            )
        return Encoded(length=len(ids), truncated=False, payload=(ids, types))

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoded]:
        """Encode each (query, text) pair, cutting texts to fit ``max_length``."""
        q = self.query_ids(query)
        budget = self.text_budget(len(q))
        out = []
        for d, cut_more in self.text_ids(texts, budget):
            enc = self.build(q, self._cut(d, budget))
            if len(d) > budget or cut_more:
                enc = Encoded(enc.length, True, enc.payload)
            out.append(enc)
        return out

    def text_ids(self, texts: Sequence[str], budget: int) -> list[tuple[list[int], bool]]:
        """Each text's token ids, at least ``budget`` of them where the text has that many.

        A very long text is tokenized from its head only (see `_head`); the flag says whether
        text beyond the returned ids was left untokenized.
        """
        heads = [self._head(t, budget) for t in texts]
        tokens = self.tokenize([h for h, _ in heads])
        out = []
        for i, (d, (_head, rest)) in enumerate(zip(tokens, heads, strict=True)):
            if rest and len(d) < budget:
                d = self.tokenize([texts[i]])[0]  # the head was too short after all
                rest = ""
            out.append((d, bool(rest and not rest.isspace())))
        return out

    def encode_windows(self, query: str, texts: Sequence[str]) -> list[list[Encoded]]:
        """Encode each text as overlapping windows that each fit ``max_length`` with the query."""
        from rerank_plugins.windows import window_spans

        q = self.query_ids(query)
        budget = self.text_budget(len(q))
        out = []
        for d in self.tokenize(texts):
            out.append([self.build(q, d[a:b]) for a, b in window_spans(len(d), budget)])
        return out

    def _head(self, text: str, budget: int) -> tuple[str, str]:
        """Split off the start of a very long text that surely holds ``budget`` tokens.

        Tokenizing a 1 MB document in full costs hundreds of MB for tokens that truncation
        throws away. Pre-tokenizers split words at whitespace, so cutting at a whitespace
        character leaves the tokens before it unchanged; `encode` falls back to the whole text
        when the head turns out to hold fewer than ``budget`` tokens.
        """
        limit = max(budget * 16, 4096)
        if self.left or len(text) <= limit:
            return text, ""
        cut = limit
        while cut > 0 and not text[cut].isspace():
            cut -= 1
        if cut == 0:
            return text, ""
        return text[:cut], text[cut:]


def _well_formed(text: str) -> str:
    """Replace lone surrogates (bad decoding upstream), which tokenizers refuse, by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _find(haystack: list[int], needle: list[int], start: int) -> int:
    n = len(needle)
    for i in range(start, len(haystack) - n + 1):
        if haystack[i : i + n] == needle:
            return i
    return -1


def pad_batch(
    batch: Sequence[Encoded], pad_id: int, use_token_types: bool
) -> dict[str, np.ndarray]:
    """Right-pad encoded pairs into int64 arrays (input_ids, attention_mask[, token_type_ids])."""
    width = max(e.length for e in batch)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    types = np.zeros((len(batch), width), dtype=np.int64) if use_token_types else None
    for row, enc in enumerate(batch):
        pair_ids, pair_types = enc.payload
        ids[row, : enc.length] = pair_ids
        mask[row, : enc.length] = 1
        if types is not None and pair_types is not None:
            types[row, : enc.length] = pair_types
    out = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        out["token_type_ids"] = types
    return out


class TorchClassifier:
    """Runs a Hugging Face sequence-classification model on padded batches; returns logits."""

    def __init__(self, model: Any, encoder: PairEncoder, device: str, dtype: Any) -> None:
        from rerank_plugins._imports import require

        self.torch = require("torch", purpose="the torch backends")
        num_labels = getattr(model.config, "num_labels", 1)
        if num_labels != 1:
            msg = (
                f"the model has num_labels={num_labels}; reranking needs a single relevance "
                "logit (num_labels=1), as cross-encoder rerankers have."
            )
            raise ModelLoadError(msg)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.last_layer = install_first_token_last_layer(self.model)
        self.first_token_only = self.last_layer.first_token_only
        self.encoder = encoder
        self.device = device
        # Host memory: only CPU activations live in the process heap.
        self.releaser = MemoryReleaser() if device.startswith("cpu") else None
        # Forward passes release the GIL, so on CPU the engine may run several side by side,
        # each on a share of the threads torch would give one pass.
        self.cpu_threads: int | None = (
            int(self.torch.get_num_threads()) if device.startswith("cpu") else None
        )
        pad_id = encoder.tokenizer.pad_token_id
        self.pad_id = int(pad_id) if pad_id is not None else 0

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        """Raw logits of a batch, as Python floats (computed, then cast up to float32)."""
        torch = self.torch
        arrays = pad_batch(batch, self.pad_id, self.encoder.use_token_types)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                inputs = {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}
                logits = self.model(**inputs, return_dict=True).logits
                values: list[float] = logits[:, 0].float().cpu().tolist()
        except torch.cuda.OutOfMemoryError:
            # Free the failed batch's blocks so the engine's split-and-retry can fit halves.
            torch.cuda.empty_cache()
            raise
        if self.releaser is not None:
            self.releaser.after_forward(time.perf_counter() - start)
        return values

    def bind_thread(self, threads: int) -> None:
        """Run this thread's forward passes on ``threads`` intra-op threads (CPU streams)."""
        from rerank_plugins.backends._torch import bind_thread_count

        bind_thread_count(threads)

    def attention(self) -> str:
        """The attention implementation the model runs with (e.g. ``sdpa``)."""
        return str(getattr(self.model.config, "_attn_implementation", "unknown"))

    def describe(self) -> dict[str, Any]:
        """Facts for the engine's info: attention kind and how much of the last layer runs."""
        return {
            "attention": self.attention(),
            **self.last_layer.details(),
        }


class StreamRunner(Protocol):
    """What `TorchBackendBase` needs of the object running its passes to offer CPU streams."""

    cpu_threads: int | None

    def bind_thread(self, threads: int) -> None:
        """Run this thread's forward passes on ``threads`` intra-op threads."""
        ...


class TorchBackendBase(BackendBase):
    """What the torch backends share: torch's ``auto`` device, and CPU streams via their runner.

    A subclass sets ``runner`` to the `TorchClassifier` that runs its forward passes, or to
    None where something else does (FlagEmbedding's LLM rerankers): then passes run one at a
    time.
    """

    runner: StreamRunner | None

    @classmethod
    def resolve_device(cls, device: str) -> str:
        """``auto``: cuda, then mps, then cpu, as torch sees them."""
        from rerank_plugins.backends._torch import resolve_device

        return resolve_device(device)

    @property
    def cpu_threads(self) -> int | None:
        """Intra-op threads of one CPU forward pass; None where passes can't run side by side."""
        return self.runner.cpu_threads if self.runner is not None else None

    def bind_thread(self, threads: int) -> None:
        """Run this thread's forward passes on ``threads`` intra-op threads."""
        if self.runner is not None:
            self.runner.bind_thread(threads)
