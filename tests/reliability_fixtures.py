"""Shared by the reliability matrix (tests/test_reliability_*.py): recording each row's figure, scanning
text for secrets, waiting on a condition."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

# DIVIMS_FULL=1: every row at its full size (longer storms, more payloads, the full endurance run);
# unset, CI's shortened sizes (each row still proves the same property, on fewer cycles).
FULL = os.environ.get("DIVIMS_FULL", "") == "1"


def record_figure(row: str, figure: str, **numbers: object) -> None:
    """Prints the row's figure (shown with `pytest -s`) and appends it, as one JSON line, to the file named
    by $DIVIMS_FIGURES when set (docs/reliability.md is written from those lines)."""
    print(f"\n[reliability] row {row}: {figure}")
    target = os.environ.get("DIVIMS_FIGURES")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps({"row": row, "figure": figure, **numbers}, default=str) + "\n")


def secret_hits(secrets: Iterable[str], sources: dict[str, str]) -> list[str]:
    """Every (secret, source) pair where the secret occurs in the source text, as 'source: secret[:4]...'
    (never the whole secret, so a failing assertion does not print it either)."""
    hits = []
    for secret in secrets:
        if not secret:
            continue
        for name, text in sources.items():
            if secret in text:
                hits.append(f"{name}: {secret[:4]}...")
    return hits


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    """Polls `predicate` until it returns something truthy; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # a service still coming up: keep waiting
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_exc})")


def read_all(paths: Iterable[Path]) -> dict[str, str]:
    """Text of every existing file, by path."""
    return {str(p): p.read_text(errors="replace") for p in paths if p.is_file()}
