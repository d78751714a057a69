"""``python -m rerank_plugins.cli``: the same command line as ``rerank-plugins``."""

from rerank_plugins.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
