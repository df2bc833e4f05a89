"""``salip head``: train the learned comparator head on SAM features."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from salip.apps.cli.flags import Subparsers, add_dataclass_flags
from salip.apps.training.config import TrainSettings, load_head_config
from salip.apps.training.train import train_head

__all__ = [
    "add_parser",
    "run_train",
]

logger = logging.getLogger("salip")


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip head train``."""
    head = sub.add_parser("head", help="Train the learned comparator head on SAM features.")
    hsub = head.add_subparsers(dest="head_command", required=True, metavar="ACTION")
    train = hsub.add_parser(
        "train",
        parents=[common],
        help="Train a CLIP-driven head on frozen SAM embeddings of labelled datasets.",
        description="Trains the head of `--method head` from a TOML config with the "
        "benchmark's [models] and [[datasets]] tables and a [train] table (see "
        "benchmarks/README.md). Writes head.pt, manifest.json and a resumable last.pt to "
        "--out; a rerun of the same config continues after the last finished epoch. "
        "Prints the path of head.pt.",
    )
    train.add_argument("--config", required=True, metavar="TOML", help="Training config file.")
    train.add_argument("--out", required=True, metavar="DIR", help="Output folder.")
    train.add_argument(
        "--no-resume",
        action="store_true",
        help="Start from scratch even if --out holds an unfinished run of this config.",
    )
    train.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")
    add_dataclass_flags(
        train.add_argument_group("training (override the config's [train] table)"),
        TrainSettings,
    )
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    """Run ``salip head train``; the exit code."""
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    result = train_head(
        load_head_config(args.config).with_train(**overrides),
        Path(args.out),
        progress=not args.no_progress and not args.quiet,
        resume=not args.no_resume,
    )
    metrics = result.manifest.get("metrics", {})
    logger.info(
        "%d epoch(s) trained now (%d before), %d steps; validation mean Dice: %s",
        result.epochs_run,
        result.start_epoch,
        result.steps_run,
        metrics.get("final_val_mean_dice"),
    )
    sys.stdout.write(f"{result.head_path}\n")
    return 0
