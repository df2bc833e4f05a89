"""Image embeddings of a view's slices, fetched through a bounded cache."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from salip.engines.encoder import Encoder
from salip.models.sam_runtime import ImageEmbedding
from salip.strategies.volume_view import VolumeView

__all__ = [
    "DEFAULT_CAPACITY",
    "EmbeddingCache",
]

#: Embeddings kept by default: a vit_b embedding (256x64x64 float32) is 4 MiB.
DEFAULT_CAPACITY = 64


class EmbeddingCache:
    """Slice index -> embedding for one view, least recently used first out.

    A strategy may ask for a slice twice without encoding it twice, as long as it is among
    the last ``capacity`` slices asked for. Slices missing from one request are encoded in
    one batched call.

    Args:
        view: the slices.
        encoder: the encoder.
        capacity: embeddings kept (at least 1).

    Attributes:
        encoded: number of slices encoded so far (a measure of the encoder's work).
    """

    def __init__(self, view: VolumeView, encoder: Encoder, capacity: int = DEFAULT_CAPACITY):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.view, self.encoder, self.capacity = view, encoder, capacity
        self._store: OrderedDict[int, ImageEmbedding] = OrderedDict()
        self.encoded = 0

    def __contains__(self, index: int) -> bool:
        return index in self._store

    def get(
        self,
        indices: Sequence[int],
        images: Sequence[np.ndarray] | None = None,
        prepared: Any | None = None,
    ) -> list[ImageEmbedding]:
        """Embeddings of slices ``indices``, in order.

        Args:
            indices: slice indices of the view.
            images: the slices' display images when already made (else read from the view).
            prepared: the encoder's ``prepare`` of ``images``, used when none is cached.
        """
        missing = [k for k, i in enumerate(indices) if i not in self._store]
        found: dict[int, ImageEmbedding] = {}
        if missing:
            if images is None:
                batch = [self.view.image(indices[k]) for k in missing]
            else:
                batch = [images[k] for k in missing]
            use_prepared = prepared if len(missing) == len(indices) else None
            where = [indices[k] for k in missing]
            for k, embedding in zip(missing, self.encoder.encode(batch, use_prepared, where)):
                found[indices[k]] = embedding
            self.encoded += len(missing)
        out = []
        for index in indices:
            embedding = found.get(index) or self._store[index]
            self._store[index] = embedding
            self._store.move_to_end(index)
            out.append(embedding)
        while len(self._store) > self.capacity:
            self._store.popitem(last=False)
        return out
