"""The benchmark's method kinds: the SAM baselines and the simulated engines, added to the
product's kinds (:data:`salip.api.factory.METHODS`) in :data:`BENCH_METHODS`.

================================  ====================================================
kind                              what it builds
================================  ====================================================
``sam-unprompted``                SAM's decoder with no prompt (zero-shot; one mask per
                                  slice, the same for every organ)
``sam-everything-oracle``         the everything-mode proposal best matching the
                                  reference slice (reads labels: proposal recall)
``sam-gt-box``                    SAM prompted with the tight box of each reference
                                  component per slice (reads labels: the paper's bound)
``simulated``                     the cascade's strategy (``strategy``: auto|slices|
                                  volume) on simulated engines driven by the case's FULL
                                  reference label map, with seeded noise (reads labels;
                                  no model: a test bed for strategies, see
                                  :mod:`salip.apps.bench.simulated`)
================================  ====================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from salip.api.factory import (
    METHODS,
    Builder,
    Built,
    CaseInput,
    MethodKind,
    Models,
    cascade_strategy,
    slice_only,
)
from salip.apps.bench.baselines import EncodedSlices, GtBox, Oracle, Unprompted
from salip.apps.bench.simulated import (
    NOISE_PRESETS,
    NoiseConfig,
    ReferenceAnatomy,
    noise_preset,
    simulated_engines,
    totalseg_organ_map,
)
from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError
from salip.core.timing import StageTimer
from salip.engines.encoder import SamEncoder, slice_batch
from salip.io.orientation import display_pixel_mm
from salip.strategies.cascade import Engines
from salip.strategies.slices import SlicesStrategy

__all__ = [
    "BENCH_METHODS",
    "DEFAULT_NOISE",
    "SIMULATION_SETTINGS",
    "Simulation",
    "simulation",
]


def _baseline(segmenter_class: type[EncodedSlices]) -> Builder:
    """The builder of a SAM baseline of :mod:`salip.apps.bench.baselines`."""

    def build(
        models: Models,
        config: SegmentConfig,
        case: CaseInput,
        timer: StageTimer,
        extra: Mapping[str, Any],
    ) -> Built:
        slice_only(segmenter_class.__name__, config)
        encoder = SamEncoder.for_config(models.sam, config, models.device)
        pixel_mm = (
            None
            if case.is_2d or case.spacing is None
            else display_pixel_mm(case.spacing, config.slicing.axis)
        )
        segmenter = segmenter_class(encoder, config, case.references, case.is_2d, pixel_mm)
        batch = slice_batch(config.proposals.encoder_batch_size, models.device)
        strategy = SlicesStrategy(batch_size=batch, segmenter=segmenter, timer=timer)
        return Built(strategy, {"device": models.device, "sam": models.sam.identity()})

    return build


#: The simulated kind's own settings: ``noise`` (a preset of
#: :data:`~salip.apps.bench.simulated.NOISE_PRESETS`, default "moderate"), ``seed`` (a whole
#: number >= 0, default 0) and any :class:`~salip.apps.bench.simulated.NoiseConfig` field,
#: overriding the preset's value (e.g. ``drop_rate = 0.3``).
SIMULATION_SETTINGS: tuple[str, ...] = (
    "noise",
    "seed",
    *(f.name for f in dataclasses.fields(NoiseConfig)),
)

#: The simulated kind's default noise preset.
DEFAULT_NOISE = "moderate"


@dataclass(frozen=True)
class Simulation:
    """The simulated kind's settings, checked.

    Attributes:
        preset: the noise preset's name.
        noise: the preset with the overrides applied.
        seed: the seed of every random draw.
    """

    preset: str
    noise: NoiseConfig
    seed: int

    def describe(self) -> dict[str, Any]:
        """JSON-ready: ``{"noise": preset, "noise_params": {...}, "seed": seed}``."""
        return {
            "noise": self.preset,
            "noise_params": dataclasses.asdict(self.noise),
            "seed": self.seed,
        }


def simulation(extra: Mapping[str, Any]) -> Simulation:
    """The simulated kind's settings from ``extra``, whose keys
    :meth:`MethodKind.check_extra` has checked against :data:`SIMULATION_SETTINGS`.

    Raises:
        ConfigError: an unknown preset, or an invalid value (the message names the valid
            ones).
    """
    preset = extra.get("noise", DEFAULT_NOISE)
    if not isinstance(preset, str):
        raise ConfigError(
            f"noise must be the name of a preset ({', '.join(NOISE_PRESETS)}), not {preset!r}."
        )
    seed = extra.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, not {seed!r}.")
    overrides = {k: v for k, v in extra.items() if k not in ("noise", "seed")}
    noise = noise_preset(preset, **overrides)
    return Simulation(preset.strip().lower(), noise, seed)


def _read_simulation(extra: Mapping[str, Any]) -> dict[str, Any]:
    return simulation(extra).describe()


def _build_simulated(
    models: Models | None,
    config: SegmentConfig,
    case: CaseInput,
    timer: StageTimer,
    extra: Mapping[str, Any],
) -> Built:
    """The cascade's strategy (``config.strategy``) on simulated engines driven by the case's
    full reference label map (no model)."""
    if case.label_map is None:
        raise ConfigError(
            "the simulated method needs the case's full reference label map "
            "(CaseInput.label_map: every label, not only the target organs), and none was "
            "given; use a dataset kind with label files (nifti-multilabel, msd, "
            "nifti-per-organ)."
        )
    settings = simulation(extra)
    labels, names = case.label_map
    anatomy = ReferenceAnatomy(
        labels,
        names,
        axis=config.slicing.axis,
        is_2d=case.is_2d,
        organ_map=totalseg_organ_map(),
        spacing=None if case.is_2d else case.spacing,
    )
    engines = Engines(*simulated_engines(anatomy, settings.noise, settings.seed, config))
    batch = slice_batch(config.proposals.encoder_batch_size, "cpu")
    strategy = cascade_strategy(engines, config, case, batch, timer)
    return Built(strategy, {"simulated": settings.describe()})


#: The benchmark's method kinds: the product's (:data:`salip.api.factory.METHODS`), the SAM
#: baselines and the simulated engines.
BENCH_METHODS: dict[str, MethodKind] = {
    **METHODS,
    **{
        kind.name: kind
        for kind in (
            MethodKind("sam-unprompted", _baseline(Unprompted)),
            MethodKind("sam-everything-oracle", _baseline(Oracle), uses_ground_truth=True),
            MethodKind("sam-gt-box", _baseline(GtBox), uses_ground_truth=True),
            MethodKind(
                "simulated",
                _build_simulated,
                uses_ground_truth=True,
                needs_sam=False,
                needs_label_map=True,
                extra_settings=SIMULATION_SETTINGS,
                read_extra=_read_simulation,
            ),
        )
    },
}
