"""Numeric precision of the image encoders: fp32, or bf16/fp16 autocast on CUDA.

Only the heavy image encoders (SAM's ViT, CLIP's image tower) run under autocast; their
outputs are cast back to float32, so prompt decoding, filtering and scoring stay in fp32.
Text embeddings are computed once per description set, in fp32, and cached.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from salip.core.errors import ConfigError

__all__ = [
    "PRECISIONS",
    "autocast",
    "resolve_precision",
]

#: Accepted ``--precision`` values.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(spec: str, device: str | torch.device) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; check the choice fits the device.

    Raises:
        ConfigError: an unknown value, or fp16 on a CPU (use fp32 or bf16 there).
    """
    if spec not in PRECISIONS:
        raise ConfigError(f"unknown precision '{spec}'; use one of {', '.join(PRECISIONS)}.")
    kind = torch.device(device).type
    if spec == "auto":
        return "bf16" if kind == "cuda" else "fp32"
    if spec == "fp16" and kind != "cuda":
        raise ConfigError("fp16 needs a CUDA device; use --precision fp32 or bf16 on a CPU.")
    return spec


@contextlib.contextmanager
def autocast(device: str | torch.device, precision: str) -> Iterator[None]:
    """Autocast to ``precision`` (a resolved value) on ``device``; fp32 does nothing."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=_DTYPES[precision]):
        yield
