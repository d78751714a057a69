"""Checks of the built package that `make package` runs (and CI with it).

``--bare``: run by the interpreter of a fresh venv holding the wheel alone. Importing
``rerank_plugins`` must not import torch or transformers, and asking for a model must fail
with an error naming the extra to install.

``--keeps-stack WHEEL``: run by the current line's venv (transformers 5, sentence-transformers 6
installed). pip's resolver, asked to install the wheel with the ``sentence-transformers`` and
``langchain`` extras, must plan to change neither library (nor torch).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

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
    print(f"bare install ok: rerank_plugins {rerank_plugins.__version__}, no heavy imports")


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
