"""Run the rerank-plugins benchmark: our engine side by side with the libraries it replaces.

    python benchmarks/run.py --quick              # ~1 minute smoke run
    python benchmarks/run.py --out benchmarks/results   # the full run (~10+ minutes on 2 cores)

Options: see benchmarks/README.md; `make bench BENCH_ARGS="..."` runs it too.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Run as a script, this file sees benchmarks/ first on sys.path; the harness is a package of
# the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import add_arguments, main


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    return main(args, command=shlex.join(["python", "benchmarks/run.py", *argv]))


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
