"""CT display windows: the presets and the "WIDTH,LEVEL" form (pure data)."""

from __future__ import annotations

from salip.core.errors import ConfigError

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
        ConfigError: an unknown preset, a malformed pair, or a width that is not positive.
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
    if not width > 0:
        raise ConfigError(f"window width must be positive, got {width:g}.")
    return width, level
