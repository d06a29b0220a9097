"""The decision journal: one JSON line per cycle (time, signals, terms, plan, results).

Only chosen fields are written (never a Scalelite entry or a VM as a whole), so no secret can reach it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from scaler.signals import signals_as_dict
from scaler.snapshot import Action, Plan, Snapshot

log = logging.getLogger(__name__)


def action_as_dict(action: Action) -> dict[str, Any]:
    return {"kind": action.kind.value, "slot": action.slot, "reason": action.reason,
            "server_id": action.server_id, "request_id": action.request_id}


def plan_as_dict(plan: Plan) -> dict[str, Any]:
    d = plan.decision
    return {"desired": d.desired, "active": d.active, "reason": d.reason, "holds": list(d.holds),
            "terms": [{"name": t.name, "servers": t.servers, "reason": t.reason} for t in d.terms],
            "actions": [action_as_dict(a) for a in plan.actions], "waits": list(plan.waits)}


def cycle_record(snapshot: Snapshot, plan: Plan | None, results: list[Any], *, mode: str,
                 duration_seconds: float, error: str | None = None) -> dict[str, Any]:
    """The journal line of one cycle. `results` are actuator.ActionResult values."""
    return {
        "time": snapshot.now,
        "time_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snapshot.now)),
        "pool": snapshot.pool,
        "mode": mode,
        "duration_seconds": round(duration_seconds, 3),
        "signals": signals_as_dict(snapshot.signals),
        "inventory": {"complete": snapshot.inventory_complete, "problems": list(snapshot.inventory_problems),
                      "slots": [{"slot": s.slot, "vm": s.vm.state.value if s.vm else None,
                                 "scalelite": s.scalelite.state.value if s.scalelite else None,
                                 "online": s.scalelite.online if s.scalelite else None,
                                 "meetings": s.meetings, "participants": s.participants,
                                 "maintenance": s.in_maintenance}
                                for s in snapshot.slots if s.vm or s.scalelite],
                      "stray_vms": [v.id for v in snapshot.stray_vms],
                      "orphan_volumes": [v.id for v in snapshot.orphan_volumes]},
        "requests": [{"id": r.id, "action": r.action, "server": r.server} for r in snapshot.requests],
        "plan": plan_as_dict(plan) if plan is not None else None,
        "results": [{**action_as_dict(r.action), "result": r.result, "detail": r.detail} for r in results],
        "error": error,
    }


class Journal:
    """Appends JSON lines to `path` (created 0600 with its directory); safe across threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, default=str, sort_keys=True) + "\n"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, line.encode("utf-8"))  # one write per line: lines never interleave
                finally:
                    os.close(fd)
            except OSError as exc:
                log.error("pool %s: decision journal %s not writable: %s", entry.get("pool"), self.path, exc)

    def read(self) -> list[dict[str, Any]]:
        """Every entry (for tests and `plan`); a torn last line is skipped."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
