"""``salip head train``: fit the organ head on cached SAM embeddings.

:func:`train_head` lists the config's datasets, caches every body slice's SAM embedding
(:mod:`salip.head.cache`), splits the cases into train and validation (by patient), and
trains the head with AdamW (linear warm-up, then cosine decay to 0) on class-balanced
draws of slices (:func:`salip.head.data.sampling_weights`). Validation Dice is logged per
epoch.

Outputs in ``out``:

* ``last.pt``: the resumable state (head, optimiser, scheduler, epoch, RNG state, history),
  written atomically after every epoch.
* ``head.pt``: ``{"state_dict": ..., "manifest": ...}`` when training is done, loadable
  with ``torch.load(path, weights_only=True)`` (see :func:`salip.head.segmenter.load_head`).
* ``manifest.json``: the same manifest, readable: SAM checkpoint SHA-256 and architecture,
  CLIP model, classes, prompts, variant, head sizes, data (datasets, cases, split), salip
  version and metrics.

Resuming: a rerun into the same ``out`` continues after the last completed epoch, and does
nothing when training is complete. Resuming needs the very same settings, data and SAM
checkpoint (including ``epochs``, since the learning-rate schedule depends on it); a
changed config is refused with the names of the changed settings. Use another ``out``, or
``resume=False`` to start again from scratch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from salip.errors import ConfigError
from salip.head.config import MANIFEST_FORMAT, HeadTrainConfig, load_head_config
from salip.head.model import HeadArch, OrganHead, trainable_parameters
from salip.version import __version__

logger = logging.getLogger(__name__)

#: ``format`` of head.pt manifests; bumped when the layout changes.


@dataclass
class HeadTrainResult:
    """What :func:`train_head` returns.

    Attributes:
        out: the output folder.
        head_path: ``out/head.pt``.
        manifest: the manifest written with the head.
        start_epoch: epochs already done when this call started (0 for a fresh run).
        epochs_run: epochs trained by this call.
        steps_run: optimiser steps taken by this call.
        step_losses: the training loss of each of those steps, in order.
        cache_hits: slice embeddings read from the cache by this call.
        cache_misses: slice embeddings encoded by this call.
        history: per epoch (all of them): train loss, validation Dice, learning rate.
    """

    out: Path
    head_path: Path
    manifest: dict[str, Any]
    start_epoch: int
    epochs_run: int
    steps_run: int
    step_losses: list[float] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def class_prompts(classes: Sequence[str], template: str) -> list[str]:
    """One text prompt per class: ``template`` with ``{organ}`` = the name, ``_`` as space."""
    return [template.format(organ=name.replace("_", " ")) for name in classes]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up to 1, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _fingerprint(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        names: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            names += _changed(old.get(key), new.get(key), f"{prefix}{key}.")
        return names
    return [] if old == new else [prefix.rstrip(".") or "settings"]


def _classes(config: HeadTrainConfig, cases: Sequence[Any]) -> list[str]:
    from salip.organs import get_organ

    available = list(dict.fromkeys(o for case in cases for o in case.organs))
    if config.train.classes is None:
        return available
    classes = list(dict.fromkeys(get_organ(name).name for name in config.train.classes))
    missing = [c for c in classes if c not in available]
    if missing:
        raise ConfigError(
            f"[train] classes {', '.join(missing)} are labelled by no dataset (the datasets "
            f"label: {', '.join(available)}); drop them or add a dataset that labels them."
        )
    return classes


def _load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and EOF errors all mean "unreadable"
        raise ConfigError(
            f"{path}: cannot read the saved training state ({type(exc).__name__}: {exc}); "
            "delete it to start again, or train into another folder."
        ) from exc


def _save_torch(path: Path, payload: dict[str, Any]) -> None:
    from salip.writing import atomic_write

    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _write_head(out: Path, state: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """head.pt and manifest.json from a completed training state."""
    from salip.writing import write_json

    manifest = {**state["manifest"], "metrics": _metrics(state["history"])}
    manifest = json.loads(json.dumps(manifest))  # plain JSON types only, for weights_only
    head_path = out / "head.pt"
    _save_torch(head_path, {"manifest": manifest, "state_dict": state["head"]})
    write_json(out / "manifest.json", manifest)
    return head_path, manifest


def _metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {
        "final_train_loss": last.get("train_loss"),
        "final_val_dice": last.get("val_dice"),
        "final_val_mean_dice": last.get("val_mean_dice"),
        "epochs": history,
    }


def _validate(
    model: OrganHead, loader: Any, classes: Sequence[str], device: str
) -> dict[str, float | None]:
    """Dice per class over the validation slices (None where a class has no pixels)."""
    from salip.head.loss import dice_counts

    model.eval()
    counts = torch.zeros(3, len(classes), dtype=torch.float64)
    with torch.no_grad():
        for features, target, valid, labelled in loader:
            logits = model(features.to(device))
            counts += dice_counts(
                logits, target.to(device), valid.to(device), labelled.to(device)
            ).cpu()
    model.train()
    dice: dict[str, float | None] = {}
    for k, name in enumerate(classes):
        denominator = float(counts[1, k] + counts[2, k])
        dice[name] = round(2.0 * float(counts[0, k]) / denominator, 6) if denominator else None
    return dice


def train_head(
    config: HeadTrainConfig | str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    resume: bool = True,
) -> HeadTrainResult:
    """Train the organ head described by ``config`` into the folder ``out``.

    Args:
        config: a parsed config or its TOML file (:func:`salip.head.config.load_head_config`).
        out: output folder (created).
        progress: show progress bars (embedding cache, steps).
        resume: continue a run found in ``out`` (False: start again, replacing it).

    Returns:
        A :class:`HeadTrainResult`.

    Raises:
        ConfigError: a bad config, a class no dataset labels, or an ``out`` holding a run
            with other settings (the message names them).
        salip.errors.BenchmarkError: a bad dataset table or case.
        salip.errors.ModelError: a missing or unreadable checkpoint.
    """
    from tqdm.auto import tqdm

    from salip.bench.datasets import load_dataset
    from salip.head.cache import EmbeddingCache, file_identity
    from salip.head.data import SliceDataset, build_samples, sampling_weights, split_cases
    from salip.head.loss import head_loss
    from salip.models.device import resolve_device
    from salip.models.precision import resolve_precision
    from salip.models.sam import load_sam, resolve_sam_checkpoint

    cfg = config if isinstance(config, HeadTrainConfig) else load_head_config(config)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the trained head.")
    settings = cfg.train
    seg_cfg = cfg.segment_config()
    cases = []
    for table in cfg.datasets:
        cases += load_dataset(table, cfg.base_dir)
    classes = _classes(cfg, cases)
    train_keys, val_keys = split_cases(
        [case.key for case in cases], settings.val_fraction, settings.seed
    )
    if settings.train_cases is not None:
        if settings.train_cases > len(train_keys):
            raise ConfigError(
                f"[train]: train_cases = {settings.train_cases}, but there are only "
                f"{len(train_keys)} training cases ({len(val_keys)} more are held out for "
                "validation); lower train_cases or add cases."
            )
        # The first N by key: the subsets of a learning curve are nested, and the
        # validation cases do not change with N.
        train_keys = train_keys[: settings.train_cases]
    sam_path = resolve_sam_checkpoint(seg_cfg.models.sam_checkpoint)
    sam_sha256 = file_identity(sam_path)
    described = {
        **cfg.describe(),
        "classes": classes,
        "cases": [case.key for case in cases],
        "sam_sha256": sam_sha256,
    }
    fingerprint = _fingerprint(described)

    last_path = out / "last.pt"
    state: dict[str, Any] | None = None
    if resume and last_path.is_file():
        state = _load_state(last_path)
        if state.get("fingerprint") != fingerprint:
            changed = _changed(state.get("settings", {}), described) or ["settings"]
            raise ConfigError(
                f"{out} holds a head training run with other settings (changed: "
                f"{', '.join(changed)}); train into another --out folder, or start again "
                "there with resume=False (--no-resume)."
            )
        if state["epoch"] >= settings.epochs:
            head_path = out / "head.pt"
            if head_path.is_file():
                manifest = torch.load(head_path, map_location="cpu", weights_only=True)["manifest"]
            else:
                head_path, manifest = _write_head(out, state)
            logger.info(
                "%s: training already complete (%d epochs); nothing to do", out, state["epoch"]
            )
            return HeadTrainResult(
                out, head_path, manifest, state["epoch"], 0, 0, history=state["history"]
            )

    if state is None:  # a fresh start: an older run's head must not outlive it
        for stale in (out / "head.pt", out / "manifest.json"):
            if stale.is_file():
                logger.info("%s: replacing the head of an earlier run", stale)
                stale.unlink()
    device = resolve_device(seg_cfg.models.device)
    precision = resolve_precision(seg_cfg.models.precision, device)
    sam = load_sam(str(sam_path), device=device, model_type=seg_cfg.models.sam_model_type)
    embed_dim = int(sam.arch.prompt_embed_dim)
    prompts = class_prompts(classes, settings.prompt_template)
    codes = None
    clip_identity = None
    if settings.variant != "static":
        codes, clip_identity = _text_codes(seg_cfg, prompts, device)
    arch = HeadArch(
        embed_dim=embed_dim,
        num_classes=len(classes),
        variant=settings.variant,
        text_dim=None if codes is None else int(codes.shape[1]),
    )

    cache = EmbeddingCache(sam, batch_size=settings.encoder_batch_size, precision=precision)
    used = set(train_keys) | set(val_keys)
    samples, case_infos = build_samples(
        [case for case in cases if case.key in used], classes, seg_cfg, cache, progress=progress
    )
    train_samples = [s for s in samples if s.case in train_keys]
    val_samples = [s for s in samples if s.case in val_keys]
    if not train_samples:
        raise ConfigError(
            "no training slice: every slice of the training cases is empty; check the "
            "datasets' images."
        )
    weights = sampling_weights(train_samples)
    logger.info(
        "head data: %d train slices (%d cases), %d validation slices (%d cases); "
        "embedding cache: %d hits, %d encoded",
        len(train_samples),
        len(train_keys),
        len(val_samples),
        len(val_keys),
        cache.hits,
        cache.misses,
    )

    torch.manual_seed(settings.seed)
    # randtext starts from random codes: CLIP only told it the code size D.
    model = OrganHead(arch, codes if settings.variant == "clip" else None).to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=settings.lr,
        weight_decay=settings.weight_decay,
    )
    total_steps = settings.epochs * settings.steps_per_epoch
    warmup = settings.warmup_steps

    def schedule(step: int) -> float:
        return lr_factor(step, warmup, total_steps)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    manifest_base = {
        "format": MANIFEST_FORMAT,
        "salip_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sam": {
            "checkpoint": seg_cfg.models.sam_checkpoint,
            "path": str(sam.path),
            "sha256": sam_sha256,
            "arch": sam.arch.name,
            "image_size": sam.arch.image_size,
            "embed_dim": embed_dim,
        },
        "clip": clip_identity if settings.variant == "clip" else None,
        "classes": classes,
        "prompt_template": settings.prompt_template,
        "prompts": prompts if settings.variant == "clip" else None,
        "variant": settings.variant,
        "head": {
            "embed_dim": arch.embed_dim,
            "num_classes": arch.num_classes,
            "variant": arch.variant,
            "text_dim": arch.text_dim,
            "trainable_parameters": trainable_parameters(arch),
        },
        "encoder_precision": precision,
        "slicing": {
            "axis": settings.axis,
            "window": settings.window,
            "skip_empty": seg_cfg.slicing.skip_empty,
            "percentile_low": seg_cfg.slicing.percentile_low,
            "percentile_high": seg_cfg.slicing.percentile_high,
        },
        "train": described["train"],
        "data": {
            "datasets": described["datasets"],
            "cases": case_infos,
            "split": {"train": train_keys, "val": val_keys},
            "slices": {"train": len(train_samples), "val": len(val_samples)},
        },
    }
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        manifest_base["created"] = state["manifest"]["created"]
        logger.info("resuming %s after epoch %d of %d", out, start_epoch, settings.epochs)

    train_set = SliceDataset(train_samples)
    val_loader = torch.utils.data.DataLoader(
        SliceDataset(val_samples), batch_size=settings.batch_size
    )
    step_losses: list[float] = []
    for epoch in range(start_epoch, settings.epochs):
        started = time.perf_counter()
        # A generator per epoch, seeded from (seed, epoch): a resumed epoch draws the same
        # slices as it would have in one uninterrupted run.
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        sampler = torch.utils.data.WeightedRandomSampler(
            weights,
            settings.steps_per_epoch * settings.batch_size,
            replacement=True,
            generator=generator,
        )
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=settings.batch_size, sampler=sampler
        )
        losses = []
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{settings.epochs}",
            unit="step",
            disable=not progress,
        )
        for features, target, valid, labelled in bar:
            logits = model(features.to(device))
            loss = head_loss(logits, target.to(device), valid.to(device), labelled.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
        step_losses += losses
        val_dice = _validate(model, val_loader, classes, device) if val_samples else None
        scored = [v for v in (val_dice or {}).values() if v is not None]
        record = {
            "epoch": epoch + 1,
            "train_loss": round(sum(losses) / len(losses), 6),
            "val_dice": val_dice,
            "val_mean_dice": round(sum(scored) / len(scored), 6) if scored else None,
            "lr": scheduler.get_last_lr()[0],
            "wall_s": round(time.perf_counter() - started, 2),
        }
        history.append(record)
        logger.info(
            "epoch %d/%d: train loss %.4f, validation Dice %s",
            epoch + 1,
            settings.epochs,
            record["train_loss"],
            "n/a (no validation cases)" if val_dice is None else f"{record['val_mean_dice']}",
        )
        state = {
            "fingerprint": fingerprint,
            "settings": described,
            "epoch": epoch + 1,
            "head": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "history": history,
            "manifest": manifest_base,
        }
        _save_torch(last_path, state)

    if state is None:  # pragma: no cover - epochs >= 1 always runs or resumes one
        raise ConfigError("nothing to train: epochs must be at least 1.")
    head_path, manifest = _write_head(out, state)
    return HeadTrainResult(
        out=out,
        head_path=head_path,
        manifest=manifest,
        start_epoch=start_epoch,
        epochs_run=settings.epochs - start_epoch,
        steps_run=len(step_losses),
        step_losses=step_losses,
        cache_hits=cache.hits,
        cache_misses=cache.misses,
        history=history,
    )


def _text_codes(
    seg_cfg: Any, prompts: Sequence[str], device: str
) -> tuple[torch.Tensor, dict[str, Any]]:
    """KxD CLIP text embeddings of the prompts (normalised), through the cascade's path."""
    from salip.models.clip import load_clip
    from salip.models.registry import salip_home
    from salip.scoring import ClipScorer

    m = seg_cfg.models
    clip = load_clip(m.clip_model, m.clip_pretrained, device=device)
    scorer = ClipScorer(clip, device, cache_dir=salip_home() / "cache" / "text")
    codes = torch.stack([scorer.text_embedding([prompt]) for prompt in prompts]).float().cpu()
    return codes, clip.identity()
