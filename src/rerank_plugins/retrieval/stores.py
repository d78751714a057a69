"""Vector stores for the first stage: an exact in-memory store and a Qdrant collection."""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rerank_plugins._imports import require
from rerank_plugins.retrieval.encoders import normalize_rows

__all__ = ["InMemoryStore", "Match", "QdrantStore", "VectorStore", "point_id"]

logger = logging.getLogger("rerank_plugins")

# uuid5 namespace for turning caller ids into Qdrant point ids. Fixed forever: changing it
# would orphan every point already written.
POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://pypi.org/project/rerank-plugins/")

_FORMAT = "rerank-plugins/in-memory-store"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Match:
    """One first-stage result: a stored document and its similarity to the query.

    Attributes:
        id: The caller's document id.
        text: The stored text.
        metadata: The caller's metadata (a copy).
        score: Cosine similarity to the query, best is highest.

    Examples:
        >>> Match(id="doc-1", text="RAG combines retrieval and generation.", score=0.71)
        Match(id='doc-1', text='RAG combines retrieval and generation.', metadata={}, score=0.71)
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float = 0.0


@runtime_checkable
class VectorStore(Protocol):
    """What `TwoStageRetriever` needs from a store: upsert by id, nearest-first search, size.

    Vectors arrive unit-length, so cosine similarity and dot product agree.
    """

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> None:
        """Insert documents, replacing any stored under the same id."""
        ...

    def search(self, vector: np.ndarray, k: int) -> list[Match]:
        """The ``k`` stored documents most similar to ``vector``, most similar first."""
        ...

    def __len__(self) -> int:
        """Number of stored documents."""
        ...


def point_id(doc_id: str) -> str:
    """The Qdrant point id (a UUID string) for a caller's document id: uuid5, stable forever.

    Examples:
        >>> point_id("doc-1") == point_id("doc-1") != point_id("doc-2")
        True
    """
    return str(uuid.uuid5(POINT_NAMESPACE, doc_id))


def _check_batch(
    ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str], metadatas: Sequence[Any]
) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        msg = f"vectors must be a 2-d array (one row per document), got shape {matrix.shape}."
        raise ValueError(msg)
    sizes = {len(ids), matrix.shape[0], len(texts), len(metadatas)}
    if len(sizes) != 1:
        msg = (
            f"upsert got {len(ids)} ids, {matrix.shape[0]} vectors, {len(texts)} texts and "
            f"{len(metadatas)} metadatas; pass one of each per document."
        )
        raise ValueError(msg)
    return matrix


class InMemoryStore:
    """Exact nearest-neighbour search over unit vectors held in one numpy matrix.

    Search is a single matrix-vector product, exact (no approximate index), and ties keep
    insertion order. Fine for up to a few hundred thousand passages on one machine; `save`
    and `load` persist it to a folder.

    Args:
        encoder: Name of the bi-encoder that made the vectors; the retriever fills it on first
            index and warns if a different encoder later queries the store.

    Examples:
        >>> import numpy as np
        >>> store = InMemoryStore()
        >>> store.upsert(["a", "b"], np.eye(2), ["first", "second"], [{}, {"lang": "en"}])
        >>> [(m.id, round(m.score, 2)) for m in store.search(np.array([0.0, 1.0]), k=1)]
        [('b', 1.0)]
    """

    def __init__(self, encoder: str | None = None) -> None:
        self.encoder = encoder
        self._lock = threading.RLock()
        self._buffer = np.zeros((0, 0), dtype=np.float32)
        self._size = 0
        self._ids: list[str] = []
        self._texts: list[str] = []
        self._metadatas: list[dict[str, Any]] = []
        self._rows: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def dimension(self) -> int | None:
        """Length of the stored vectors (None until the first upsert)."""
        return self._buffer.shape[1] if self._buffer.shape[1] else None

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> None:
        """Insert documents; an id already stored is overwritten in place.

        Args:
            ids: One id per document; a repeated id keeps its last occurrence.
            vectors: One row per document (normalised here to unit length).
            texts: The texts, returned by `search` for the reranker.
            metadatas: One mapping per document (copied).

        Raises:
            ValueError: The four inputs differ in length, or the vector length differs from
                the vectors already stored.
        """
        matrix = _check_batch(ids, vectors, texts, metadatas)
        if matrix.shape[0] == 0:
            return
        matrix = normalize_rows(matrix)
        with self._lock:
            dim = self.dimension
            if dim is not None and matrix.shape[1] != dim:
                msg = (
                    f"vectors have {matrix.shape[1]} dimensions but this store holds "
                    f"{dim}-dimensional vectors; index and query with the bi-encoder that "
                    "built the store, or start a new store."
                )
                raise ValueError(msg)
            latest = {doc_id: i for i, doc_id in enumerate(ids)}  # a repeated id: last wins
            inserts: list[int] = []
            for doc_id, i in latest.items():
                metadata = copy.deepcopy(dict(metadatas[i]))
                row = self._rows.get(doc_id)
                if row is None:
                    self._rows[doc_id] = len(self._ids)
                    self._ids.append(doc_id)
                    self._texts.append(texts[i])
                    self._metadatas.append(metadata)
                    inserts.append(i)
                else:
                    self._buffer[row] = matrix[i]
                    self._texts[row] = texts[i]
                    self._metadatas[row] = metadata
            if inserts:
                self._append(matrix[inserts])

    def _append(self, block: np.ndarray) -> None:
        # Grow geometrically so indexing in many small batches stays linear overall.
        n, needed = self._size, self._size + block.shape[0]
        if self._buffer.shape[1] != block.shape[1] or needed > self._buffer.shape[0]:
            capacity = max(needed, 2 * self._buffer.shape[0], 64)
            grown = np.zeros((capacity, block.shape[1]), dtype=np.float32)
            if n:
                grown[:n] = self._buffer[:n]
            self._buffer = grown
        self._buffer[n:needed] = block
        self._size = needed

    @property
    def _matrix(self) -> np.ndarray:
        return self._buffer[: self._size]

    def search(self, vector: np.ndarray, k: int) -> list[Match]:
        """The ``k`` most similar documents, best first (exact; ties keep insertion order).

        Raises:
            ValueError: ``k`` is not positive, or ``vector`` has the wrong length.
        """
        if k < 1:
            msg = f"k must be a positive integer, got {k}."
            raise ValueError(msg)
        with self._lock:
            n = len(self._ids)
            if n == 0:
                return []
            query = normalize_rows(np.asarray(vector, dtype=np.float32).reshape(-1))[0]
            if query.shape[0] != self._matrix.shape[1]:
                msg = (
                    f"query vector has {query.shape[0]} dimensions but the store holds "
                    f"{self._matrix.shape[1]}-dimensional vectors; query with the bi-encoder "
                    "that built the store."
                )
                raise ValueError(msg)
            scores = self._matrix @ query
            k = min(k, n)
            top = np.arange(n) if k == n else np.argpartition(-scores, k - 1)[:k]
            top = top[np.lexsort((top, -scores[top]))]
            return [
                Match(
                    id=self._ids[i],
                    text=self._texts[i],
                    metadata=copy.deepcopy(self._metadatas[i]),
                    score=float(scores[i]),
                )
                for i in top.tolist()
            ]

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the store to ``folder`` (created if needed): vectors, records and a manifest.

        Returns:
            The folder.

        Raises:
            TypeError: Some metadata is not JSON-serialisable.
        """
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        with self._lock:
            lines = []
            for doc_id, text, metadata in zip(self._ids, self._texts, self._metadatas, strict=True):
                try:
                    record = json.dumps({"id": doc_id, "text": text, "metadata": metadata})
                except (TypeError, ValueError) as exc:
                    msg = (
                        f"metadata of document {doc_id!r} cannot be saved as JSON ({exc}); "
                        "store only JSON-compatible values (str, int, float, bool, None, "
                        "lists and dicts of them)."
                    )
                    raise TypeError(msg) from exc
                lines.append(record)
            manifest = {
                "format": _FORMAT,
                "version": _FORMAT_VERSION,
                "count": len(self._ids),
                "dimension": self.dimension,
                "encoder": self.encoder,
            }
            _write_atomic(path / "records.jsonl", "".join(line + "\n" for line in lines))
            tmp = path / "vectors.npy.tmp"
            with open(tmp, "wb") as f:
                np.save(f, self._matrix, allow_pickle=False)
            os.replace(tmp, path / "vectors.npy")
            # The manifest goes last: a folder with a manifest is a complete store.
            _write_atomic(path / "store.json", json.dumps(manifest, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> InMemoryStore:
        """Read a store written by `save`.

        Raises:
            FileNotFoundError: ``folder`` holds no saved store.
            ValueError: The files are from another format version or do not agree.
        """
        path = Path(folder)
        manifest_path = path / "store.json"
        if not manifest_path.is_file():
            msg = f"{str(path)!r} holds no saved store (no store.json); save one with store.save()."
            raise FileNotFoundError(msg)
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != _FORMAT or manifest.get("version") != _FORMAT_VERSION:
            msg = (
                f"{str(path)!r} holds format {manifest.get('format')!r} version "
                f"{manifest.get('version')!r}; expected {_FORMAT!r} version {_FORMAT_VERSION}."
            )
            raise ValueError(msg)
        matrix = np.load(path / "vectors.npy", allow_pickle=False).astype(np.float32, copy=False)
        records = [
            json.loads(line)
            for line in (path / "records.jsonl").read_text(encoding="utf-8").splitlines()
            if line
        ]
        if len(records) != manifest["count"] or matrix.shape[0] != manifest["count"]:
            msg = (
                f"{str(path)!r} is inconsistent: the manifest says {manifest['count']} "
                f"documents, found {len(records)} records and {matrix.shape[0]} vectors."
            )
            raise ValueError(msg)
        store = cls(encoder=manifest.get("encoder"))
        store._buffer = matrix
        store._size = matrix.shape[0]
        store._ids = [r["id"] for r in records]
        store._texts = [r["text"] for r in records]
        store._metadatas = [r["metadata"] for r in records]
        store._rows = {doc_id: i for i, doc_id in enumerate(store._ids)}
        return store

    def __repr__(self) -> str:
        return f"InMemoryStore(documents={len(self)}, dimension={self.dimension})"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class QdrantStore:
    """A Qdrant collection as the first-stage store, through ``qdrant-client``.

    Use the embedded local mode on a single machine (``path="folder"`` persists,
    ``path=":memory:"`` does not) and a server in production (``url=...``), or hand over a
    configured ``client``. Caller ids are strings; Qdrant point ids must be integers or
    UUIDs, so each document is stored under ``uuid5(caller id)`` with the caller's id, text
    and metadata in its payload. The collection (cosine distance) is created on the first
    upsert, sized to the bi-encoder.

    Args:
        collection: Collection name.
        path: Folder for local mode, or ``":memory:"``.
        url: Qdrant server URL, e.g. ``"http://localhost:6333"``.
        client: An existing ``qdrant_client.QdrantClient`` (it is not closed by `close`).
        api_key: API key for a server.
        exact: Search exhaustively instead of through the HNSW index (servers only; local
            mode is always exact).
        batch_size: Points per upsert request.
        content_key: Payload key holding the text.
        metadata_key: Payload key holding the metadata.

    Raises:
        ValueError: Not exactly one of ``path``, ``url`` and ``client`` was given.
        MissingDependencyError: qdrant-client is not installed.

    Examples:
        >>> from rerank_plugins.retrieval import QdrantStore, TwoStageRetriever
        >>> store = QdrantStore(collection="docs", path=":memory:")
        >>> len(store)
        0
        >>> retriever = TwoStageRetriever(store=store)  # doctest: +SKIP
    """

    id_key = "id"

    def __init__(
        self,
        collection: str = "rerank_plugins",
        *,
        path: str | os.PathLike[str] | None = None,
        url: str | None = None,
        client: Any = None,
        api_key: str | None = None,
        exact: bool = False,
        batch_size: int = 256,
        content_key: str = "text",
        metadata_key: str = "metadata",
    ) -> None:
        given = [name for name, v in (("path", path), ("url", url), ("client", client)) if v]
        if len(given) != 1:
            msg = (
                f"QdrantStore needs exactly one of path=, url= or client=, got "
                f"{', '.join(given) or 'none'}; e.g. path=':memory:' (in process), "
                "path='qdrant-data' (local, persisted) or url='http://localhost:6333'."
            )
            raise ValueError(msg)
        if not isinstance(collection, str) or not collection:
            msg = f"collection must be a non-empty string, got {collection!r}."
            raise ValueError(msg)
        if batch_size < 1:
            msg = f"batch_size must be a positive integer, got {batch_size}."
            raise ValueError(msg)
        qdrant = require("qdrant_client", purpose="QdrantStore")
        self._models = require("qdrant_client.models", purpose="QdrantStore")
        self.collection = collection
        self.exact = exact
        self.batch_size = batch_size
        self.content_key = content_key
        self.metadata_key = metadata_key
        self._owns_client = client is None
        if client is not None:
            self.client = client
        elif url is not None:
            self.client = qdrant.QdrantClient(url=url, api_key=api_key)
        elif os.fspath(path) == ":memory:":  # type: ignore[arg-type]
            self.client = qdrant.QdrantClient(location=":memory:")
        else:
            self.client = qdrant.QdrantClient(path=os.fspath(path))  # type: ignore[arg-type]
        self._dimension: int | None = None

    def __len__(self) -> int:
        if not self._collection_exists():
            return 0
        return int(self.client.count(self.collection, exact=True).count)

    def _collection_exists(self) -> bool:
        exists = bool(self.client.collection_exists(self.collection))
        if exists and self._dimension is None:
            # Known to exist from now on: searches skip the round trip that asks.
            vectors = self.client.get_collection(self.collection).config.params.vectors
            size = getattr(vectors, "size", None)
            if size is not None:
                self._dimension = int(size)
        return exists

    def _ensure_collection(self, dim: int) -> None:
        if self._dimension == dim:
            return
        if not self.client.collection_exists(self.collection):
            self.client.create_collection(
                self.collection,
                vectors_config=self._models.VectorParams(
                    size=dim, distance=self._models.Distance.COSINE
                ),
            )
            logger.info("created Qdrant collection %r (%d dimensions)", self.collection, dim)
        else:
            vectors = self.client.get_collection(self.collection).config.params.vectors
            size = getattr(vectors, "size", None)
            if size is None:
                msg = (
                    f"Qdrant collection {self.collection!r} uses named vectors; QdrantStore "
                    "needs a collection with one unnamed vector per point."
                )
                raise ValueError(msg)
            if size != dim:
                msg = (
                    f"Qdrant collection {self.collection!r} holds {size}-dimensional vectors, "
                    f"got {dim}; index with the bi-encoder that built it, or use a new collection."
                )
                raise ValueError(msg)
        self._dimension = dim

    def upsert(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any]],
    ) -> None:
        """Insert documents under ``uuid5(id)``; an id already stored is overwritten.

        Raises:
            ValueError: The inputs differ in length, or the vectors do not fit the collection.
        """
        matrix = _check_batch(ids, vectors, texts, metadatas)
        if matrix.shape[0] == 0:
            return
        self._ensure_collection(int(matrix.shape[1]))
        # Qdrant applies a batch's points in order, but say what we mean: the last wins.
        latest = {doc_id: i for i, doc_id in enumerate(ids)}
        points = [
            self._models.PointStruct(
                id=point_id(doc_id),
                vector=matrix[i].tolist(),
                payload={
                    self.id_key: doc_id,
                    self.content_key: texts[i],
                    self.metadata_key: dict(metadatas[i]),
                },
            )
            for doc_id, i in latest.items()
        ]
        for start in range(0, len(points), self.batch_size):
            self.client.upsert(self.collection, points[start : start + self.batch_size], wait=True)

    def search(self, vector: np.ndarray, k: int) -> list[Match]:
        """The ``k`` most similar documents, best first.

        Raises:
            ValueError: ``k`` is not positive, or a point has no text in its payload.
        """
        if k < 1:
            msg = f"k must be a positive integer, got {k}."
            raise ValueError(msg)
        if self._dimension is None and not self._collection_exists():
            return []
        params = self._models.SearchParams(exact=True) if self.exact else None
        points = self.client.query_points(
            self.collection,
            query=np.asarray(vector, dtype=np.float32).reshape(-1).tolist(),
            limit=k,
            with_payload=True,
            search_params=params,
        ).points
        matches = []
        for point in points:
            payload = point.payload or {}
            text = payload.get(self.content_key)
            if not isinstance(text, str):
                msg = (
                    f"point {point.id} of collection {self.collection!r} has no text under "
                    f"payload key {self.content_key!r}; pass content_key= naming the payload "
                    "field that holds the document text."
                )
                raise ValueError(msg)
            metadata = payload.get(self.metadata_key)
            matches.append(
                Match(
                    id=str(payload.get(self.id_key, point.id)),
                    text=text,
                    metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
                    score=float(point.score),
                )
            )
        return matches

    def close(self) -> None:
        """Close the client if this store created it (releases a local folder's lock)."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"QdrantStore(collection={self.collection!r})"
