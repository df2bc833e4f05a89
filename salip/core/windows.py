"""CT display windows: the presets and the "WIDTH,LEVEL" form (pure data)."""

from __future__ import annotations

import math

from salip.core.errors import ConfigError

__all__ = [
    "MAX_HU",
    "WINDOWS",
    "parse_window",
]

#: The largest window width or level magnitude accepted, in HU: CT numbers span about
#: -1024 to 3071 (up to ~30000 with metal in extended scales), so larger values are typos.
MAX_HU = 100_000.0

#: CT window presets as (width, level) in HU.
WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 50.0),
    "liver": (150.0, 30.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
    "mediastinum": (350.0, 50.0),
}


def parse_window(spec: str) -> tuple[float, float]:
    """Parse a preset name or "WIDTH,LEVEL" into (width, level) in HU.

    Raises:
        ConfigError: an unknown preset, a malformed pair, a value that is not finite, a width
            that is not positive, or a width or level beyond :data:`MAX_HU`.
    """
    key = spec.strip().lower()
    if key in WINDOWS:
        return WINDOWS[key]
    try:
        width, level = (float(v) for v in key.split(","))
    except ValueError:
        raise ConfigError(
            f"unknown window '{spec}'; use one of {', '.join(WINDOWS)} or WIDTH,LEVEL "
            "(e.g. 400,50)."
        ) from None
    if not (math.isfinite(width) and math.isfinite(level)):
        raise ConfigError(f"window '{spec}': width and level must be finite numbers (HU).")
    if not 0 < width <= MAX_HU or abs(level) > MAX_HU:
        raise ConfigError(
            f"window '{spec}': need 0 < width <= {MAX_HU:g} and -{MAX_HU:g} <= level <= "
            f"{MAX_HU:g} HU (e.g. 400,50)."
        )
    return width, level
