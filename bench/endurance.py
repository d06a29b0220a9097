"""Matrix row 9 (endurance): memory stays stable and the invariants hold over long runs.

    .venv/bin/python -m bench.endurance            # the full row: 500 servers for 10 minutes; 30 simulated days
    .venv/bin/python -m bench.endurance --short    # what CI runs (tests/test_reliability_endurance.py)

- exporter: the real poll loop (real BBB client over HTTP) against N fake BBB servers in a child process,
  a cycle every `interval` seconds; resident memory after a warm-up vs. at the end (growth must be < 10%);
  every cycle must see every server up.
- scaler: `scaler.simulate` (the live policy + planner) through D days of the school-week trace repeated,
  with its invariants checked every step (a meeting never changes server, none on a server without a VM,
  one VM per slot); no meeting killed; memory after a warm-up run (D/10 days) vs. after all D days.
Prints one JSON object; exit code 1 when a bound is broken.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GROWTH_LIMIT = 0.10


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def exporter_endurance(servers: int, seconds: float, interval: float) -> dict:
    """Polls `servers` fake BBB servers every `interval` s for `seconds` s; memory and cycle figures."""
    from bench.bench_exporter import _fleet, _pool
    from exporter.poll import Poller

    ctx = mp.get_context("spawn")
    port_q, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_fleet, args=(servers, 0.0, 3, port_q, stop), daemon=True)  # 3 meetings each
    child.start()
    try:
        port = port_q.get(timeout=120)
        poller = Poller([_pool(servers, port, 5.0)], interval_seconds=interval, concurrency=64,
                        timeout_seconds=5.0)
        warm_until = time.monotonic() + max(5.0, seconds * 0.1)
        cycles, worst_up, longest = 0, servers, 0.0
        baseline = None
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            snap = poller.poll_once()
            took = time.monotonic() - t0
            cycles += 1
            longest = max(longest, took)
            worst_up = min(worst_up, sum(1 for s in snap.pools[0].servers if s.bbb.up))
            if baseline is None and time.monotonic() >= warm_until:
                baseline = rss_mb()
            time.sleep(max(0.0, interval - took))
        final = rss_mb()
        baseline = baseline or final
        return {"servers": servers, "seconds": seconds, "cycles": cycles, "worst_servers_up": worst_up,
                "longest_cycle_seconds": round(longest, 3), "rss_mb_after_warmup": round(baseline, 1),
                "rss_mb_end": round(final, 1), "growth": round((final - baseline) / baseline, 4)}
    finally:
        stop.set()
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
            child.join(timeout=5)


def repeated_trace(days: int):
    """The school week (7 days) repeated to `days` days, as one Trace."""
    from testbed.load import parse_trace

    lines = [ln for ln in (ROOT / "testbed" / "traces" / "school-week.csv").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    rows = [ln.split(",") for ln in lines[1:]]
    times = [datetime.fromisoformat(r[0]) for r in rows]
    week = timedelta(days=7)
    out = ["time,participants,meetings"]
    for w in range((days + 6) // 7):
        for t, r in zip(times, rows, strict=True):
            when = t + w * week
            if when - times[0] < timedelta(days=days):
                out.append(f"{when.isoformat()},{r[1]},{r[2]}")
    return parse_trace("\n".join(out), name=f"school-week x{days} days")


def scaler_endurance(days: int) -> dict:
    """The scaler's policy + planner through `days` simulated days, invariants checked every step."""
    from scaler.simulate import simulate

    started = time.monotonic()
    simulate(repeated_trace(max(1, days // 10)), check=True)  # warm-up: imports, caches
    baseline = rss_mb()
    result = simulate(repeated_trace(days), check=True)  # raises AssertionError when an invariant breaks
    final = rss_mb()
    r = result.as_dict()
    return {"days": days, "wall_seconds": round(time.monotonic() - started, 1),
            "meetings_killed": r["meetings_killed"], "meetings_ended_by_scaler": r["meetings_ended_by_scaler"],
            "unplaced_meetings": r["unplaced_meetings"], "peak_servers": r["peak_servers"],
            "server_hours": r["server_hours"], "actions": r["actions"],
            "rss_mb_after_warmup": round(baseline, 1), "rss_mb_end": round(final, 1),
            "growth": round((final - baseline) / baseline, 4)}


def run(short: bool, servers: int | None = None, seconds: float | None = None, days: int | None = None) -> dict:
    """Both parts; `ok` is False when memory grew 10% or more, a server was missed, or a meeting was killed."""
    exp = exporter_endurance(servers or (60 if short else 500), seconds or (20.0 if short else 600.0),
                             interval=1.0 if short else 15.0)
    sca = scaler_endurance(days or (2 if short else 30))
    ok = (exp["growth"] < GROWTH_LIMIT and exp["worst_servers_up"] == exp["servers"]
          and sca["growth"] < GROWTH_LIMIT and sca["meetings_killed"] == 0)
    return {"exporter": exp, "scaler": sca, "ok": ok}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.endurance", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="the CI size: 60 servers for 20 s; 2 days")
    p.add_argument("--servers", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--days", type=int)
    args = p.parse_args(argv)
    out = run(args.short, args.servers, args.seconds, args.days)
    print(json.dumps(out, indent=2))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
