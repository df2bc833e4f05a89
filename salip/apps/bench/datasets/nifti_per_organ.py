"""``nifti-per-organ``: TotalSegmentator's layout, one binary volume per class."""

from __future__ import annotations

from salip.apps.bench.datasets.case import DatasetCase
from salip.apps.bench.datasets.common import (
    _MAP_HINT,
    _check_organ_map,
    _is_nifti,
    _map_names,
    _select_organs,
    _Spec,
)
from salip.io import file_stem


def _nifti_per_organ(spec: _Spec) -> list[DatasetCase]:
    root = spec.path("root")
    image_name = spec.text("image_name", required=False, default="ct.nii.gz")
    organ_map = spec.organ_map()
    if not root.is_dir():
        spec.fail(f"root {root} is not a folder; point `root` at the folder of case folders.")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and (d / image_name).is_file())
    if not folders:
        spec.fail(f"no folder under {root} holds {image_name}; check `root` and `image_name`.")
    files: dict[str, str] = {}  # class name -> file name, over all cases
    for folder in folders:
        seg = folder / "segmentations"
        if seg.is_dir():
            for file in sorted(seg.iterdir()):
                if _is_nifti(file):
                    files.setdefault(file_stem(file), file.name)
    if not files:
        spec.fail(f"no segmentations/<class>.nii.gz file in the case folders under {root}.")
    _check_organ_map(spec, organ_map, sorted(files))
    classes, approximate = _map_names(sorted(files), organ_map)
    organs = _select_organs(spec, list(classes), _MAP_HINT)
    return [
        DatasetCase(
            dataset=spec.name,
            case_id=folder.name,
            image=(folder / image_name).absolute(),
            organs=organs,
            kind=spec.kind,
            approximate={o: approximate[o] for o in organs if o in approximate},
            files={
                o: tuple((folder / "segmentations" / files[c]).absolute() for c in classes[o])
                for o in organs
            },
            threshold=0.0,
            label_dir=(folder / "segmentations").absolute(),
            organ_map=organ_map,
        )
        for folder in folders
    ]
