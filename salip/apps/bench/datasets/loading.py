""":func:`load_dataset`: a ``[[datasets]]`` table to its cases, by kind."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from salip.apps.bench.datasets.case import DatasetCase
from salip.apps.bench.datasets.common import KIND_KEYS, KINDS, _Spec
from salip.apps.bench.datasets.image_mask_pairs import _image_mask_pairs
from salip.apps.bench.datasets.msd import _msd
from salip.apps.bench.datasets.nifti_multilabel import _nifti_multilabel
from salip.apps.bench.datasets.nifti_per_organ import _nifti_per_organ
from salip.core.errors import BenchmarkError, did_you_mean
from salip.core.organs import MODALITIES

__all__ = [
    "load_dataset",
]

logger = logging.getLogger(__name__)

_BUILDERS = {
    "nifti-multilabel": _nifti_multilabel,
    "nifti-per-organ": _nifti_per_organ,
    "msd": _msd,
    "image-mask-pairs": _image_mask_pairs,
}


def load_dataset(
    spec: Mapping[str, Any],
    base_dir: Path,
    name_override: str | None = None,
    *,
    limit: int | None = None,
) -> list[DatasetCase]:
    """List the cases of one ``[[datasets]]`` table of a benchmark config.

    Args:
        spec: the table: ``name``, ``kind`` and the kind's keys (:data:`KIND_KEYS`).
        base_dir: folder that relative paths, globs and patterns resolve against (the config
            file's folder).
        name_override: dataset name to use instead of ``spec["name"]`` (which may then be
            left out).
        limit: keep only the first ``limit`` cases (by case id).

    Returns:
        The cases, sorted by case id. No image or label volume is read.

    Raises:
        BenchmarkError: an unknown kind or key, a bad value, no case found, an unknown or
            unavailable organ.
    """
    if not isinstance(spec, Mapping):
        raise BenchmarkError(f"a dataset must be a table of keys, not {spec!r}.")
    name = name_override if name_override is not None else spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise BenchmarkError(
            f"a dataset has no `name` (got {name!r}); give each [[datasets]] table a name."
        )
    kind = spec.get("kind")
    if kind not in KINDS:
        hint = did_you_mean(str(kind), KINDS)
        raise BenchmarkError(
            f"dataset '{name}': unknown kind {kind!r}.{hint} Valid kinds: {', '.join(KINDS)}."
        )
    valid = KIND_KEYS[kind]
    unknown = [key for key in spec if key not in valid]
    if unknown:
        hint = did_you_mean(str(unknown[0]), valid)
        raise BenchmarkError(
            f"dataset '{name}' ({kind}): unknown key(s) {', '.join(map(str, unknown))}.{hint} "
            f"Valid keys for {kind}: {', '.join(valid)}."
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BenchmarkError(f"limit must be a whole number >= 1, not {limit!r}.")
    table = _Spec(name, kind, spec, Path(base_dir).absolute())
    modality = table.text("modality", required=False)
    if modality is not None and modality not in MODALITIES:
        table.fail(f"modality = '{modality}' is not one of {', '.join(MODALITIES)}.")
    cases = sorted(_BUILDERS[kind](table), key=lambda case: case.case_id)
    if modality is not None:
        cases = [dataclasses.replace(case, modality=modality) for case in cases]
    ids = [case.case_id for case in cases]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        table.fail(f"case ids repeat: {', '.join(repeated)}; each image must be listed once.")
    if limit is not None:
        cases = cases[:limit]
    logger.info(
        "dataset %s (%s): %d cases, organs %s",
        name,
        kind,
        len(cases),
        ", ".join(cases[0].organs) if cases else "-",
    )
    return cases
