"""Benchmark datasets: list a dataset's cases and load their reference masks.

A dataset is one ``[[datasets]]`` table of a benchmark config (see :func:`load_dataset`).
Four kinds of layout are understood (:data:`KINDS`, keys per kind in :data:`KIND_KEYS`):

``nifti-multilabel``
    ``images`` (a glob), ``labels`` (a pattern giving each image's multi-label volume) and
    ``label_names``: a JSON name table (``{"1": "spleen", ...}``, also ``{"spleen": 1}`` or a
    dataset.json holding a ``"labels"`` table) or the name of a salip label set ("totalseg",
    "btcv", "amos", "msd_liver", ...). An organ's reference is the union of its label values.
    ``images`` may also match DICOM series (a folder of DICOM files, or a .zip); their label
    volume is a NIfTI file in the grid dcm2niix (and so TotalSegmentator) writes for the
    series, the grid salip's DICOM reader reproduces.
``nifti-per-organ``
    TotalSegmentator's layout: ``<root>/<case>/ct.nii.gz`` (``image_name``) with one binary
    volume per class in ``<root>/<case>/segmentations/<class>.nii.gz``.
``msd``
    A Medical Segmentation Decathlon task folder: ``<root>/dataset.json`` lists the labelled
    cases; ``task`` names the salip label set (default: guessed from dataset.json).
``image-mask-pairs``
    2D images (``images`` glob) with one binary mask each (``masks`` pattern) of one
    ``target`` organ, thresholded (``threshold``) and optionally filled (``fill_outline``).

Every kind also takes ``modality`` ("ct", "mr", "xray", "us"): the images' modality, for
intensity mapping and prompts (default: the label set's, else detected from the image as
``salip segment --modality auto`` does; a 2D image whose metadata and file name do not say
its modality is an error row, so 2D datasets need ``modality``, e.g. ``"ct"``).

Dataset class names are mapped to the vocabulary by name (canonical names and synonyms, see
:func:`salip.core.organs.get_organ`), by the ``organ_map`` table of the config, and through the
TotalSegmentator class lists of :func:`salip.core.label_sets.totalseg_files` (lungs from lobes);
a pair organ ("kidneys") whose sides are both present is their union.

References are compared in the image FILE's own grid (no reorientation): a NIfTI volume's
stored XxYxZ array, a DICOM series' dcm2niix grid, a 2D image's HxW pixel array. Listing a
dataset reads no volume; label files are read, and checked against the image's shape, by
:func:`load_references`. :func:`load_label_map` reads a case's FULL label map (every label,
not only the scored organs) with its value -> class name table, for methods that simulate
engines from it; ``image-mask-pairs`` cases have none.
"""

from salip.apps.bench.datasets.case import (
    DatasetCase,
    image_shape,
    load_label_map,
    load_reference,
    load_references,
    mask_threshold,
)
from salip.apps.bench.datasets.common import KIND_KEYS, KINDS, expand_pattern
from salip.apps.bench.datasets.loading import load_dataset

__all__ = [
    "KINDS",
    "KIND_KEYS",
    "DatasetCase",
    "expand_pattern",
    "image_shape",
    "load_dataset",
    "load_label_map",
    "load_reference",
    "load_references",
    "mask_threshold",
]
