"""Read BEIR-layout data sets and TREC run files."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BeirData", "load_beir", "load_trec_run"]


@dataclass
class BeirData:
    """A BEIR-layout data set.

    Attributes:
        corpus: Document id -> text (title and body joined, as BEIR's evaluation does).
        titles: Document id -> title ('' when absent).
        queries: Query id -> text, for the judged queries only.
        qrels: Query id -> (document id -> graded relevance).

    Examples:
        >>> data = load_beir("tests/data/beir_sample")  # doctest: +SKIP
        >>> len(data.queries) > 0  # doctest: +SKIP
        True
    """

    corpus: dict[str, str]
    titles: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _read_jsonl(path: Path) -> list[dict[str, object]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                msg = f"{path}:{n}: not valid JSON ({exc.msg}); expected one object per line."
                raise ValueError(msg) from exc
    return rows


def _row_id(row: object, path: Path, n: int) -> str:
    """The ``_id`` (BEIR) or ``id`` of a JSON-lines record; a clear error without either."""
    if isinstance(row, dict):
        found = row.get("_id", row.get("id"))
        if found is not None:
            return str(found)
    msg = f'{path}: record {n} has no "_id" (or "id"); every line needs one.'
    raise ValueError(msg)


def load_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Load ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from ``folder``.

    Raises:
        FileNotFoundError: A required file is missing (the message names it).
        ValueError: A file is malformed.
    """
    root = Path(folder)
    needed = [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv"]
    for path in needed:
        if not path.is_file():
            msg = (
                f"{path} not found; pass a folder in the BEIR layout (corpus.jsonl, "
                f"queries.jsonl and qrels/{split}.tsv)."
            )
            raise FileNotFoundError(msg)
    corpus: dict[str, str] = {}
    titles: dict[str, str] = {}
    for n, row in enumerate(_read_jsonl(needed[0]), 1):
        doc_id = _row_id(row, needed[0], n)
        title = str(row.get("title") or "")
        text = str(row.get("text") or "")
        titles[doc_id] = title
        corpus[doc_id] = f"{title} {text}".strip() if title else text
    all_queries = {
        _row_id(r, needed[1], n): str(r.get("text") or "")
        for n, r in enumerate(_read_jsonl(needed[1]), 1)
    }
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with needed[2].open(encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t")
        for n, cells in enumerate(reader, 1):
            if not cells or (n == 1 and not cells[-1].lstrip("-").isdigit()):
                continue  # header line
            if len(cells) < 3:
                msg = f"{needed[2]}:{n}: expected query-id, corpus-id, score columns."
                raise ValueError(msg)
            qrels[cells[0]][cells[1]] = int(cells[-1])
    queries = {q: all_queries[q] for q in qrels if q in all_queries}
    return BeirData(corpus, titles, queries, dict(qrels))


def load_trec_run(path: str | Path) -> dict[str, list[str]]:
    """Read a TREC run file (``qid Q0 docid rank score tag``) into rankings, best first.

    Rows are ordered by score (descending), then rank, as trec_eval orders them.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line does not have six columns.
    """
    p = Path(path)
    if not p.is_file():
        msg = f"run file {p} not found."
        raise FileNotFoundError(msg)
    rows: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                msg = f"{p}:{n}: expected 'qid Q0 docid rank score tag', got {line.strip()!r}."
                raise ValueError(msg)
            qid, _, doc_id, rank, score, _ = parts
            rows[qid].append((-float(score), int(rank), doc_id))
    return {qid: [d for _, _, d in sorted(items)] for qid, items in rows.items()}
