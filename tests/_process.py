"""Run a snippet in a fresh Python process: for what one test process cannot show (imports,
interpreter exit). Tests that use it are marked ``slow``: `make test-fast` leaves them out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with this interpreter, from the repository root; output as text.

    A hang is cut off by the timeout (``subprocess.TimeoutExpired``), so no test waits forever.
    """
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
