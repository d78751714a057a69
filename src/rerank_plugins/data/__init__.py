"""The small corpus and demo queries that ship with the package, for the demo and examples."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

__all__ = ["Passage", "demo_queries", "load_corpus"]


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
