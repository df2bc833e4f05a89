"""Segmenting with a trained head: load head.pt, and a slice segmenter for ``salip.segment``.

The head only makes sense on the SAM image encoder it was trained on, so loading checks
the SAM checkpoint's SHA-256 against the manifest and refuses any other SAM.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salip.apps.training.cache import file_identity
from salip.apps.training.config import MANIFEST_FORMAT
from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError, ModelError
from salip.core.organs import Organ
from salip.models.head import HeadArch, OrganHead
from salip.models.sam import LoadedSam
from salip.models.sam_runtime import BatchSize, encode_images
from salip.strategies.cascade import SliceOutput, encoder_batch, slice_batch

logger = logging.getLogger(__name__)


@dataclass
class LoadedHead:
    """A trained head ready for inference.

    Attributes:
        model: the head in eval mode on its device.
        manifest: the manifest it was saved with (see :mod:`salip.apps.training.train`).
        classes: its classes, in output order.
        path: the head.pt file.
    """

    model: OrganHead
    manifest: dict[str, Any]
    classes: tuple[str, ...]
    path: Path

    @property
    def slicing(self) -> dict[str, Any]:
        """The slicing settings it was trained with (axis, window, percentiles, ...)."""
        return dict(self.manifest.get("slicing", {}))

    def identity(self) -> dict[str, Any]:
        """JSON-ready description for reports."""
        m = self.manifest
        return {
            "path": str(self.path),
            "variant": m.get("variant"),
            "classes": list(self.classes),
            "sam_sha256": m.get("sam", {}).get("sha256"),
            "clip": m.get("clip"),
            "salip_version": m.get("salip_version"),
        }


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"head file not found: {path}; train one with `salip head train`.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and EOF errors all mean "unreadable"
        raise ModelError(f"{path}: cannot read the head ({type(exc).__name__}: {exc}).") from exc
    manifest = payload.get("manifest") if isinstance(payload, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(
            f"{path} is not a salip head (expected a {MANIFEST_FORMAT} manifest); give the "
            "head.pt that `salip head train` wrote."
        )
    return payload


def read_head_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a head.pt (classes, variant, SAM, slicing, data), without a model.

    Raises:
        ModelError: a missing or unreadable file, or not a salip head.
    """
    return dict(_read_payload(Path(path))["manifest"])


def load_head(path: str | Path, sam: LoadedSam, *, device: str = "cpu") -> LoadedHead:
    """Load a head.pt written by :func:`salip.apps.training.train.train_head` for use with ``sam``.

    Read with ``torch.load(weights_only=True)``; the head is rebuilt from its manifest.

    Raises:
        ModelError: a missing or unreadable file, or not a salip head.
        ConfigError: ``sam`` is not the SAM checkpoint the head was trained on.
    """
    path = Path(path)
    payload = _read_payload(path)
    manifest = payload["manifest"]
    trained = manifest["sam"]
    given = file_identity(sam.path)
    if given != trained["sha256"]:
        raise ConfigError(
            f"{path} was trained on the SAM checkpoint {trained['checkpoint']} "
            f"({trained['arch']}, sha256 {trained['sha256'][:12]}...), but the SAM given is "
            f"{sam.path} (sha256 {given[:12]}...). A head only works on its own SAM: pass "
            f"--sam-checkpoint {trained['checkpoint']}, or train a head for this SAM."
        )
    h = manifest["head"]
    arch = HeadArch(
        embed_dim=int(h["embed_dim"]),
        num_classes=int(h["num_classes"]),
        variant=str(h["variant"]),
        text_dim=None if h["text_dim"] is None else int(h["text_dim"]),
    )
    model = OrganHead(arch)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise ModelError(
            f"{path}: weights do not fit the head its manifest describes: {exc}"
        ) from exc
    model.to(device).eval()
    logger.info("loaded %s head (%s) from %s", arch.variant, ", ".join(manifest["classes"]), path)
    return LoadedHead(model, manifest, tuple(manifest["classes"]), path)


class HeadSegmenter:
    """A slice segmenter (:class:`salip.strategies.cascade.SliceSegmenter`) running a trained head.

    Each batch of slices is encoded by SAM, the head gives per-class logits in SAM's padded
    1/4 frame, ``Sam.postprocess_masks`` (segment-anything's crop and resize) brings them to
    each slice's size, and a class is where its sigmoid exceeds 0.5 (fixed). No other
    post-processing: ``salip.segment``'s ``largest_component`` applies as for any method.

    Args:
        head: the loaded head (:func:`load_head`, with the same ``sam``).
        sam: the SAM model whose encoder the head was trained on.
        batch_size: slices per encoder call (halved on out-of-memory); a
            :class:`~salip.models.sam_runtime.BatchSize` is used as it is (e.g. an auto one
            from :func:`salip.strategies.cascade.encoder_batch`).
        precision: encoder precision, resolved ("fp32", "bf16", "fp16"); best the one the
            head was trained with (its manifest's ``encoder_precision``).
        slice_batch: slices per call to ask for (default: the encoder batch, at least 4).

    Attributes:
        slice_batch: slices per call :func:`salip.segment` should send (auto batch size).
        intensity_organs: the head's classes: slices are mapped to 8 bits with their window,
            as in training, whatever organs are asked for.
    """

    def __init__(
        self,
        head: LoadedHead,
        sam: LoadedSam,
        *,
        batch_size: int | BatchSize = 4,
        precision: str = "fp32",
        slice_batch: int | None = None,
    ):
        from salip.core.organs import get_organ

        self.head, self.sam = head, sam
        self.batch = batch_size if isinstance(batch_size, BatchSize) else BatchSize(batch_size)
        self.slice_batch = slice_batch or max(4, self.batch.value)
        self.precision = precision
        self.intensity_organs = [get_organ(name) for name in head.classes]

    @classmethod
    def for_config(
        cls, head: LoadedHead, sam: LoadedSam, config: SegmentConfig, device: str
    ) -> HeadSegmenter:
        """A segmenter with the batch sizes (``encoder_batch_size``, 0: auto) and encoder
        precision of ``config`` on ``device``, as the cascade would use them."""
        from salip.models.precision import resolve_precision

        setting = config.proposals.encoder_batch_size
        return cls(
            head,
            sam,
            batch_size=encoder_batch(setting, device),
            precision=resolve_precision(config.models.precision, device),
            slice_batch=slice_batch(setting, device),
        )

    def check_organs(self, organs: Sequence[Organ]) -> list[int]:
        """The head's output channel of each organ.

        Raises:
            ConfigError: an organ the head was not trained for (the message lists its classes).
        """
        missing = [o.name for o in organs if o.name not in self.head.classes]
        if missing:
            raise ConfigError(
                f"the head {self.head.path} does not segment {', '.join(missing)}; its classes "
                f"are: {', '.join(self.head.classes)}. Ask for those, or train a head with "
                "these organs."
            )
        return [self.head.classes.index(o.name) for o in organs]

    @torch.no_grad()
    def __call__(
        self, images: Sequence[np.ndarray], organs: Sequence[Organ], indices: Sequence[int]
    ) -> list[SliceOutput]:
        """HxWx3 uint8 display slices -> one :class:`SliceOutput` (HxW bool per organ) each."""
        channels = self.check_organs(organs)
        embeddings = encode_images(self.sam.model, images, self.batch, precision=self.precision)
        if not embeddings:
            return []
        device = next(self.head.model.parameters()).device
        features = torch.cat([e.features for e in embeddings]).to(device)
        logits = self.head.model(features)[:, channels]
        outputs = []
        for i, embedding in enumerate(embeddings):
            full = self.sam.model.postprocess_masks(
                logits[i : i + 1], embedding.input_size, embedding.original_size
            )[0]
            masks = (full > 0).cpu().numpy()  # sigmoid > 0.5 <=> logit > 0
            outputs.append(SliceOutput(masks={o.name: masks[j] for j, o in enumerate(organs)}))
        return outputs
