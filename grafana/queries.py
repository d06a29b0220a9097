"""Every PromQL query of the committed dashboards, with Grafana's variables expanded to plain PromQL.

The end-to-end test evaluates each one against a real Prometheus; the dashboard tests check that each
parses. Both read the committed JSON (what users import), which a test keeps equal to the generator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# What Grafana would put in place of its variables when every pool and server is selected.
DEFAULT_VARIABLES: Mapping[str, str] = {
    "pool": ".*",
    "server": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand(expr: str, variables: Mapping[str, str] = DEFAULT_VARIABLES) -> str:
    """`expr` with each `$name` / `${name}` replaced from `variables`; raises KeyError naming an unknown one."""
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return variables[name]
    return _VARIABLE.sub(repl, expr)


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[dict[str, Any]]:
    """The dashboards committed in `directory`, in file-name order."""
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]


def all_panel_queries(expand_variables: bool = True,
                      directory: Path = DASHBOARD_DIR) -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, expr) for every target of every panel, variables expanded by default."""
    out: list[tuple[str, str, str]] = []
    for board in load_dashboards(directory):
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                expr = target["expr"]
                out.append((board["uid"], panel["title"], expand(expr) if expand_variables else expr))
    return out
