"""``image-mask-pairs``: 2D images with one binary mask each."""

from __future__ import annotations

from salip.apps.bench.datasets.case import DatasetCase
from salip.apps.bench.datasets.common import _case_ids, _glob_images, _Spec, expand_pattern


def _image_mask_pairs(spec: _Spec) -> list[DatasetCase]:
    masks = spec.text("masks")
    target = spec.organ("target")
    threshold = spec.number("threshold")
    fill_outline = spec.flag("fill_outline", False)
    images = _glob_images(spec)
    expand_pattern(masks, images[0], spec.base_dir)
    return [
        DatasetCase(
            dataset=spec.name,
            case_id=case_id,
            image=image,
            organs=(target,),
            kind=spec.kind,
            files={target: (expand_pattern(masks, image, spec.base_dir),)},
            threshold=threshold,
            fill_outline=fill_outline,
        )
        for case_id, image in zip(_case_ids(images, spec.base_dir), images)
    ]
