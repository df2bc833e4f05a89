"""The settings flags: one per field of the stage configs in :mod:`salip.core.config`
(``--points-per-side`` <-> ``ProposalConfig.points_per_side``)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from salip.core.config import ClusterConfig, SegmentConfig, flat_fields

if typing.TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Subparsers = Any

__all__ = [
    "GROUP_TITLES",
    "add_cluster_flags",
    "add_config_flags",
    "add_dataclass_flags",
    "cluster_options",
    "comma_list",
    "config_options",
    "flag",
]

#: The argument-group title of each stage config's flags.
GROUP_TITLES = {
    "input": "input reading",
    "models": "models",
    "segmenter": "segmenter (the cascade, or a learned head)",
    "strategy": "strategy (slice by slice, or the whole volume)",
    "slicing": "slicing and intensity",
    "proposals": "proposals (SAM everything mode)",
    "area": "area filter",
    "crops": "crops",
    "scoring": "CLIP scoring",
    "refine": "refinement (box prompts)",
    "assembly": "assembly",
}


def flag(name: str) -> str:
    """The flag of a config field: ``points_per_side`` -> ``--points-per-side``."""
    return "--" + name.replace("_", "-")


def comma_list(text: str) -> tuple[str, ...]:
    """A comma-separated flag value as a tuple of its non-empty parts."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_dataclass_flags(group: Any, config_type: type) -> None:
    """Add one flag per field of a config dataclass, help and choices from its metadata."""
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        hint = hints[f.name]
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        help_text = f.metadata.get("help", "")
        if "default:" not in help_text.lower():  # the help already explains its default
            help_text += f" (default: {f.default})"
        if base is bool:
            group.add_argument(
                flag(f.name),
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        if typing.get_origin(base) is tuple:
            base = comma_list
        group.add_argument(
            flag(f.name),
            type=base,
            choices=f.metadata.get("choices"),
            default=argparse.SUPPRESS,
            metavar=None
            if f.metadata.get("choices")
            else f.metadata.get("metavar", f.name.split("_")[-1].upper()),
            help=help_text,
        )


def add_config_flags(parser: argparse.ArgumentParser, stages: Sequence[str]) -> None:
    """Add one flag per field of the named stages of :class:`SegmentConfig`."""
    for stage in dataclasses.fields(SegmentConfig):
        if stage.name in stages:
            group = parser.add_argument_group(GROUP_TITLES[stage.name])
            add_dataclass_flags(group, stage.default_factory)  # type: ignore[arg-type]


def config_options(args: argparse.Namespace) -> dict[str, Any]:
    """Config flags the user actually gave (unset flags keep the config defaults)."""
    fields = flat_fields()
    return {k: v for k, v in vars(args).items() if k in fields}


def add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`ClusterConfig`: where the cases of a run are computed."""
    group = parser.add_argument_group(
        "several cases: where they run (local, or Ray workers on this machine or a cluster)"
    )
    add_dataclass_flags(group, ClusterConfig)


def cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    """The cluster flags the user gave."""
    names = {f.name for f in dataclasses.fields(ClusterConfig)}
    return {k: v for k, v in vars(args).items() if k in names}
