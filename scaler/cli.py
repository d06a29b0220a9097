"""`divims scaler run | once | plan`.

- `run`: the loop, every `scaler.interval_seconds`, woken early by webhook requests, /metrics on --listen;
- `once`: one cycle of every pool (cron-compatible, as DiViMS);
- `plan`: prints the signals, each desired term with its reason, and the plan; takes no lock, claims
  no request, writes no journal and sends no write to any service.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any, TextIO

from divims.config_cli import report
from divims.errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="scaler_command", metavar="SUBCOMMAND")
    for name, help_text in (("run", "scale in a loop (every scaler.interval_seconds)"),
                            ("once", "one cycle of every pool, then exit (for cron)"),
                            ("plan", "print signals, terms and the plan; change nothing")):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default=None, metavar="FILE",
                       help="divims YAML configuration (default: $DIVIMS_CONFIG)")
        p.add_argument("--pool", action="append", default=None, metavar="NAME",
                       help="only this pool (repeatable; default: every pool)")
        if name in ("run", "once"):
            p.add_argument("--dry-run", action="store_true",
                           help="decide and journal, but execute nothing (also scaler.dry_run)")
        if name == "run":
            p.add_argument("--listen", default=None, metavar="HOST:PORT",
                           help="address of /metrics (default: scaler.listen)")
        if name == "plan":
            p.add_argument("--json", action="store_true", help="print one JSON object per pool")


def _pools(settings: Any, names: list[str] | None) -> list[Any]:
    if not names:
        return list(settings.pools)
    known = {p.name for p in settings.pools}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError([f"--pool {n}: no such pool (known: {', '.join(sorted(known))})" for n in unknown])
    return [p for p in settings.pools if p.name in names]


def run(args: argparse.Namespace) -> int:
    """The exit code: 0 done, 1 a cycle failed, 2 bad configuration or arguments."""
    from divims.config import load_config
    from divims.logsetup import setup_logging

    command = getattr(args, "scaler_command", None)
    if command is None:
        print("divims scaler: choose run, once or plan", file=sys.stderr)
        return 2
    try:
        settings = load_config(args.config)
        pools = _pools(settings, args.pool)
        listen = None
        if command == "run":
            from exporter.cli import parse_listen

            listen = parse_listen(args.listen or settings.scaler.listen)
    except ConfigError as exc:
        return report("divims scaler", exc)
    except ValueError as exc:
        print(f"divims scaler: --listen: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.logging.level, settings.secret_values())
    try:
        if command == "plan":
            return plan_command(settings, pools, as_json=args.json, out=sys.stdout)
        dry_run = bool(args.dry_run or settings.scaler.dry_run)
        if command == "once":
            return once_command(settings, pools, dry_run=dry_run)
        return run_command(settings, pools, dry_run=dry_run, listen=listen)
    except ConfigError as exc:
        return report("divims scaler", exc)


def once_command(settings: Any, pools: list[Any], *, dry_run: bool) -> int:
    from scaler.loop import build_pool_scaler

    code = 0
    for pool in pools:
        scaler = build_pool_scaler(settings, pool, dry_run=dry_run, metrics=None)
        outcome = scaler.cycle()
        if not outcome.acted:
            print(f"divims scaler: {outcome.error}", file=sys.stderr)
        elif outcome.error:
            print(f"divims scaler: pool {pool.name}: {outcome.error}", file=sys.stderr)
            code = 1
        else:
            failed = [r for r in outcome.results if r.result == "failed"]
            log.info("pool %s: %d action(s), %d failed", pool.name, len(outcome.results), len(failed))
    return code


def run_command(settings: Any, pools: list[Any], *, dry_run: bool, listen: tuple[str, int] | None) -> int:
    from scaler.http import serve
    from scaler.loop import build_pool_scaler, run_forever
    from scaler.metrics import ScalerMetrics

    metrics = ScalerMetrics()
    scalers = [build_pool_scaler(settings, p, dry_run=dry_run, metrics=metrics) for p in pools]
    server = None
    if listen is not None:
        try:
            server = serve(metrics.registry, [p.name for p in pools], settings.scaler.interval_seconds,
                           listen[0], listen[1])
        except OSError as exc:
            raise ConfigError([f"scaler.listen: cannot listen on {listen[0]}:{listen[1]} ({exc.strerror or exc})"]
                              ) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("scaler started: %d pool(s), every %gs%s", len(scalers), settings.scaler.interval_seconds,
             " (dry run)" if dry_run else "")
    try:
        run_forever(scalers, interval_seconds=settings.scaler.interval_seconds,
                    request_poll_seconds=settings.scaler.request_poll_seconds, stop=stop)
    finally:
        if server is not None:
            server.stop()
    return 0


def plan_command(settings: Any, pools: list[Any], *, as_json: bool, out: TextIO) -> int:
    """Computes and prints each pool's plan; reads only."""
    from scaler.loop import build_pool_scaler

    code = 0
    for pool in pools:
        scaler = build_pool_scaler(settings, pool, dry_run=True, metrics=None, with_lock=False,
                                   with_journal=False)
        outcome = scaler.cycle(act=False)
        if outcome.error:
            code = 1
        render_plan(outcome, out, as_json=as_json)
    return code


def render_plan(outcome: Any, out: TextIO, *, as_json: bool = False) -> None:
    """Signals, terms with reasons, holds, the plan and its waits, as text or one JSON object."""
    from scaler.journal import plan_as_dict
    from scaler.signals import signals_as_dict

    snap, plan = outcome.snapshot, outcome.plan
    if as_json:
        out.write(json.dumps({"pool": outcome.pool, "error": outcome.error,
                              "signals": signals_as_dict(snap.signals) if snap else None,
                              "inventory_problems": list(snap.inventory_problems) if snap else [],
                              "plan": plan_as_dict(plan) if plan else None}, sort_keys=True) + "\n")
        return
    w = out.write
    w(f"pool {outcome.pool}\n")
    if outcome.error:
        w(f"  error: {outcome.error}\n")
    if snap is not None:
        w(f"  signals (Prometheus {'up' if snap.signals.prometheus_up else 'DOWN'}):\n")
        for s in snap.signals.all():
            value = "unknown" if s.value is None else f"{s.value:g}"
            w(f"    {s.name:<24} {value}{'  (' + s.reason + ')' if s.reason else ''}\n")
        for p in snap.inventory_problems:
            w(f"  inventory problem: {p}\n")
    if plan is not None:
        d = plan.decision
        w("  desired servers:\n")
        for t in d.terms:
            w(f"    {t.name:<10} {'-' if t.servers is None else t.servers:>4}  {t.reason}\n")
        w(f"    {'final':<10} {d.desired:>4}  {d.reason}  (active now: {d.active})\n")
        for h in d.holds:
            w(f"  hold: {h}\n")
        w(f"  plan: {len(plan.actions)} action(s)\n")
        for a in plan.actions:
            w(f"    {a.kind.value:<16} slot {a.slot if a.slot is not None else '-':<3} {a.reason}\n")
        for wait in plan.waits:
            w(f"  wait: {wait}\n")
