"""Everything-mode stand-in: the reference's parts, split, merged, dropped and jittered."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from salip.apps.bench.simulated.anatomy import EIGHT, ReferenceAnatomy, SimulatedEmbedding
from salip.apps.bench.simulated.noise import (
    STREAM_DROP,
    STREAM_JITTER,
    STREAM_MERGE,
    STREAM_ORDER,
    STREAM_SPLIT,
    NoiseConfig,
    check_seed,
    stream,
)
from salip.engines.everything_mode import Proposals

__all__ = [
    "TISSUE_GRID",
    "class_components",
    "jitter_mask",
    "SimulatedProposer",
]

#: The unlabelled tissue is cut into this many chunks per side (a 4x4 grid).
TISSUE_GRID = 4


def class_components(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of every class of an HxW class-id slice.

    Returns:
        (HxW int32 component ids, 0 = unlabelled; int array, entry ``c`` the class id of
        component ``c``, entry 0 is 0).
    """
    comp = np.zeros(classes.shape, dtype=np.int32)
    owners = [0]
    for k in np.unique(classes):
        if k == 0:
            continue
        lab, n = ndimage.label(classes == k, EIGHT)
        inside = lab > 0
        comp[inside] = lab[inside] + len(owners) - 1
        owners += [int(k)] * n
    return comp, np.asarray(owners, dtype=np.int64)


def _parts(classes: np.ndarray, body: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The noise-free parts of a slice: class components, then the unlabelled tissue
    (``body`` and class 0) cut by a :data:`TISSUE_GRID` grid into 8-connected chunks.

    Returns:
        (HxW int32 part ids, 0 = none; owner class id per part id, tissue 0, entry 0 unused).
    """
    parts, owners = class_components(classes)
    tissue = body & (classes == 0)
    h, w = classes.shape
    ch, cw = math.ceil(h / TISSUE_GRID), math.ceil(w / TISSUE_GRID)
    next_id, extra = len(owners), 0
    for r in range(0, h, ch):
        for c in range(0, w, cw):
            lab, n = ndimage.label(tissue[r : r + ch, c : c + cw], EIGHT)
            if n:
                window = parts[r : r + ch, c : c + cw]
                window[lab > 0] = lab[lab > 0] + next_id + extra - 1
                extra += n
    return parts, np.concatenate([owners, np.zeros(extra, dtype=np.int64)])


def _split(
    parts: np.ndarray, owners: np.ndarray, rng: np.random.Generator, rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cut each part, with probability ``rate``, into 2 or 3 pieces of equal size across
    a random direction (arrays as :func:`_parts`; new pieces get new ids)."""
    n = len(owners) - 1
    draws, pieces, angles = rng.random(n), rng.integers(2, 4, n), rng.uniform(0, np.pi, n)
    chosen = np.nonzero(draws < rate)[0]
    if not chosen.size:
        return parts, owners
    parts, new_owners = parts.copy(), list(owners)
    objects = ndimage.find_objects(parts)
    for i in chosen:
        window = parts[objects[i]]
        rows, cols = np.nonzero(window == i + 1)
        k = int(pieces[i])
        if rows.size < k:
            continue
        proj = cols * math.cos(angles[i]) + rows * math.sin(angles[i])
        rank = np.empty(rows.size, dtype=np.int64)
        rank[np.argsort(proj, kind="stable")] = np.arange(rows.size)
        piece = rank * k // rows.size
        window[rows, cols] = np.where(piece == 0, i + 1, len(new_owners) + piece - 1)
        new_owners += [int(owners[i + 1])] * (k - 1)
    return parts, np.asarray(new_owners, dtype=np.int64)


def _merge(
    parts: np.ndarray,
    owners: np.ndarray,
    rng: np.random.Generator,
    rate: float,
    keep_rate: float,
) -> np.ndarray:
    """NxHxW bool masks of the parts, each fused, with probability ``rate``, with one
    adjacent (8-connected) part of another class, chosen at random; a fused part is also
    kept alone, as an extra mask after the others, with probability ``keep_rate``."""
    n = len(owners) - 1
    masks = parts[None] == np.arange(1, n + 1, dtype=parts.dtype)[:, None, None]
    draws, choices, keeps = rng.random(n), rng.random(n), rng.random(n)
    chosen = np.nonzero(draws < rate)[0]
    if not chosen.size:
        return masks
    fused, alone = masks.copy(), []
    objects = ndimage.find_objects(parts)
    for i in chosen:
        if objects[i] is None:
            continue
        window = _padded(objects[i], 1, parts.shape)
        near = ndimage.binary_dilation(masks[i][window], EIGHT)
        ids = np.unique(parts[window][near])
        ids = ids[(ids > 0) & (owners[ids] != owners[i + 1])]
        if ids.size:
            fused[i] |= masks[ids[int(choices[i] * ids.size)] - 1]
            if keeps[i] < keep_rate:
                alone.append(masks[i])
    return np.concatenate([fused, np.stack(alone)]) if alone else fused


def _padded(box: tuple[slice, ...], pad: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, shape, strict=True)
    )


def jitter_mask(mask: np.ndarray, distance_mm: float, pixel_mm: tuple[float, float]) -> np.ndarray:
    """``mask`` (HxW bool) with its boundary moved out (distance > 0) or in (< 0) by
    ``distance_mm``, measured with the pixels' (row, column) size: a pixel is added when
    its centre lies within that distance of the mask, removed when it lies no farther from
    the background. The image edge is not a boundary."""
    if distance_mm == 0 or not mask.any():
        return mask
    rows, cols = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    pad = math.ceil(abs(distance_mm) / min(pixel_mm)) + 1
    window = _padded(box, pad, mask.shape)
    out = np.zeros_like(mask)
    if distance_mm > 0:
        out[window] = ndimage.distance_transform_edt(~mask[window], sampling=pixel_mm) <= (
            distance_mm
        )
    else:
        out[window] = ndimage.distance_transform_edt(mask[window], sampling=pixel_mm) > (
            -distance_mm
        )
    return out


def _as_proposals(masks: np.ndarray, rng: np.random.Generator) -> Proposals:
    """Proposals of NxHxW bool masks: empty ones removed, in a random order (as SAM's,
    which follows no size or class: equal scores are then tied at random); boxes XYXY
    with the max corner inclusive, points the box centres, predicted IoU and stability 1."""
    from torchvision.ops import masks_to_boxes

    areas = masks.sum(axis=(1, 2))
    order = rng.permutation(len(masks))
    order = order[areas[order] > 0]
    kept = torch.from_numpy(np.ascontiguousarray(masks[order]))
    boxes = masks_to_boxes(kept).float() if len(kept) else torch.zeros((0, 4))
    ones = torch.ones(len(kept))
    points = torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    return Proposals(kept, boxes, ones, ones.clone(), points)


class SimulatedProposer:
    """Proposer stand-in (see :class:`~salip.engines.proposer.Proposer`).

    Per slice: the 8-connected components of every reference class and the unlabelled
    tissue in chunks (:func:`_parts`), then split, merged (a merged part also proposed
    alone with probability ``merge_keep_rate``), dropped and jittered (in mm) as ``noise``
    says, in that order. Proposals come in a seeded random order, with predicted IoU and
    stability 1.

    Args:
        anatomy: the reference.
        noise: the noise (default: none).
        seed: the seed (>= 0) of every draw, with the slice index.
    """

    def __init__(
        self, anatomy: ReferenceAnatomy, noise: NoiseConfig | None = None, seed: int = 0
    ) -> None:
        self.anatomy, self.noise, self.seed = anatomy, noise or NoiseConfig(), check_seed(seed)

    def propose(
        self,
        embeddings: Sequence[SimulatedEmbedding],
        regions: Sequence[np.ndarray | None] | None = None,
    ) -> list[Proposals]:
        """One :class:`~salip.engines.everything_mode.Proposals` per embedding: NxHxW bool masks,
        Nx4 float boxes XYXY in pixels (max corner inclusive), N predicted IoU, N stability,
        Nx2 points (box centres). As SAM seeds a part only from a grid point inside the
        region, a part that does not reach into its slice's region is dropped."""
        out = [self.propose_one(emb) for emb in embeddings]
        if regions is None:
            return out
        for i, region in enumerate(regions):
            if region is not None and len(out[i]):
                inside = torch.as_tensor(region).to(out[i].masks.device)
                out[i] = out[i].select((out[i].masks & inside).flatten(1).any(1))
        return out

    def propose_one(self, embedding: SimulatedEmbedding) -> Proposals:
        """The proposals of one slice (see :meth:`propose`)."""
        noise, seed, index = self.noise, self.seed, embedding.index
        parts, owners = _parts(self.anatomy.class_slice(index), embedding.body)
        parts, owners = _split(parts, owners, stream(seed, index, STREAM_SPLIT), noise.split_rate)
        masks = _merge(
            parts,
            owners,
            stream(seed, index, STREAM_MERGE),
            noise.merge_rate,
            noise.merge_keep_rate,
        )
        masks = masks[stream(seed, index, STREAM_DROP).random(len(masks)) >= noise.drop_rate]
        if noise.jitter_mm and len(masks):
            shifts = stream(seed, index, STREAM_JITTER).uniform(
                -noise.jitter_mm, noise.jitter_mm, len(masks)
            )
            pixel = self.anatomy.pixel_mm
            masks = np.stack([jitter_mask(m, d, pixel) for m, d in zip(masks, shifts, strict=True)])
        return _as_proposals(masks.reshape(-1, *parts.shape), stream(seed, index, STREAM_ORDER))
