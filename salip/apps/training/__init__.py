"""Training the learned organ head (``salip head train``): a CLIP-driven dynamic head on
frozen SAM image embeddings.

Modules: :mod:`~salip.apps.training.cache` (SAM embedding cache),
:mod:`~salip.apps.training.data` (training slices and targets),
:mod:`~salip.apps.training.loss` (partial-label loss), :mod:`~salip.apps.training.config`
(the TOML config) and :mod:`~salip.apps.training.train` (training). The network and its
loader are :mod:`salip.models.head`; inference is :mod:`salip.strategies.head`.

Importing this package is cheap: the names below load their module (and torch) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["HeadTrainConfig", "HeadTrainResult", "load_head_config", "train_head"]

_WHERE = {
    "HeadTrainConfig": "salip.apps.training.config",
    "load_head_config": "salip.apps.training.config",
    "HeadTrainResult": "salip.apps.training.train",
    "train_head": "salip.apps.training.train",
}

if TYPE_CHECKING:
    from salip.apps.training.config import HeadTrainConfig, load_head_config
    from salip.apps.training.train import HeadTrainResult, train_head


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'salip.apps.training' has no attribute {name!r}")
