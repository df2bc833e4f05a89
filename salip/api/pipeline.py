"""``salip.segment``: the one-call API from an input file to masks in its own grid."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from salip.api.factory import (
    CaseInput,
    LazyModels,
    MethodKind,
    Models,
    build,
    get_method,
    window_organs,
)
from salip.api.provenance import sidecar_payload, source_record
from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError, OutputError
from salip.core.hints import Hint, check_hints, read_hints
from salip.core.organs import Organ, parse_organs
from salip.core.timing import StageTimer
from salip.io import Volume, file_stem, input_kind, read_input
from salip.io.dicom_seg import build_seg, save_seg, source_references
from salip.io.orientation import input_to_display, to_source_grid
from salip.io.output_set import OutputSet
from salip.io.slicing import (
    AXES,
    Intensity,
    body_slices,
    check_slice_geometry,
    choose_intensity,
    n_slices,
    to_uint8,
)
from salip.io.writing import json_text, mask_suffix, save_mask, sidecar_path
from salip.outputs.answers import decide_organs, rounded_confidence
from salip.outputs.preview import preview_image
from salip.outputs.report import RunOutcome, build_report, run_statistics, volumes_ml
from salip.outputs.viewer import viewer_html
from salip.outputs.viewer.data import run_viewer_data
from salip.strategies.assembly import overlaps, to_label_map
from salip.strategies.base import SliceSegmenter, Strategy
from salip.strategies.hints import SliceHint
from salip.strategies.slices import SlicesStrategy
from salip.strategies.volume_view import VolumeView
from salip.version import __version__

__all__ = [
    "OUTPUT_TYPES",
    "output_paths",
    "output_suffix",
    "ModelSource",
    "OutputRequest",
    "segment",
    "segment_case",
    "SegmentationResult",
    "slice_hints",
]

logger = logging.getLogger(__name__)


@dataclass
class SegmentationResult:
    """What :func:`segment` returns.

    Attributes:
        masks: organ name -> uint8 0/1 mask in the input's exact grid (input shape; HxW for
            2D images).
        labels: uint8 label map in the input's grid (value ``label_values[organ]``).
        label_values: organ name -> label value (1, 2, ... in the order asked).
        affine: 4x4 voxel-to-RAS+ matrix of the input grid (identity for 2D images).
        report: the run report (see the README's "Outputs" section).
        outputs: files written, in order.
    """

    masks: dict[str, np.ndarray]
    labels: np.ndarray
    label_values: dict[str, int]
    affine: np.ndarray
    report: dict[str, Any]
    outputs: list[Path] = field(default_factory=list)


#: What ``output_type`` (``--output-type``) takes.
OUTPUT_TYPES = ("nifti", "dicom-seg")


@dataclass(frozen=True)
class OutputRequest:
    """The files one run writes (see :func:`segment` for each).

    Attributes:
        output: the mask file, or the folder for ``split``; None: the default name.
        split: one file per organ.
        write: write the mask (False: arrays only).
        output_type: "nifti" (NIfTI, or PNG for 2D images) or "dicom-seg"; None: "dicom-seg"
            when ``output`` ends in .dcm, else "nifti".
        preview: the preview PNG, or None.
        report: the report JSON, or None.
        statistics: the organ statistics JSON, or None.
        viewer: the HTML viewer, or None.
    """

    output: str | Path | None = None
    split: bool = False
    write: bool = True
    output_type: str | None = None
    preview: str | Path | None = None
    report: str | Path | None = None
    statistics: str | Path | None = None
    viewer: str | Path | None = None

    def kind(self) -> str:
        """The output type asked for, checked against ``output``.

        Raises:
            ConfigError: an unknown type, -o NAME.dcm with nifti, or dicom-seg with split.
        """
        named_dcm = self.output is not None and str(self.output).lower().endswith(".dcm")
        kind = self.output_type or ("dicom-seg" if named_dcm else "nifti")
        if kind not in OUTPUT_TYPES:
            raise ConfigError(
                f"output type {kind!r} is not valid; use one of {', '.join(OUTPUT_TYPES)}."
            )
        if kind == "nifti" and named_dcm:
            raise ConfigError(
                f"-o {self.output} names a DICOM file but the output type is nifti; use "
                "--output-type dicom-seg, or a .nii.gz name."
            )
        if kind == "dicom-seg" and self.split:
            raise ConfigError(
                "--split writes one file per organ; a DICOM SEG holds every organ as a "
                "segment of one object: drop --split."
            )
        return kind


def output_paths(
    volume_path: Path, output: str | Path | None, organs: Sequence[Organ], split: bool, suffix: str
) -> tuple[Path | None, dict[str, Path]]:
    """(combined file or None, organ -> per-organ file) for this run."""
    stem = file_stem(volume_path)
    if suffix == ".dcm":
        path = Path(output) if output is not None else Path.cwd() / f"{stem}_salip.dcm"
        if not path.name.lower().endswith(".dcm"):
            raise OutputError(f"{path}: a DICOM SEG is written as NAME.dcm; change the name.")
        return path, {}
    if split:
        folder = Path(output) if output is not None else Path.cwd() / f"{stem}_salip"
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{folder} is a file; --split needs a folder for -o.")
        return None, {o.name: folder / f"{o.name}{suffix}" for o in organs}
    path = Path(output) if output is not None else Path.cwd() / f"{stem}_salip{suffix}"
    allowed = (".png",) if suffix == ".png" else (".nii.gz", ".nii")
    if not path.name.lower().endswith(allowed):
        raise OutputError(
            f"{path}: masks for this input are written as {' or '.join(allowed)}; "
            "change the output name."
        )
    return path, {}


@dataclass
class _Plan:
    """The planned output files of one run (None or empty: not written)."""

    combined: Path | None
    per_organ: dict[str, Path]
    preview: Path | None
    report: Path | None
    dicom_seg: bool = False
    statistics: Path | None = None
    viewer: Path | None = None


def segment(
    source: str | Path | Volume,
    *,
    organs: str | Sequence[str],
    output: str | Path | None = None,
    split: bool = False,
    overwrite: bool = False,
    write: bool = True,
    preview: str | Path | None = None,
    report: str | Path | None = None,
    output_type: str | None = None,
    statistics: str | Path | None = None,
    viewer: str | Path | None = None,
    config: SegmentConfig | None = None,
    segmenter: SliceSegmenter | Strategy | None = None,
    progress: bool = False,
    hints: Sequence[Hint | str | Mapping[str, Any]] | None = None,
    **options: Any,
) -> SegmentationResult:
    """Segment ``organs`` in a NIfTI volume, DICOM series (folder or zip) or 2D image.

    The output files are one transaction: all are checked (distinct paths, not the input,
    not existing unless ``overwrite``, writable folders) before the input is read and any
    model runs, written to temporaries, and renamed into place only when all are ready. On
    an error or interrupt none of them is left.

    Args:
        source: input path, or a :class:`~salip.io.Volume` already read with
            :func:`salip.io.read_input` (outputs are then named after its ``path``).
        organs: organ names (list, or comma-separated string); label values follow order.
        output: mask file (multi-label when several organs), or the folder for ``split``.
            Default: ``<input stem>_salip.nii.gz`` (``.png`` for 2D, ``.dcm`` for a DICOM
            SEG) in the working folder.
        split: one file per organ in the ``output`` folder instead of one multi-label file.
        overwrite: replace existing outputs.
        write: write mask files (False: only return arrays, e.g. from notebooks).
        preview: PNG path for an overlay of the slices with the most organ.
        report: JSON path for the run report.
        output_type: "nifti" (default; PNG for 2D images) or "dicom-seg": a DICOM
            Segmentation object referencing the source series, for DICOM-series inputs
            (default when ``output`` ends in .dcm).
        statistics: JSON path for the organ statistics (volume, intensities in the input's
            units, boxes, centroid, components, slices; also in the report).
        viewer: path of a self-contained HTML viewer of the slices, masks, chosen boxes
            with their CLIP probabilities, and the volume strategy's profiles.
        config: a full :class:`SegmentConfig`; ``options`` are applied on top.
        segmenter: a slice segmenter (run under the ``slices`` strategy) or a strategy
            replacing the method's (no models are loaded).
        progress: show a progress bar over slices.
        hints: boxes and clicks that steer targets, in voxel indices of the input grid
            (:mod:`salip.core.hints`): :class:`~salip.core.hints.Hint` objects, CLI strings
            (``"liver:slice=40:box=120,80,260,210"``) or dicts of Hint's fields. Under
            ``volume`` a hinted target is seeded at its hints and propagated; under
            ``slices`` a hint prompts its slice. Only the cascade takes hints.
        **options: any config field by its flat name, e.g. ``sam_checkpoint="vit_b"``,
            ``points_per_side=16``, ``window="liver"``, ``axis="axial"``.

    Returns:
        A :class:`SegmentationResult`.

    Raises:
        salip.core.errors.SalipError: bad input, unknown organ, missing checkpoint, unsafe output.
    """
    cfg = (config or SegmentConfig()).replace(**options)
    request = OutputRequest(output, split, write, output_type, preview, report, statistics, viewer)
    return segment_case(
        source,
        organs=organs,
        config=cfg,
        outputs=request,
        overwrite=overwrite,
        segmenter=segmenter,
        progress=progress,
        models=LazyModels(),
        hints=hints,
    )


#: Where a run's models come from: ``(method kind, settings, timer) -> Models``.
ModelSource = Callable[["MethodKind", SegmentConfig, StageTimer], Models]


def segment_case(
    source: str | Path | Volume,
    *,
    organs: str | Sequence[str],
    config: SegmentConfig,
    outputs: OutputRequest,
    overwrite: bool,
    segmenter: SliceSegmenter | Strategy | None,
    progress: bool,
    models: ModelSource,
    timer: StageTimer | None = None,
    hints: Sequence[Hint | str | Mapping[str, Any]] | None = None,
) -> SegmentationResult:
    """:func:`segment` with its models from ``models`` (several cases share loaded models)
    and its output arguments in ``outputs``; the others as :func:`segment` takes them,
    ``config`` with the options applied. ``timer`` times the stages (default: a new one)."""
    timer = timer or StageTimer()
    t0 = time.perf_counter()
    organ_list = parse_organs(organs, config.scoring.prompts_dir)
    given = read_hints(hints)
    check_hints(given, {o.name: o.parts for o in organ_list})
    if given and segmenter is not None:
        raise ConfigError(
            "hints are prompted through SAM's decoder by the cascade; an injected segmenter "
            "or strategy does not take them. Drop the hints or the segmenter."
        )
    cfg = config
    path = source.path if isinstance(source, Volume) else Path(source)
    request = outputs
    with OutputSet(path, overwrite=overwrite) as outputs:
        plan = _plan_outputs(outputs, path, organ_list, output_suffix(source, request), request)
        outputs.check_writable()
        volume = source if isinstance(source, Volume) else read_input(path, **_read_options(cfg))
        outputs.check_space(_output_estimate(volume, plan))
        check_slice_geometry(volume, cfg.slicing.axis)
        if plan.dicom_seg:  # refused before any model runs
            source_references(volume.sources, str(path))
        timer.add("read", t0)
        mapped = slice_hints(volume, given, cfg.slicing.axis)
        run = _run_strategy(volume, organ_list, cfg, segmenter, timer, progress, models, mapped)
        t = time.perf_counter()
        masks, labels, label_values = _assemble(volume, run, organ_list, cfg, request.split)
        t = timer.add("assembly", t)
        _stage_files(outputs, plan, volume, run, masks, labels, label_values, path, cfg)
        timer.add("write", t)
        run_report = build_report(volume, path, organ_list, run, label_values, cfg, timer)
        run_report["statistics"] = run_statistics(
            volume, labels, label_values, run, cfg.slicing.axis
        )
        for target, content in (
            (plan.report, run_report),
            (plan.statistics, run_report["statistics"]),
        ):
            if target is not None:
                text = json_text(content)
                outputs.stage(target, lambda tmp, t=text: tmp.write_text(t, encoding="utf-8"))
        written = outputs.commit()
    return SegmentationResult(
        masks, labels, label_values, volume.geometry.affine, run_report, written
    )


def _output_estimate(volume: Volume, plan: _Plan) -> int:
    """Bytes a run's outputs take, roughly: each mask file at a tenth of its uint8 voxels
    (gzip and PNG shrink masks far more; a DICOM SEG stores one bit per voxel and organ),
    plus a viewer's compressed slices, plus 1 MiB for the sidecar, report and preview."""
    voxels = int(np.prod(volume.geometry.shape))
    masks = (plan.combined is not None) + len(plan.per_organ)
    viewer = voxels // 8 if plan.viewer is not None else 0
    return masks * voxels // 10 + viewer + 2**20


def _read_options(cfg: SegmentConfig) -> dict[str, Any]:
    """The ``read_input`` keywords of the config's input stage."""
    return dataclasses.asdict(cfg.input)


def output_suffix(source: Path | str | Volume, request: OutputRequest) -> str:
    """.png for 2D image inputs, .dcm for a DICOM SEG, else .nii.gz; known from the file name
    before reading.

    Raises:
        OutputError: a DICOM SEG asked for an input that is not a DICOM series.
    """
    kind = source.geometry.kind if isinstance(source, Volume) else input_kind(Path(source))
    if request.kind() == "dicom-seg":
        if kind != "dicom":
            what = "2D image" if kind == "image" else "NIfTI file"
            raise OutputError(
                f"{source if not isinstance(source, Volume) else source.path}: a DICOM SEG "
                f"references the source DICOM series, and this input is a {what}; write "
                "NIfTI instead (--output-type nifti)."
            )
        return ".dcm"
    return mask_suffix(kind)


def _plan_outputs(
    outputs: OutputSet,
    source: Path,
    organs: Sequence[Organ],
    suffix: str,
    request: OutputRequest,
) -> _Plan:
    """Add every output of the run to ``outputs`` (which checks them) and return the plan."""
    combined, per_organ = output_paths(source, request.output, organs, request.split, suffix)
    if not request.write:
        combined, per_organ = None, {}
    seg = suffix == ".dcm"
    if combined is not None:
        outputs.add(combined, "-o")
        if not seg:  # a SEG names its segments itself
            outputs.add(sidecar_path(combined), "the label sidecar of -o,")
    for name, path in per_organ.items():
        outputs.add(path, f"the {name} mask of --split,")
    plan = _Plan(combined, per_organ, None, None, dicom_seg=seg and combined is not None)
    if request.preview is not None:
        plan.preview = outputs.add(request.preview, "--preview")
    if request.report is not None:
        plan.report = outputs.add(request.report, "--report")
    if request.statistics is not None:
        plan.statistics = outputs.add(request.statistics, "--statistics")
    if request.viewer is not None:
        if not str(request.viewer).lower().endswith((".html", ".htm")):
            raise OutputError(f"--viewer {request.viewer}: give an .html file name.")
        plan.viewer = outputs.add(request.viewer, "--viewer")
    return plan


def _run_strategy(
    volume: Volume,
    organ_list: Sequence[Organ],
    cfg: SegmentConfig,
    segmenter: SliceSegmenter | Strategy | None,
    timer: StageTimer,
    progress: bool,
    load: ModelSource,
    hints: tuple[SliceHint, ...] = (),
) -> RunOutcome:
    """Map intensities, build the method's strategy (or take the injected one) and run it."""
    t = time.perf_counter()
    strategy: Strategy | None = None
    models_info: dict[str, Any] = {}
    if segmenter is not None:
        strategy = _injected_strategy(segmenter, cfg, timer)
        models_info = {"injected_segmenter": type(segmenter).__name__}
    kind = get_method(cfg.segmenter.method)
    models = None
    window = getattr(strategy, "intensity_organs", None)
    if strategy is None and kind.head_variant is not None:
        # A learned head maps intensities as in its training (with its classes' window).
        models = load(kind, cfg, timer)
        window = window_organs(kind, models, cfg, organ_list)
        t = time.perf_counter()
    intensity: Intensity = choose_intensity(volume, list(window or organ_list), cfg.slicing)
    volume8 = to_uint8(volume, intensity, cfg.slicing)
    timer.add("slicing", t)
    if strategy is None:
        models = models or load(kind, cfg, timer)
        case = CaseInput(tuple(organ_list), intensity.modality, volume.is_2d, hints=hints)
        built = build(kind.name, models, cfg, case, timer)
        strategy, models_info = built.strategy, built.identity
    axis = cfg.slicing.axis
    keep = np.ones(n_slices(volume, axis), dtype=bool)
    if cfg.slicing.skip_empty:
        keep = body_slices(volume, volume8, intensity, axis)
        if not keep.all():
            logger.info("skipping %d of %d slices with no body", int((~keep).sum()), keep.size)
    view = VolumeView(volume, volume8, axis, keep, intensity.modality)
    result = strategy.run(view, organ_list, progress=progress)
    strategy_info = {"name": getattr(strategy, "name", type(strategy).__name__), **result.details}
    return RunOutcome(
        result.masks, result.chosen, keep, volume8, intensity, models_info, strategy_info,
        evidence=result.evidence,
    )  # fmt: skip


def slice_hints(volume: Volume, hints: Sequence[Hint], axis: str) -> tuple[SliceHint, ...]:
    """``hints`` (voxel indices of the input grid) mapped onto the canonical volume's
    display slices along ``axis`` (:func:`~salip.io.orientation.input_to_display`).

    Raises:
        InputError: a hint's slice or point outside the input.
    """
    out = []
    for hint in hints:
        corners = []
        if hint.box is not None:
            x0, y0, x1, y1 = hint.box
            corners = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
        xy = corners + [(x, y) for x, y, _ in hint.points]
        index, shown = input_to_display(volume, axis, hint.slice, np.array(xy, float))
        box = None
        if hint.box is not None:  # a flipped or swapped axis moves the corners
            low, high = shown[:4].min(0), shown[:4].max(0)
            box = (float(low[0]), float(low[1]), float(high[0]), float(high[1]))
        points = tuple(
            (float(x), float(y), p[2]) for (x, y), p in zip(shown[len(corners) :], hint.points)
        )
        out.append(SliceHint(hint.target, index, box, points, hint.to_json()))
    return tuple(out)


def _injected_strategy(
    segmenter: SliceSegmenter | Strategy, cfg: SegmentConfig, timer: StageTimer
) -> Strategy:
    """A strategy passed to :func:`segment` as it is; a slice segmenter under ``slices``."""
    if callable(getattr(segmenter, "run", None)):
        return segmenter  # type: ignore[return-value]
    return SlicesStrategy.wrapping(segmenter, cfg.proposals.encoder_batch_size, timer)  # type: ignore[arg-type]


def _assemble(
    volume: Volume,
    run: RunOutcome,
    organ_list: Sequence[Organ],
    cfg: SegmentConfig,
    split: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, int]]:
    """Each organ's answer (its supported pieces, confidence, or "not found": an empty
    mask), then per-organ masks and the label map in the input's grid; sets
    ``run.decisions``, ``run.written`` (what the outputs hold, for the report's counts) and
    ``run.overlaps``."""
    canonical = run.canonical
    run.decisions = decide_organs(
        canonical,
        run.evidence,
        organ_list,
        cfg,
        is_2d=volume.is_2d,
        where=volume.path.name,
        slice_mm=1.0 if volume.is_2d else float(volume.spacing[AXES[cfg.slicing.axis]]),
    )
    canonical.update({name: decision.mask for name, decision in run.decisions.items()})
    order = [o.name for o in organ_list]
    label_values = {name: i for i, name in enumerate(order, start=1)}
    masks = {
        name: to_source_grid(m.astype(np.uint8), volume.geometry) for name, m in canonical.items()
    }
    label_map = to_label_map(canonical, order)
    run.overlaps = overlaps(canonical, order)
    run.written = dict(canonical) if split else {n: label_map == v for n, v in label_values.items()}
    labels = to_source_grid(label_map, volume.geometry)
    return masks, labels, label_values


def _stage_files(
    outputs: OutputSet,
    plan: _Plan,
    volume: Volume,
    run: RunOutcome,
    masks: dict[str, np.ndarray],
    labels: np.ndarray,
    label_values: dict[str, int],
    source: Path,
    cfg: SegmentConfig,
) -> None:
    """Write the planned mask, sidecar, per-organ and preview files to their temporaries."""
    geometry, axis = volume.geometry, cfg.slicing.axis
    if plan.dicom_seg and plan.combined is not None:
        seg = _dicom_seg(volume, labels, label_values, run.models)
        outputs.stage(plan.combined, lambda tmp: save_seg(tmp, seg))
    elif plan.combined is not None:
        outputs.stage(plan.combined, lambda tmp: save_mask(tmp, labels, geometry))
        series = cfg.input.series or volume.meta.get("series_uid")
        payload = sidecar_payload(
            label_values, source_record(source, series), cfg, volumes_ml(volume, run),
            {name: rounded_confidence(d) for name, d in run.decisions.items()},
        )  # fmt: skip
        text = json_text(payload)
        outputs.stage(
            sidecar_path(plan.combined), lambda tmp: tmp.write_text(text, encoding="utf-8")
        )
    for name, path in plan.per_organ.items():
        outputs.stage(path, lambda tmp, m=masks[name]: save_mask(tmp, m, geometry))
    if plan.preview is not None:
        strip = preview_image(volume, run.volume8, run.canonical, list(label_values), axis)
        outputs.stage(plan.preview, lambda tmp: _save_png(tmp, strip))
    if plan.viewer is not None:
        html = viewer_html(run_viewer_data(volume, run, label_values, axis))
        outputs.stage(plan.viewer, lambda tmp: tmp.write_text(html, encoding="utf-8"))


def _dicom_seg(
    volume: Volume, labels: np.ndarray, label_values: dict[str, int], models: dict[str, Any]
) -> Any:
    """The DICOM SEG of the label map, its algorithm identified by salip's version and the
    SAM and CLIP identities of the run."""
    sources = source_references(volume.sources, str(volume.path))
    sam, clip = models.get("sam") or {}, models.get("clip") or {}
    algorithm = {
        "sam": f"{sam.get('arch', '')} {Path(str(sam.get('path', ''))).name}".strip(),
        "clip": f"{clip.get('model', '')} {clip.get('pretrained') or ''}".strip(),
        "scoring": str((models.get("scoring") or {}).get("mode", "")),
    }
    if "injected_segmenter" in models:
        algorithm = {"segmenter": str(models["injected_segmenter"])}
    return build_seg(labels, label_values, sources, algorithm=algorithm, version=__version__)


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")
