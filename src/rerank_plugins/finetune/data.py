"""What a fine-tune trains and evaluates on: BEIR data, or queries generated from a corpus alone.

A BEIR-layout folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) brings its own
queries and judgments. A corpus alone brings none, so training queries are generated from it
(`self_supervised_pairs`): a passage's **title** is the query for its text, and a passage
without a title gives up one **sentence**, picked with a seeded generator, as the query for the
rest of it (the inverse cloze task). Either way the queries are split into a training part and a
held-out part the fine-tune never sees, on which it is evaluated.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "CorpusPassage",
    "JudgedQueryLike",
    "TrainingData",
    "load_training_data",
    "read_corpus",
    "self_supervised_pairs",
    "split_sentences",
]

# Splits the generated queries and picks the held-out sentence; fixed, so every run agrees.
DEFAULT_SEED = 20240611

# The end of a sentence: ., ! or ? then space, before a capital, a digit or an opening quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
# A held-out sentence shorter than this (in words) says too little to be a query.
_MIN_QUERY_WORDS = 3


@dataclass(frozen=True)
class CorpusPassage:
    """One passage of a corpus-only data set.

    Attributes:
        id: The passage id (``id`` or ``_id`` in ``corpus.jsonl``).
        text: The passage.
        title: Its title ('' when it has none).

    Examples:
        >>> CorpusPassage("p1", "Paris is the capital of France.", "Paris").title
        'Paris'
    """

    id: str
    text: str
    title: str = ""


@runtime_checkable
class JudgedQueryLike(Protocol):
    """A held-out question with its judged passages (`rerank_plugins.data.JudgedQuery` is one).

    Attributes:
        id: Query id.
        query: The question.
        relevant: Passage id -> grade (above 0: relevant).
    """

    @property
    def id(self) -> str:
        """Query id."""
        ...

    @property
    def query(self) -> str:
        """The question."""
        ...

    @property
    def relevant(self) -> Mapping[str, int]:
        """Passage id -> grade."""
        ...


@dataclass(frozen=True)
class TrainingData:
    """The corpus, the training queries and the held-out queries of one fine-tune.

    Attributes:
        corpus: Passage id -> text as the reranker sees it. For a generated query it is the
            passage without the query: the text without its title, or without the held-out
            sentence.
        train_queries: Query id -> text, to train on.
        train_qrels: Query id -> (passage id -> grade), for the training queries.
        eval_queries: Query id -> text, held out: never trained on.
        eval_qrels: Query id -> (passage id -> grade), for the held-out queries.
        source: ``"beir"`` or ``"corpus"``.
        method: How the training and held-out queries were obtained, in one sentence.
        digest: SHA-256 of the inputs, so a changed input is a different fine-tune.
        eval_corpus: The passages the held-out queries are ranked over, when not ``corpus``:
            judged questions over a corpus alone are asked of the passages as they are, not
            of the texts with a sentence held out for training (None: ``corpus``).

    Examples:
        >>> passages = [CorpusPassage(f"p{i}", f"Text number {i}.", f"Title {i}") for i in range(5)]
        >>> data = load_training_data(passages, held_out=0.4)
        >>> len(data.train_queries), len(data.eval_queries)
        (3, 2)
        >>> set(data.train_queries.values()) & set(data.eval_queries.values())
        set()
    """

    corpus: dict[str, str]
    train_queries: dict[str, str]
    train_qrels: dict[str, dict[str, int]]
    eval_queries: dict[str, str]
    eval_qrels: dict[str, dict[str, int]]
    source: str
    method: str
    digest: str
    eval_corpus: dict[str, str] | None = None

    @property
    def evaluation_corpus(self) -> dict[str, str]:
        """The passages the held-out queries are ranked over."""
        return self.corpus if self.eval_corpus is None else self.eval_corpus


CorpusSource = str | os.PathLike[str] | Sequence[Any]


def split_sentences(text: str) -> list[str]:
    """``text`` cut into sentences at ``.``, ``!`` or ``?`` followed by a capital or a digit.

    Examples:
        >>> split_sentences("Water boils at 100 C. It freezes at 0 C! Why? No idea.")
        ['Water boils at 100 C.', 'It freezes at 0 C!', 'Why?', 'No idea.']
    """
    return [part.strip() for part in _SENTENCE_END.split(text.strip()) if part.strip()]


def self_supervised_pairs(
    passages: Sequence[CorpusPassage], seed: int = DEFAULT_SEED
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Generate one (query, passage id) pair per usable passage, and the corpus they imply.

    A passage with a title: the title is the query, the text (without the title) the passage.
    A passage without a title but with at least two sentences: one sentence of at least three
    words, drawn with ``seed``, is the query, and the rest of the text the passage. A passage
    with neither stays in the corpus (as a candidate, and a negative) without a query.

    Args:
        passages: The corpus.
        seed: Picks the held-out sentence of untitled passages.

    Returns:
        The corpus (passage id -> the text the reranker sees) and the pairs, in corpus order.

    Examples:
        >>> corpus, pairs = self_supervised_pairs([
        ...     CorpusPassage("a", "Paris is the capital of France.", "Paris"),
        ...     CorpusPassage("b", "Rain falls from clouds. Clouds are made of droplets."),
        ... ], seed=1)
        >>> pairs[0], corpus["a"]
        (('Paris', 'a'), 'Paris is the capital of France.')
        >>> query, doc = pairs[1]
        >>> query in corpus[doc]
        False
    """
    rng = random.Random(seed)  # noqa: S311 (a reproducible choice, not a secret)
    corpus: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for passage in passages:
        corpus[passage.id] = passage.text
        if passage.title.strip():
            pairs.append((passage.title.strip(), passage.id))
            continue
        sentences = split_sentences(passage.text)
        usable = [i for i, s in enumerate(sentences) if len(s.split()) >= _MIN_QUERY_WORDS]
        if len(sentences) < 2 or not usable:
            continue
        pick = rng.choice(usable)
        corpus[passage.id] = " ".join(s for i, s in enumerate(sentences) if i != pick)
        pairs.append((sentences[pick], passage.id))
    return corpus, pairs


def read_corpus(path: str | os.PathLike[str]) -> list[CorpusPassage]:
    """Read a ``corpus.jsonl``: one object per line with ``id`` (or ``_id``), ``text``, ``title``.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not a JSON object with an id and a text.
    """
    from rerank_plugins.evaluation.data import _read_jsonl

    file = Path(path)
    if not file.is_file():
        msg = f"{file} not found; pass a folder holding corpus.jsonl (one passage per line)."
        raise FileNotFoundError(msg)
    rows = _read_jsonl(file)
    passages = [_passage(row, f"{file}: passage {n}") for n, row in enumerate(rows, 1)]
    return passages


def _passage(row: Any, where: str) -> CorpusPassage:
    if isinstance(row, CorpusPassage):
        return row
    if not isinstance(row, Mapping):  # a rerank_plugins.data.Passage, or alike
        metadata = getattr(row, "metadata", None) or {}
        row = {"id": getattr(row, "id", None), "text": getattr(row, "text", None), **metadata}
    doc_id = row.get("_id", row.get("id"))
    text = row.get("text")
    if doc_id is None or not isinstance(text, str) or not text.strip():
        msg = (
            f'{where}: expected an object with an id ("id" or "_id") and a non-empty '
            f'"text", got keys {sorted(row)}.'
        )
        raise ValueError(msg)
    return CorpusPassage(str(doc_id), text.strip(), str(row.get("title") or "").strip())


def load_training_data(
    source: CorpusSource,
    *,
    held_out: float = 0.2,
    seed: int = DEFAULT_SEED,
    held_out_queries: Iterable[JudgedQueryLike] | None = None,
) -> TrainingData:
    """The training and held-out queries of a BEIR folder, a corpus folder or file, or records.

    A folder with ``queries.jsonl`` and ``qrels/`` is read as BEIR: it trains on
    ``qrels/train.tsv`` and evaluates on ``qrels/test.tsv`` (or ``dev.tsv``), leaving out of
    the evaluation any query that is also trained on; with only one of the splits, its queries
    are split ``held_out`` for evaluation. Anything else is a corpus alone (a folder with
    ``corpus.jsonl``, that file, or passage records): queries are generated by
    `self_supervised_pairs`, and ``held_out`` of them (split by query text, so a held-out
    query is never trained on) are kept for evaluation.

    Args:
        source: Folder, ``corpus.jsonl`` path, or records (mappings with ``id``/``_id``,
            ``text`` and an optional ``title``, `CorpusPassage` s, or
            `rerank_plugins.data.Passage` s).
        held_out: Share of the queries kept for evaluation (0 to 0.9; 0: none).
        seed: Seed of the split and of the held-out sentences.
        held_out_queries: Judged questions to evaluate on instead of a split: then every
            generated or training query is trained on, except any worded like one of these.

    Returns:
        The data.

    Raises:
        FileNotFoundError: A needed file is missing; the message says which.
        ValueError: Malformed data, ``held_out`` out of range, or too few queries to train.
    """
    if not 0.0 <= held_out <= 0.9:
        msg = f"held_out must be a share between 0 and 0.9, got {held_out!r}."
        raise ValueError(msg)
    judged = list(held_out_queries) if held_out_queries is not None else None
    folder = Path(source).expanduser() if isinstance(source, str | os.PathLike) else None
    if folder is not None and folder.is_dir() and _is_beir(folder):
        data = _beir(folder, held_out, seed, judged is not None)
    else:
        data = _corpus(source, folder, held_out, seed, judged is not None)
    if judged is not None:
        data = _with_judged(data, judged)
    if not data.train_queries:
        msg = (
            "no training queries: the corpus has no passage with a title or with two or more "
            "sentences; add titles, or pass a BEIR folder with queries and qrels."
        )
        raise ValueError(msg)
    return data


def _is_beir(folder: Path) -> bool:
    return (folder / "queries.jsonl").is_file() or (folder / "qrels").is_dir()


def _beir(folder: Path, held_out: float, seed: int, judged: bool) -> TrainingData:
    from rerank_plugins.evaluation import load_beir

    splits = [s for s in ("train", "dev", "test") if (folder / "qrels" / f"{s}.tsv").is_file()]
    if not splits:
        msg = f"{folder / 'qrels'} has no train.tsv, dev.tsv or test.tsv; add the judgments."
        raise FileNotFoundError(msg)
    train = load_beir(folder, split=splits[0])
    evaluation = [s for s in splits[1:] if s != "dev" or "test" not in splits]
    digest = _digest_files(
        [folder / "corpus.jsonl", folder / "queries.jsonl"]
        + [folder / "qrels" / f"{s}.tsv" for s in splits]
    )
    eval_q: dict[str, str] = {}
    eval_qrels: dict[str, dict[str, int]] = {}
    held = load_beir(folder, split=evaluation[0]) if evaluation and not judged else None
    unseen = _unseen(held, train) if held is not None else {}
    if judged:
        train_q = train.queries
        method = f"the judged queries of qrels/{splits[0]}.tsv"
    elif held is not None and unseen:
        eval_q = unseen
        eval_qrels = {q: held.qrels[q] for q in eval_q}
        train_q = train.queries
        method = (
            f"trained on the judged queries of qrels/{splits[0]}.tsv, evaluated on those of "
            f"qrels/{evaluation[0]}.tsv not trained on"
        )
    else:  # one split, or every query of the second is also in the first: split the first
        train_q, eval_q = _split(train.queries, held_out, seed)
        eval_qrels = {q: train.qrels[q] for q in eval_q}
        method = (
            f"the judged queries of qrels/{splits[0]}.tsv, {round(held_out * 100)}% of them "
            f"(seed {seed}) held out for evaluation"
        )
    if not train_q:
        msg = (
            f"{folder / 'qrels' / (splits[0] + '.tsv')} judges no query of queries.jsonl; "
            "check that the query ids of the two files agree."
        )
        raise ValueError(msg)
    return TrainingData(
        corpus=train.corpus,
        train_queries=train_q,
        train_qrels={q: train.qrels[q] for q in train_q},
        eval_queries=eval_q,
        eval_qrels=eval_qrels,
        source="beir",
        method=method,
        digest=digest,
    )


def _corpus(
    source: CorpusSource, folder: Path | None, held_out: float, seed: int, judged: bool
) -> TrainingData:
    if folder is not None:
        file = folder / "corpus.jsonl" if folder.is_dir() else folder
        if folder.is_dir() and not file.is_file():
            msg = (
                f"{folder} has no corpus.jsonl; pass a folder holding corpus.jsonl (one "
                'passage per line: "id", "text", optional "title"), or a BEIR folder.'
            )
            raise FileNotFoundError(msg)
        if not folder.exists():
            msg = f"data folder {folder} does not exist; pass a folder holding corpus.jsonl."
            raise FileNotFoundError(msg)
        passages = read_corpus(file)
        digest = _digest_files([file])
    else:
        if isinstance(source, str | bytes) or not isinstance(source, Sequence):
            msg = f"expected a folder, a corpus.jsonl path or passage records, got {source!r}."
            raise TypeError(msg)
        passages = [_passage(row, f"record {n}") for n, row in enumerate(source)]
        digest = _digest_text(
            json.dumps([[p.id, p.title, p.text] for p in passages], ensure_ascii=False)
        )
    if not passages:
        msg = "the corpus is empty; pass at least a few passages to train on."
        raise ValueError(msg)
    corpus, pairs = self_supervised_pairs(passages, seed)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    ids: dict[str, str] = {}
    for text, doc_id in pairs:  # one query per distinct text: passages sharing a title share it
        qid = ids.setdefault(_norm(text), f"q{len(ids) + 1}")
        queries.setdefault(qid, text)
        qrels.setdefault(qid, {})[doc_id] = 1
    titled = sum(1 for p in passages if p.title)
    ways = []
    if titled:
        ways.append(f"the title as the query for the text ({titled} passages)")
    if len(pairs) > titled:
        ways.append(
            f"a held-out sentence as the query for the rest ({len(pairs) - titled} passages)"
        )
    if len(passages) > len(pairs):
        ways.append(f"no query ({len(passages) - len(pairs)} passages: one sentence, no title)")
    method = f"self-supervised from {len(passages)} passages: " + "; ".join(ways)
    train_q: dict[str, str] = queries
    eval_q: dict[str, str] = {}
    if not judged:
        train_q, eval_q = _split(queries, held_out, seed)
        if held_out:
            method += f"; {round(held_out * 100)}% of the queries (seed {seed}) held out"
    return TrainingData(
        corpus=corpus,
        train_queries=train_q,
        train_qrels={q: qrels[q] for q in train_q},
        eval_queries=eval_q,
        eval_qrels={q: qrels[q] for q in eval_q},
        source="corpus",
        method=method,
        digest=digest,
        eval_corpus=_unless_same({p.id: p.text for p in passages}, corpus) if judged else None,
    )


def _with_judged(data: TrainingData, judged: Sequence[JudgedQueryLike]) -> TrainingData:
    """Evaluate on ``judged``; train on no query worded like one of them."""
    eval_queries = {str(j.id): str(j.query) for j in judged}
    eval_qrels = {str(j.id): {str(d): int(g) for d, g in j.relevant.items()} for j in judged}
    unknown = sorted({d for rel in eval_qrels.values() for d in rel} - set(data.evaluation_corpus))
    if unknown:
        msg = (
            f"held-out queries judge passages missing from the corpus: {unknown[:3]}; check "
            "that the judgments and the corpus use the same ids."
        )
        raise ValueError(msg)
    banned = {_norm(q) for q in eval_queries.values()}
    train = {q: t for q, t in data.train_queries.items() if _norm(t) not in banned}
    record = json.dumps(
        sorted((q, text, sorted(eval_qrels[q].items())) for q, text in eval_queries.items())
    )
    return replace(
        data,
        train_queries=train,
        train_qrels={q: data.train_qrels[q] for q in train},
        eval_queries=eval_queries,
        eval_qrels=eval_qrels,
        method=f"{data.method}; evaluated on {len(judged)} judged held-out queries",
        digest=_digest_text(data.digest + record),
    )


def _split(
    queries: Mapping[str, str], held_out: float, seed: int
) -> tuple[dict[str, str], dict[str, str]]:
    """Split query ids: ``held_out`` of them (at least one, when any) for evaluation."""
    qids = sorted(queries)
    if held_out == 0 or not qids:
        return dict(queries), {}
    if len(qids) < 2:
        msg = (
            f"only {len(qids)} query to split into training and held-out parts; add passages "
            "or queries, or pass held_out=0 (--held-out 0)."
        )
        raise ValueError(msg)
    random.Random(seed).shuffle(qids)  # noqa: S311 (a reproducible split, not a secret)
    n = min(len(qids) - 1, max(1, round(len(qids) * held_out)))
    held = set(qids[:n])
    order = list(queries)
    return (
        {q: queries[q] for q in order if q not in held},
        {q: queries[q] for q in order if q in held},
    )


def _unseen(held: Any, train: Any) -> dict[str, str]:
    """The queries of ``held`` that ``train`` does not have, by id or by wording."""
    seen = set(train.queries) | {_norm(t) for t in train.queries.values()}
    return {q: t for q, t in held.queries.items() if q not in seen and _norm(t) not in seen}


def _unless_same(full: dict[str, str], corpus: dict[str, str]) -> dict[str, str] | None:
    return None if full == corpus else full


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _digest_files(paths: Sequence[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.name.encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def _digest_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
