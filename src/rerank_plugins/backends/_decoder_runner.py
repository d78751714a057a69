"""Forward passes of a decoder (LLM) reranker that compute only what its score reads.

The score is one or two logits at the last position of each pair, so the runner runs the
model's body (not its LM head), takes each row's last real hidden state, and multiplies it by
the two scoring rows of the head only. Pairs of one request start with the same tokens (prompt,
instruction, query), so that shared prefix runs once and its key/value cache is reused for every
document. Both shortcuts check themselves against the full model on a probe when the model
loads, and step aside (saying why in the engine's info) where a model differs.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from rerank_plugins._imports import require
from rerank_plugins.backends._decoder_formats import Tokens
from rerank_plugins.backends._memory import MemoryReleaser
from rerank_plugins.backends.base import Encoded

__all__ = ["DecoderRunner", "shared_prefix_length"]

logger = logging.getLogger("rerank_plugins")

_PREFIX_ENTRIES = 4
# A prefix shorter than this costs more to reuse (a cache copy per layer) than to run again:
# measured on CPU, FlagLLMReranker's ~12-token "A: query" prefix ran 5% slower reused.
MIN_REUSED_PREFIX = 32
_CHECK_TOLERANCE = 1e-3


def shared_prefix_length(ids: Sequence[int], template: Sequence[int]) -> int:
    """Tokens ``ids`` shares with ``template`` from the start, leaving ``ids`` at least one.

    Examples:
        >>> shared_prefix_length([1, 2, 3, 9], [1, 2, 3, 4, 5])
        3
        >>> shared_prefix_length([1, 2], [1, 2, 3])
        1
    """
    n = 0
    limit = min(len(ids) - 1, len(template))
    while n < limit and ids[n] == template[n]:
        n += 1
    return n


class DecoderRunner:
    """Runs a ``*ForCausalLM`` model on encoded pairs; returns the raw score of each pair.

    Payloads are ``(prefix, suffix)`` token tuples: the prefix is shared by the pairs of one
    request and computed once (where it has at least `MIN_REUSED_PREFIX` tokens).
    """

    def __init__(self, model: Any, tokens: Tokens, device: str, dtype: Any, pad_id: int) -> None:
        self.torch = require("torch", purpose="the decoder backend")
        self.model = model.to(device=device, dtype=dtype).eval()
        self.base = getattr(self.model, self.model.base_model_prefix)
        self.tokens = tokens
        self.device = device
        self.pad_id = pad_id
        config = self.model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        params = inspect.signature(self.base.forward).parameters
        # transformers 5 renamed past_key_values to cache (the old name still works, with a warning)
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.rows = self._scoring_rows()
        self.native_head = True
        self.head_reason = "restricted to the scoring tokens at the last position"
        self.prefix_reuse, self.prefix_reason = _prefix_reuse_allowed(config)
        self._prefixes: OrderedDict[tuple[int, ...], list[tuple[Any, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self.tokens_run = 0
        self.tokens_reused = 0
        self.releaser = MemoryReleaser() if device.startswith("cpu") else None
        self.cpu_threads: int | None = (
            int(self.torch.get_num_threads()) if device.startswith("cpu") else None
        )
        self._self_check()

    # -- public -------------------------------------------------------------------------------

    def forward(self, batch: Sequence[Encoded]) -> list[float]:
        """Raw scores of a batch, in batch order (computed in the model's dtype, read as fp32)."""
        torch = self.torch
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, enc in enumerate(batch):
            groups.setdefault(enc.payload[0], []).append(i)
        out = [0.0] * len(batch)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                for prefix, rows in groups.items():
                    suffixes = [batch[i].payload[1] for i in rows]
                    for i, value in zip(rows, self._score_group(prefix, suffixes), strict=True):
                        out[i] = value
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise
        if self.releaser is not None:
            self.releaser.after_forward(time.perf_counter() - start)
        return out

    def close(self) -> None:
        """Drop the model and the cached prefixes so their memory can be freed."""
        with self._lock:
            self._prefixes.clear()
        self.model = self.base = None

    def bind_thread(self, threads: int) -> None:
        """Run this thread's forward passes on ``threads`` intra-op threads (CPU streams)."""
        from rerank_plugins.backends._torch import bind_thread_count

        bind_thread_count(threads)

    def describe(self) -> dict[str, Any]:
        """Facts for the engine's info: attention kind, LM head and prefix reuse."""
        return {
            "attention": str(getattr(self.model.config, "_attn_implementation", "unknown")),
            "lm_head": self.head_reason,
            "prefix_reuse": self.prefix_reason,
        }

    # -- the forward pass ---------------------------------------------------------------------

    def _score_group(self, prefix: tuple[int, ...], suffixes: list[tuple[int, ...]]) -> list[float]:
        if len(prefix) >= MIN_REUSED_PREFIX and self.prefix_reuse:
            kv = self._prefix_kv(prefix)
            hidden = self._run(suffixes, kv, len(prefix))
            with self._lock:
                self.tokens_reused += len(prefix) * len(suffixes)
                self.tokens_run += sum(len(s) for s in suffixes)
        else:
            rows = [prefix + s for s in suffixes]
            hidden = self._run(rows, None, 0)
            with self._lock:
                self.tokens_run += sum(len(r) for r in rows)
        return self._scores(hidden)

    def _run(
        self, rows: Sequence[Sequence[int]], kv: list[tuple[Any, Any]] | None, past: int
    ) -> Any:
        """Last real hidden state of each row (or full logits where the head is not ours)."""
        torch = self.torch
        n, width = len(rows), max(len(r) for r in rows)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, past + width), dtype=torch.long)
        mask[:, :past] = 1
        lengths = torch.tensor([len(r) for r in rows])
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, past : past + len(r)] = 1
        positions = torch.arange(past, past + width).unsqueeze(0).expand(n, -1)
        kwargs: dict[str, Any] = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
        }
        if kv is not None:
            kwargs[self.cache_arg] = self._expanded_cache(kv, n)
            kwargs["use_cache"] = True
        else:
            kwargs["use_cache"] = False
        last = (lengths - 1).to(self.device)
        take = torch.arange(n, device=self.device)
        if self.native_head:
            hidden = self.base(**kwargs).last_hidden_state
            return hidden[take, last]
        logits = self.model(**kwargs).logits
        return logits[take, last]

    def _scores(self, selected: Any) -> list[float]:
        """Raw scores from last hidden states (native head) or last-position logits."""
        t, f = self.tokens.true, self.tokens.false
        if self.native_head:
            weight, bias = self.rows
            logits = selected @ weight.T
            if bias is not None:
                logits = logits + bias
            if self.softcap:
                logits = self.torch.tanh(logits / self.softcap) * self.softcap
            true, false = logits[:, 0].float(), logits[:, 1].float() if f is not None else None
        else:
            true = selected[:, t].float()
            false = selected[:, f].float() if f is not None else None
        values = true if false is None else true - false
        result: list[float] = values.cpu().tolist()
        return result

    def _prefix_kv(self, prefix: tuple[int, ...]) -> list[tuple[Any, Any]]:
        with self._lock:
            kv = self._prefixes.get(prefix)
            if kv is not None:
                self._prefixes.move_to_end(prefix)
                return kv
        torch = self.torch
        ids = torch.tensor([prefix], dtype=torch.long, device=self.device)
        out = self.base(input_ids=ids, use_cache=True)
        # transformers 5 names the returned cache ``cache``; 4.x ``past_key_values``
        cache = out.get("cache") if "cache" in out else out.past_key_values
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        with self._lock:
            self.tokens_run += len(prefix)
            self.tokens_reused -= len(prefix)  # run once here, so not skipped
            self._prefixes[prefix] = kv
            while len(self._prefixes) > _PREFIX_ENTRIES:
                self._prefixes.popitem(last=False)
        return kv

    def _expanded_cache(self, kv: list[tuple[Any, Any]], n: int) -> Any:
        from transformers import DynamicCache

        cache = DynamicCache()
        for i, (k, v) in enumerate(kv):
            cache.update(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1), i)
        return cache

    def _scoring_rows(self) -> tuple[Any, Any]:
        head = self.model.get_output_embeddings()
        index = [self.tokens.true, self.tokens.false if self.tokens.false is not None else 0]
        weight = head.weight[index].detach()
        bias = head.bias[index].detach() if getattr(head, "bias", None) is not None else None
        return weight, bias

    # -- the load-time check ------------------------------------------------------------------

    def _self_check(self) -> None:
        """Compare both shortcuts with the full model on a probe; keep only what agrees."""
        torch = self.torch
        vocab = int(self.model.get_output_embeddings().weight.shape[0])
        gen = torch.Generator().manual_seed(0)
        prefix = tuple(torch.randint(0, vocab, (MIN_REUSED_PREFIX + 8,), generator=gen).tolist())
        suffixes = [tuple(torch.randint(0, vocab, (k,), generator=gen).tolist()) for k in (7, 3)]
        with torch.inference_mode():
            expected = []
            for s in suffixes:
                ids = torch.tensor([prefix + s], device=self.device)
                logits = self.model(input_ids=ids).logits[0, -1].float()
                t = logits[self.tokens.true]
                f = logits[self.tokens.false] if self.tokens.false is not None else 0.0
                expected.append(float(t - f))
            reuse = self.prefix_reuse
            self.prefix_reuse = False
            plain = self._try(prefix, suffixes)
            if not _close(plain, expected):
                self.native_head = False
                self.head_reason = (
                    "full LM head: the restricted head disagreed with the model's own logits "
                    f"on a probe ({_diff(plain, expected)})"
                )
                logger.warning("decoder reranker: %s", self.head_reason)
            self.prefix_reuse = reuse
            if reuse:
                reused = self._try(prefix, suffixes)
                if not _close(reused, expected):
                    self.prefix_reuse = False
                    self.prefix_reason = (
                        "off: reusing the prefix cache changed the probe's scores "
                        f"({_diff(reused, expected)})"
                    )
                    logger.warning("decoder reranker: prefix reuse %s", self.prefix_reason)
            self._prefixes.clear()
            self.tokens_run = self.tokens_reused = 0

    def _try(self, prefix: tuple[int, ...], suffixes: list[tuple[int, ...]]) -> list[float] | None:
        try:
            return self._score_group(prefix, suffixes)
        except Exception as exc:  # a model whose body or cache we cannot drive
            logger.debug("decoder shortcut failed on the probe: %s", exc)
            return None


def _close(got: list[float] | None, expected: list[float]) -> bool:
    if got is None:
        return False
    pairs = zip(got, expected, strict=True)
    return all(abs(a - b) <= _CHECK_TOLERANCE * max(1.0, abs(b)) for a, b in pairs)


def _diff(got: list[float] | None, expected: list[float]) -> str:
    if got is None:
        return "it raised"
    return f"max difference {max(abs(a - b) for a, b in zip(got, expected, strict=True)):.2g}"


def _prefix_reuse_allowed(config: Any) -> tuple[bool, str]:
    """Whether every layer attends to all earlier tokens (no sliding window to keep track of)."""
    layer_types = getattr(config, "layer_types", None) or []
    sliding = any("sliding" in str(t) for t in layer_types)
    if getattr(config, "use_sliding_window", False) or sliding:
        return False, "off: the model has sliding-window layers"
    return True, "on: the shared prompt and query run once per request"
