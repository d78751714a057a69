"""Checks of the built package that `make package` runs (and CI with it).

``--bare``: run by the interpreter of a fresh venv holding the wheel alone. Importing
``rerank_plugins`` must not import torch or transformers, and asking for a model must fail
with an error naming the extra to install. Every module of the installed package imports only
the standard library, the package's core dependencies, or a module that one of its declared
extras installs (``rerank_plugins._imports.EXTRA_FOR_MODULE``).

``--keeps-stack WHEEL``: run by the current line's venv (transformers 5, sentence-transformers 6
installed). pip's resolver, asked to install the wheel with the ``sentence-transformers`` and
``langchain`` extras, must plan to change neither library (nor torch).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from importlib.metadata import metadata
from pathlib import Path

HEAVY = ("torch", "transformers", "sentence_transformers", "FlagEmbedding", "onnxruntime")
STACK = ("torch", "transformers", "sentence-transformers")


def check_bare() -> None:
    import rerank_plugins

    loaded = [name for name in HEAVY if name in sys.modules]
    if loaded:
        sys.exit(f"importing rerank_plugins imported {loaded}; the core must stay light")
    try:
        rerank_plugins.get_engine("cross-encoder/ms-marco-MiniLM-L-6-v2")
    except rerank_plugins.MissingDependencyError as exc:
        if "pip install" not in str(exc) or "sentence-transformers" not in str(exc):
            sys.exit(f"the missing-extra error does not name what to install: {exc}")
    else:
        sys.exit("get_engine worked without any model library installed")
    check_imports_are_declared(Path(rerank_plugins.__file__).parent)
    print(f"bare install ok: rerank_plugins {rerank_plugins.__version__}, no heavy imports")


# Core dependencies (pyproject's `dependencies`) by import name, and what Python ships.
CORE = {"numpy", "tqdm", "rerank_plugins"}


def check_imports_are_declared(package: Path) -> None:
    from rerank_plugins._imports import EXTRA_FOR_MODULE

    extras = set(metadata("rerank-plugins").get_all("Provides-Extra") or [])
    undeclared_extras = {e for e in EXTRA_FOR_MODULE.values() if e not in extras}
    if undeclared_extras:
        sys.exit(f"EXTRA_FOR_MODULE names extras the wheel does not declare: {undeclared_extras}")
    # A requirement's distribution name, normalised, is the import name of most packages
    # (langchain-core -> langchain_core, typing-extensions -> typing_extensions).
    requirements = metadata("rerank-plugins").get_all("Requires-Dist") or []
    names = [re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req) for req in requirements]
    declared = {m.group(0).lower().replace("-", "_") for m in names if m}
    allowed = CORE | declared | set(EXTRA_FOR_MODULE) | set(sys.stdlib_module_names)
    stray: list[str] = []
    files = sorted(package.rglob("*.py"))
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            stray += [
                f"{path.relative_to(package.parent)}: {n}"
                for n in names
                if n.split(".")[0] not in allowed
            ]
    if stray:
        sys.exit("modules import packages that no extra declares:\n" + "\n".join(stray))
    print(f"{len(files)} modules import only the stdlib, core dependencies and declared extras")


def check_keeps_stack(wheel: str) -> None:
    from importlib.metadata import version

    before = {name: version(name) for name in STACK}
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--report",
            "-",
            f"{wheel}[sentence-transformers,langchain]",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    planned = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report)["install"]
    }
    changed = {name: planned[name] for name in STACK if name in planned}
    if changed:
        sys.exit(f"installing the wheel would change {changed} (installed: {before})")
    print(f"installing the wheel with extras keeps {before}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--bare", action="store_true", help="check a wheel-only venv")
    group.add_argument("--keeps-stack", metavar="WHEEL", help="check the resolver keeps the stack")
    args = parser.parse_args()
    if args.bare:
        check_bare()
    else:
        check_keeps_stack(args.keeps_stack)


if __name__ == "__main__":
    main()
