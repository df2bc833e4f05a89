"""The learned organ head: a CLIP-driven dynamic head on frozen SAM image embeddings.

Modules: :mod:`~salip.head.model` (the network), :mod:`~salip.head.cache` (SAM embedding
cache), :mod:`~salip.head.data` (training slices and targets), :mod:`~salip.head.loss`
(partial-label loss), :mod:`~salip.head.config` (the TOML config),
:mod:`~salip.head.train` (training) and :mod:`~salip.head.segmenter` (inference).

Importing this package is cheap: the names below load their module (and torch) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "HeadSegmenter",
    "HeadTrainConfig",
    "HeadTrainResult",
    "LoadedHead",
    "load_head",
    "load_head_config",
    "train_head",
]

_WHERE = {
    "HeadSegmenter": "salip.head.segmenter",
    "LoadedHead": "salip.head.segmenter",
    "load_head": "salip.head.segmenter",
    "HeadTrainConfig": "salip.head.config",
    "load_head_config": "salip.head.config",
    "HeadTrainResult": "salip.head.train",
    "train_head": "salip.head.train",
}

if TYPE_CHECKING:
    from salip.head.config import HeadTrainConfig, load_head_config
    from salip.head.segmenter import HeadSegmenter, LoadedHead, load_head
    from salip.head.train import HeadTrainResult, train_head


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'salip.head' has no attribute {name!r}")
