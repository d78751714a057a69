"""rerank-plugins' cache folder, and building a folder into it once, atomically.

Exported ONNX models, the offline fallback models and the benchmark models are all built once
and reused: each is written to a private temporary folder beside its place in the cache and
renamed into place in one step, so no reader ever sees half a build and concurrent builders
(threads or processes) cannot corrupt each other.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["CACHE_ENV", "build_once", "cache_root"]

CACHE_ENV = "RERANK_PLUGINS_CACHE"
"""Environment variable naming rerank-plugins' cache folder.

Default: ``~/.cache/rerank-plugins``."""


def cache_root() -> Path:
    """Where built files go: ``$RERANK_PLUGINS_CACHE``, else ``~/.cache/rerank-plugins``.

    Examples:
        >>> import os
        >>> saved = os.environ.get(CACHE_ENV)
        >>> os.environ[CACHE_ENV] = "~/my-cache"
        >>> cache_root() == Path.home() / "my-cache"
        True
        >>> if saved is None:
        ...     del os.environ[CACHE_ENV]
        ... else:
        ...     os.environ[CACHE_ENV] = saved
    """
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "rerank-plugins"


def build_once(
    final: Path, *, complete: Callable[[Path], bool], build: Callable[[Path], object]
) -> bool:
    """Make sure ``final`` holds a complete build; call ``build`` only if it does not yet.

    ``build(folder)`` writes everything into a fresh temporary folder beside ``final``, which
    is then renamed to ``final``. A ``final`` that exists but is not ``complete`` (a stale or
    partial build) is replaced. If another builder finished first, its copy is kept and ours
    is discarded. A failed build leaves nothing behind.

    Args:
        final: The folder the build lives in.
        complete: Whether a folder holds a complete, current build.
        build: Writes the build into the folder it is given.

    Returns:
        Whether this call built it (False: it was there, or another builder won).

    Examples:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "greeting"
        >>> has_file = lambda folder: (folder / "hello.txt").is_file()
        >>> write = lambda folder: (folder / "hello.txt").write_text("hi")
        >>> build_once(target, complete=has_file, build=write)
        True
        >>> build_once(target, complete=has_file, build=write)
        False
    """
    if complete(final):
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        build(tmp)
        if final.exists():
            if complete(final):  # another builder finished while we built
                return False
            shutil.rmtree(final, ignore_errors=True)  # stale or half-built: replace it
        try:
            os.rename(tmp, final)
        except OSError:
            # The target appeared between the check and the rename: another builder won.
            if not complete(final):
                raise
            return False
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
