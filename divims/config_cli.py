"""`divims config check --config F`: exit 0 with a summary, or 2 with one line per problem."""

from __future__ import annotations

import argparse
import logging
import sys

from divims.config import load_config
from divims.errors import ConfigError


def report(prog: str, exc: ConfigError) -> int:
    """Prints one line per configuration problem, prefixed by the command; the exit code 2."""
    for problem in exc.problems:
        print(f"{prog}: {problem}" if prog else problem, file=sys.stderr)
    return 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("--config", help="configuration file (default: $DIVIMS_CONFIG)")


def summary(settings) -> list[str]:
    lines = []
    for p in settings.pools:
        transport = "rake over SSH" if p.scalelite.ssh else "HTTP API"
        sched = []
        if p.schedule.weekly:
            sched.append(f"{len(p.schedule.weekly)} weekly periods")
        if p.schedule.ical:
            sched.append("iCal feed")
        lines.append(
            f"pool {p.name}: {p.size.min}..{p.size.max} servers of {p.scaleway.commercial_type} in "
            f"{p.scaleway.zone}, {p.capacity.participants_per_server} participants / "
            f"{p.capacity.meetings_per_server} meetings per server, Scalelite via {transport}, "
            f"schedule: {', '.join(sched) or 'none'}")
    lines.append(f"prometheus {settings.prometheus.url}; scaler every {settings.scaler.interval_seconds:g} s"
                 f"; {len(settings.alerting.actions)} alert actions")
    return lines


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        settings = load_config(args.config)
    except ConfigError as exc:
        return report("", exc)
    print("configuration is valid")
    for line in summary(settings):
        print(line)
    return 0
