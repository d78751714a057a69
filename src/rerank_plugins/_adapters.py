"""What the LangChain and LlamaIndex adapters share: settings, engine resolution, texts, results."""

from __future__ import annotations

import logging
import math
import os
import string
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticOmit, PydanticSerializationError, core_schema
from typing_extensions import Self

from rerank_plugins.config import EngineConfig
from rerank_plugins.contract import Scorer, check_scorer
from rerank_plugins.engine import RerankEngine
from rerank_plugins.errors import error_clause
from rerank_plugins.registry import get_engine
from rerank_plugins.remote import APIS, RemoteEngine
from rerank_plugins.results import (
    RerankResult,
    check_instruction,
    check_query,
    check_threshold,
    check_top_n,
)

logger = logging.getLogger("rerank_plugins")

RERANKED_KEY = "reranked"
"""Metadata key set to False on items passed through unranked (``on_error="passthrough"``)."""

__all__ = [
    "AdapterSettings",
    "check_template",
    "fill_template",
    "gather_engine_options",
    "model_name",
]

T = TypeVar("T")

# What a dump holds for ``engine``: nothing (the adapter was built from ``model``), or a
# RemoteEngine as its settings. Pydantic cannot derive this from the `Scorer` protocol.
_ENGINE_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "title": "RemoteEngineDump",
            "description": "A RemoteEngine, as RemoteEngine.to_config() writes it.",
            "properties": {
                "remote": {
                    "type": "object",
                    "properties": {
                        "url": {"type": "string", "description": "Base URL of the server."},
                        "api": {"enum": sorted(APIS)},
                        "model": {"type": ["string", "null"]},
                        "path": {"type": ["string", "null"]},
                        "timeout": {"type": "number"},
                        "connect_timeout": {"type": "number"},
                        "max_retries": {"type": "integer"},
                        "backoff": {"type": "number"},
                        "max_backoff": {"type": "number"},
                        "batch_size": {"type": ["integer", "null"]},
                        "raw_scores": {"type": "boolean"},
                        "truncate": {"type": "boolean"},
                        "max_connections": {"type": "integer"},
                        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                        "api_key": {
                            "description": "None, or {'env': NAME}: the key is read from the "
                            "environment variable NAME (dumps never hold the key itself).",
                            "anyOf": [
                                {"type": "null"},
                                {"type": "string"},
                                {
                                    "type": "object",
                                    "properties": {"env": {"type": "string"}},
                                    "required": ["env"],
                                    "additionalProperties": False,
                                },
                            ],
                        },
                    },
                    "required": ["url"],
                    "additionalProperties": False,
                }
            },
            "required": ["remote"],
            "additionalProperties": False,
        },
        {"type": "null"},
    ],
}


class _SettingsJsonSchema(GenerateJsonSchema):
    """JSON schema of adapter settings: a value JSON cannot hold (a callable) is left out."""

    def handle_invalid_for_json_schema(
        self, schema: core_schema.CoreSchema, error_info: str
    ) -> JsonSchemaValue:
        # Omitted, not described: such a value cannot come from JSON in the first place.
        raise PydanticOmit


class AdapterSettings(BaseModel):
    """The settings every adapter has: which engine scores, how many results, which threshold.

    A pydantic mixin placed before the framework's base class, so that both adapters validate
    these settings, load their engine and rank items by the same code. Keyword arguments named
    after engine options (``device``, ``max_length`` ...) are gathered into ``engine_options``;
    the model may also come first, positionally.

    Every bad setting raises pydantic's ``ValidationError`` (as the frameworks' own components
    do), with one line naming the setting and what to pass. Values are checked strictly, never
    coerced from another type: ``top_n="3"`` or ``timeout="5"`` is refused, while an int is
    accepted where a float is expected.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str | None = None
    """Hugging Face hub id or local folder of a cross-encoder. The adapter then scores with
    ``get_engine(model, **engine_options)``, so adapters with the same settings share one loaded
    model. Give ``model`` or ``engine``, not both."""
    # Typed as always set (it is, once __init__ returns), so callers need no None check.
    # Excluded from the fields' dump: `_settings_data` writes it, or refuses.
    engine: Annotated[Scorer, WithJsonSchema(_ENGINE_JSON_SCHEMA)] = Field(  # type: ignore[assignment]
        default=None, exclude=True
    )
    """The engine that scores: any `rerank_plugins.Scorer`. Built from ``model`` when not
    given; always set after construction. Dumps leave it out when it was built from ``model``
    and write a `RemoteEngine` as ``{"remote": engine.to_config()}`` (without its API key);
    a local engine given here cannot be dumped or pickled."""
    engine_options: dict[str, Any] = Field(default_factory=dict)
    """Engine options used with ``model`` (see `rerank_plugins.EngineConfig`); they may also be
    passed as keyword arguments, e.g. ``device="cpu"``."""
    top_n: int | None = 3
    """Keep at most this many items, best first; None keeps every item, best first."""
    score_threshold: float | None = None
    """Drop items scoring below this value, before the ``top_n`` cut. Pick it on the engine's
    score scale (probabilities in [0, 1] by default)."""
    on_error: Literal["raise", "passthrough"] = "raise"
    """What a reranker failure (model error, closed engine, timeout, unreachable server) does:
    ``"raise"`` it, or ``"passthrough"``: log a warning and return the first ``top_n`` items in
    the retriever's order, marked ``reranked=False`` in their metadata, so a RAG service keeps
    answering while the reranker is down. Bad input (an empty query) always raises."""
    timeout: float | None = None
    """Seconds to wait for the engine at most (None: no bound); a timeout is a failure in the
    sense of ``on_error``."""
    instruction: str | None = None
    """The task, for instruction-aware (decoder) rerankers such as Qwen3-Reranker, e.g. "Given
    a code question, retrieve snippets that answer it" (None: the model's default). An encoder
    cross-encoder takes none: setting one raises ``ValueError`` on the first call."""

    def __init__(self, *args: str | os.PathLike[str], **data: Any) -> None:
        if args:
            data = _positional_model(type(self).__name__, args, data)
        super().__init__(**data)
        # Loaded here rather than in a validator, so that a missing model surfaces as
        # ModelLoadError instead of being wrapped in a pydantic ValidationError.
        # (The validator guarantees exactly one of model and engine.)
        if self.model is not None:
            self.engine = get_engine(self.model, **self.engine_options)

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        # The engine is a process-wide resource (a model, a worker thread): copies share it.
        memo = {} if memo is None else memo
        memo[id(self.engine)] = self.engine
        return super().__deepcopy__(memo)

    def __getstate__(self) -> dict[Any, Any]:
        # An engine built from `model` is looked up again on unpickling; a RemoteEngine pickles
        # as its settings; a loaded model does not pickle at all.
        # BaseModel's state is taken directly because LlamaIndex's BaseComponent.__getstate__
        # deletes unpicklable attributes from the live object, which would strip our engine.
        if self.model is None and isinstance(self.engine, RerankEngine):
            raise TypeError(self._not_serializable("pickled"))
        state = BaseModel.__getstate__(self)
        if self.model is not None:
            fields = {k: v for k, v in state["__dict__"].items() if k != "engine"}
            state = {**state, "__dict__": fields}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        BaseModel.__setstate__(self, state)
        if self.model is not None:
            self.engine = get_engine(self.model, **self.engine_options)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The JSON schema of the settings; a setting JSON cannot hold (a callable) is left out.

        Takes the arguments of pydantic's ``BaseModel.model_json_schema``. The ``engine`` is
        described by the form dumps write: null, or ``{"remote": {...}}`` for a `RemoteEngine`.
        """
        if len(args) < 3:  # schema_generator is the third positional parameter
            kwargs.setdefault("schema_generator", _SettingsJsonSchema)
        return super().model_json_schema(*args, **kwargs)

    @model_serializer(mode="wrap")
    def _dump_settings(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo):  # type: ignore[no-untyped-def]
        # No return annotation: pydantic would take it for the schema of what a dump holds,
        # where the fields' own schema is the right one. An adapter whose framework has its
        # own model serializer overrides this one by name, calling `_settings_data`.
        return self._settings_data(handler, info)

    def _settings_data(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        """The fields' dump, with a given engine written as data (or refused, naming why)."""
        data: dict[str, Any] = handler(self)
        if self.model is not None or not _dumps_field(info, "engine"):
            return data
        if not isinstance(self.engine, RemoteEngine):
            raise PydanticSerializationError(self._not_serializable("dumped"))
        try:
            data["engine"] = {"remote": self.engine.to_config()}
        except ValueError as exc:
            raise PydanticSerializationError(str(exc)) from exc
        return data

    def _not_serializable(self, action: str) -> str:
        """Why this adapter cannot be pickled or dumped, and what to build it with instead."""
        engine = self.engine
        why = (
            f"a loaded {type(engine).__name__}, and a loaded model is not serializable"
            if isinstance(engine, RerankEngine)
            else f"a {type(engine).__name__}, which has no serializable form"
        )
        return (
            f"{type(self).__name__} cannot be {action}: its engine= is {why}; build it with "
            "model=... and engine_options={...} (loaded again through get_engine where it is "
            "restored) or with engine=RemoteEngine(url) (saved as its URL and settings)."
        )

    @model_validator(mode="before")
    @classmethod
    def _gather_engine_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if isinstance(data.get("model"), os.PathLike):
            data = {**data, "model": os.fspath(data["model"])}
        if isinstance(data.get("engine"), Mapping):  # a dump's RemoteEngine
            data = {**data, "engine": _check_setting(_engine_from_dump, data["engine"])}
        return _check_setting(gather_engine_options, cls.__name__, data, cls.model_fields)

    @field_validator("model", mode="before")
    @classmethod
    def _check_model(cls, value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        hint = ""
        if isinstance(value, int):  # SentenceTransformerRerank(3) habit: that is top_n there
            hint = "; settings such as top_n go by keyword (top_n=3)"
        elif hasattr(value, "rerank"):
            hint = "; pass an existing engine as engine=..."
        msg = f"model must be a hub id or a local folder (a str or path), got {value!r}{hint}."
        raise ValueError(msg)

    @field_validator("top_n", mode="before")
    @classmethod
    def _check_top_n(cls, value: Any) -> int | None:
        return _check_setting(check_top_n, value)

    @field_validator("instruction", mode="before")
    @classmethod
    def _check_instruction(cls, value: Any) -> str | None:
        return _check_setting(check_instruction, value)

    @field_validator("score_threshold", mode="before")
    @classmethod
    def _check_score_threshold(cls, value: Any) -> float | None:
        return _check_setting(check_threshold, value)

    @field_validator("timeout", mode="before")
    @classmethod
    def _check_timeout(cls, value: Any) -> float | None:
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            msg = f"timeout must be a positive number of seconds or None, got {value!r}."
            raise ValueError(msg)
        return float(value)

    @field_validator("on_error", mode="before")
    @classmethod
    def _check_on_error(cls, value: Any) -> str:
        if value not in ("raise", "passthrough"):
            msg = f"on_error must be 'raise' or 'passthrough', got {value!r}."
            raise ValueError(msg)
        return str(value)

    def _rank(
        self, query: str, items: Sequence[T], text_of: Callable[[T], str]
    ) -> list[tuple[T, float | None]]:
        """Score ``items`` against ``query``: the survivors, best first, with their scores.

        A score of None marks an item passed through unranked (``on_error="passthrough"``).
        """
        query = check_query(query)
        texts = _texts(items, text_of)
        if not texts:
            return []
        try:
            results = self.engine.rerank(
                query, texts, self.top_n, self.score_threshold, **self._call_options()
            )
        except (TypeError, ValueError):
            raise
        except Exception as exc:
            return self._passthrough(items, exc)
        return _attach(items, results)

    async def _arank(
        self, query: str, items: Sequence[T], text_of: Callable[[T], str]
    ) -> list[tuple[T, float | None]]:
        """Async `_rank`: awaits the engine on the event loop, without a worker thread."""
        query = check_query(query)
        texts = _texts(items, text_of)
        if not texts:
            return []
        try:
            results = await self.engine.arerank(
                query, texts, self.top_n, self.score_threshold, **self._call_options()
            )
        except (TypeError, ValueError):
            raise
        except Exception as exc:
            return self._passthrough(items, exc)
        return _attach(items, results)

    def _call_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.timeout is not None:
            options["timeout"] = self.timeout
        if self.instruction is not None:
            options["instruction"] = self.instruction
        return options

    def _passthrough(self, items: Sequence[T], exc: Exception) -> list[tuple[T, float | None]]:
        if self.on_error != "passthrough":
            raise exc
        logger.warning(
            "reranking failed (%s: %s); on_error='passthrough' returns the retriever's order, "
            "marked reranked=False",
            type(exc).__name__,
            exc,
        )
        return [(item, None) for item in items[: self.top_n]]


def _check_setting(check: Callable[..., T], *args: Any) -> T:
    """Run a shared check for a validator, raising a wrong type as a ``ValueError``.

    Pydantic turns a ``ValueError`` raised by a validator into its ``ValidationError`` but lets
    a ``TypeError`` escape raw; relayed through here, every bad setting raises the one error
    type the frameworks' own components raise.

    Raises:
        ValueError: ``check`` raised it, or raised a ``TypeError`` (same message).
    """
    try:
        return check(*args)
    except TypeError as exc:
        raise ValueError(str(exc)) from exc


def _dumps_field(info: SerializationInfo, name: str) -> bool:
    """Whether a dump with ``info``'s ``include`` and ``exclude`` holds the field ``name``."""
    if info.exclude is not None and name in info.exclude:
        return False
    return info.include is None or name in info.include


def _engine_from_dump(data: Mapping[str, Any]) -> RemoteEngine:
    """The engine a dump describes: ``{"remote": settings}`` is a `RemoteEngine`.

    Raises:
        TypeError: Any other dict, or bad settings in it (see `RemoteEngine.from_config`).
        ValueError: A bad setting value, or the API key's environment variable is not set.
    """
    if set(data) != {"remote"}:
        msg = (
            "engine given as a dict must be {'remote': {...}}, a RemoteEngine's settings as a "
            f"dump writes them, got a dict with keys {sorted(map(str, data))}."
        )
        raise TypeError(msg)
    return RemoteEngine.from_config(data["remote"])


def gather_engine_options(
    owner: str, data: dict[str, Any], fields: Collection[str]
) -> dict[str, Any]:
    """Move engine options given as keyword arguments into ``engine_options``; check the rest.

    Args:
        owner: The adapter's class name, for messages.
        data: The keyword arguments the adapter was built with.
        fields: The adapter's own setting names.

    Returns:
        New keyword arguments: the adapter's own settings plus the merged ``engine_options``.

    Raises:
        TypeError: An argument that is neither a setting nor an engine option, an option given
            twice, both or neither of ``model`` and ``engine``, engine options together with
            ``engine=``, an ``engine`` that is not a `Scorer`, or an engine option of the
            wrong type.
        ValueError: A bad engine option value (``device="tpu"``) or an empty ``model``.
    """
    known = EngineConfig.option_names()
    extra = {k: v for k, v in data.items() if k not in fields}
    unknown = sorted(set(extra) - known)
    if unknown:
        msg = (
            f"{owner} got unknown option(s) {', '.join(map(repr, unknown))}; expected its "
            f"settings ({', '.join(sorted(fields))}) or engine options "
            f"({', '.join(sorted(known))})."
        )
        raise TypeError(msg)
    given = data.get("engine_options") or {}
    if not isinstance(given, Mapping):
        msg = f"engine_options must be a dict of engine options, got {type(given).__name__}."
        raise TypeError(msg)
    unknown = sorted(set(given) - known)
    if unknown:
        msg = (
            f"{owner} got unknown engine option(s) {', '.join(map(repr, unknown))} in "
            f"engine_options; expected some of {', '.join(sorted(known))}."
        )
        raise TypeError(msg)
    twice = sorted(set(given) & set(extra))
    if twice:
        msg = (
            f"{owner} got engine option(s) {', '.join(map(repr, twice))} both as keyword "
            "arguments and in engine_options; pass each once."
        )
        raise TypeError(msg)
    options = {**given, **extra}

    model, engine = data.get("model"), data.get("engine")
    if (model is None) == (engine is None):
        what = "both" if model is not None else "neither"
        msg = (
            f"{owner} needs exactly one of model= (a hub id or local folder) and engine= (an "
            f"existing engine), got {what}."
        )
        raise TypeError(msg)
    if engine is not None:
        check_scorer(engine, owner)
        if options:
            msg = (
                f"engine options ({', '.join(sorted(options))}) only apply with model=; the "
                "given engine was built with its own options."
            )
            raise TypeError(msg)
    elif isinstance(model, str):
        # Checked here, before any loading, so that a bad option value is a bad setting like
        # any other; a model of the wrong type is left to the model field's own check.
        EngineConfig.from_options(model, options)

    out = {k: v for k, v in data.items() if k in fields}
    out["engine_options"] = options
    return out


def _positional_model(owner: str, args: tuple[object, ...], data: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments with the one positional argument, the model, among them."""
    if len(args) > 1:
        msg = (
            f"{owner} takes one positional argument, the model, got {len(args)}; pass the "
            f"other settings by keyword, e.g. {owner}(model, top_n=3)."
        )
        raise TypeError(msg)
    if "model" in data:
        msg = f"{owner} got the model twice, positionally and as model=; pass it once."
        raise TypeError(msg)
    return {"model": args[0], **data}


def model_name(settings: AdapterSettings) -> str:
    """A name for the model behind an adapter, for framework events and logs."""
    if settings.model is not None:
        return settings.model
    return settings.engine.info.model


def check_template(template: str) -> str:
    """Return ``template`` if it is a valid ``str.format`` template with at least one field.

    Raises:
        ValueError: The template does not parse, or names no field.
    """
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        msg = f"text_template {template!r} is not a valid format string: {error_clause(exc)}."
        raise ValueError(msg) from exc
    if not names or any(name == "" or name.isdigit() for name in names):
        msg = (
            f"text_template {template!r} must name its fields, e.g. "
            "'{title}: {page_content}'; positional fields like '{}' are not allowed."
        )
        raise ValueError(msg)
    return template


def fill_template(template: str, fields: Mapping[str, Any]) -> str:
    """Fill ``template`` from ``fields``, naming any field an item lacks.

    Raises:
        ValueError: The item lacks a field the template names.
    """
    try:
        return template.format_map(fields)
    except KeyError as exc:
        msg = (
            f"text_template needs the field {exc.args[0]!r}, which an item lacks (it has: "
            f"{', '.join(sorted(map(str, fields)))}); add it to every item's metadata, or "
            "pass a callable text_template that handles missing fields."
        )
        raise ValueError(msg) from None


def _texts(items: Sequence[T], text_of: Callable[[T], str]) -> list[str]:
    texts = []
    for i, item in enumerate(items):
        text = text_of(item)
        if not isinstance(text, str):
            msg = f"the text chosen for item {i} is a {type(text).__name__}, expected a str."
            raise TypeError(msg)
        texts.append(text)
    return texts


def _attach(items: Sequence[T], results: Sequence[RerankResult]) -> list[tuple[T, float | None]]:
    return [(items[r.index], float(r.score)) for r in results]
