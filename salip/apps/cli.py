"""The ``salip`` command line.

Every settings flag is generated from a field of the stage configs in :mod:`salip.core.config`
(``--points-per-side`` <-> ``ProposalConfig.points_per_side``), and the commands call the
library with keyword arguments. Errors are one line and a non-zero exit; ``-v`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import threading
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from salip.core.config import ClusterConfig, SegmentConfig
from salip.core.errors import ConfigError, SalipError
from salip.version import __version__

logger = logging.getLogger("salip")

_GROUP_TITLES = {
    "input": "input reading",
    "models": "models",
    "segmenter": "segmenter (the cascade, or a learned head)",
    "strategy": "strategy (slice by slice, or the whole volume)",
    "slicing": "slicing and intensity",
    "proposals": "proposals (SAM everything mode)",
    "area": "area filter",
    "crops": "crops",
    "scoring": "CLIP scoring",
    "refine": "refinement (box prompts)",
    "assembly": "assembly",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _add_dataclass_flags(group: Any, config_type: type) -> None:
    """Add one flag per field of a config dataclass, help and choices from its metadata."""
    hints = typing.get_type_hints(config_type)
    for f in dataclasses.fields(config_type):
        hint = hints[f.name]
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        help_text = f.metadata.get("help", "")
        if "default:" not in help_text.lower():  # the help already explains its default
            help_text += f" (default: {f.default})"
        if base is bool:
            group.add_argument(
                _flag(f.name),
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
            continue
        if typing.get_origin(base) is tuple:
            base = _comma_list
        group.add_argument(
            _flag(f.name),
            type=base,
            choices=f.metadata.get("choices"),
            default=argparse.SUPPRESS,
            metavar=None
            if f.metadata.get("choices")
            else f.metadata.get("metavar", f.name.split("_")[-1].upper()),
            help=help_text,
        )


def _add_config_flags(parser: argparse.ArgumentParser, stages: Sequence[str]) -> None:
    """Add one flag per field of the named stages of :class:`SegmentConfig`."""
    for stage in dataclasses.fields(SegmentConfig):
        if stage.name in stages:
            group = parser.add_argument_group(_GROUP_TITLES[stage.name])
            _add_dataclass_flags(group, stage.default_factory)  # type: ignore[arg-type]


def _config_options(args: argparse.Namespace) -> dict[str, Any]:
    """Config flags the user actually gave (unset flags keep the config defaults)."""
    from salip.core.config import flat_fields

    fields = flat_fields()
    return {k: v for k, v in vars(args).items() if k in fields}


if typing.TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def _build_parser() -> argparse.ArgumentParser:
    """The top ``salip`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="salip",
        description="Zero-shot organ segmentation with a SAM + CLIP cascade (SaLIP).",
    )
    parser.add_argument("--version", action="version", version=f"salip {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="More logging; tracebacks on errors."
    )
    common.add_argument("-q", "--quiet", action="store_true", help="Only warnings and errors.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_segment(sub, common)
    _add_proposals(sub, common)
    _add_benchmark(sub, common)
    _add_bench_speed(sub, common)
    _add_bench_units(sub, common)
    _add_head(sub, common)
    _add_models(sub, common)
    _add_organs(sub, common)
    _add_prompts(sub, common)
    return parser


def _add_segment(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip segment``."""
    seg = sub.add_parser(
        "segment",
        parents=[common],
        help="Segment organs in a NIfTI volume, DICOM series or 2D image.",
        description="Segment organs with no labels and no fine-tuning. Masks are written in "
        "the input's own grid: NIfTI for volumes and DICOM series, PNG for 2D images.",
    )
    seg.add_argument(
        "input",
        nargs="*",
        help="NIfTI file, DICOM folder or .zip, or PNG/JPEG/TIFF image. Several inputs or a "
        "quoted glob segment every case found (folders among them are searched; a DICOM "
        "folder of several series gives one case per series) into the -o folder.",
    )
    seg.add_argument(
        "--organ",
        action="append",
        help="Organ to segment; repeat or comma-separate for several (see `salip organs`). "
        "With --jobs, the organs of rows that name none.",
    )
    seg.add_argument(
        "--jobs",
        metavar="FILE",
        help="A CSV (header row) or JSON Lines (.jsonl) file of cases, one per row: input, "
        "and optionally organs, series (a DICOM series UID) and output (the mask path, "
        "relative to the -o folder). Relative inputs are relative to the jobs file.",
    )
    out = seg.add_argument_group("outputs")
    out.add_argument(
        "-o",
        "--output",
        help="Mask file (multi-label for several organs, with a JSON sidecar of label "
        "values), or with --split a folder. Default: <input stem>_salip.nii.gz/.png here.",
    )
    out.add_argument(
        "--split", action="store_true", help="One mask file per organ in the -o folder."
    )
    out.add_argument(
        "--output-type",
        choices=("nifti", "dicom-seg"),
        help="nifti (NIfTI masks; PNG for 2D images) or dicom-seg: one DICOM Segmentation "
        "object referencing the source series, for DICOM-series inputs. Default: dicom-seg "
        "when -o ends in .dcm, else nifti.",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace existing output files (several cases: recompute finished cases).",
    )
    out.add_argument(
        "--previews",
        action="store_true",
        help="Several cases: also write NAME.preview.png per case into the -o folder.",
    )
    out.add_argument(
        "--reports",
        action="store_true",
        help="Several cases: also write NAME.report.json per case into the -o folder.",
    )
    out.add_argument(
        "--preview", metavar="PNG", help="Write an overlay of the slices with the most organ."
    )
    out.add_argument(
        "--report", metavar="JSON", help="Write the run report (volumes, scores, timings)."
    )
    out.add_argument(
        "--statistics",
        metavar="JSON",
        help="Write per-organ statistics: volume, intensity mean/std/median/p5/p95 in the "
        "input's units (HU for CT), bounding box, centroid (RAS+ mm), components, slices.",
    )
    out.add_argument(
        "--viewer",
        metavar="HTML",
        help="Write a self-contained HTML viewer (no network): slices with organ overlays, "
        "window presets, the chosen boxes with their CLIP probabilities and competitors, "
        "and the volume strategy's key-slice profiles.",
    )
    out.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    _add_cluster_flags(seg)
    _add_config_flags(seg, list(_GROUP_TITLES))
    seg.set_defaults(func=_cmd_segment)


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of :class:`ClusterConfig`: where the cases of a run are computed."""
    group = parser.add_argument_group(
        "several cases: where they run (local, or Ray workers on this machine or a cluster)"
    )
    _add_dataclass_flags(group, ClusterConfig)


def _cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    """The cluster flags the user gave."""
    names = {f.name for f in dataclasses.fields(ClusterConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def _add_proposals(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip proposals``."""
    prop = sub.add_parser(
        "proposals",
        parents=[common],
        help="Write SAM everything-mode proposals of one image or slice as JSON.",
        description="Writes the same records as segment-anything's scripts/amg.py "
        "--convert-to-rle: segmentation (COCO RLE), bbox (XYWH), area, predicted_iou, "
        "stability_score, point_coords, crop_box. CLIP flags are accepted and unused.",
    )
    prop.add_argument("input", help="NIfTI file, DICOM folder or .zip, or 2D image.")
    prop.add_argument(
        "--slice",
        type=int,
        dest="slice_index",
        help="Slice index in the input file along --axis (default: middle).",
    )
    prop.add_argument("-o", "--output", required=True, help="JSON file to write.")
    prop.add_argument("--overwrite", action="store_true", help="Replace an existing output.")
    _add_config_flags(prop, ["input", "models", "slicing", "proposals"])
    prop.set_defaults(func=_cmd_proposals)


def _add_benchmark(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip benchmark``."""
    bench = sub.add_parser(
        "benchmark",
        parents=[common],
        help="Score salip and its baselines against datasets with reference masks.",
        description="Runs the methods of a TOML config over its datasets and writes "
        "cases.csv, summary.csv, summary.md, figures/ and run.json (see benchmarks/README.md). "
        "Finished cases are saved at once and reused by a rerun. Prints the path of "
        "summary.md.",
    )
    bench.add_argument("--config", required=True, metavar="TOML", help="Benchmark config file.")
    bench.add_argument(
        "--out",
        metavar="DIR",
        help="Output folder. Default: benchmark-results/<config name> in the working folder.",
    )
    bench.add_argument(
        "--limit", type=int, metavar="N", help="At most N cases per dataset (the first by id)."
    )
    bench.add_argument(
        "--rerun", action="store_true", help="Recompute every case, ignoring saved results."
    )
    bench.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    _add_cluster_flags(bench)
    bench.set_defaults(func=_cmd_benchmark)


def _add_bench_speed(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip bench-speed``."""
    speed = sub.add_parser(
        "bench-speed",
        parents=[common],
        help="Time salip against the SaLIP reference cost structure on one volume.",
        description="In one process, on the same device, checkpoints and slices: (A) the "
        "reference structure (SamAutomaticMaskGenerator per slice, CLIP with texts encoded "
        "again, SamPredictor.set_image plus box prompts) and (B) salip. Prints the ratio A/B, "
        "the mask agreement (mean IoU), per-stage seconds, and a Markdown line for "
        "benchmarks/RESULTS.md.",
    )
    source = speed.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", metavar="NIFTI", help="A NIfTI volume to segment.")
    source.add_argument(
        "--shape", metavar="XxYxZ", help="A synthetic CT phantom of this shape, e.g. 512x512x200."
    )
    speed.add_argument("--organ", default="liver", help="Organ to segment (default: liver).")
    speed.add_argument(
        "--extra-organ",
        action="append",
        default=[],
        metavar="ORGAN",
        help="Also time salip on --organ plus these organs in one run (repeat or "
        "comma-separate), to report the cost of several organs against one.",
    )
    speed.add_argument("--json", metavar="PATH", help="Also write the results as JSON.")
    _add_config_flags(speed, ["models", "strategy", "slicing", "proposals"])
    speed.set_defaults(func=_cmd_bench_speed)


def _add_bench_units(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip bench-units``."""
    units = sub.add_parser(
        "bench-units",
        parents=[common],
        help="Measure SAM's unit costs: encoder per slice, everything mode per slice, box prompt.",
        description="On synthetic CT slices, times SAM's image encoder per slice, everything "
        "mode per slice (the point grid with salip's IoU/stability/NMS filtering) and one "
        "box prompt, as salip runs them (medians over slices, seconds). Without "
        "--sam-checkpoint the model is a RANDOM-weight SAM of --sam-model-type (timing does "
        "not depend on weights). Prints the figures and a Markdown line for "
        "benchmarks/RESULTS.md.",
    )
    units.add_argument(
        "--sam-checkpoint",
        metavar="PATH",
        help="SAM checkpoint file or official name (default: random weights).",
    )
    units.add_argument(
        "--sam-model-type",
        metavar="TYPE",
        help="vit_b, vit_l or vit_h (default: vit_b without a checkpoint; with one, read "
        "from the file).",
    )
    units.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)."
    )
    units.add_argument(
        "--precision",
        default="auto",
        help="Encoder precision: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16.",
    )
    units.add_argument("--slices", type=int, default=3, help="Slices timed (default: 3).")
    units.add_argument(
        "--image-size", type=int, default=512, help="Slice side in pixels (default: 512)."
    )
    units.add_argument(
        "--points-per-side", type=int, default=32, help="Everything-mode grid side (default: 32)."
    )
    units.add_argument(
        "--box-prompts", type=int, default=16, help="Boxes decoded per slice (default: 16)."
    )
    units.add_argument(
        "--pred-iou-thresh",
        type=float,
        help="Everything-mode predicted-IoU filter (default: salip's, 0.88).",
    )
    units.add_argument(
        "--stability-score-thresh",
        type=float,
        help="Everything-mode stability filter (default: salip's, 0.95).",
    )
    units.add_argument("--seed", type=int, default=0, help="Seed of weights, slices and boxes.")
    units.add_argument("--json", metavar="PATH", help="Also write the results as JSON.")
    units.set_defaults(func=_cmd_bench_units)


def _add_head(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip head train``."""
    from salip.apps.training.config import TrainSettings  # light: no torch

    head = sub.add_parser("head", help="Train the learned comparator head on SAM features.")
    hsub = head.add_subparsers(dest="head_command", required=True, metavar="ACTION")
    train = hsub.add_parser(
        "train",
        parents=[common],
        help="Train a CLIP-driven head on frozen SAM embeddings of labelled datasets.",
        description="Trains the head of `--method head` from a TOML config with the "
        "benchmark's [models] and [[datasets]] tables and a [train] table (see "
        "benchmarks/README.md). Writes head.pt, manifest.json and a resumable last.pt to "
        "--out; a rerun of the same config continues after the last finished epoch. "
        "Prints the path of head.pt.",
    )
    train.add_argument("--config", required=True, metavar="TOML", help="Training config file.")
    train.add_argument("--out", required=True, metavar="DIR", help="Output folder.")
    train.add_argument(
        "--no-resume",
        action="store_true",
        help="Start from scratch even if --out holds an unfinished run of this config.",
    )
    train.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")
    _add_dataclass_flags(
        train.add_argument_group("training (override the config's [train] table)"),
        TrainSettings,
    )
    train.set_defaults(func=_cmd_head_train)


def _add_models(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip models download`` and ``salip models list``."""
    models = sub.add_parser("models", help="Download or list SAM checkpoints.")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    dl = msub.add_parser(
        "download",
        parents=[common],
        help="Download official SAM checkpoints into the cache ($SALIP_HOME).",
    )
    dl.add_argument(
        "names", nargs="*", default=["vit_b"], help="vit_b, vit_l and/or vit_h (default: vit_b)."
    )
    dl.add_argument(
        "--mirror", metavar="URL", help="Base URL to fetch from instead of Meta's server."
    )
    dl.add_argument("--force", action="store_true", help="Download again even if cached.")
    dl.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    dl.set_defaults(func=_cmd_models_download)
    ls = msub.add_parser(
        "list", parents=[common], help="Show which official checkpoints are cached."
    )
    ls.set_defaults(func=_cmd_models_list)


def _add_organs(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip organs``."""
    organs = sub.add_parser(
        "organs",
        parents=[common],
        help="List the organs salip knows, or their values in a public label set.",
    )
    organs.add_argument(
        "--labels",
        metavar="SET",
        help="Show organ -> label values in a label set: totalseg, totalseg_mr, btcv, amos, "
        "msd (all Decathlon tasks) or one msd_* task.",
    )
    organs.add_argument(
        "--prompts-dir",
        help="A user prompt set whose targets are listed too (default: $SALIP_PROMPTS_DIR).",
    )
    organs.set_defaults(func=_cmd_organs)


def _add_prompts(sub: _Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip prompts generate``, ``list`` and ``show``."""
    from salip.apps.prompt_generation import GenerationConfig

    prompts = sub.add_parser("prompts", help="Generate, list or show description prompts.")
    psub = prompts.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")
    pdir = argparse.ArgumentParser(add_help=False)
    pdir.add_argument(
        "--prompts-dir",
        metavar="DIR",
        help="Prompt folder (default: $SALIP_PROMPTS_DIR, else the packaged prompts).",
    )
    gen = psub.add_parser(
        "generate",
        parents=[common, pdir],
        help="Ask a language model (any OpenAI-compatible endpoint) for descriptions, or "
        "to define a new target (--new).",
        description="Writes N visual descriptions per organ into the prompt cache, with "
        "provenance. The key is read from OPENAI_API_KEY; --base-url or OPENAI_BASE_URL "
        "selects the endpoint. Nothing is written unless every organ succeeds. With --new, "
        "the model first defines a new target (synonyms, modalities, regions, laterality, "
        "CT window), which is checked, and the target is written with its descriptions "
        "into a user prompt set (--prompts-dir or SALIP_PROMPTS_DIR).",
    )
    gen.add_argument(
        "--organ",
        action="append",
        help="Organ to describe; repeat or comma-separate. With --new: the new target's "
        'name in words (e.g. "thyroid gland" -> thyroid_gland).',
    )
    gen.add_argument(
        "--all", action="store_true", dest="all_organs", help="Every organ of --modality."
    )
    gen.add_argument(
        "--modality",
        required=True,
        action="append",
        type=_comma_list,
        metavar="MODALITY",
        help="Image modality: ct, mr, xray or us (with --new, repeat or comma-separate to "
        "describe the new target in several).",
    )
    gen.add_argument(
        "--force",
        action="store_true",
        help="Replace existing entries of this modality (hand-written ones included); with "
        "--new, redefine an existing target (a built-in one is overridden by a user file).",
    )
    new = gen.add_argument_group(
        "a new target (--new; each value given replaces the model's answer)"
    )
    new.add_argument(
        "--new", action="store_true", help="Define --organ as a new target of the prompt set."
    )
    new.add_argument(
        "--pair",
        action="store_true",
        help="A both-sides target with left and right members: three targets, e.g. "
        "psoas_muscles, psoas_muscle_left, psoas_muscle_right.",
    )
    new.add_argument("--modalities", metavar="LIST", help="Modalities that image it: ct,mr,...")
    new.add_argument(
        "--regions", metavar="LIST", help="Body regions showing it: head,thorax,abdomen,..."
    )
    new.add_argument(
        "--laterality", choices=("none", "left", "right"), help="The patient's side it is on."
    )
    new.add_argument("--window", metavar="W,L|PRESET", help="CT window: WIDTH,LEVEL or a preset.")
    new.add_argument("--synonyms", metavar="LIST", help="Other names, comma-separated.")
    new.add_argument("--top-k", type=int, metavar="N", help="Crops kept per slice.")
    _add_dataclass_flags(gen.add_argument_group("language model"), GenerationConfig)
    gen.set_defaults(func=_cmd_prompts_generate)
    pls = psub.add_parser(
        "list", parents=[common, pdir], help="What is cached, per organ and modality."
    )
    pls.set_defaults(func=_cmd_prompts_list)
    show = psub.add_parser(
        "show", parents=[common, pdir], help="Print an organ's descriptions and provenance."
    )
    show.add_argument("organ", help="Organ name (or 'background').")
    show.add_argument("--modality", choices=("ct", "mr", "xray", "us"), help="Only this one.")
    show.set_defaults(func=_cmd_prompts_show)


def _cmd_segment(args: argparse.Namespace) -> int:
    from salip.api.cases import is_glob
    from salip.api.pipeline import segment

    if args.jobs is not None or len(args.input) > 1 or (args.input and is_glob(args.input[0])):
        return _segment_many(args)
    if args.input and _holds_several_cases(Path(args.input[0]), getattr(args, "series", None)):
        return _segment_many(args)
    if not args.input:
        raise ConfigError("no input: give a scan, several, a quoted glob, or --jobs FILE.")
    if args.organ is None:
        raise ConfigError("no organ given: name at least one, e.g. --organ liver.")
    single = [k for k in ("previews", "reports", "jobs") if getattr(args, k)]
    if single or _cluster_options(args):
        flags = [_flag(k) for k in (*single, *_cluster_options(args))]
        raise ConfigError(
            f"only for several cases: {', '.join(flags)}; give several inputs, a glob or "
            "--jobs (one case takes --preview PNG and --report JSON)."
        )
    result = segment(
        args.input[0],
        organs=args.organ,
        output=args.output,
        split=args.split,
        overwrite=args.overwrite,
        preview=args.preview,
        report=args.report,
        output_type=args.output_type,
        statistics=args.statistics,
        viewer=args.viewer,
        progress=not args.no_progress and not args.quiet,
        **_config_options(args),
    )
    for name, row in result.report["organs"].items():
        if not row["found"]:
            continue  # the pipeline has said why
        size = f"{row['volume_ml']} ml" if row["volume_ml"] is not None else f"{row['voxels']} px"
        sure = "" if row["confidence"] is None else f", confidence {row['confidence']:.2f}"
        logger.info("%s: %s in %d slice(s)%s", name, size, len(row["slices"]), sure)
    for path in result.outputs:
        logger.info("wrote %s", path)
    return 0


def _holds_several_cases(path: Path, series: str | None) -> bool:
    """Whether a folder given alone is a cohort to search (scans inside it, or a DICOM
    folder of several series when no --series picks one), not one DICOM series."""
    from salip.api.cases import find_cases

    if not path.is_dir() or series is not None:
        return False
    try:
        cases = find_cases([path])
    except SalipError:
        return False  # the single-case reader says what is wrong with it
    return len(cases) > 1 or (len(cases) == 1 and cases[0].path != path.resolve())


def _segment_many(args: argparse.Namespace) -> int:
    """``salip segment`` with several cases: one folder of outputs and run.csv."""
    from salip.api.many import RUN_TABLE, segment_many

    if args.output is None:
        raise ConfigError("several cases need -o FOLDER for their outputs.")
    if str(args.output).lower().endswith((".nii", ".nii.gz", ".png")):
        alone = args.input[0] if len(args.input) == 1 and args.jobs is None else None
        what = f"{alone} holds several cases" if alone else "several cases"
        pick = " (or --series UID to read one DICOM series of it)" if alone else ""
        raise ConfigError(
            f"-o {args.output} names a mask file, but {what}; give -o FOLDER for their "
            f"outputs{pick}."
        )
    one_case = (args.split, args.preview, args.report, args.statistics, args.viewer)
    if any(one_case) or args.output_type:
        raise ConfigError(
            "--split, --preview, --report, --statistics, --viewer and --output-type are for "
            "one case; "
            "with several, use -o FOLDER (and --previews / --reports for one of each per case)."
        )
    rows = segment_many(
        args.input,
        organs=args.organ,
        jobs=args.jobs,
        output=args.output,
        overwrite=args.overwrite,
        preview=args.previews,
        report=args.reports,
        progress=not args.no_progress and not args.quiet,
        **_cluster_options(args),
        **_config_options(args),
    )
    failed = [r for r in rows if r.status == "failed"]  # each was logged as it failed
    counts = {s: sum(r.status == s for r in rows) for s in ("done", "skipped", "failed")}
    logger.info(
        "%d case(s): %d done, %d skipped, %d failed; see %s",
        len(rows),
        counts["done"],
        counts["skipped"],
        counts["failed"],
        Path(args.output) / RUN_TABLE,
    )
    return 1 if failed else 0


def _cmd_proposals(args: argparse.Namespace) -> int:
    from salip.api.pipeline import propose
    from salip.io.output_set import OutputSet
    from salip.io.writing import json_text

    output = Path(args.output)
    with OutputSet(Path(args.input), overwrite=args.overwrite) as outputs:
        outputs.add(output, "-o")
        outputs.check_writable()
        records, info = propose(args.input, slice_index=args.slice_index, **_config_options(args))
        text = json_text(records)
        outputs.stage(output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        outputs.commit()
    logger.info("wrote %d proposals of slice %s to %s", len(records), info["slice"], output)
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from salip.apps.bench.runner import run_benchmark

    result = run_benchmark(
        args.config,
        out=args.out,
        limit=args.limit,
        rerun=args.rerun,
        progress=not args.no_progress and not args.quiet,
        **_cluster_options(args),
    )
    logger.info(
        "%d computed, %d reused, %d error row(s); outputs in %s",
        result.computed,
        result.reused,
        result.errors,
        result.out,
    )
    sys.stdout.write(f"{result.summary_md}\n")
    return 0


def _cmd_head_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from salip.apps.training.config import TrainSettings, load_head_config
    from salip.apps.training.train import train_head

    names = {f.name for f in dataclasses.fields(TrainSettings)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    result = train_head(
        load_head_config(args.config).with_train(**overrides),
        Path(args.out),
        progress=not args.no_progress and not args.quiet,
        resume=not args.no_resume,
    )
    metrics = result.manifest.get("metrics", {})
    logger.info(
        "%d epoch(s) trained now (%d before), %d steps; validation mean Dice: %s",
        result.epochs_run,
        result.start_epoch,
        result.steps_run,
        metrics.get("final_val_mean_dice"),
    )
    sys.stdout.write(f"{result.head_path}\n")
    return 0


def _cmd_bench_speed(args: argparse.Namespace) -> int:
    import json

    from salip.apps.bench.speed import markdown_line, run_speed

    result = run_speed(
        input=args.input,
        shape=args.shape,
        organ=args.organ,
        extra_organs=[o.strip() for item in args.extra_organ for o in item.split(",") if o.strip()],
        json_path=args.json,
        **_config_options(args),
    )
    keys = ("reference_s", "salip_s", "ratio", "agreement_iou", "device", "precision", "shape")
    if result["multi_organ_s"] is not None:
        keys += ("multi_organs", "multi_organ_s", "multi_organ_ratio")
    for key in keys:
        logger.info("%s: %s", key, result[key])
    logger.info("salip stages (s): %s", json.dumps(result["stages"]))
    logger.info("reference stages (s): %s", json.dumps(result["reference_stages"]))
    sys.stdout.write(markdown_line(result) + "\n")
    return 0


def _cmd_bench_units(args: argparse.Namespace) -> int:
    from salip.apps.bench.unit_costs import markdown_line, measure_unit_costs
    from salip.io.writing import write_json

    model_type = args.sam_model_type or (None if args.sam_checkpoint else "vit_b")
    result = measure_unit_costs(
        sam_checkpoint=args.sam_checkpoint,
        model_type=model_type,
        device=args.device,
        slices=args.slices,
        image_size=args.image_size,
        points_per_side=args.points_per_side,
        box_prompts=args.box_prompts,
        precision=args.precision,
        seed=args.seed,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
    )
    if args.json:
        write_json(Path(args.json), result)
    keys = (
        "encoder_s_per_slice",
        "everything_s_per_slice",
        "box_s_per_prompt",
        "everything_over_encoder",
        "box_s_per_prompt_batched",
        "encoder_s_per_slice_auto_batch",
        "everything_proposals",
        "device",
        "hardware",
        "model_type",
        "weights",
        "precision",
        "points_per_batch",
    )
    for key in keys:
        logger.info("%s: %s", key, result[key])
    sys.stdout.write(markdown_line(result) + "\n")
    return 0


def _cmd_models_download(args: argparse.Namespace) -> int:
    from salip.models.download import download_checkpoint
    from salip.models.registry import OFFICIAL_BASE_URL

    for name in args.names:
        path = download_checkpoint(
            name,
            base_url=args.mirror or OFFICIAL_BASE_URL,
            force=args.force,
            progress=not args.no_progress and not args.quiet,
        )
        logger.info("%s: %s", name, path)
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from salip.models.download import list_cached
    from salip.models.registry import checkpoint_dir

    rows = list_cached()
    sys.stdout.write(f"cache: {checkpoint_dir()}\n")
    for row in rows:
        state = f"cached, {row['bytes']:,} bytes" if row["cached"] else "not cached"
        sys.stdout.write(f"{row['name']:6s} {state}  {row['file']}\n")
    return 0


def _cmd_organs(args: argparse.Namespace) -> int:
    from salip.core.organs import vocabulary

    out = sys.stdout
    if args.labels:
        from salip.core.label_sets import get_label_sets

        for ls in get_label_sets(args.labels):
            out.write(f"{ls.name}: {ls.title}\n")
            for organ, values in ls.labels.items():
                note = (
                    f"  (approximate: {ls.approximate[organ]})" if organ in ls.approximate else ""
                )
                out.write(f"  {organ:30s} {'+'.join(map(str, values))}{note}\n")
        return 0
    known = vocabulary(args.prompts_dir)
    out.write(f"{'organ':30s} {'top-k':5s} {'window':11s} {'side':5s} modalities / regions\n")
    for organ in known.organs.values():
        extra = []
        source = known.sources[organ.name]
        if source != "built-in":
            overrides = " (overrides the built-in one)" if organ.name in known.overridden else ""
            extra.append(f"user target: {source}{overrides}")
        if organ.parts:
            extra.append(f"pair of {' + '.join(organ.parts)}")
        if organ.synonyms:
            extra.append(f"also: {', '.join(organ.synonyms)}")
        side = organ.laterality if organ.laterality != "none" else "-"
        out.write(
            f"{organ.name:30s} {organ.top_k:<5d} {organ.window:11s} {side:5s} "
            f"{','.join(organ.modalities)} / {','.join(organ.regions)}"
            + (f"  ({'; '.join(extra)})" if extra else "")
            + "\n"
        )
    return 0


def _cmd_prompts_generate(args: argparse.Namespace) -> int:
    from salip.apps.new_targets import OVERRIDE_FIELDS, create_target
    from salip.apps.prompt_generation import GenerationConfig, generate_prompts, resolve_targets

    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    config = GenerationConfig(**{k: v for k, v in vars(args).items() if k in names})
    modalities = list(dict.fromkeys(m for group in args.modality for m in group))
    overrides = {k: getattr(args, k) for k in OVERRIDE_FIELDS if getattr(args, k) is not None}
    if args.new:
        if args.all_organs or not args.organ or len(args.organ) != 1:
            raise ConfigError('--new defines one target: give one --organ "NAME", not --all.')
        written = create_target(
            args.organ[0],
            modalities,
            pair=args.pair,
            overrides=overrides,
            config=config,
            prompts_folder=args.prompts_dir,
            force=args.force,
        )
    else:
        if overrides or args.pair:
            flag = "--pair" if args.pair else "--" + next(iter(overrides)).replace("_", "-")
            raise ConfigError(f"{flag} defines a new target: add --new, or drop it.")
        if len(modalities) != 1:
            raise ConfigError("give one --modality without --new (run once per modality).")
        targets = resolve_targets(args.organ, args.all_organs, modalities[0], args.prompts_dir)
        written = generate_prompts(
            targets,
            modalities[0],
            config=config,
            prompts_folder=args.prompts_dir,
            force=args.force,
        )
    for path in written:
        logger.info("wrote %s", path)
    return 0


def _cmd_prompts_list(args: argparse.Namespace) -> int:
    from salip.core.prompts import list_entries, prompts_dir

    out = sys.stdout
    out.write(f"prompts: {prompts_dir(args.prompts_dir)}\n")
    for row in list_entries(args.prompts_dir):
        if "error" in row:
            out.write(f"{row['organ']:30s} INVALID: {row['error']}\n")
            continue
        out.write(
            f"{row['organ']:30s} {row['modality']:5s} {row['count']:3d}  {row['source']:12s} "
            f"{row['origin']}  {row['date']}\n"
        )
    return 0


def _shown_target(text: str, folder: str | None) -> str:
    """The target ``text`` names in the prompt set ``folder``. When another file of the set
    is invalid (``salip prompts list`` marks it), the name is resolved without the set's
    vocabulary: a file of that name, else a built-in target; with a warning."""
    from salip.core.organs import get_organ
    from salip.core.prompts import prompt_path
    from salip.core.targets import name_key

    try:
        return get_organ(text, folder).name
    except ConfigError as exc:
        key = name_key(text)
        name = key if prompt_path(key, folder).is_file() else get_organ(text).name
        logger.warning("%s; showing %s without the rest of the set", str(exc).rstrip("."), name)
        return name


def _cmd_prompts_show(args: argparse.Namespace) -> int:
    from salip.core.prompts import BACKGROUND, load_prompt_file, prompt_path

    folder = args.prompts_dir
    name = args.organ if args.organ == BACKGROUND else _shown_target(args.organ, folder)
    data = load_prompt_file(name, folder)
    path = prompt_path(name, folder)
    entries = data["entries"]
    if args.modality and args.modality not in entries:
        raise ConfigError(
            f"{name} has no {args.modality} descriptions in {path}; it has: {', '.join(entries)}."
        )
    out = sys.stdout
    out.write(f"{name}  ({path})\n")
    for modality, entry in entries.items():
        if args.modality and modality != args.modality:
            continue
        origin = {k: v for k, v in entry.items() if k != "descriptions" and v is not None}
        out.write(f"\n[{modality}] " + ", ".join(f"{k}: {v}" for k, v in origin.items()) + "\n")
        for text in entry["descriptions"]:
            out.write(f"  - {text}\n")
    return 0


class _OneLine(logging.Formatter):
    """Other libraries' messages (and Python warnings, see :func:`_setup_logging`) on one
    line: highdicom's run over several."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.name.startswith("salip"):
            return text
        joined = " ".join(line.strip() for line in text.splitlines() if line.strip())
        return joined if len(joined) <= 300 else joined[:297].rstrip() + "..."


def _setup_logging(verbose: int, quiet: bool) -> None:
    """salip's messages at INFO (-v: DEBUG, -q: WARNING); other libraries' warnings, Python
    warnings included, one line each, and none with -q (-v: as they come)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    pattern = "%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"
    handler.setFormatter(logging.Formatter(pattern) if verbose else _OneLine(pattern))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.ERROR if quiet else logging.WARNING)
    logging.getLogger("salip").setLevel(level)
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``salip`` console script; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", 0)
    _setup_logging(verbose, getattr(args, "quiet", False))
    with _terminate_as_interrupt():
        return _run(args, verbose)


def _run(args: argparse.Namespace, verbose: int) -> int:
    """Run the command; every error becomes one line on stderr and a non-zero code."""
    from salip.core.errors import SalipError, one_line

    try:
        return int(args.func(args))
    except SalipError as exc:
        if verbose:
            logger.exception("error")
        sys.stderr.write(f"salip: error: {one_line(exc, limit=1000)}\n")
        return 1
    except BrokenPipeError:
        # Output piped into e.g. `head`, which stopped reading: not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("salip: interrupted\n")
        return 130
    except Exception as exc:  # noqa: BLE001 - last-resort one-line report
        if verbose:
            logger.exception("unexpected error")
        sys.stderr.write(
            f"salip: error: unexpected {type(exc).__name__}: {one_line(exc, limit=1000)}. This is a bug "
            "in salip: please report it with the output of the same command run with -v.\n"
        )
        return 1


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C while a command runs, so its cleanup runs too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
