"""Frozen configuration dataclasses, one per stage of the cascade.

Every field maps one to one onto a CLI flag (``points_per_side`` -> ``--points-per-side``)
and onto a keyword argument of :func:`salip.segment`. The flag's help text and choices are
read from the field's metadata, so the CLI cannot drift from the library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from salip.core.errors import ConfigError

__all__ = [
    "MAX_VOXELS",
    "AreaFilterConfig",
    "AssemblyConfig",
    "ClusterConfig",
    "CropConfig",
    "flat_fields",
    "InputConfig",
    "ModelConfig",
    "option",
    "ProposalConfig",
    "RefineConfig",
    "ScoringConfig",
    "SegmentConfig",
    "MethodConfig",
    "SliceConfig",
    "StrategyConfig",
]

_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
}


def option(default: Any, help: str, **extra: Any) -> Any:
    """A config field whose metadata carries its flag's help text (and ``choices``)."""
    return field(default=default, metadata={"help": help, **extra})


#: Default of ``InputConfig.max_voxels``: 2**30 voxels, 4 GiB as float32.
MAX_VOXELS = 2**30


@dataclass(frozen=True)
class InputConfig:
    """How the input file is read."""

    channel: int | None = option(
        None,
        "For a 4D NIfTI holding several volumes (e.g. MR sequences of a Decathlon case): the "
        "index of the volume to segment (default: refuse 4D inputs with several volumes).",
    )
    series: str | None = option(
        None,
        "For a DICOM folder or zip holding several series: the SeriesInstanceUID to read "
        "(default: refuse, and list the series).",
    )
    dicom_gaps: str = option(
        "error",
        "A DICOM series with a missing or corrupt slice, or uneven slice spacing: error "
        "(name the files and positions), or resample (interpolate linearly along the slice "
        "normal onto a uniform grid from the first to the last slice; the mask is written "
        "in that grid).",
        choices=("error", "resample"),
    )
    max_voxels: int = option(
        MAX_VOXELS,
        "Refuse inputs with more voxels than this, before reading their data (a header "
        "can claim any size).",
    )


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoints to run, and where."""

    sam_checkpoint: str = option(
        "vit_b",
        "SAM checkpoint: a .pth file in segment-anything's format (official or a fine-tune "
        "such as MedSAM), or a cached official name (vit_b, vit_l, vit_h).",
    )
    sam_model_type: str | None = option(
        None,
        "Expected SAM architecture (vit_b, vit_l, vit_h). Optional: the architecture is "
        "read from the checkpoint; a mismatch is an error.",
    )
    sam_preprocess: str = option(
        "auto",
        "How the SAM checkpoint's family wants its input: sam (segment-anything: longest "
        "side to 1024, pixel mean/std, padded) or medsam (MedSAM: stretched to 1024x1024, "
        "min-max to [0, 1]); applied to the image, the point and box prompts and the "
        "masks alike. auto: sam for the official checkpoints, medsam for a file named "
        "like MedSAM's (medsam_vit_b.pth), else sam.",
        choices=("auto", "sam", "medsam"),
    )
    clip_model: str = option(
        "ViT-L-14",
        "CLIP model: an open_clip name (e.g. ViT-L-14), hf-hub:ORG/REPO or local-dir:PATH.",
    )
    clip_pretrained: str | None = option(
        "openai",
        "open_clip pretrained tag (e.g. openai) or a local weights file. Ignored for "
        "hf-hub: and local-dir: models.",
    )
    clip_quick_gelu: bool | None = option(
        None,
        "Build CLIP with QuickGELU (on) or GELU (off), the activation its weights were "
        "trained with. Default: from the pretrained tag (OpenAI's weights: QuickGELU), from "
        "a weights file recognised as a tag's, or from the hf-hub:/local-dir: config; "
        "else the model config's.",
    )
    device: str = option("auto", "Device: auto, cpu, cuda or cuda:N.")
    precision: str = option(
        "auto",
        "Precision of the SAM and CLIP image encoders: fp32, or bf16/fp16 autocast (fp16 on "
        "CUDA only). auto: bf16 on CUDA, fp32 on CPU. Decoding and scoring stay fp32.",
        choices=("auto", "fp32", "bf16", "fp16"),
    )
    compile: bool = option(
        False,
        "torch.compile the SAM image encoder: the first batch of each slice size is slow "
        "(compilation, tens of seconds), later ones faster. Off by default.",
    )
    runtime: str = option(
        "auto",
        "What runs SAM's image encoder and everything-mode decoder: torch, or onnx (ONNX "
        "Runtime, CPU and fp32 only; graphs exported once per checkpoint into "
        "SALIP_HOME/onnx). auto: onnx on the CPU at fp32 without --compile, else torch.",
        choices=("auto", "torch", "onnx"),
    )


@dataclass(frozen=True)
class MethodConfig:
    """The method: which segmenter turns the slices into masks (``--method``, ``--head``)."""

    method: str = option(
        "cascade",
        "cascade: the zero-shot SaLIP cascade (no labels). head: a learned comparator head "
        "trained with `salip head train` (needs --head, and its own SAM checkpoint).",
        choices=("cascade", "head"),
    )
    head: str | None = option(None, "The head.pt that `salip head train` wrote, for --method head.")


@dataclass(frozen=True)
class StrategyConfig:
    """How a volume is driven through the engines."""

    strategy: str = option(
        "auto",
        "auto: volume for the cascade on a volume, slices for a 2D image and for methods "
        "that decide slice by slice (learned heads). slices: every body slice through "
        "everything mode and recognition on its own. volume: survey key slices, localise "
        "each organ along the axis, seed from its best key slices and propagate box "
        "prompts slice by slice (2D images: the same as slices).",
        choices=("auto", "slices", "volume"),
    )
    key_stride_mm: float = option(
        15.0, "Volume strategy: distance in mm between the key slices of the survey."
    )
    min_key_slices: int = option(
        5, "Volume strategy: at least this many key slices (fewer only if fewer body slices)."
    )
    max_key_gap: int = option(
        1,
        "Volume strategy: an organ's extent bridges up to this many key slices in a row "
        "where it was not found.",
    )
    track_distance_mm: float = option(
        40.0,
        "Largest in-plane distance (mm) of a box centre from its organ's track: volume "
        "strategy, between consecutive key-slice picks of a track; slices strategy, from the "
        "line through the neighbouring slices' picks (farther picks are emptied).",
    )
    propagation_margin: float = option(
        0.1,
        "Volume strategy: the next slice's box prompt is the previous mask's box grown by "
        "this fraction of its size per side.",
    )
    max_area_ratio: float = option(
        2.0,
        "Volume strategy: stop a walk when the mask area changes by more than this factor "
        "from one slice to the next.",
    )
    min_refine_iou: float = option(
        0.5, "Volume strategy: stop a walk when the refiner's predicted IoU falls below this."
    )
    extent_tolerance_mm: float = option(
        15.0,
        "Volume strategy: a walk may go this far (mm) beyond the organ's localised extent.",
    )
    max_walk_failures: int = option(
        2,
        "Volume strategy: a walk stops after this many bad slices in a row (mask vanished, "
        "predicted IoU too low, or rejected by the recogniser); bad slices between good ones "
        "are prompted again with boxes interpolated from their good neighbours.",
    )


@dataclass(frozen=True)
class SliceConfig:
    """How a volume becomes 8-bit RGB slices."""

    axis: str = option(
        "axial",
        "Slicing axis for volumes.",
        choices=("axial", "coronal", "sagittal"),
    )
    window: str | None = option(
        None,
        "CT intensity window: a preset (abdomen, liver, lung, bone, brain, mediastinum) "
        "or WIDTH,LEVEL in HU. Default: the organ's preset for CT; unchanged pixels for "
        "8-bit 2D images.",
    )
    modality: str = option(
        "auto",
        "Image modality. auto: DICOM tags or image metadata; else for volumes the intensity "
        "range (HU-like: ct, otherwise mr); for 2D images a word of the file or folder name "
        "(ct, mr/mri, xray/cxr/radiograph, us/ultrasound), and an error asking for "
        "--modality when there is none.",
        choices=("auto", "ct", "mr", "xray", "us"),
    )
    percentile_low: float = option(0.5, "Lower percentile for MR/US/X-ray intensity normalisation.")
    percentile_high: float = option(
        99.5, "Upper percentile for MR/US/X-ray intensity normalisation."
    )
    skip_empty: bool = option(
        True,
        "Skip volume slices with no body in them (an intensity rule, no model: CT slices with "
        "fewer than 0.1%% of pixels above -500 HU; other volumes, fewer than 0.1%% of pixels "
        "above the normalisation floor). They get empty masks. --no-skip-empty runs every "
        "slice.",
    )


@dataclass(frozen=True)
class ProposalConfig:
    """SAM everything mode. Same meaning and defaults as SamAutomaticMaskGenerator."""

    points_per_side: int = option(32, "Point grid size per side (points_per_side**2 prompts).")
    points_per_batch: int = option(
        0,
        "Point prompts per SAM decoder call; calls span slices. 0 (auto): on CPU 16 with "
        "--runtime onnx, 4 with torch (each prompt decodes over its own copy of the image "
        "embedding, and a few at a time stay in the CPU's cache: 1.8x faster than "
        "segment-anything's 64); on CUDA as many as fit "
        "in free GPU memory, measured on the first call, up to 4096. Halved on "
        "out-of-memory. Masks do not depend on it.",
    )
    pred_iou_thresh: float = option(0.88, "Drop proposals whose predicted IoU is at or below this.")
    stability_score_thresh: float = option(
        0.95, "Drop proposals whose stability score is below this."
    )
    stability_score_offset: float = option(1.0, "Logit offset used to compute the stability score.")
    box_nms_thresh: float = option(0.7, "Box IoU above which duplicate proposals are suppressed.")
    min_mask_region_area: int = option(
        0, "Remove holes and islands smaller than this many pixels (0: off)."
    )
    full_grid: bool = option(
        False,
        "Decode every grid point of a volume's slices, as the reference generator does. By "
        "default only the points on the body are decoded (its holes, such as the lungs, "
        "filled; 5 mm beyond its outline): outside it lie air and the table, which hold no "
        "organ. 2D images always use the whole grid.",
    )
    encoder_batch_size: int = option(
        0,
        "Slices per SAM image-encoder batch, and per cascade batch. 0 (auto): on CPU 4 per "
        "cascade batch, encoded one at a time (faster there, and a quarter of the memory); "
        "on CUDA as many as fit in free GPU memory, measured on the first slice, up to 32. "
        "Halved on out-of-memory. Masks do not depend on it.",
    )


@dataclass(frozen=True)
class AreaFilterConfig:
    """Drop background-sized and speck-sized proposals."""

    min_area: float = option(
        0.001,
        "Minimum proposal area of a 2D image (whose pixel size is not known), as a fraction "
        "of the image.",
    )
    min_area_mm2: float = option(
        100.0,
        "Minimum proposal area in mm² on a volume's slices (about an 11 mm disc): the same "
        "for every resolution. Lower it for thin targets (celiac trunk, hepatic vessels).",
    )
    max_area: float = option(0.5, "Maximum proposal area, as a fraction of the slice.")


@dataclass(frozen=True)
class CropConfig:
    """How each proposal becomes a CLIP input."""

    crop_mode: str = option(
        "masked",
        "masked: pixels outside the proposal blacked out, cropped to its box; "
        "box: the image inside the proposal's box plus a context margin.",
        choices=("masked", "box"),
    )
    crop_margin: float = option(
        0.1, "Context margin around the proposal's box, as a fraction of the box size."
    )


@dataclass(frozen=True)
class ScoringConfig:
    """CLIP scoring of crops against the organs' descriptions."""

    scoring: str = option(
        "contrast",
        "contrast: softmax over the organ, its plausible neighbours and the background; a "
        "crop is kept only if the organ wins by --contrast-margin. salip: the paper's cosine "
        "against the organ alone, top-k kept in every slice.",
        choices=("contrast", "salip"),
    )
    contrast_margin: float = option(
        0.0,
        "Contrast scoring: the organ's probability must beat every competitor's by more "
        "than this (0 to 1).",
    )
    top_k: int | None = option(
        None, "Crops kept per organ and slice. Default: the organ's own (2 for pairs, else 1)."
    )
    min_score: float | None = option(
        None,
        "Drop crops whose CLIP cosine score with the organ is below this. Default: no threshold.",
    )
    laterality: bool = option(
        True,
        "Keep left/right organs to the patient's side of the body midline, and take one "
        "crop per side for pairs (axial and coronal slices; 2D images are assumed to be in "
        "radiological convention). --no-laterality turns it off.",
    )
    prompts_dir: str | None = option(
        None,
        "Folder of description prompts to use instead of the packaged ones "
        "(default: $SALIP_PROMPTS_DIR, else the packaged set).",
    )


@dataclass(frozen=True)
class RefineConfig:
    """Box prompts for the second SAM pass."""

    box_margin: float = option(
        0.0, "Grow each prompt box by this fraction of its size on every side."
    )


@dataclass(frozen=True)
class AssemblyConfig:
    """Putting slice masks back into a volume."""

    largest_component: bool = option(
        True,
        "Volumes: keep only the pieces of each organ's mask that the recognition evidence "
        "supports (pieces with at least half the best piece's evidence, and at least the "
        "organ's top-k, so both lungs survive; without a recogniser, e.g. a learned head, "
        "the top-k largest 3D connected components). Use --no-largest-component to keep all.",
    )
    min_confidence: float = option(
        0.5,
        "Below this confidence (the estimated probability, from the recognition evidence, "
        "that an organ's answer is right) the organ is answered as not found, with the "
        "reason, and its mask is empty. 0 never withholds an organ.",
    )
    max_gap_slices: int = option(
        2,
        "Pieces of an organ's mask at most this many empty slices apart along the slicing "
        "axis are one piece, and the gap is filled where both sides hold the organ (with "
        "--largest-component). 0: no bridging.",
    )


@dataclass(frozen=True)
class SegmentConfig:
    """All stage configs of one ``salip segment`` run."""

    input: InputConfig = field(default_factory=InputConfig)
    models: ModelConfig = field(default_factory=ModelConfig)
    segmenter: MethodConfig = field(default_factory=MethodConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    slicing: SliceConfig = field(default_factory=SliceConfig)
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    area: AreaFilterConfig = field(default_factory=AreaFilterConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)

    def replace(self, **options: Any) -> SegmentConfig:
        """Return a copy with flat options (``points_per_side=16``) applied to their stage.

        Raises:
            ConfigError: for an unknown option name (the message lists the valid ones).
        """
        index = flat_fields(type(self))
        unknown = sorted(set(options) - set(index))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {', '.join(unknown)}; valid options: "
                f"{', '.join(sorted(index))}."
            )
        stages: dict[str, dict[str, Any]] = {}
        for name, value in options.items():
            stages.setdefault(index[name], {})[name] = value
        changes = {
            stage: dataclasses.replace(getattr(self, stage), **values)
            for stage, values in stages.items()
        }
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Check value ranges; raise :class:`ConfigError` with the fix."""
        for stage in dataclasses.fields(self):
            values = getattr(self, stage.name)
            for f in dataclasses.fields(values):
                choices = f.metadata.get("choices")
                value = getattr(values, f.name)
                if choices is not None and value not in choices:
                    raise ConfigError(
                        f"{f.name} = {value!r} is not valid; use one of {', '.join(choices)}."
                    )
                # Annotations are strings here ("int | None"); the first name is the type.
                kind = str(f.type).split("|")[0].strip()
                if value is None or kind not in _TYPES:
                    continue
                expected = _TYPES[kind]
                if isinstance(value, bool) is not (kind == "bool") or not isinstance(
                    value, expected
                ):
                    example = "" if f.default is None else f", e.g. {f.default!r}"
                    raise ConfigError(
                        f"{f.name} = {value!r} has the wrong type; expected {kind}{example}."
                    )

        if self.slicing.window is not None:
            from salip.core.windows import parse_window

            parse_window(self.slicing.window)  # ConfigError naming the fix
        p, a, c = self.proposals, self.area, self.crops
        checks = [
            (p.points_per_side >= 1, "points_per_side must be at least 1"),
            (self.input.max_voxels >= 1, "max_voxels must be at least 1"),
            (
                self.input.channel is None or self.input.channel >= 0,
                "channel must be 0 or more",
            ),
            (p.points_per_batch >= 0, "points_per_batch must be 0 (auto) or more"),
            (p.encoder_batch_size >= 0, "encoder_batch_size must be 0 (auto) or more"),
            (0.0 <= p.box_nms_thresh <= 1.0, "box_nms_thresh must be in [0, 1]"),
            (p.min_mask_region_area >= 0, "min_mask_region_area must be >= 0"),
            (0.0 <= a.min_area < a.max_area <= 1.0, "need 0 <= min_area < max_area <= 1"),
            (a.min_area_mm2 >= 0.0, "min_area_mm2 must be >= 0"),
            (c.crop_margin >= 0.0, "crop_margin must be >= 0"),
            (self.refine.box_margin >= 0.0, "box_margin must be >= 0"),
            (
                self.scoring.top_k is None or self.scoring.top_k >= 1,
                "top_k must be at least 1",
            ),
            (0.0 <= self.scoring.contrast_margin < 1.0, "contrast_margin must be in [0, 1)"),
            (self.strategy.key_stride_mm > 0.0, "key_stride_mm must be > 0"),
            (self.strategy.min_key_slices >= 1, "min_key_slices must be at least 1"),
            (self.strategy.max_key_gap >= 0, "max_key_gap must be 0 or more"),
            (self.strategy.track_distance_mm > 0.0, "track_distance_mm must be > 0"),
            (self.strategy.propagation_margin >= 0.0, "propagation_margin must be >= 0"),
            (self.strategy.max_area_ratio > 1.0, "max_area_ratio must be > 1"),
            (0.0 <= self.strategy.min_refine_iou <= 1.0, "min_refine_iou must be in [0, 1]"),
            (self.strategy.extent_tolerance_mm >= 0.0, "extent_tolerance_mm must be >= 0"),
            (
                0.0 <= self.assembly.min_confidence <= 1.0,
                "min_confidence must be in [0, 1] (0 never withholds an organ)",
            ),
            (
                self.assembly.max_gap_slices >= 0,
                "max_gap_slices must be 0 (no bridging) or more",
            ),
            (
                0.0 <= self.slicing.percentile_low < self.slicing.percentile_high <= 100.0,
                "need 0 <= percentile_low < percentile_high <= 100",
            ),
        ]
        method = self.segmenter
        checks += [
            (
                method.method != "head" or bool(method.head),
                "--method head needs --head PATH (the head.pt of `salip head train`)",
            ),
            (
                method.method == "head" or method.head is None,
                "--head is only read with --method head; add --method head or drop --head",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + ".")


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cases of a multi-case run (``salip segment`` with several inputs,
    ``salip benchmark``) run: in this process, or on Ray actors that load the models once."""

    engine: str = option(
        "local",
        "Run cases in this process (local), or on Ray workers (ray; needs the salip[ray] "
        "extra) on this machine or a cluster.",
        choices=("local", "ray"),
    )
    ray_address: str | None = option(
        None,
        "With --engine ray: the cluster to join, e.g. auto (the cluster this machine's "
        "`ray start` joined) or ray://HOST:10001 (default: start a local Ray runtime).",
    )
    workers: int | None = option(
        None,
        "With --engine ray: worker actors, each loading the models once (default: one per "
        "GPU of the cluster with --gpus-per-worker 1, else 1).",
        metavar="N",
    )
    gpus_per_worker: float | None = option(
        None,
        "With --engine ray: GPUs reserved per worker; fractions share a GPU (default: 1 "
        "when the cluster has GPUs, else 0).",
        metavar="N",
    )
    cpus_per_worker: int = option(
        1, "With --engine ray: CPU cores reserved per worker (its torch threads).", metavar="N"
    )
    max_retries: int = option(
        2,
        "With --engine ray: times a case is re-queued after its worker died (killed, out "
        "of memory) before it is recorded as failed.",
        metavar="N",
    )

    def validate(self) -> None:
        """Check the settings; raise :class:`ConfigError` with the fix."""
        if self.engine not in ("local", "ray"):
            raise ConfigError(f"engine = {self.engine!r} is not valid; use one of local, ray.")
        checks = [
            (self.workers is None or self.workers >= 1, "workers must be at least 1"),
            (
                self.gpus_per_worker is None or self.gpus_per_worker >= 0,
                "gpus_per_worker must be 0 or more",
            ),
            (self.cpus_per_worker >= 1, "cpus_per_worker must be at least 1"),
            (self.max_retries >= 0, "max_retries must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + ".")
        if self.engine == "local":
            given = [
                name
                for name in ("ray_address", "workers", "gpus_per_worker")
                if getattr(self, name) is not None
            ]
            if given:
                flags = ", ".join("--" + n.replace("_", "-") for n in given)
                raise ConfigError(f"{flags} need --engine ray; add it, or drop them.")


def flat_fields(config_type: type[SegmentConfig] = SegmentConfig) -> dict[str, str]:
    """Map every flat option name to the stage attribute of :class:`SegmentConfig` holding it."""
    index: dict[str, str] = {}
    for stage in dataclasses.fields(config_type):
        for f in dataclasses.fields(stage.default_factory()):  # type: ignore[misc]
            index[f.name] = stage.name
    return index
