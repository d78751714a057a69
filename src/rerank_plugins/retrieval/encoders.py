"""First-stage encoders: a sentence-transformers bi-encoder that turns texts into unit vectors."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rerank_plugins._imports import require
from rerank_plugins.errors import ModelLoadError, error_clause
from rerank_plugins.models import check_model_reference

__all__ = ["BiEncoder", "Encoder", "normalize_rows"]

logger = logging.getLogger("rerank_plugins")


@runtime_checkable
class Encoder(Protocol):
    """What the retriever needs from a first-stage model: texts in, unit-length vectors out."""

    @property
    def name(self) -> str:
        """Hub id or folder the vectors come from (recorded when a store is saved)."""
        ...

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """A float32 matrix with one unit-length row per text."""
        ...

    def encode_query(self, query: str) -> np.ndarray:
        """A float32 unit-length vector for one query."""
        ...


class BiEncoder:
    """A `sentence_transformers.SentenceTransformer`, loaded on first use, returning unit vectors.

    Queries and documents go through ``encode_query`` / ``encode_document``, so models that
    define separate prompts for the two (E5, BGE, ...) get them; for models without prompts
    both are plain ``encode``.

    Args:
        model: Hugging Face hub id or local folder of a sentence-transformers model.
        device: ``"auto"`` (sentence-transformers picks cuda, mps or cpu), ``"cpu"``, ``"cuda"``...
        batch_size: Texts per forward pass while encoding.
        trust_remote_code: Run model code shipped with the weights.

    Raises:
        ValueError: ``model`` is empty or ``batch_size`` is not positive.

    Examples:
        >>> from rerank_plugins.retrieval import BiEncoder
        >>> encoder = BiEncoder("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
        >>> encoder.encode_documents(["RAG is retrieval plus generation."]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "auto",
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ) -> None:
        if not isinstance(model, str | os.PathLike) or not str(model).strip():
            msg = f"bi-encoder model must be a non-empty hub id or folder, got {model!r}."
            raise ValueError(msg)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            msg = f"batch_size must be a positive integer, got {batch_size!r}."
            raise ValueError(msg)
        self._name = os.fspath(model)
        self.device = device
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The hub id or folder this encoder loads."""
        return self._name

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory yet."""
        return self._model is not None

    def load(self) -> BiEncoder:
        """Load the model now (it otherwise loads on the first encode); returns ``self``.

        Raises:
            ModelLoadError: The model could not be found or loaded.
            MissingDependencyError: sentence-transformers is not installed.
        """
        with self._lock:
            if self._model is None:
                self._model = self._load()
        return self

    def _load(self) -> Any:
        check_model_reference(self._name)
        st = require("sentence_transformers", purpose="the retrieval bi-encoder")
        try:
            model = st.SentenceTransformer(
                self._name,
                device=None if self.device == "auto" else self.device,
                trust_remote_code=self.trust_remote_code,
            )
        except Exception as exc:
            msg = (
                f"could not load bi-encoder {self._name!r}: {error_clause(exc)}. Pass a "
                "local folder, or a hub id with network access to the Hugging Face hub."
            )
            raise ModelLoadError(msg) from exc
        logger.info("bi-encoder ready: model=%s device=%s", self._name, model.device)
        return model

    @property
    def dimension(self) -> int:
        """Length of the vectors this model produces (loads the model)."""
        model = self.load()._model
        dim = model.get_sentence_embedding_dimension()
        if dim is None:
            dim = int(model.encode(["dimension probe"]).shape[-1])
        return int(dim)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        """Embed documents as a float32 matrix of unit-length rows (empty input: shape (0, 0))."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        model = self.load()._model
        encode = getattr(model, "encode_document", model.encode)
        vectors = encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return normalize_rows(np.asarray(vectors, dtype=np.float32))

    def encode_query(self, query: str) -> np.ndarray:
        """Embed one query as a float32 unit-length vector."""
        model = self.load()._model
        encode = getattr(model, "encode_query", model.encode)
        vector = encode([query], show_progress_bar=False, convert_to_numpy=True)
        return normalize_rows(np.asarray(vector, dtype=np.float32))[0]

    def __repr__(self) -> str:
        return f"BiEncoder({self._name!r}, device={self.device!r})"


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Scale each row to unit length (all-zero rows stay zero), as float32.

    Examples:
        >>> normalize_rows(np.array([[3.0, 4.0]])).tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)
