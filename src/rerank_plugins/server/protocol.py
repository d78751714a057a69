"""The two request shapes the server speaks (TEI and Cohere), parsed and answered in one place."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rerank_plugins.results import RerankResult, to_probability

__all__ = [
    "MAX_RAW_SCORE",
    "ApiError",
    "Limits",
    "RerankCall",
    "answer",
    "parse_request",
    "to_logit",
    "to_probability",
]

Api = Literal["tei", "cohere"]

# The largest float64 below 1 is 1 - 2**-53: probabilities of logits above ~36.7 all round to
# 1.0, so a raw score recovered from a probability is capped there. Small probabilities keep
# their digits (down to the smallest subnormal), so negative logits are recovered far lower.
_TOP = 1.0 - 2.0**-53
_BOTTOM = math.ulp(0.0)
MAX_RAW_SCORE = math.log(_TOP) - math.log1p(-_TOP)


class ApiError(Exception):
    """A request the server answers with an error status and a JSON body, never a traceback.

    Args:
        status: HTTP status code.
        error_type: TEI's error category (``"validation"``, ``"empty"``, ``"auth"``,
            ``"overloaded"``, ``"backend"``, ``"unhealthy"``).
        message: What was wrong and what to do instead.

    Examples:
        >>> ApiError(413, "validation", "batch size 2000 > maximum allowed batch size 1000").body
        {'error': 'batch size 2000 > maximum allowed batch size 1000', 'error_type': 'validation'}
    """

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions unpickle as ``cls(*args)`` and ``args`` holds only the message: rebuild
        # from all three fields, so the error survives a trip between processes.
        return (type(self), (self.status, self.error_type, self.message), self.__dict__)

    @property
    def body(self) -> dict[str, str]:
        """The JSON error body, in text-embeddings-inference's shape."""
        return {"error": self.message, "error_type": self.error_type}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server.

    Attributes:
        max_documents: Texts (TEI) or documents (Cohere) per request; more is a 413.
        max_text_bytes: UTF-8 bytes of the query and of each text; more is a 413.
        max_request_bytes: Bytes of the whole request body; more is a 413.
        max_concurrent_requests: Rerank requests answered at once; more is a 429.

    Examples:
        >>> Limits(max_documents=100).max_documents
        100
    """

    max_documents: int = 1000
    max_text_bytes: int = 64 * 1024
    max_request_bytes: int = 32 * 1024 * 1024
    max_concurrent_requests: int = 512

    def __post_init__(self) -> None:
        """Reject limits that are not positive integers."""
        for name in (
            "max_documents",
            "max_text_bytes",
            "max_request_bytes",
            "max_concurrent_requests",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                msg = f"{name} must be a positive int, got {value!r}."
                raise ValueError(msg)


@dataclass(frozen=True)
class RerankCall:
    """One parsed rerank request, whichever shape it came in.

    Attributes:
        api: ``"tei"`` (the request had ``texts``) or ``"cohere"`` (it had ``documents``).
        query: The query.
        texts: The texts to score, in request order.
        documents: The Cohere documents as sent (strings or objects), for ``return_documents``.
        raw_scores: Answer raw logits instead of probabilities.
        return_text: Echo each text (TEI ``return_text``, Cohere ``return_documents``).
        truncate: Whether over-long texts may be cut (``False``: they are an error).
        top_n: Answer only the best ``top_n`` (None: all).
        instruction: The task for an instruction-aware model (the request's ``instruction``
            field, in either shape; None: the model's default).
    """

    api: Api
    query: str
    texts: list[str]
    documents: list[Any] | None = None
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool = True
    top_n: int | None = None
    instruction: str | None = None


def parse_request(payload: object, limits: Limits) -> RerankCall:
    """Validate a decoded JSON body and detect its shape (``texts``: TEI, ``documents``: Cohere).

    Unknown fields are ignored, as both TEI and Cohere clients send extras (``model``,
    ``max_tokens_per_doc`` ...).

    Args:
        payload: The decoded JSON body.
        limits: The server's limits.

    Returns:
        The call to make.

    Raises:
        ApiError: 422 for a malformed request, 400 for no documents, 413 for a limit exceeded.

    Examples:
        >>> call = parse_request({"query": "q", "texts": ["a", "b"]}, Limits())
        >>> call.api, call.texts, call.truncate
        ('tei', ['a', 'b'], True)
        >>> parse_request({"query": "q", "documents": [{"text": "a"}], "top_n": 1}, Limits()).api
        'cohere'
    """
    if not isinstance(payload, dict):
        msg = (
            f"the request body must be a JSON object, got a JSON {_json_type(payload)}; send "
            '{"query": ..., "texts": [...]} (TEI) or {"query": ..., "documents": [...]} (Cohere).'
        )
        raise _invalid(msg)
    has_texts, has_docs = "texts" in payload, "documents" in payload
    if has_texts == has_docs:
        what = "both" if has_texts else "neither"
        msg = (
            f"the request has {what} of 'texts' and 'documents'; send 'texts' for the "
            "text-embeddings-inference shape or 'documents' for the Cohere shape."
        )
        raise _invalid(msg)
    api: Api = "tei" if has_texts else "cohere"
    query = _query(payload.get("query"), limits)

    documents: list[Any] | None = None
    if api == "tei":
        texts = _texts(payload["texts"], "texts", limits)
        return_text = _flag(payload, "return_text", False)
    else:
        documents, texts = _documents(payload["documents"], limits)
        return_text = _flag(payload, "return_documents", False)
    direction = payload.get("truncation_direction")
    if direction is not None and str(direction).lower() != "right":
        msg = (
            f"truncation_direction={direction!r} is not supported; this server keeps the "
            "beginning of over-long texts ('right'). Send 'right' or leave it out."
        )
        raise _invalid(msg)
    return RerankCall(
        api=api,
        query=query,
        texts=texts,
        documents=documents,
        raw_scores=_flag(payload, "raw_scores", False),
        return_text=return_text,
        truncate=_flag(payload, "truncate", True),
        top_n=_top_n(payload.get("top_n")),
        instruction=_instruction(payload.get("instruction"), limits),
    )


def answer(
    call: RerankCall, results: Sequence[RerankResult], *, normalized: bool, model: str
) -> Any:
    """The JSON answer to ``call``, best first, in the shape the request came in.

    Args:
        call: The parsed request.
        results: The engine's results, best first (all of them, or the top ``call.top_n``).
        normalized: Whether the engine's scores are probabilities (else raw logits).
        model: Model name for the Cohere answer.

    Returns:
        TEI: a list of ``{"index", "score"[, "text"]}``. Cohere: ``{"id", "results": [{"index",
        "relevance_score"[, "document"]}], "model"}``.

    Raises:
        ApiError: 500 when the model produced a NaN score.
    """
    scores = []
    for r in results:
        if math.isnan(r.score):
            msg = f"the model produced a NaN score for texts[{r.index}]; check the model."
            raise ApiError(500, "backend", msg)
        scores.append(_rescale(r.score, normalized=normalized, raw=call.raw_scores))
    if call.api == "tei":
        out: list[dict[str, Any]] = []
        for r, score in zip(results, scores, strict=True):
            item: dict[str, Any] = {"index": r.index, "score": score}
            if call.return_text:
                item["text"] = r.text
            out.append(item)
        return out
    ranked: list[dict[str, Any]] = []
    for r, score in zip(results, scores, strict=True):
        item = {"index": r.index, "relevance_score": score}
        if call.return_text and call.documents is not None:
            doc = call.documents[r.index]
            item["document"] = doc if isinstance(doc, dict) else {"text": doc}
        ranked.append(item)
    return {"id": str(uuid.uuid4()), "results": ranked, "model": model}


def to_logit(p: float) -> float:
    """The logit whose sigmoid is ``p``: at most `MAX_RAW_SCORE` (p = 1), about -744 at p = 0.

    Near 1 a float64 probability has few digits left, so the logit of a probability that was
    computed from a logit ``x`` is within 1e-9 of ``x`` up to x = 15, 1e-6 up to x = 23, and
    1e-3 up to x = 30.

    Examples:
        >>> round(to_logit(0.5), 6), round(to_logit(0.8807970779778823), 6)
        (0.0, 2.0)
    """
    p = min(max(p, _BOTTOM), _TOP)
    return math.log(p) - math.log1p(-p)


def _rescale(score: float, *, normalized: bool, raw: bool) -> float:
    if raw and normalized:
        return to_logit(score)
    if not raw and not normalized:
        return to_probability(score)
    return float(score)


def _invalid(message: str) -> ApiError:
    return ApiError(422, "validation", message)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, int | float) else type(value).__name__


def _query(value: object, limits: Limits) -> str:
    if not isinstance(value, str):
        msg = f"'query' must be a string, got a JSON {_json_type(value)}."
        raise _invalid(msg)
    if not value.strip():
        msg = "'query' is empty; send the question to rank the texts against."
        raise _invalid(msg)
    size = _utf8_len(value)
    if size > limits.max_text_bytes:
        msg = (
            f"the query is {size} bytes; the limit is {limits.max_text_bytes} bytes per text. "
            "Shorten it."
        )
        raise ApiError(413, "validation", msg)
    return value


def _instruction(value: object, limits: Limits) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        msg = f"'instruction' must be a string, got a JSON {_json_type(value)}."
        raise _invalid(msg)
    _check_size(value, "the instruction", limits)
    return value if value.strip() else None


def _check_count(n: int, field: str, limits: Limits) -> None:
    if n == 0:
        raise ApiError(400, "empty", f"'{field}' cannot be empty; send at least one text.")
    if n > limits.max_documents:
        msg = (
            f"batch size {n} > maximum allowed batch size {limits.max_documents}; split the "
            f"{field} over several requests."
        )
        raise ApiError(413, "validation", msg)


def _check_size(text: str, where: str, limits: Limits) -> None:
    size = _utf8_len(text)
    if size > limits.max_text_bytes:
        msg = (
            f"{where} is {size} bytes; the limit is {limits.max_text_bytes} bytes per text. "
            "Split it into passages (the model reads only its first max_length tokens anyway)."
        )
        raise ApiError(413, "validation", msg)


def _texts(value: object, field: str, limits: Limits) -> list[str]:
    if not isinstance(value, list):
        msg = f"'{field}' must be an array of strings, got a JSON {_json_type(value)}."
        raise _invalid(msg)
    _check_count(len(value), field, limits)
    for i, text in enumerate(value):
        if not isinstance(text, str):
            msg = f"{field}[{i}] must be a string, got a JSON {_json_type(text)}."
            raise _invalid(msg)
        _check_size(text, f"{field}[{i}]", limits)
    return list(value)


def _documents(value: object, limits: Limits) -> tuple[list[Any], list[str]]:
    if not isinstance(value, list):
        msg = (
            f"'documents' must be an array of strings or {{\"text\": ...}} objects, got a "
            f"JSON {_json_type(value)}."
        )
        raise _invalid(msg)
    _check_count(len(value), "documents", limits)
    texts = []
    for i, doc in enumerate(value):
        if isinstance(doc, Mapping):
            text = doc.get("text")
            if not isinstance(text, str):
                msg = (
                    f"documents[{i}] is an object without a string 'text' field; send "
                    '{"text": "..."} or a plain string.'
                )
                raise _invalid(msg)
        elif isinstance(doc, str):
            text = doc
        else:
            msg = (
                f"documents[{i}] must be a string or an object with a 'text' field, got a "
                f"JSON {_json_type(doc)}."
            )
            raise _invalid(msg)
        _check_size(text, f"documents[{i}]", limits)
        texts.append(text)
    return list(value), texts


def _flag(payload: Mapping[str, Any], name: str, default: bool) -> bool:
    value = payload.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        msg = f"'{name}' must be true or false, got {value!r}."
        raise _invalid(msg)
    return value


def _top_n(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        msg = f"'top_n' must be a positive integer or null, got {value!r}."
        raise _invalid(msg)
    return value


def _utf8_len(text: str) -> int:
    # surrogatepass: JSON may carry lone surrogates ("\ud800"), which strict UTF-8 refuses.
    return len(text.encode("utf-8", "surrogatepass"))
