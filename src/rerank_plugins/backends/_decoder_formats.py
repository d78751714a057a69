"""How each decoder (LLM) reranker family turns (instruction, query, document) into token ids.

A format reproduces its reference token for token: `FlagLLMFormat` is
``FlagLLMReranker.compute_score``, `Qwen3Format` the Qwen3-Reranker model card, and
`CrossEncoderFormat` the preprocessing of a sentence-transformers ``CrossEncoder`` folder (its
own module does the tokenizing, so its prompts and chat templates apply as there). The runner
then only needs the ids and which two vocabulary rows make the score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rerank_plugins.backends._hf import PairEncoder

__all__ = [
    "CrossEncoderFormat",
    "DecoderFormat",
    "FlagLLMFormat",
    "Qwen3Format",
    "Tokens",
    "token_id",
]


@dataclass(frozen=True)
class Tokens:
    """The vocabulary rows a score is read from.

    The score is ``logit(true) - logit(false)``, or ``logit(true)`` alone where ``false`` is None.
    """

    true: int
    false: int | None


class DecoderFormat(Protocol):
    """Token ids of each pair, laid out as the model's reference library lays them out."""

    name: str
    tokens: Tokens
    max_length: int

    @property
    def default_instruction(self) -> str | None:
        """The instruction used when a call gives none (None: the model has no slot for one)."""
        ...

    def encode(
        self, query: str, texts: Sequence[str], instruction: str | None
    ) -> list[tuple[list[int], bool]]:
        """(ids, truncated) per text; ``instruction=None`` means the model's default."""
        ...


def token_id(tokenizer: Any, token: str, what: str) -> int:
    """The id of ``token`` as one vocabulary entry; an error names the option that overrides it."""
    found = tokenizer.convert_tokens_to_ids(token)
    if found is None or found == tokenizer.unk_token_id:
        msg = (
            f"the tokenizer has no {token!r} token for the {what}; pass "
            "decoder_tokens=(true, false) with tokens it has."
        )
        raise ValueError(msg)
    return int(found)


def _ids(tokenizer: Any, text: str, **kwargs: Any) -> list[int]:
    return list(tokenizer(text, **kwargs)["input_ids"])


class FlagLLMFormat:
    """``FlagLLMReranker.compute_score``: ``A: query``, ``B: passage``, then the prompt.

    Token for token as FlagEmbedding 1.4 builds it: the query (prefixed ``"A: "``) cut at
    3/4 of ``max_length``, the passage (prefixed ``"B: "``) at ``max_length``, a bos token
    where the tokenizer has one distinct from padding, a newline between the parts, and the
    passage cut again so the pair fits ``max_length`` plus the separators and prompt. The
    instruction replaces FlagEmbedding's default prompt (its ``prompt=`` argument).
    """

    name = "flag-llm"
    default_instruction: str = (
        "Given a query A and a passage B, determine whether the passage contains an answer to "
        "the query by providing a prediction of either 'Yes' or 'No'."
    )

    def __init__(self, tokenizer: Any, max_length: int, tokens: tuple[str, str | None]) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.query_max_length = max_length * 3 // 4
        # FlagLLMReranker reads the first id of "Yes" and scores that logit alone.
        true = _ids(tokenizer, tokens[0], add_special_tokens=False)[0]
        false = None if tokens[1] is None else token_id(tokenizer, tokens[1], "false answer")
        self.tokens = Tokens(int(true), false)
        self.sep = _ids(tokenizer, "\n", add_special_tokens=False)
        bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
        self.bos = [int(bos)] if bos is not None and bos != pad else []
        self.left = getattr(tokenizer, "truncation_side", "right") == "left"
        self.encoder = PairEncoder(tokenizer, max_length)

    def encode(
        self, query: str, texts: Sequence[str], instruction: str | None
    ) -> list[tuple[list[int], bool]]:
        """(ids, truncated) per text, exactly as FlagLLMReranker builds them."""
        tok = self.tokenizer
        prompt = _ids(tok, instruction or self.default_instruction, add_special_tokens=False)
        q = _ids(
            tok,
            f"A: {query}",
            add_special_tokens=False,
            max_length=self.query_max_length,
            truncation=True,
        )
        first = self.bos + q
        budget = self.max_length + len(self.sep) + len(prompt)
        # The encoders' head-first tokenizing: a huge passage is not tokenized in full for
        # tokens truncation drops, and a lone surrogate fails only its own pair.
        passages = self.encoder.text_ids([f"B: {t}" for t in texts], self.max_length)
        out = []
        for passage, more in passages:
            cut = _cut(passage, self.max_length, self.left)
            second = self.sep + cut
            remove = len(first) + len(second) - budget
            if 0 < remove < len(second):
                second = second[remove:] if self.left else second[:-remove]
            truncated = more or len(second) - len(self.sep) < len(passage)
            out.append((first + second + self.sep + prompt, truncated))
        return out


class Qwen3Format:
    """The Qwen3-Reranker model card: system prompt, ``<Instruct>/<Query>/<Document>``, empty think.

    ``p(yes) = softmax([logit(no), logit(yes)])[1]``, which is ``sigmoid(logit(yes) -
    logit(no))``: the engine's probability of the raw score this format reads.
    """

    name = "qwen3"
    default_instruction: str = (
        "Given a web search query, retrieve relevant passages that answer the query"
    )
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        "<|im_end|>\n<|im_start|>user\n"
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

    def __init__(self, tokenizer: Any, max_length: int, tokens: tuple[str, str | None]) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        true = token_id(tokenizer, tokens[0], "true answer")
        false = None if tokens[1] is None else token_id(tokenizer, tokens[1], "false answer")
        self.tokens = Tokens(true, false)
        self.prefix_ids = _ids(tokenizer, self.prefix, add_special_tokens=False)
        self.suffix_ids = _ids(tokenizer, self.suffix, add_special_tokens=False)
        self.budget = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if self.budget < 16:
            msg = (
                f"max_length={max_length} leaves no room for text after Qwen3's prompt; "
                "pass a larger one."
            )
            raise ValueError(msg)

    def encode(
        self, query: str, texts: Sequence[str], instruction: str | None
    ) -> list[tuple[list[int], bool]]:
        """(ids, truncated) per text, as the model card's ``process_inputs`` builds them."""
        instruct = instruction or self.default_instruction
        bodies = [f"<Instruct>: {instruct}\n<Query>: {query}\n<Document>: {t}" for t in texts]
        full = self.tokenizer(bodies)["input_ids"]
        out = []
        for ids in full:
            cut = ids[: self.budget]  # truncation="longest_first" of one sequence: from the end
            out.append((self.prefix_ids + cut + self.suffix_ids, len(cut) < len(ids)))
        return out


class CrossEncoderFormat:
    """A sentence-transformers ``CrossEncoder`` folder: its own module tokenizes each pair.

    Its prompts, chat template and true/false tokens (the ``LogitScore`` module) apply as in
    ``CrossEncoder.predict``; an instruction is passed as its ``prompt``.
    """

    name = "sentence-transformers"

    def __init__(self, cross_encoder: Any, max_length: int) -> None:
        from sentence_transformers.cross_encoder.modules import LogitScore

        self.ce = cross_encoder
        scorer = next((m for m in cross_encoder if isinstance(m, LogitScore)), None)
        if scorer is None or len(cross_encoder) != 2:
            names = ", ".join(type(m).__name__ for m in cross_encoder)
            msg = (
                f"this CrossEncoder's modules are {names}; a decoder reranker needs a "
                "Transformer followed by LogitScore. Load it with sentence-transformers."
            )
            raise ValueError(msg)
        false = scorer.false_token_id
        self.tokens = Tokens(int(scorer.true_token_id), None if false is None else int(false))
        self.max_length = max_length
        self.default_instruction = cross_encoder._resolve_prompt(None, None) or None

    def encode(
        self, query: str, texts: Sequence[str], instruction: str | None
    ) -> list[tuple[list[int], bool]]:
        """(ids, truncated) per text, from the CrossEncoder's own preprocessing."""
        prompt = instruction or self.default_instruction
        pairs = [(query, t) for t in texts]
        cut = self._rows(pairs, prompt, self.max_length)
        whole = self._rows(pairs, prompt, None)
        return [(ids, len(ids) < len(w)) for ids, w in zip(cut, whole, strict=True)]

    def _rows(self, pairs: list[tuple[str, str]], prompt: str | None, limit: int | None) -> list:
        kwargs: dict[str, Any] = {"processing_kwargs": {"text": {"max_length": limit}}}
        if limit is None:
            kwargs = {"processing_kwargs": {"text": {"truncation": False}}}
        features = self.ce.preprocess(pairs, prompt=prompt, **kwargs)
        ids, mask = features["input_ids"], features["attention_mask"]
        return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


def _cut(ids: list[int], limit: int, left: bool) -> list[int]:
    if len(ids) <= limit:
        return ids
    return ids[-limit:] if left else ids[:limit]
