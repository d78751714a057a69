"""The small corpus and demo queries that ship with the package, for the demo and examples."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

__all__ = ["JudgedQuery", "Passage", "demo_judgments", "demo_queries", "load_corpus"]


@dataclass(frozen=True)
class Passage:
    """One passage of the shipped corpus.

    Attributes:
        id: Stable identifier, ``"<topic>-<nn>"``.
        text: The passage, one to three sentences.
        metadata: Everything else on the line (``title``, ``topic``).

    Examples:
        >>> from rerank_plugins.data import load_corpus
        >>> passage = load_corpus()[0]
        >>> passage.id, passage.metadata["title"]
        ('search-01', 'Retrieval-augmented generation')
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def load_corpus() -> list[Passage]:
    """The shipped corpus: 300 short factual passages over 15 topics, in file order.

    Returns:
        One `Passage` per line of ``corpus.jsonl``.

    Examples:
        >>> len(load_corpus())
        300
    """
    text = resources.files(__name__).joinpath("corpus.jsonl").read_text(encoding="utf-8")
    passages = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        passages.append(Passage(id=record.pop("id"), text=record.pop("text"), metadata=record))
    return passages


def demo_queries() -> list[str]:
    """The questions `rerank-plugins demo` asks by default.

    Examples:
        >>> demo_queries()[0]
        'What is retrieval-augmented generation?'
    """
    text = resources.files(__name__).joinpath("demo_queries.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class JudgedQuery:
    """A held-out question with the passages that answer it, judged by hand.

    Attributes:
        id: Stable identifier, ``"demo-<nn>"``.
        query: A natural question, worded unlike the passages' titles.
        relevant: Passage id to grade: 2 answers the question, 1 helps.
    """

    id: str
    query: str
    relevant: dict[str, int]


def demo_judgments() -> list[JudgedQuery]:
    """Questions about the shipped corpus, judged by hand, for measuring the demo's reranker.

    None of them is used for training: the demo's fine-tune generates its training queries
    from the passages' titles, so these measure the reranker on questions it never saw.

    Examples:
        >>> judged = demo_judgments()
        >>> len(judged), judged[0].relevant
        (32, {'search-01': 2, 'search-02': 1})
    """
    text = resources.files(__name__).joinpath("demo_eval.jsonl").read_text(encoding="utf-8")
    out = []
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            out.append(JudgedQuery(record["id"], record["query"], dict(record["relevant"])))
    return out
