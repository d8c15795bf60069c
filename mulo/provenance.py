"""Where and with what a result was produced: git SHA, CPU model — shared by ``mulo eval``, the weights
packager (:mod:`mulo.meta.ship`) and the benchmarks."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git(*args: str) -> str | None:
    """``git ARGS`` in the checkout mulo was imported from; None outside a checkout or without git."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_sha() -> str:
    """``$MULO_GIT_SHA`` (for copies without .git), else HEAD of the checkout, else ``"unknown"``."""
    return os.environ.get("MULO_GIT_SHA") or git("rev-parse", "HEAD") or "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
