"""``salip head train``: fit the organ head on cached SAM embeddings.

:func:`train_head` lists the config's datasets, caches every body slice's SAM embedding
(:mod:`salip.apps.training.cache`), splits the cases into train and validation (by patient), and
trains the head with AdamW (linear warm-up, then cosine decay to 0) on class-balanced
draws of slices (:func:`salip.apps.training.data.sampling_weights`). Validation Dice is logged per
epoch.

Outputs in ``out``:

* ``last.pt``: the resumable state (head, optimiser, scheduler, epoch, RNG state, history),
  written atomically after every epoch.
* ``head.pt``: ``{"state_dict": ..., "manifest": ...}`` when training is done, loadable
  with ``torch.load(path, weights_only=True)`` (see :func:`salip.strategies.head.load_head`).
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
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from salip.apps.bench.datasets import load_dataset
from salip.apps.training.cache import DiskEmbeddingCache
from salip.apps.training.config import HeadTrainConfig, load_head_config
from salip.apps.training.data import SliceDataset, build_samples, sampling_weights, split_cases
from salip.apps.training.loss import dice_counts, head_loss
from salip.apps.training.state import (
    changed_settings,
    load_state,
    remove_stale_head,
    save_state,
    write_head,
)
from salip.core.errors import ConfigError
from salip.core.hashing import file_sha256, fingerprint
from salip.core.organs import get_organ
from salip.engines.scoring import ClipScorer
from salip.models.clip import load_clip
from salip.models.device import resolve_device
from salip.models.head import MANIFEST_FORMAT, HeadArch, OrganHead, trainable_parameters
from salip.models.precision import resolve_precision
from salip.models.registry import salip_home
from salip.models.sam import load_sam, resolve_sam_checkpoint
from salip.version import __version__

__all__ = [
    "class_prompts",
    "HeadTrainResult",
    "lr_factor",
    "train_head",
]

logger = logging.getLogger(__name__)


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


def _classes(config: HeadTrainConfig, cases: Sequence[Any]) -> list[str]:
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


def _validate(
    model: OrganHead, loader: Any, classes: Sequence[str], device: str
) -> dict[str, float | None]:
    """Dice per class over the validation slices (None where a class has no pixels)."""
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


@dataclass
class _Run:
    """The resolved settings, cases and split of one training run (phase 1)."""

    cfg: HeadTrainConfig
    out: Path
    seg_cfg: Any
    cases: list[Any]
    classes: list[str]
    train_keys: list[str]
    val_keys: list[str]
    sam_path: Path
    sam_sha256: str
    described: dict[str, Any]
    fingerprint: str

    @property
    def settings(self) -> Any:
        return self.cfg.train

    @property
    def last_path(self) -> Path:
        return self.out / "last.pt"


@dataclass
class _Models:
    """SAM, the CLIP text codes and the head's architecture (phase 2)."""

    device: str
    precision: str
    sam: Any
    prompts: list[str]
    codes: torch.Tensor | None
    clip_identity: dict[str, Any] | None
    arch: HeadArch


@dataclass
class _Data:
    """The embedding cache and the training and validation slices (phase 3)."""

    cache: Any
    case_infos: list[dict[str, Any]]
    train_samples: list[Any]
    val_samples: list[Any]
    weights: torch.Tensor


@dataclass
class _Trainer:
    """Head, optimiser, schedule and history, fresh or resumed (phase 4)."""

    model: OrganHead
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    manifest_base: dict[str, Any]
    history: list[dict[str, Any]]
    start_epoch: int


def train_head(
    config: HeadTrainConfig | str | Path,
    out: str | Path,
    *,
    progress: bool = True,
    resume: bool = True,
) -> HeadTrainResult:
    """Train the organ head described by ``config`` into the folder ``out``.

    Args:
        config: a parsed config or its TOML file (:func:`salip.apps.training.config.load_head_config`).
        out: output folder (created).
        progress: show progress bars (embedding cache, steps).
        resume: continue a run found in ``out`` (False: start again, replacing it).

    Returns:
        A :class:`HeadTrainResult`.

    Raises:
        ConfigError: a bad config, a class no dataset labels, or an ``out`` holding a run
            with other settings (the message names them).
        salip.core.errors.BenchmarkError: a bad dataset table or case.
        salip.core.errors.ModelError: a missing or unreadable checkpoint.
    """
    run = _plan_run(config, out)
    state = _previous_state(run) if resume and run.last_path.is_file() else None
    if state is not None and state["epoch"] >= run.settings.epochs:
        return _finished(run.out, state)
    if state is None:  # a fresh start: an older run's head must not outlive it
        remove_stale_head(run.out)
    models = _load_models(run)
    data = _load_data(run, models, progress)
    trainer = _build_trainer(run, models, data, state)
    step_losses, state = _run_epochs(run, models.device, data, trainer, state, progress)
    if state is None:  # pragma: no cover - epochs >= 1 always runs or resumes one
        raise ConfigError("nothing to train: epochs must be at least 1.")
    head_path, manifest = write_head(run.out, state)
    return HeadTrainResult(
        out=run.out,
        head_path=head_path,
        manifest=manifest,
        start_epoch=trainer.start_epoch,
        epochs_run=run.settings.epochs - trainer.start_epoch,
        steps_run=len(step_losses),
        step_losses=step_losses,
        cache_hits=data.cache.hits,
        cache_misses=data.cache.misses,
        history=trainer.history,
    )


def _plan_run(config: HeadTrainConfig | str | Path, out: str | Path) -> _Run:
    """Phase 1: the config, the output folder, the cases and their split, the fingerprint."""
    cfg = config if isinstance(config, HeadTrainConfig) else load_head_config(config)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the trained head.")
    seg_cfg = cfg.segment_config()
    cases = []
    for table in cfg.datasets:
        cases += load_dataset(table, cfg.base_dir)
    classes = _classes(cfg, cases)
    train_keys, val_keys = _split(cfg, cases)
    sam_path = resolve_sam_checkpoint(seg_cfg.models.sam_checkpoint)
    sam_sha256 = file_sha256(sam_path)
    described = {
        **cfg.describe(),
        "classes": classes,
        "cases": [case.key for case in cases],
        "sam_sha256": sam_sha256,
    }
    return _Run(
        cfg=cfg,
        out=out,
        seg_cfg=seg_cfg,
        cases=cases,
        classes=classes,
        train_keys=train_keys,
        val_keys=val_keys,
        sam_path=sam_path,
        sam_sha256=sam_sha256,
        described=described,
        fingerprint=fingerprint(described),
    )


def _split(cfg: HeadTrainConfig, cases: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Training and validation case keys, the training ones cut to ``train_cases``."""
    settings = cfg.train
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
    return train_keys, val_keys


def _previous_state(run: _Run) -> dict[str, Any]:
    """The saved state of the run in ``run.out``; refused if its settings differ."""
    state = load_state(run.last_path)
    if state.get("fingerprint") != run.fingerprint:
        changed = changed_settings(state.get("settings", {}), run.described) or ["settings"]
        raise ConfigError(
            f"{run.out} holds a head training run with other settings (changed: "
            f"{', '.join(changed)}); train into another --out folder, or start again "
            "there with resume=False (--no-resume)."
        )
    return state


def _finished(out: Path, state: dict[str, Any]) -> HeadTrainResult:
    """The result of a run that is already complete (head.pt written again if missing)."""
    head_path = out / "head.pt"
    if head_path.is_file():
        manifest = torch.load(head_path, map_location="cpu", weights_only=True)["manifest"]
    else:
        head_path, manifest = write_head(out, state)
    logger.info("%s: training already complete (%d epochs); nothing to do", out, state["epoch"])
    return HeadTrainResult(out, head_path, manifest, state["epoch"], 0, 0, history=state["history"])


def _load_models(run: _Run) -> _Models:
    """Phase 2: device, precision, SAM, the prompts' CLIP codes and the head's architecture."""
    settings, models = run.settings, run.seg_cfg.models
    device = resolve_device(models.device)
    precision = resolve_precision(models.precision, device)
    sam = load_sam(
        str(run.sam_path),
        device=device,
        model_type=models.sam_model_type,
        preprocess=models.sam_preprocess,
    )
    prompts = class_prompts(run.classes, settings.prompt_template)
    codes = None
    clip_identity = None
    if settings.variant != "static":
        codes, clip_identity = _text_codes(run.seg_cfg, prompts, device)
    arch = HeadArch(
        embed_dim=int(sam.arch.prompt_embed_dim),
        num_classes=len(run.classes),
        variant=settings.variant,
        text_dim=None if codes is None else int(codes.shape[1]),
    )
    return _Models(device, precision, sam, prompts, codes, clip_identity, arch)


def _load_data(run: _Run, models: _Models, progress: bool) -> _Data:
    """Phase 3: every used slice's embedding (cached) and target, split and weighted."""
    cache = DiskEmbeddingCache(
        models.sam, batch_size=run.settings.encoder_batch_size, precision=models.precision
    )
    used = set(run.train_keys) | set(run.val_keys)
    samples, case_infos = build_samples(
        [case for case in run.cases if case.key in used],
        run.classes,
        run.seg_cfg,
        cache,
        progress=progress,
    )
    train_samples = [s for s in samples if s.case in run.train_keys]
    val_samples = [s for s in samples if s.case in run.val_keys]
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
        len(run.train_keys),
        len(val_samples),
        len(run.val_keys),
        cache.hits,
        cache.misses,
    )
    return _Data(cache, case_infos, train_samples, val_samples, weights)


def _build_trainer(
    run: _Run, models: _Models, data: _Data, state: dict[str, Any] | None
) -> _Trainer:
    """Phase 4: the seeded head, AdamW and its schedule; resumed from ``state`` if given."""
    settings = run.settings
    torch.manual_seed(settings.seed)
    # randtext starts from random codes: CLIP only told it the code size D.
    codes = models.codes if settings.variant == "clip" else None
    model = OrganHead(models.arch, codes).to(models.device)
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
    trainer = _Trainer(model, optimizer, scheduler, _manifest_base(run, models, data), [], 0)
    if state is not None:
        model.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        trainer.history = list(state["history"])
        trainer.start_epoch = int(state["epoch"])
        trainer.manifest_base["created"] = state["manifest"]["created"]
        logger.info(
            "resuming %s after epoch %d of %d", run.out, trainer.start_epoch, settings.epochs
        )
    return trainer


def _manifest_base(run: _Run, models: _Models, data: _Data) -> dict[str, Any]:
    """The manifest of head.pt, less the metrics (known when training is done)."""
    settings, seg_cfg, arch, sam = run.settings, run.seg_cfg, models.arch, models.sam
    clip = settings.variant == "clip"
    return {
        "format": MANIFEST_FORMAT,
        "salip_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sam": {
            "checkpoint": seg_cfg.models.sam_checkpoint,
            "path": str(sam.path),
            "sha256": run.sam_sha256,
            "arch": sam.arch.name,
            "image_size": sam.arch.image_size,
            "embed_dim": int(sam.arch.prompt_embed_dim),
            "preprocess": sam.preprocess.name,
        },
        "clip": models.clip_identity if clip else None,
        "classes": run.classes,
        "prompt_template": settings.prompt_template,
        "prompts": models.prompts if clip else None,
        "variant": settings.variant,
        "head": {
            "embed_dim": arch.embed_dim,
            "num_classes": arch.num_classes,
            "variant": arch.variant,
            "text_dim": arch.text_dim,
            "trainable_parameters": trainable_parameters(arch),
        },
        "encoder_precision": models.precision,
        "slicing": {
            "axis": settings.axis,
            "window": settings.window,
            "skip_empty": seg_cfg.slicing.skip_empty,
            "percentile_low": seg_cfg.slicing.percentile_low,
            "percentile_high": seg_cfg.slicing.percentile_high,
        },
        "train": run.described["train"],
        "data": {
            "datasets": run.described["datasets"],
            "cases": data.case_infos,
            "split": {"train": run.train_keys, "val": run.val_keys},
            "slices": {"train": len(data.train_samples), "val": len(data.val_samples)},
        },
    }


def _run_epochs(
    run: _Run,
    device: str,
    data: _Data,
    trainer: _Trainer,
    state: dict[str, Any] | None,
    progress: bool,
) -> tuple[list[float], dict[str, Any] | None]:
    """Phase 5: the remaining epochs, each validated, logged and saved to last.pt.

    Returns every step's loss and the last saved state (``state`` if no epoch ran).
    """
    settings = run.settings
    train_set = SliceDataset(data.train_samples)
    val_loader = torch.utils.data.DataLoader(
        SliceDataset(data.val_samples), batch_size=settings.batch_size
    )
    step_losses: list[float] = []
    for epoch in range(trainer.start_epoch, settings.epochs):
        started = time.perf_counter()
        losses = _train_epoch(run, device, train_set, data.weights, trainer, epoch, progress)
        step_losses += losses
        val_dice = (
            _validate(trainer.model, val_loader, run.classes, device) if data.val_samples else None
        )
        record = _epoch_record(epoch, losses, val_dice, trainer, started)
        trainer.history.append(record)
        logger.info(
            "epoch %d/%d: train loss %.4f, validation Dice %s",
            epoch + 1,
            settings.epochs,
            record["train_loss"],
            "n/a (no validation cases)" if val_dice is None else f"{record['val_mean_dice']}",
        )
        state = {
            "fingerprint": run.fingerprint,
            "settings": run.described,
            "epoch": epoch + 1,
            "head": {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()},
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "history": trainer.history,
            "manifest": trainer.manifest_base,
        }
        save_state(run.last_path, state)
    return step_losses, state


def _train_epoch(
    run: _Run,
    device: str,
    train_set: Any,
    weights: torch.Tensor,
    trainer: _Trainer,
    epoch: int,
    progress: bool,
) -> list[float]:
    """One epoch of ``steps_per_epoch`` optimiser steps; the loss of each step."""
    settings = run.settings
    # A generator per epoch, seeded from (seed, epoch): a resumed epoch draws the same
    # slices as it would have in one uninterrupted run.
    generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
    sampler = torch.utils.data.WeightedRandomSampler(
        weights,
        settings.steps_per_epoch * settings.batch_size,
        replacement=True,
        generator=generator,
    )
    loader = torch.utils.data.DataLoader(train_set, batch_size=settings.batch_size, sampler=sampler)
    losses = []
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{settings.epochs}",
        unit="step",
        disable=not progress,
    )
    for features, target, valid, labelled in bar:
        logits = trainer.model(features.to(device))
        loss = head_loss(logits, target.to(device), valid.to(device), labelled.to(device))
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        trainer.scheduler.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    return losses


def _epoch_record(
    epoch: int,
    losses: list[float],
    val_dice: dict[str, float | None] | None,
    trainer: _Trainer,
    started: float,
) -> dict[str, Any]:
    """The history entry of one epoch."""
    scored = [v for v in (val_dice or {}).values() if v is not None]
    return {
        "epoch": epoch + 1,
        "train_loss": round(sum(losses) / len(losses), 6),
        "val_dice": val_dice,
        "val_mean_dice": round(sum(scored) / len(scored), 6) if scored else None,
        "lr": trainer.scheduler.get_last_lr()[0],
        "wall_s": round(time.perf_counter() - started, 2),
    }


def _text_codes(
    seg_cfg: Any, prompts: Sequence[str], device: str
) -> tuple[torch.Tensor, dict[str, Any]]:
    """KxD CLIP text embeddings of the prompts (normalised), through the cascade's path."""
    m = seg_cfg.models
    clip = load_clip(m.clip_model, m.clip_pretrained, device=device, quick_gelu=m.clip_quick_gelu)
    scorer = ClipScorer(clip, device, cache_dir=salip_home() / "cache" / "text")
    codes = torch.stack([scorer.text_embedding([prompt]) for prompt in prompts]).float().cpu()
    return codes, clip.identity()
