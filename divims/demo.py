"""`divims demo`: the whole stack on the simulated pool, with a live table and a closing summary.

The testbed (about 12 slots, a compressed school day), the exporter, a real Prometheus with the shipped
rules, a real Alertmanager routed to the webhook, the webhook and the scaler, all on loopback.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import tempfile
import time
from datetime import datetime, tzinfo
from pathlib import Path

from divims.logsetup import setup_logging
from testbed.stack import Stack, StackOptions, find_binary

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT / "testbed" / "traces" / "school-day.csv"  # one compressed school day


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace", default=str(DEFAULT_TRACE), help="load trace CSV (default: a school day)")
    parser.add_argument("--servers", type=int, default=12, help="slots (default 12)")
    parser.add_argument("--acceleration", type=float, default=180.0,
                        help="trace seconds per real second (default 180: a school day in about 4 min)")
    parser.add_argument("--workdir", help="where logs, configs and data go (default: a temporary directory)")
    parser.add_argument("--refresh", type=float, default=3.0, help="seconds between table rows")


def _trace_span(path: Path) -> tuple[float, float, tzinfo | None]:
    """The trace's first and last time, and the UTC offset its rows are written in (for display)."""
    from testbed.load import load_trace

    trace = load_trace(path)
    zone = None
    for line in path.read_text().splitlines():
        head = line.split(",", 1)[0].strip()
        if head and not head.startswith("#") and head != "time":
            zone = datetime.fromisoformat(head).tzinfo
            break
    return trace.start, trace.end, zone


def _fmt(value: float | None, width: int = 5) -> str:
    return f"{'-' if value is None else f'{value:.0f}':>{width}}"


def _server_hours(stack: Stack, accel: float, now: float) -> float:
    world = stack.pool.world
    with world.lock:
        vms = list(world.vms.values()) + list(world.deleted_vms)
        seconds = 0.0
        for vm in vms:
            for start, stop in vm.power_periods:
                seconds += max(0.0, (stop if stop is not None else now) - start)
    return seconds * accel / 3600


def run(args: argparse.Namespace) -> int:
    missing = [b for b in ("prometheus", "prometheus-alertmanager") if not find_binary(b)]
    if missing:
        print(f"demo: {', '.join(missing)} not found: run `make demo` (it installs them) or "
              "apt-get install prometheus prometheus-alertmanager", file=sys.stderr)
        return 2
    trace = Path(args.trace)
    if not trace.is_file():
        print(f"demo: no such trace: {trace}", file=sys.stderr)
        return 2
    setup_logging("WARNING")
    workdir = args.workdir or tempfile.mkdtemp(prefix="divims-demo-")
    Path(workdir).mkdir(parents=True, exist_ok=True)
    # the simulated pool's own chatter (Scalelite's poller panicking a deleted server...) goes to a file
    testbed_log = logging.getLogger("testbed")
    testbed_log.addHandler(logging.FileHandler(Path(workdir) / "testbed.log"))
    testbed_log.propagate = False
    accel = args.acceleration
    start_t, end_t, zone = _trace_span(trace)
    duration_real = (end_t - start_t) / accel
    opts = StackOptions(workdir=workdir, slots=args.servers, trace=str(trace), acceleration=accel)
    stack = Stack(opts)
    print(f"divims demo: {args.servers} slots, trace {trace.name} at {accel:g}x "
          f"(about {duration_real / 60:.1f} min), files in {workdir}")
    stopping = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stopping.update(flag=True))
    try:
        stack.start()
    except (RuntimeError, OSError) as exc:
        print(f"demo: could not start the stack: {exc}", file=sys.stderr)
        stack.stop()
        return 1
    print(f"Prometheus UI: {stack.url('prometheus')}   Alertmanager: {stack.url('alertmanager')}   "
          f"webhook: {stack.url('webhook')}/alerts")
    print(f"{'trace time':>16} {'part.':>6} {'meet.':>5} {'desired':>7} {'active':>6} {'running':>7}  last action")
    t0 = time.time()
    peak_running = 0
    seen_actions = 0
    try:
        while not stopping["flag"] and time.time() - t0 < duration_real + 5:
            time.sleep(args.refresh)
            now = time.time()
            trace_now = start_t + (now - t0) * accel
            try:
                part = stack.scalar('sum(pool:bbb_meetings_participants:sum)')
                meet = stack.scalar('sum(pool:bbb_meetings:sum)')
                desired = stack.scalar('sum(divims_scaler_desired_servers{term="final"})')
                active = stack.scalar('sum(divims_scaler_active_servers)')
                running = stack.scalar('count(scaleway_server_state{state="running"} == 1)') or 0
            except Exception as exc:  # the table goes on even if one query fails
                print(f"  (prometheus query failed: {exc})")
                continue
            peak_running = max(peak_running, int(running))
            journal = stack.journal()
            actions = [a for entry in journal for a in entry.get("results", entry.get("actions", []))]
            last = ""
            if len(actions) > seen_actions:
                a = actions[-1]
                last = f"{a.get('kind', a.get('action', '?'))} slot {a.get('slot')}: {a.get('reason', '')}"[:70]
                seen_actions = len(actions)
            stamp = datetime.fromtimestamp(trace_now, zone).strftime("%a %H:%M")
            print(f"{stamp:>16} {_fmt(part, 6)} {_fmt(meet)} {_fmt(desired, 7)} {_fmt(active, 6)} "
                  f"{_fmt(running, 7)}  {last}")
    except KeyboardInterrupt:
        pass
    finally:
        now = time.time()
        hours = _server_hours(stack, accel, now)
        span_h = (now - t0) * accel / 3600
        alerts = []
        try:
            alerts = stack.alerts()
        except Exception:
            pass
        lower = _lower_bound_hours(trace, start_t, min(end_t, start_t + (now - t0) * accel))
        stack.stop()
    static = peak_running * span_h
    print()
    print("summary")
    print(f"  server-hours used:         {hours:8.1f}")
    print(f"  static provisioning:       {static:8.1f}  (peak {peak_running} servers all the time)")
    print(f"  lower bound (load/capacity): {lower:6.1f}")
    if static:
        print(f"  saved against static:      {100 * (1 - hours / static):7.0f} %")
    names = sorted({a.get('alertname', '?') for a in alerts})
    print(f"  alerts seen by the webhook: {len(alerts)} ({', '.join(names) or 'none'})")
    print(f"  logs and data: {workdir}")
    return 0


def _lower_bound_hours(trace: Path, start: float, end: float, per_p: int = 250, per_m: int = 15) -> float:
    """Server-hours the load needs: each minute, ceil(max(P/250, M/15)), at least one."""
    from testbed.load import load_trace

    loaded = load_trace(trace)
    total, t = 0.0, start
    while t < end:
        participants, meetings = loaded.at(t)
        total += max(1, math.ceil(participants / per_p), math.ceil(meetings / per_m)) / 60
        t += 60
    return total
