"""LangChain adapter: `RerankCompressor`, a document compressor backed by the shared engine."""

from __future__ import annotations

from rerank_plugins._imports import require

require("langchain_core", extra="langchain", purpose="rerank_plugins.langchain")

from collections.abc import Callable, Sequence  # noqa: E402

from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from pydantic import field_validator  # noqa: E402

from rerank_plugins._adapters import (  # noqa: E402
    RERANKED_KEY,
    AdapterSettings,
    check_template,
    fill_template,
)

__all__ = ["RerankCompressor"]


class RerankCompressor(AdapterSettings, BaseDocumentCompressor):
    """Rerank retrieved documents with a cross-encoder and keep the best, with their scores.

    Works wherever LangChain takes a document compressor: ``ContextualCompressionRetriever``,
    ``DocumentCompressorPipeline``, and LCEL chains through those retrievers. The returned
    documents are new objects, best first, carrying the caller's metadata and ``id`` plus the
    score (a plain ``float``) under ``score_key``; the caller's documents are never changed.
    ``acompress_documents`` awaits the engine directly, so concurrent async calls share its
    batches without tying up threads.

    Args:
        model: Hub id or local folder of a cross-encoder, loaded once per process through
            `rerank_plugins.get_engine` (compressors with the same settings share it). The only
            setting that may be given positionally: ``RerankCompressor(model, top_n=3)``.
        engine: An existing engine (any `rerank_plugins.Scorer`) instead of ``model``.
        engine_options: Engine options for ``model``; they may also be given as keyword
            arguments (``device="cpu"``, ``max_length=256`` ...).
        top_n: Keep at most this many documents (default 3, as LangChain's rerankers); ``None``
            keeps every document, best first (as LangChain's ``CohereRerank``).
        score_threshold: Drop documents scoring below this, before the ``top_n`` cut.
        score_key: Metadata key of the score (default ``"relevance_score"``, the key of
            LangChain's Cohere and FlashRank rerankers).
        text_template: What is scored: ``None`` for the page content, a ``str.format``
            template over ``page_content`` and metadata fields (``"{title}: {page_content}"``),
            or a callable from `Document` to text.

    Raises:
        pydantic.ValidationError: A bad setting, one line naming it: an unknown option, not
            exactly one of ``model`` and ``engine``, ``top_n < 1``, a value of the wrong type
            (``top_n="3"``; values are never coerced), a malformed template, a bad engine
            option (``device="tpu"``).
        TypeError: More than one positional argument, or the model both positionally and as
            ``model=``.
        rerank_plugins.ModelLoadError: The model cannot be loaded.

    Examples:
        >>> from langchain_core.documents import Document
        >>> from rerank_plugins.langchain import RerankCompressor
        >>> compressor = RerankCompressor(  # doctest: +SKIP
        ...     "cross-encoder/ms-marco-MiniLM-L-6-v2", top_n=1
        ... )
        >>> docs = [Document("RAG combines retrieval with generation."), Document("Cats purr.")]
        >>> best = compressor.compress_documents(docs, "what is rag?")  # doctest: +SKIP
        >>> best[0].page_content, round(best[0].metadata["relevance_score"], 2)  # doctest: +SKIP
        ('RAG combines retrieval with generation.', 0.97)
    """

    score_key: str = "relevance_score"
    """Metadata key under which each returned document carries its score."""
    text_template: str | Callable[[Document], str] | None = None
    """What is scored: ``None`` (the page content), a ``str.format`` template over
    ``page_content`` and the metadata fields, or a callable from `Document` to text."""

    @field_validator("score_key", mode="before")
    @classmethod
    def _check_score_key(cls, value: object) -> str:
        if not isinstance(value, str) or not value:
            msg = (
                "score_key must be a non-empty metadata key, e.g. 'relevance_score', "
                f"got {value!r}."
            )
            raise ValueError(msg)
        return value

    @field_validator("text_template", mode="before")
    @classmethod
    def _check_text_template(cls, value: object) -> str | Callable[[Document], str] | None:
        if isinstance(value, str):
            return check_template(value)
        if value is None or callable(value):
            return value
        msg = (
            "text_template must be None, a str.format template such as "
            f"'{{title}}: {{page_content}}', or a callable from Document to str, got {value!r}."
        )
        raise ValueError(msg)

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> list[Document]:
        """Rerank ``documents`` against ``query``.

        Args:
            documents: The retrieved documents; an empty sequence returns ``[]`` without
                touching the model.
            query: The question.
            callbacks: Unused; accepted for LangChain's interface.

        Returns:
            New documents, best first, at most ``top_n``, each scoring at least
            ``score_threshold``, with the score under ``metadata[score_key]``.

        Raises:
            TypeError: ``query`` is not a string, or ``text_template`` produced a non-string.
            ValueError: ``query`` is empty, or a document lacks a field of ``text_template``.
        """
        return self._scored(self._rank(query, documents, self._text_of))

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> list[Document]:
        """Async `compress_documents`: awaits the engine without blocking the event loop."""
        return self._scored(await self._arank(query, documents, self._text_of))

    def _text_of(self, document: Document) -> str:
        template = self.text_template
        if template is None:
            return document.page_content
        if isinstance(template, str):
            return fill_template(
                template, {**document.metadata, "page_content": document.page_content}
            )
        return template(document)

    def _scored(self, ranked: list[tuple[Document, float | None]]) -> list[Document]:
        # model_copy keeps the caller's Document subclass, id and every other field; the new
        # metadata dict leaves the caller's own untouched.
        return [
            doc.model_copy(
                update={
                    "metadata": {**doc.metadata, self.score_key: score}
                    if score is not None
                    else {**doc.metadata, RERANKED_KEY: False}
                }
            )
            for doc, score in ranked
        ]
