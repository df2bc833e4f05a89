"""Which torch device a run uses."""

from __future__ import annotations

from salip.core.errors import ConfigError

__all__ = [
    "resolve_device",
]


def resolve_device(spec: str) -> str:
    """``auto`` -> ``cuda`` if available else ``cpu``; validate explicit CUDA devices."""
    import torch

    spec = spec.strip().lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device '{spec}' asked for, but CUDA is not available; use --device cpu."
            )
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConfigError(
                f"no CUDA device '{spec}'; {torch.cuda.device_count()} device(s) visible."
            )
        return spec
    raise ConfigError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N.")
