"""DICOM Segmentation objects (DICOM SEG) for DICOM-series inputs, written with highdicom.

One binary SEG per run: one segment per organ, labelled with the organ's name and coded
with its SNOMED CT concept (:data:`SEG_CODES`), frames referencing the source slices they
lie on, in the study and frame of reference of the source series. Reading it back on the
series grid gives the NIfTI label map voxel for voxel (see :func:`frames_from_grid`).

The codes come from DICOM's own code tables (PS3.16; SNOMED CT concepts of CID 7150
"Segmentation Property Categories" and the anatomic CIDs it refers to) as pydicom ships
them in ``pydicom.sr.codedict.codes.SCT``: :data:`SEG_CODES` holds only each target's
keyword there and its laterality, so no code value is copied by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from salip.core.errors import OutputError

__all__ = [
    "FALLBACK_CODE",
    "SEG_CATEGORY",
    "SEG_CODES",
    "build_seg",
    "frames_from_grid",
    "grid_from_frames",
    "save_seg",
    "seg_code",
    "SegCode",
    "source_references",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegCode:
    """How one target is coded in a SEG: the keyword of its SNOMED CT concept in
    ``pydicom.sr.codedict.codes.SCT``, the laterality modifier keyword ("Left", "Right",
    "RightAndLeft" for a pair written as one segment) or None, and a note where the concept
    is broader than the target."""

    concept: str
    laterality: str | None = None
    note: str = ""


#: Segmented property category of every target: SCT 91723000 "Anatomical Structure".
SEG_CATEGORY = "AnatomicalStructure"

#: Target name -> its code (pure data; see the module docstring for the source).
SEG_CODES: dict[str, SegCode] = {
    "spleen": SegCode("Spleen"),
    "kidneys": SegCode("Kidney", "RightAndLeft"),
    "kidney_left": SegCode("Kidney", "Left"),
    "kidney_right": SegCode("Kidney", "Right"),
    "gallbladder": SegCode("Gallbladder"),
    "esophagus": SegCode("Esophagus"),
    "liver": SegCode("Liver"),
    "stomach": SegCode("Stomach"),
    "aorta": SegCode("Aorta"),
    "inferior_vena_cava": SegCode("InferiorVenaCava"),
    "portal_vein_and_splenic_vein": SegCode(
        "PortalVein", note="the portal vein's concept; the target adds the splenic vein"
    ),
    "pancreas": SegCode("Pancreas"),
    "adrenal_glands": SegCode("AdrenalGland", "RightAndLeft"),
    "adrenal_gland_left": SegCode("AdrenalGland", "Left"),
    "adrenal_gland_right": SegCode("AdrenalGland", "Right"),
    "duodenum": SegCode("Duodenum"),
    "hepatic_vessel": SegCode(
        "BloodVessel", note="no concept for the liver's vessels as one structure"
    ),
    "lungs": SegCode("Lung", "RightAndLeft"),
    "lung_left": SegCode("Lung", "Left"),
    "lung_right": SegCode("Lung", "Right"),
    "colon": SegCode("Colon"),
    "small_bowel": SegCode("SmallIntestine"),
    "rectum": SegCode("Rectum"),
    "urinary_bladder": SegCode("Bladder"),
    "prostate": SegCode("Prostate"),
    "femoral_heads": SegCode("FemoralHead", "RightAndLeft"),
    "femoral_head_left": SegCode("FemoralHead", "Left"),
    "femoral_head_right": SegCode("FemoralHead", "Right"),
    "celiac_trunk": SegCode("CeliacAxis"),
    "heart": SegCode("Heart"),
    "brain": SegCode("Brain"),
    "skull": SegCode("Skull"),
    "fetal_head": SegCode("Head", note="the head's concept; no fetal-head concept"),
}

#: A target without an entry is coded as an anatomical structure, its name as the label.
FALLBACK_CODE = SegCode("AnatomicalStructure", note="no code for this target")


def seg_code(name: str) -> tuple[Any, Any, Any | None]:
    """(category, type, laterality modifier or None) of target ``name`` as pydicom Codes."""
    from pydicom.sr.codedict import codes

    entry = SEG_CODES.get(name, FALLBACK_CODE)
    modifier = getattr(codes.SCT, entry.laterality) if entry.laterality else None
    return getattr(codes.SCT, SEG_CATEGORY), getattr(codes.SCT, entry.concept), modifier


def frames_from_grid(labels: np.ndarray) -> np.ndarray:
    """The DICOM frames of a label map in the reader's grid.

    Args:
        labels: CxRxN array as written to the NIfTI mask of a DICOM series (dcm2niix's grid:
            columns along axis 0, rows along axis 1 flipped, the sorted slices along axis 2).

    Returns:
        NxRxC array: frame k is source slice k as DICOM stores it (row 0 at the top).
    """
    return np.ascontiguousarray(labels[:, ::-1, :].transpose(2, 1, 0))


def grid_from_frames(frames: np.ndarray) -> np.ndarray:
    """The inverse of :func:`frames_from_grid`: NxRxC frames -> CxRxN in the reader's grid."""
    return np.ascontiguousarray(frames.transpose(2, 1, 0)[:, ::-1, :])


def source_references(sources: Sequence[Any] | None, what: str) -> list[Any]:
    """The source slices' data sets, ready to be referenced by a SEG: SOP Class and Instance
    UIDs taken from the file meta where the data set lacks them (an anonymiser's blanks).

    Raises:
        OutputError: no DICOM source (a NIfTI or 2D input, or a resampled series), or a
            series without Study or Series Instance UID; one line that says why.
    """
    if not sources:
        raise OutputError(
            f"{what}: DICOM SEG needs a DICOM series input (its frames reference the source "
            "slices); this input has none. Write NIfTI instead (-o NAME.nii.gz)."
        )
    fixed = []
    for ds in sources:
        meta = getattr(ds, "file_meta", None)
        for own, in_meta in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            if not str(ds.get(own, "") or "") and meta is not None and meta.get(in_meta):
                setattr(ds, own, meta.get(in_meta))
        for needed in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if not str(ds.get(needed, "") or ""):
                raise OutputError(
                    f"{what}: the DICOM series has no {needed} (anonymised?), so a SEG cannot "
                    "reference it; write NIfTI instead (-o NAME.nii.gz), or restore the UIDs."
                )
        fixed.append(ds)
    return fixed


def build_seg(
    labels: np.ndarray,
    label_values: Mapping[str, int],
    sources: Sequence[Any],
    *,
    algorithm: Mapping[str, str],
    version: str,
) -> Any:
    """A binary DICOM SEG of ``labels``.

    Args:
        labels: CxRxN uint8 label map in the reader's grid (see :func:`frames_from_grid`).
        label_values: organ name -> label value (its segment number).
        sources: the N source slices' data sets, in the grid's slice order, as
            :func:`source_references` returns them.
        algorithm: the algorithm's parameters (e.g. SAM and CLIP identities), as strings.
        version: salip's version.

    Returns:
        A ``highdicom.seg.Segmentation`` (a pydicom Dataset).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    frames = frames_from_grid(labels)
    if frames.shape[0] != len(sources):
        raise OutputError(
            f"{frames.shape[0]} mask slices for {len(sources)} source slices; the mask is "
            "not on the series grid."
        )
    identification = hd.AlgorithmIdentificationSequence(
        name="salip",
        family=codes.cid7162.ArtificialIntelligence,
        version=version,
        parameters=dict(algorithm),
    )
    descriptions = []
    for name, value in sorted(label_values.items(), key=lambda item: item[1]):
        if name not in SEG_CODES:
            logger.info(
                "%s has no SNOMED CT code here; its segment is an anatomical structure", name
            )
        category, kind, modifier = seg_code(name)
        description = hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=name,
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            tracking_uid=hd.UID(),
            tracking_id=f"salip {name}",
        )
        if modifier is not None:
            # highdicom has no argument for it; DICOM puts laterality here (dcmqi does too).
            item = description.SegmentedPropertyTypeCodeSequence[0]
            item.SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(modifier)
            ]
        descriptions.append(description)
    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="salip",
        manufacturer_model_name="salip zero-shot segmentation (SAM + CLIP)",
        software_versions=version,
        device_serial_number="none",
        content_label="SALIP",
        content_description="zero-shot organ segmentation",
        series_description="salip segmentation",
        omit_empty_frames=bool(frames.any()),  # an empty result keeps every frame
    )


def save_seg(path: Path, seg: Any) -> None:
    """Write a SEG to ``path`` as it is (no temporary; callers stage it)."""
    seg.save_as(str(path), enforce_file_format=True)
