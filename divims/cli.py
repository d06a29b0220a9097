"""`divims <command>`: one console script for every service.

Each command lives in its own package and exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from divims.errors import ConfigError

# command -> (module, help)
COMMANDS: dict[str, tuple[str, str]] = {
    "exporter": ("exporter.cli", "serve Scalelite, BBB and Scaleway state as Prometheus metrics"),
    "scaler": ("scaler.cli", "decide and act: run | once | plan"),
    "webhook": ("alerting.cli", "receive Alertmanager notifications, keep history, request actions"),
    "simulate": ("scaler.simulate", "backtest a policy over a load trace in simulated time"),
    "testbed": ("testbed.cli", "start the simulated pool (fake Scaleway, Scalelite, BBB) on loopback"),
    "demo": ("divims.demo", "the whole stack on the testbed, with a live table"),
    "config": ("divims.config_cli", "check a configuration file"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser. With `only`, imports just that command's module (a broken or absent
    service never stops the others from starting)."""
    parser = argparse.ArgumentParser(prog="divims", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if not (exc.name and module_name.startswith(exc.name)):
                raise
            p.set_defaults(_missing=name)
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else "")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"divims {args._missing}: not yet implemented", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
