"""Every exception type of the package survives pickling, so it can cross process boundaries."""

from __future__ import annotations

import importlib
import multiprocessing
import pickle
import pkgutil
import sys
from collections.abc import Callable

import pytest

import rerank_plugins
from rerank_plugins.cli._common import CliError
from rerank_plugins.errors import (
    BackendError,
    EngineClosedError,
    MissingDependencyError,
    ModelLoadError,
    RerankError,
)
from rerank_plugins.remote import RemoteError

URL = "http://127.0.0.1:8080/rerank"


def _api_error() -> BaseException:
    from rerank_plugins.server.protocol import ApiError  # needs the server extra

    return ApiError(413, "validation", "batch size 6 > maximum allowed batch size 5")


def _instances() -> dict[str, Callable[[], BaseException]]:
    """One instance per exception class, built with every argument its constructor takes."""
    return {
        "rerank_plugins.errors.RerankError": lambda: RerankError("something went wrong."),
        "rerank_plugins.errors.MissingDependencyError": lambda: MissingDependencyError(
            "pip install 'rerank-plugins[onnx]'", name="onnxruntime", path="/nowhere"
        ),
        "rerank_plugins.errors.ModelLoadError": lambda: ModelLoadError("no model at ./missing."),
        "rerank_plugins.errors.EngineClosedError": lambda: EngineClosedError("engine closed."),
        "rerank_plugins.errors.BackendError": lambda: BackendError("forward pass failed."),
        "rerank_plugins.remote.RemoteError": lambda: RemoteError(
            "the server answered 503.", url=URL, status=503
        ),
        "rerank_plugins.cli._common.CliError": lambda: CliError("--docs is missing.", exit_code=1),
        "rerank_plugins.server.protocol.ApiError": _api_error,
    }


def _import_every_module() -> None:
    """Import all of rerank_plugins, skipping modules whose optional dependency is missing."""

    def skip(name: str) -> None:
        """A subpackage failed to import: fine for a missing extra, a bug otherwise."""
        if not isinstance(sys.exc_info()[1], MissingDependencyError):
            raise  # walk_packages calls this inside its except block

    for module in pkgutil.walk_packages(rerank_plugins.__path__, "rerank_plugins.", onerror=skip):
        try:
            importlib.import_module(module.name)
        except MissingDependencyError:
            continue


def _package_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in rerank_plugins, nested and private ones included."""
    _import_every_module()
    found: dict[str, type[BaseException]] = {}
    pending: list[type[BaseException]] = [BaseException]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("rerank_plugins"):
            found[_name(cls)] = cls
    return [found[name] for name in sorted(found)]


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _state(error: BaseException) -> dict[str, object]:
    state = dict(vars(error))
    if isinstance(error, ImportError):  # name and path are slots, not in __dict__
        state.update(name=error.name, path=error.path)
    return state


EXCEPTIONS = _package_exceptions()


def test_the_walk_finds_the_package_exceptions() -> None:
    names = {_name(cls) for cls in EXCEPTIONS}
    assert {"rerank_plugins.errors.RerankError", "rerank_plugins.remote.RemoteError"} <= names


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=_name)
def test_every_exception_class_has_an_instance_to_check(cls: type[BaseException]) -> None:
    assert _name(cls) in _instances(), (
        f"{_name(cls)} has no entry in _instances() of tests/test_pickling.py; add one built "
        "with every constructor argument, so its pickling is checked."
    )


@pytest.mark.parametrize("name", sorted(_instances()))
def test_an_exception_unpickles_to_an_equal_exception(name: str) -> None:
    error = _instances()[name]()
    assert _name(type(error)) == name
    error.add_note("a note added on the way up")

    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)

    assert type(copy) is type(error)
    assert copy.args == error.args
    assert str(copy) == str(error)
    assert _state(copy) == _state(error)


def test_a_remote_error_unpickles_with_its_url_and_status() -> None:
    copy = pickle.loads(pickle.dumps(RemoteError("x", url=URL)))  # noqa: S301 (our own bytes)
    assert (copy.url, copy.status) == (URL, None)


def _fail_remotely(status: int) -> None:
    """A multiprocessing worker whose call fails the way a RemoteEngine call does."""
    msg = f"the rerank server at {URL} answered {status}: overloaded"
    raise RemoteError(msg, url=URL, status=status)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_pool_worker_s_remote_error_is_re_raised_in_the_parent() -> None:
    # Before RemoteError pickled, the pool's result thread died on it and get() waited forever;
    # the timeout only guards against that hang.
    with multiprocessing.get_context("fork").Pool(1) as pool:
        pending = pool.apply_async(_fail_remotely, (429,))
        with pytest.raises(RemoteError, match="answered 429") as info:
            pending.get(timeout=60)
        assert (info.value.url, info.value.status) == (URL, 429)
        assert pool.apply_async(abs, (-1,)).get(timeout=60) == 1  # the pool still works
