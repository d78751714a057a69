"""Benchmark workloads: queries with ~200-token candidate chunks, synthetic or realistic English."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.harness._corpus import TOPICS

__all__ = [
    "KINDS",
    "Shape",
    "Workload",
    "build_workload",
    "build_workloads",
    "english_sample",
    "parse_shape",
]

KINDS: tuple[str, ...] = ("synthetic", "english")
"""Text kinds: ``synthetic`` (shuffled English words) and ``english`` (corpus sentences)."""

_SHAPE = re.compile(r"^(\d+)x(\d+)(?:@(\d+))?$")


@dataclass(frozen=True)
class Shape:
    """How many queries, candidates per query, and concurrent callers a workload has.

    Examples:
        >>> parse_shape("16x50@8")
        Shape(queries=16, docs=50, threads=8)
        >>> parse_shape("1x100").label
        '1×100'
    """

    queries: int
    docs: int
    threads: int = 1

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``1×100`` or ``16×50 / 8 threads``."""
        base = f"{self.queries}×{self.docs}"
        return base if self.threads == 1 else f"{base} / {self.threads} threads"

    @property
    def spec(self) -> str:
        """The command-line spelling, e.g. ``16x50@8``."""
        base = f"{self.queries}x{self.docs}"
        return base if self.threads == 1 else f"{base}@{self.threads}"


def parse_shape(text: str) -> Shape:
    """Parse ``QxD`` or ``QxD@T`` (queries x docs per query, at T concurrent callers).

    Args:
        text: The shape, e.g. ``"1x100"`` or ``"16x50@8"``.

    Returns:
        The parsed shape.

    Raises:
        ValueError: The text is not of that form or a number is zero.
    """
    match = _SHAPE.match(text.strip())
    if not match:
        msg = f"workload shape must look like 1x100 or 16x50@8, got {text!r}."
        raise ValueError(msg)
    queries, docs = int(match.group(1)), int(match.group(2))
    threads = int(match.group(3) or 1)
    if min(queries, docs, threads) < 1:
        msg = f"workload shape numbers must be positive, got {text!r}."
        raise ValueError(msg)
    return Shape(queries, docs, threads)


@dataclass(frozen=True)
class Workload:
    """Queries, their candidate texts, and how they are submitted.

    Attributes:
        shape: Queries x docs at how many concurrent callers.
        kind: ``"synthetic"`` or ``"english"``.
        queries: One string per query.
        docs: Candidate texts of each query (no text repeats within the workload).
        pair_tokens: Token length of each (query, doc) pair with special tokens, as the model
            sees it (after truncation): the basis of the FLOP count.
    """

    shape: Shape
    kind: str
    queries: tuple[str, ...]
    docs: tuple[tuple[str, ...], ...]
    pair_tokens: tuple[tuple[int, ...], ...]

    @property
    def name(self) -> str:
        """E.g. ``1×100 english``."""
        return f"{self.shape.label} {self.kind}"

    @property
    def pairs(self) -> int:
        """Total (query, doc) pairs."""
        return sum(len(d) for d in self.docs)

    @property
    def mean_tokens(self) -> float:
        """Mean pair length in tokens."""
        flat = [n for row in self.pair_tokens for n in row]
        return sum(flat) / max(len(flat), 1)


def english_sample(n: int = 64, seed: int = 0) -> list[tuple[str, str]]:
    """Realistic (question, passage) pairs from the corpus, for calibrating a model's head.

    Args:
        n: Number of pairs.
        seed: Random seed.

    Returns:
        Pairs, about a quarter of them on the question's topic.
    """
    rng = random.Random(seed)
    names = sorted(TOPICS)
    out = []
    for _ in range(n):
        topic = rng.choice(names)
        question = rng.choice(TOPICS[topic][0])
        source = topic if rng.random() < 0.25 else rng.choice(names)
        sentences = list(TOPICS[source][1])
        rng.shuffle(sentences)
        out.append((question, " ".join(sentences[: rng.randint(2, 8)])))
    return out


class _TokenCounter:
    """Counts tokens of whitespace-separated words, caching each word's count."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[str, int] = {}

    def words(self, text: str) -> int:
        total = 0
        for word in text.split():
            n = self._cache.get(word)
            if n is None:
                n = len(self.tokenizer(word, add_special_tokens=False)["input_ids"])
                self._cache[word] = n
            total += n
        return total


def _vocabulary() -> list[str]:
    words = {
        w.strip(".,;:?!'\"()").lower()
        for _, sentences in TOPICS.values()
        for s in sentences
        for w in s.split()
    }
    return sorted(w for w in words if w.isalpha())


def _synthetic_doc(rng: random.Random, vocab: Sequence[str], target: int, count: Callable) -> str:
    words: list[str] = []
    tokens = 0
    while tokens < target:
        word = rng.choice(vocab)
        tokens += count(word)
        words.append(word)
    return " ".join(words)


def _english_doc(rng: random.Random, topic: str, target: int, count: Callable) -> str:
    names = sorted(TOPICS)
    pool = list(TOPICS[topic][1])
    rng.shuffle(pool)
    sentences: list[str] = []
    tokens = 0
    while tokens < target:
        if not pool or rng.random() < 0.15:  # chunks straddle sections now and then
            other = list(TOPICS[rng.choice(names)][1])
            pool.append(rng.choice(other))
        sentence = pool.pop()
        sentences.append(sentence)
        tokens += count(sentence)
    return " ".join(sentences)


def build_workload(
    tokenizer: Any,
    shape: Shape,
    kind: str,
    *,
    seed: int = 0,
    doc_tokens: tuple[int, int] = (160, 240),
    max_length: int = 512,
) -> Workload:
    """Build one workload whose texts have about ``doc_tokens`` tokens each.

    Args:
        tokenizer: The model's Hugging Face tokenizer (token counts depend on it).
        shape: Queries x docs at how many callers.
        kind: ``"synthetic"`` (random English words: no sentence structure) or ``"english"``
            (shuffled corpus sentences; a fifth of each query's candidates on its topic).
        seed: Random seed; the same seed gives the same texts.
        doc_tokens: Inclusive range of each text's target length in tokens (without the query).
        max_length: Pair length limit used to report token counts.

    Returns:
        The workload.

    Raises:
        ValueError: ``kind`` is not one of `KINDS`.
    """
    if kind not in KINDS:
        msg = f"unknown workload kind {kind!r}; expected one of {', '.join(KINDS)}."
        raise ValueError(msg)
    rng = random.Random(f"{seed}:{shape.spec}:{kind}")
    counter = _TokenCounter(tokenizer)
    vocab = _vocabulary()
    names = sorted(TOPICS)
    seen: set[str] = set()
    queries: list[str] = []
    docs: list[tuple[str, ...]] = []
    questions = [(t, q) for t in names for q in TOPICS[t][0]]
    rng.shuffle(questions)
    for i in range(shape.queries):
        if kind == "english":
            topic, query = questions[i % len(questions)]
            if i >= len(questions):
                query = f"{query} ({i // len(questions)})"
        else:
            topic, query = "", " ".join(rng.choice(vocab) for _ in range(rng.randint(6, 10)))
        row: list[str] = []
        while len(row) < shape.docs:
            target = rng.randint(*doc_tokens)
            if kind == "english":
                source = topic if rng.random() < 0.2 else rng.choice(names)
                text = _english_doc(rng, source, target, counter.words)
            else:
                text = _synthetic_doc(rng, vocab, target, counter.words)
            if text not in seen:
                seen.add(text)
                row.append(text)
        queries.append(query)
        docs.append(tuple(row))
    lengths = tuple(
        tuple(
            len(ids)
            for ids in tokenizer([q] * len(row), list(row), truncation=True, max_length=max_length)[
                "input_ids"
            ]
        )
        for q, row in zip(queries, docs, strict=True)
    )
    return Workload(shape, kind, tuple(queries), tuple(docs), lengths)


def build_workloads(
    tokenizer: Any,
    shapes: Sequence[Shape],
    kinds: Sequence[str],
    *,
    seed: int = 0,
    doc_tokens: tuple[int, int] = (160, 240),
) -> list[Workload]:
    """Every (shape, kind) combination, each with its own texts.

    Args:
        tokenizer: The model's tokenizer.
        shapes: Workload shapes.
        kinds: Text kinds.
        seed: Random seed.
        doc_tokens: Range of text lengths in tokens.

    Returns:
        One workload per combination, shapes first.
    """
    return [
        build_workload(tokenizer, shape, kind, seed=seed, doc_tokens=doc_tokens)
        for shape in shapes
        for kind in kinds
    ]
