"""``msd``: a Medical Segmentation Decathlon task folder."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from salip.apps.bench.datasets.case import DatasetCase
from salip.apps.bench.datasets.common import (
    _label_set,
    _read_json,
    _select_organs,
    _set_names,
    _Spec,
)
from salip.core.errors import OrganError
from salip.core.label_sets import MSD, LabelSet
from salip.core.organs import get_organ
from salip.io import file_stem

logger = logging.getLogger(__name__)


def _camel_words(text: str) -> str:
    """ "HepaticVessel" -> "Hepatic_Vessel"; "Task08_HepaticVessel" -> "Hepatic_Vessel"."""
    text = re.sub(r"^Task\d+_", "", text)
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", text)


def _msd_task(spec: _Spec, info: Mapping[str, Any], root: Path) -> LabelSet:
    """The label set of an MSD task: ``task``, else the msd_* set naming its organ."""
    task = spec.text("task", required=False)
    if task is not None:
        return _label_set(spec, task)
    words: list[str] = []
    labels = info.get("labels")
    if isinstance(labels, dict):
        words += [str(x) for pair in labels.items() for x in pair]
    words += [_camel_words(str(info.get("name", ""))), _camel_words(root.name)]
    found = []
    for word in words:
        try:
            found.append(get_organ(word).name)
        except OrganError:
            continue
    for organ in found:
        for label_set in MSD:
            if organ in label_set.labels:
                logger.info("%s: MSD task '%s' from dataset.json", spec.name, label_set.name)
                return label_set
    spec.fail(
        f"cannot tell the task from {root / 'dataset.json'} (name "
        f"{info.get('name')!r}, labels {labels!r}); set `task` to one of: "
        f"{', '.join(s.name for s in MSD)}."
    )


def _msd(spec: _Spec) -> list[DatasetCase]:
    root = spec.path("root")
    channel = spec.whole("channel", 0)
    info = _read_json(spec, root / "dataset.json", "MSD dataset.json")
    training = info.get("training") if isinstance(info, dict) else None
    if not isinstance(training, list) or not training:
        spec.fail(
            f"{root / 'dataset.json'} has no 'training' list of image/label pairs; point "
            "`root` at a Medical Segmentation Decathlon task folder."
        )
    label_set = _msd_task(spec, info, root)
    organs = _select_organs(spec, list(label_set.labels))
    names = _set_names(label_set)
    cases = []
    for entry in training:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("image"), str)
            and isinstance(entry.get("label"), str)
        ):
            spec.fail(f"dataset.json: training entry {entry!r} lacks 'image' and 'label'.")
        image = (root / entry["image"]).absolute()
        cases.append(
            DatasetCase(
                dataset=spec.name,
                case_id=file_stem(image),
                image=image,
                organs=organs,
                kind=spec.kind,
                modality=label_set.modality,
                channel=channel,
                approximate={
                    o: label_set.approximate[o] for o in organs if o in label_set.approximate
                },
                label=(root / entry["label"]).absolute(),
                values={o: label_set.labels[o] for o in organs},
                label_names=names,
            )
        )
    return cases
