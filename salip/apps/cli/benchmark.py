"""``salip benchmark``: score salip and its baselines against datasets with reference masks."""

from __future__ import annotations

import argparse
import logging
import sys

from salip.apps.bench.runner import run_benchmark
from salip.apps.cli.flags import Subparsers, add_cluster_flags, cluster_options

__all__ = [
    "add_parser",
    "run",
]

logger = logging.getLogger("salip")


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip benchmark``."""
    bench = sub.add_parser(
        "benchmark",
        parents=[common],
        help="Score salip and its baselines against datasets with reference masks.",
        description="Runs the methods of a TOML config over its datasets and writes "
        "cases.csv, summary.csv, summary.md, figures/ and run.json (see benchmarks/README.md). "
        "Finished cases are saved at once and reused by a rerun. Prints the path of "
        "summary.md.",
    )
    bench.add_argument("--config", required=True, metavar="TOML", help="Benchmark config file.")
    bench.add_argument(
        "--out",
        metavar="DIR",
        help="Output folder. Default: benchmark-results/<config name> in the working folder.",
    )
    bench.add_argument(
        "--limit", type=int, metavar="N", help="At most N cases per dataset (the first by id)."
    )
    bench.add_argument(
        "--rerun", action="store_true", help="Recompute every case, ignoring saved results."
    )
    bench.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    add_cluster_flags(bench)
    bench.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``salip benchmark``; the exit code."""
    result = run_benchmark(
        args.config,
        out=args.out,
        limit=args.limit,
        rerun=args.rerun,
        progress=not args.no_progress and not args.quiet,
        **cluster_options(args),
    )
    logger.info(
        "%d computed, %d reused, %d error row(s); outputs in %s",
        result.computed,
        result.reused,
        result.errors,
        result.out,
    )
    sys.stdout.write(f"{result.summary_md}\n")
    return 0
