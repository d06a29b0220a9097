"""`divims testbed --servers 20 --trace FILE`: the simulated pool on loopback, a ready config file."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

import yaml

from divims.logsetup import setup_logging
from testbed.pool import TestbedOptions, TestbedPool
from testbed.world import Delays


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", type=int, default=12, help="slots in the pool (default 12)")
    parser.add_argument("--trace", help="load trace CSV (time,meetings,participants); none: no load")
    parser.add_argument("--acceleration", type=float, default=60.0,
                        help="trace seconds per real second (default 60)")
    parser.add_argument("--loop", action="store_true", help="replay the trace forever")
    parser.add_argument("--write-config", default="testbed-divims.yml",
                        help="where to write the ready divims config (default testbed-divims.yml)")
    parser.add_argument("--env-file", default="testbed.env",
                        help="where to write the credentials as KEY=VALUE (default testbed.env)")
    parser.add_argument("--workdir", help="keys and known_hosts (default: a temporary directory)")
    parser.add_argument("--prometheus-url", default="http://127.0.0.1:9090")
    parser.add_argument("--config-extra", metavar="FILE",
                        help="YAML merged into the written config (e.g. alerting.webhook, listen addresses)")
    parser.add_argument("--scaleway-port", type=int, default=8091)
    parser.add_argument("--scalelite-port", type=int, default=8092)
    parser.add_argument("--bbb-port", type=int, default=8093)
    parser.add_argument("--boot-seconds", type=float, default=3.0, help="power-on to running (real s)")
    parser.add_argument("--no-ssh", action="store_true", help="no SSH side on the BBB hosts")
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.servers <= 250:
        print(f"--servers: expected 1 to 250, got {args.servers}", file=sys.stderr)
        return 2
    if args.trace and not Path(args.trace).is_file():
        print(f"--trace: no such file: {args.trace}", file=sys.stderr)
        return 2
    options = TestbedOptions(
        slots=args.servers, trace=args.trace, acceleration=args.acceleration, loop_trace=args.loop,
        delays=Delays(poweron_seconds=args.boot_seconds, bbb_boot_seconds=1.0),
        scaleway_port=args.scaleway_port, scalelite_port=args.scalelite_port, bbb_port=args.bbb_port,
        ssh=not args.no_ssh, workdir=args.workdir)
    pool = TestbedPool(options)
    mask = setup_logging(args.log_level, secrets=[pool.scaleway_secret_key, pool.scalelite_secret,
                                                   pool.world.bbb_secret])
    try:
        pool.start()
    except OSError as exc:
        print(f"testbed: cannot listen: {exc}", file=sys.stderr)
        pool.stop()
        return 1
    extra = None
    if args.config_extra:
        try:
            extra = yaml.safe_load(Path(args.config_extra).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            print(f"--config-extra: cannot read {args.config_extra}: {exc}", file=sys.stderr)
            pool.stop()
            return 2
        if not isinstance(extra, dict):
            print(f"--config-extra: {args.config_extra} must hold a YAML mapping", file=sys.stderr)
            pool.stop()
            return 2
    config = pool.write_config(args.write_config, prometheus_url=args.prometheus_url, extra=extra)
    env_file = Path(args.env_file)
    env_file.write_text("".join(f"{k}={v}\n" for k, v in pool.environment().items()))
    env_file.chmod(0o600)
    print(f"Scaleway API (fake):  {pool.scaleway.url}")
    print(f"Scalelite API (fake): {pool.scalelite.url}/scalelite/api")
    print(f"BBB servers (fake):   http://127.0.1.<n>:{pool.bbb.port}/bigbluebutton/api, n = 1..{args.servers}")
    print(f"config written:       {config}   credentials: {env_file} (mode 600)")
    print(f"try: set -a; . {env_file}; set +a; divims config check --config {config}")
    sys.stdout.flush()
    del mask
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            if pool.load is not None and pool.load.finished and not args.loop:
                print("trace finished")
                break
    except KeyboardInterrupt:
        pass
    finally:
        pool.stop()
    return 0
