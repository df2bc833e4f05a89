"""The files of a head training run: the resumable state (``last.pt``), and the head
(``head.pt``) with its readable ``manifest.json`` once training is done."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from salip.core.errors import ConfigError
from salip.io.writing import atomic_write, write_json

__all__ = [
    "changed_settings",
    "load_state",
    "remove_stale_head",
    "save_state",
    "training_metrics",
    "write_head",
]

logger = logging.getLogger(__name__)


def changed_settings(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        names: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            names += changed_settings(old.get(key), new.get(key), f"{prefix}{key}.")
        return names
    return [] if old == new else [prefix.rstrip(".") or "settings"]


def load_state(path: Path) -> dict[str, Any]:
    """A saved training state (``last.pt``), read with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and EOF errors all mean "unreadable"
        raise ConfigError(
            f"{path}: cannot read the saved training state ({type(exc).__name__}: {exc}); "
            "delete it to start again, or train into another folder."
        ) from exc


def save_state(path: Path, payload: dict[str, Any]) -> None:
    """Save ``payload`` with ``torch.save``, atomically."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def write_head(out: Path, state: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """head.pt and manifest.json from a completed training state."""
    manifest = {**state["manifest"], "metrics": training_metrics(state["history"])}
    manifest = json.loads(json.dumps(manifest))  # plain JSON types only, for weights_only
    head_path = out / "head.pt"
    save_state(head_path, {"manifest": manifest, "state_dict": state["head"]})
    write_json(out / "manifest.json", manifest)
    return head_path, manifest


def training_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's ``metrics``: the last epoch's loss and Dice, and every epoch."""
    last = history[-1] if history else {}
    return {
        "final_train_loss": last.get("train_loss"),
        "final_val_dice": last.get("val_dice"),
        "final_val_mean_dice": last.get("val_mean_dice"),
        "epochs": history,
    }


def remove_stale_head(out: Path) -> None:
    """Remove the head.pt and manifest.json of an earlier run in ``out``."""
    for stale in (out / "head.pt", out / "manifest.json"):
        if stale.is_file():
            logger.info("%s: replacing the head of an earlier run", stale)
            stale.unlink()
