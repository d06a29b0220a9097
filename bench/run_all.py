"""`make bench`: every benchmark, one after another, each printing its own table.

    python -m bench.run_all [--quick]

--quick runs the small variants (a fast check that the benchmarks still run; not the published figures).
"""

from __future__ import annotations

import argparse
import sys

from bench import bench_exporter, bench_webhook, endurance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small variants only")
    args = parser.parse_args(argv)
    runs = [
        ("exporter", bench_exporter.main, ["--servers", "100", "--skip-sequential"] if args.quick else []),
        ("webhook", bench_webhook.main, ["--small"] if args.quick else []),
        ("endurance", endurance.main, ["--short"] if args.quick else []),
    ]
    failed = []
    for name, fn, fn_args in runs:
        print(f"\n=== {name} {' '.join(fn_args)}", flush=True)
        if fn(fn_args) != 0:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that missed a goal or failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
