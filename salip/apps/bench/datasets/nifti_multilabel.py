"""``nifti-multilabel``: images with one multi-label volume each and a name table."""

from __future__ import annotations

from pathlib import Path

from salip.apps.bench.datasets.case import DatasetCase
from salip.apps.bench.datasets.common import (
    _MAP_HINT,
    _case_ids,
    _check_organ_map,
    _glob_images,
    _label_set,
    _map_names,
    _name_table,
    _select_organs,
    _set_names,
    _Spec,
    expand_pattern,
)


def _nifti_multilabel(spec: _Spec) -> list[DatasetCase]:
    labels = spec.text("labels")
    label_names = spec.text("label_names")
    organ_map = spec.organ_map()
    images = _glob_images(spec, dicom=True)
    expand_pattern(labels, images[0], spec.base_dir)  # bad placeholders fail early
    as_path = Path(label_names) if Path(label_names).is_absolute() else spec.base_dir / label_names
    modality = None
    if label_names.lower().endswith(".json") or "/" in label_names or as_path.is_file():
        table = _name_table(spec, as_path)
        _check_organ_map(spec, organ_map, table)
        classes, approximate = _map_names(list(table), organ_map)
        values = {
            organ: tuple(sorted({v for name in names for v in table[name]}))
            for organ, names in classes.items()
        }
        names = {v: organ_map.get(name, name) for name, vs in table.items() for v in vs}
        hint = _MAP_HINT
    else:
        label_set = _label_set(spec, label_names)
        if organ_map:
            spec.fail(
                f"organ_map needs label_names to be a JSON name table; label set "
                f"'{label_set.name}' already names vocabulary organs: remove organ_map."
            )
        values, approximate = dict(label_set.labels), dict(label_set.approximate)
        modality, hint, names = label_set.modality, "", _set_names(label_set)
    organs = _select_organs(spec, list(values), hint)
    return [
        DatasetCase(
            dataset=spec.name,
            case_id=case_id,
            image=image,
            organs=organs,
            kind=spec.kind,
            modality=modality,
            approximate={o: approximate[o] for o in organs if o in approximate},
            label=expand_pattern(labels, image, spec.base_dir),
            values={o: values[o] for o in organs},
            label_names=names,
        )
        for case_id, image in zip(_case_ids(images, spec.base_dir), images)
    ]
