"""The head-training config: a TOML file with ``[models]``, ``[[datasets]]`` and ``[train]``.

``[models]`` and ``[[datasets]]`` are the benchmark config's tables (see
``benchmarks/README.md``): model settings by their config field names, relative checkpoint
paths resolved against the config file's folder, and datasets of the benchmark's kinds.
``[train]`` holds :class:`TrainSettings`. Example::

    [models]
    sam_checkpoint = "vit_b"
    clip_model = "ViT-L-14"
    clip_pretrained = "openai"

    [[datasets]]
    name = "totalseg"
    kind = "nifti-multilabel"
    images = "data/ct/*.nii.gz"
    labels = "{dir}/../labels/{stem}.nii.gz"
    label_names = "totalseg"
    organs = ["liver", "spleen", "kidneys"]

    [train]
    variant = "clip"
    epochs = 20
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salip.core.config import SegmentConfig, option
from salip.core.errors import BenchmarkError, ConfigError
from salip.core.toml_files import check_keys, read_config
from salip.models.head import VARIANTS
from salip.models.specs import resolve_model_paths

__all__ = [
    "CONFIG_KEYS",
    "DEFAULT_TEMPLATE",
    "HeadTrainConfig",
    "load_head_config",
    "TrainSettings",
]

#: Top-level tables of a head-training config.
CONFIG_KEYS = ("models", "datasets", "train")


#: Default text prompt per class; ``{organ}`` is the organ's name with spaces.
DEFAULT_TEMPLATE = "A computerized tomography of a {organ}."


@dataclass(frozen=True)
class TrainSettings:
    """The ``[train]`` table; ``salip head train`` has a flag per field (``--train-cases``)."""

    classes: tuple[str, ...] | None = option(
        None,
        "Organs the head predicts, in output order (vocabulary names or synonyms; on the "
        "command line comma-separated). Default: the union of the datasets' organs.",
    )
    prompt_template: str = option(
        DEFAULT_TEMPLATE,
        "Text per class for the CLIP text encoder; {organ} becomes the organ's name with "
        "spaces for underscores.",
    )
    variant: str = option(
        "clip",
        "clip: CLIP text drives a per-class dynamic head. static: a plain per-class 1x1 "
        "conv (control). randtext: learned class codes instead of CLIP text (control).",
        choices=VARIANTS,
    )
    epochs: int = option(20, "Training epochs.")
    steps_per_epoch: int = option(
        200, "Optimiser steps per epoch (batches drawn with replacement)."
    )
    batch_size: int = option(8, "Slices per step.")
    lr: float = option(3e-4, "Peak AdamW learning rate.")
    weight_decay: float = option(1e-4, "AdamW weight decay.")
    warmup_steps: int = option(100, "Steps of linear warm-up before the cosine decay to 0.")
    val_fraction: float = option(0.2, "Share of the cases (patients) held out for validation.")
    train_cases: int | None = option(
        None,
        "Train on only the first N training cases (by dataset and case id), for a learning "
        "curve; the validation cases are the same whatever N is. Default: all.",
    )
    seed: int = option(0, "Seed of the initialisation, the split and the sampling.")
    axis: str = option("axial", "Slicing axis.", choices=("axial", "coronal", "sagittal"))
    window: str | None = option(
        None,
        "CT window preset or WIDTH,LEVEL. Default: chosen as salip segment does, with the "
        "head's classes as the organs.",
    )
    encoder_batch_size: int = option(4, "Slices per SAM encoder call while caching embeddings.")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad value and what it must be."""

        def whole(value: Any, low: int) -> bool:
            return isinstance(value, int) and not isinstance(value, bool) and value >= low

        def number(value: Any) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool)

        checks = [
            (self.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}"),
            (whole(self.epochs, 1), "epochs must be a whole number >= 1"),
            (whole(self.steps_per_epoch, 1), "steps_per_epoch must be a whole number >= 1"),
            (whole(self.batch_size, 1), "batch_size must be a whole number >= 1"),
            (number(self.lr) and self.lr > 0, "lr must be a number > 0, e.g. 0.001"),
            (
                number(self.weight_decay) and self.weight_decay >= 0,
                "weight_decay must be a number >= 0",
            ),
            (whole(self.warmup_steps, 0), "warmup_steps must be a whole number >= 0"),
            (
                number(self.val_fraction) and 0 <= self.val_fraction < 1,
                "val_fraction must be in [0, 1), e.g. 0.2",
            ),
            (
                isinstance(self.seed, int) and not isinstance(self.seed, bool),
                "seed must be a whole number",
            ),
            (whole(self.encoder_batch_size, 1), "encoder_batch_size must be a whole number >= 1"),
            (
                self.train_cases is None or whole(self.train_cases, 1),
                "train_cases must be a whole number >= 1 (or left out: all cases)",
            ),
            (
                isinstance(self.prompt_template, str) and "{organ}" in self.prompt_template,
                "prompt_template must be text containing {organ}",
            ),
            (
                self.classes is None
                or (len(self.classes) > 0 and all(isinstance(c, str) for c in self.classes)),
                "classes must be a non-empty list of organ names",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"[train]: {message}.")
        try:
            self.prompt_template.format(organ="liver")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"[train]: prompt_template {self.prompt_template!r} is not a valid template "
                f"({exc}); use only the {{organ}} placeholder."
            ) from exc


@dataclass(frozen=True)
class HeadTrainConfig:
    """A parsed head-training config.

    Attributes:
        path: the TOML file (its folder is where relative paths resolve).
        models: ``[models]`` (model config field names; relative checkpoint paths resolved).
        datasets: the ``[[datasets]]`` tables as given.
        train: the ``[train]`` settings.
    """

    path: Path
    models: Mapping[str, Any]
    datasets: tuple[Mapping[str, Any], ...]
    train: TrainSettings = field(default_factory=TrainSettings)

    @property
    def base_dir(self) -> Path:
        """The config file's folder: relative dataset paths resolve against it."""
        return self.path.parent

    def with_train(self, **overrides: Any) -> HeadTrainConfig:
        """This config with some ``[train]`` settings replaced (the command line's flags).

        Raises:
            ConfigError: an unknown setting (the message lists the valid ones) or a bad value.
        """
        check_keys(
            "[train]",
            list(overrides),
            [f.name for f in dataclasses.fields(TrainSettings)],
            ConfigError,
        )
        if isinstance(overrides.get("classes"), list):
            overrides["classes"] = tuple(overrides["classes"])
        train = dataclasses.replace(self.train, **overrides)
        train.validate()
        config = dataclasses.replace(self, train=train)
        config.segment_config()
        return config

    def segment_config(self) -> SegmentConfig:
        """The model and slicing settings as a :class:`SegmentConfig`.

        Raises:
            ConfigError: an invalid model setting, axis or window.
        """
        t = self.train
        return SegmentConfig().replace(
            **self.models, axis=t.axis, window=t.window, encoder_batch_size=t.encoder_batch_size
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings (what a resumed run must share with the run it continues)."""
        train = dataclasses.asdict(self.train)
        train["classes"] = list(train["classes"]) if train["classes"] is not None else None
        return {
            "models": dict(self.models),
            "datasets": [dict(d) for d in self.datasets],
            "train": train,
        }


def load_head_config(path: str | Path) -> HeadTrainConfig:
    """Read and check a head-training TOML config.

    Raises:
        ConfigError: a missing or malformed file, unknown keys (the message lists the
            valid ones), no dataset, or an invalid ``[train]`` or ``[models]`` value.
        salip.core.errors.BenchmarkError: an unknown ``[models]`` key.
    """
    path = Path(path).absolute()
    raw = read_config(path, "head config", CONFIG_KEYS, ("models", "train"), ConfigError)
    datasets = raw.get("datasets")
    if (
        not isinstance(datasets, list)
        or not datasets
        or not all(isinstance(d, dict) for d in datasets)
    ):
        raise ConfigError(
            f"head config {path.name}: needs at least one [[datasets]] table (the benchmark's "
            "dataset kinds; see benchmarks/README.md)."
        )
    models = resolve_model_paths(raw.get("models", {}), path.parent, BenchmarkError)
    table = dict(raw.get("train", {}))
    check_keys(
        "[train]", list(table), [f.name for f in dataclasses.fields(TrainSettings)], ConfigError
    )
    if isinstance(table.get("classes"), list):
        table["classes"] = tuple(table["classes"])
    elif "classes" in table:
        raise ConfigError('[train]: classes must be a list of organ names, e.g. ["liver"].')
    settings = TrainSettings(**table)
    settings.validate()
    config = HeadTrainConfig(path, models, tuple(datasets), settings)
    config.segment_config()  # model settings, axis and window fail here, before any work
    return config
