"""On-disk cache of SAM image embeddings for training the head.

The SAM encoder is frozen, so a slice's embedding never changes: it is computed once and
stored as fp16 under ``<SALIP_HOME>/cache/head_embeddings``, one file per slice. A file's
name is the SHA-256 of its key: the SAM checkpoint's SHA-256, the encoder precision, the
image file's SHA-256 (and channel), the slicing axis, the slice index and the intensity
mapping; any change to those gives a new file. Files are written atomically, so an
interrupted run leaves no torn entry.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salip.core.hashing import file_sha256, fingerprint
from salip.io.writing import atomic_write
from salip.models.registry import salip_home
from salip.models.sam import LoadedSam
from salip.models.sam_preprocess import get_preprocess
from salip.models.sam_runtime import BatchSize, ImageEmbedding, encode_images

__all__ = [
    "default_cache_dir",
    "DiskEmbeddingCache",
    "load_embedding",
    "save_embedding",
]

logger = logging.getLogger(__name__)

#: Slices encoded and written per round (bounds the memory held by new embeddings).
_CHUNK = 32


def default_cache_dir() -> Path:
    """``<SALIP_HOME>/cache/head_embeddings``."""
    return salip_home() / "cache" / "head_embeddings"


def save_embedding(path: Path, embedding: ImageEmbedding) -> None:
    """Write one embedding atomically: CxHxW fp16 features, the two sizes and the profile."""
    payload = {
        "features": embedding.features[0].detach().to("cpu", torch.float16).contiguous(),
        "input_size": list(embedding.input_size),
        "original_size": list(embedding.original_size),
        "preprocess": embedding.preprocess.name,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_embedding(path: Path) -> ImageEmbedding:
    """Read a cached embedding: features 1xCxhxw float32 on the CPU."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return ImageEmbedding(
        features=payload["features"].float()[None],
        input_size=tuple(int(v) for v in payload["input_size"]),
        original_size=tuple(int(v) for v in payload["original_size"]),
        preprocess=get_preprocess(str(payload.get("preprocess", "sam"))),
    )


class DiskEmbeddingCache:
    """SAM embeddings of slices, encoded on first request and read from disk after.

    Args:
        sam: the frozen SAM model (its checkpoint file is hashed for the key, and its
            preprocessing profile is part of it).
        folder: cache folder; default :func:`default_cache_dir`.
        batch_size: slices per encoder call (halved on out-of-memory, see
            :class:`~salip.models.sam_runtime.BatchSize`).
        precision: encoder precision ("fp32", "bf16", "fp16"), resolved; part of the key.

    Attributes:
        hits: slices found in the cache so far.
        misses: slices encoded so far.
    """

    def __init__(
        self,
        sam: LoadedSam,
        folder: Path | None = None,
        *,
        batch_size: int = 4,
        precision: str = "fp32",
    ):
        self.sam = sam
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.sam_sha256 = file_sha256(sam.path)
        self.batch = BatchSize(batch_size)
        self.precision = precision
        self.hits = 0
        self.misses = 0

    def path(self, key: Mapping[str, Any]) -> Path:
        """The cache file of a slice described by ``key`` (JSON-ready values)."""
        full = {"sam_sha256": self.sam_sha256, "precision": self.precision, **key}
        full["preprocess"] = self.sam.preprocess.name
        digest = fingerprint(full)
        return self.folder / digest[:2] / f"{digest}.pt"

    def ensure(self, keys: Sequence[Mapping[str, Any]], images: Sequence[np.ndarray]) -> list[Path]:
        """Make sure every slice has a cache file; encode the missing ones.

        Args:
            keys: one key per slice (image identity, axis, index, intensity, ...).
            images: the slices as HxWx3 uint8 RGB display images, in the same order.

        Returns:
            The slices' cache files, in order.
        """
        paths = [self.path(key) for key in keys]
        todo = [i for i, path in enumerate(paths) if not path.is_file()]
        self.hits += len(paths) - len(todo)
        self.misses += len(todo)
        for start in range(0, len(todo), _CHUNK):
            chunk = todo[start : start + _CHUNK]
            embeddings = encode_images(
                self.sam.model,
                [images[i] for i in chunk],
                self.batch,
                precision=self.precision,
                preprocess=self.sam.preprocess,
            )
            for i, embedding in zip(chunk, embeddings, strict=True):
                save_embedding(paths[i], embedding)
        return paths
