"""``salip segment``: segment organs in a NIfTI volume, DICOM series or 2D image."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from salip.api.cases import find_cases, is_glob
from salip.api.many import RUN_TABLE, segment_many
from salip.api.pipeline import segment
from salip.apps.cli.flags import (
    GROUP_TITLES,
    Subparsers,
    add_cluster_flags,
    add_config_flags,
    cluster_options,
    config_options,
    flag,
)
from salip.core.errors import ConfigError, SalipError

__all__ = [
    "add_parser",
    "run",
]

logger = logging.getLogger("salip")


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
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
    _add_target_flags(seg)
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
    remote = seg.add_argument_group("on a server (salip serve)")
    remote.add_argument(
        "--server",
        metavar="URL",
        help="Send the run to a salip server (e.g. http://127.0.0.1:8765) and write the same "
        "files here; it waits across a server restart. One case at a time.",
    )
    remote.add_argument(
        "--token-file",
        metavar="FILE",
        help="With --server: the file holding the server's token (default: $SALIP_TOKEN, else "
        "$SALIP_HOME/serve/token).",
    )
    add_cluster_flags(seg)
    add_config_flags(seg, list(GROUP_TITLES))
    seg.set_defaults(func=run)


def _add_target_flags(seg: argparse.ArgumentParser) -> None:
    """--organ, --hint and --jobs."""
    seg.add_argument(
        "--organ",
        action="append",
        help="Organ to segment; repeat or comma-separate for several (see `salip organs`). "
        "With --jobs, the organs of rows that name none.",
    )
    seg.add_argument(
        "--hint",
        action="append",
        metavar="SPEC",
        help="Steer one target with a box or clicks on one slice, in voxel indices of the "
        "input (x, y along the file's in-plane axes, slice along the slicing axis, as napari "
        "and the statistics' bbox_voxels show them): liver:slice=40:box=120,80,260,210 or "
        "liver:slice=40:point=150,120[:neg]. Repeatable; best with --strategy volume, which "
        "propagates a hinted target from its slice. One case.",
    )
    seg.add_argument(
        "--jobs",
        metavar="FILE",
        help="A CSV (header row) or JSON Lines (.jsonl) file of cases, one per row: input, "
        "and optionally organs, series (a DICOM series UID) and output (the mask path, "
        "relative to the -o folder). Relative inputs are relative to the jobs file.",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``salip segment``; the exit code."""
    several = args.jobs is not None or len(args.input) > 1
    if args.hint and (
        args.server is not None or several or (args.input and is_glob(args.input[0]))
    ):
        raise ConfigError(
            "--hint names slices of one scan, run here: give one input and no --server."
        )
    if args.server is not None:
        return _segment_on_server(args)
    if args.token_file is not None:
        raise ConfigError("--token-file is for --server; drop it, or add --server URL.")
    if args.jobs is not None or len(args.input) > 1 or (args.input and is_glob(args.input[0])):
        return _segment_many(args)
    if args.input and _holds_several_cases(Path(args.input[0]), getattr(args, "series", None)):
        if args.hint:
            raise ConfigError(f"--hint names slices of one scan, and {args.input[0]} holds "
                              "several; pick one (or --series UID).")  # fmt: skip
        return _segment_many(args)
    if not args.input:
        raise ConfigError("no input: give a scan, several, a quoted glob, or --jobs FILE.")
    if args.organ is None:
        raise ConfigError("no organ given: name at least one, e.g. --organ liver.")
    single = [k for k in ("previews", "reports", "jobs") if getattr(args, k)]
    if single or cluster_options(args):
        flags = [flag(k) for k in (*single, *cluster_options(args))]
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
        hints=args.hint,
        **config_options(args),
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


def _segment_on_server(args: argparse.Namespace) -> int:
    """``salip segment --server URL``: one case, run on a salip server."""
    several = args.jobs is not None or len(args.input) != 1 or is_glob(args.input[0])
    if several or args.split or cluster_options(args) or args.previews or args.reports:
        raise ConfigError(
            "--server runs one case (no --jobs, globs, --split, --previews, --reports or "
            "cluster flags); the server's operator chooses its engine."
        )
    if args.organ is None:
        raise ConfigError("no organ given: name at least one, e.g. --organ liver.")
    from salip.api.client import Client, segment_remote

    def show(status: dict) -> None:
        logger.info("job %s: %s", status["id"], status["state"])

    with Client(args.server, token_file=args.token_file) as client:
        written = segment_remote(
            client, args.input[0], organs=args.organ, output=args.output,
            overwrite=args.overwrite, preview=args.preview, report=args.report,
            output_type=args.output_type, statistics=args.statistics, viewer=args.viewer,
            progress=None if args.quiet else _changes(show), **config_options(args),
        )  # fmt: skip
    for path in written:
        logger.info("wrote %s", path)
    return 0


def _changes(show: Callable[[dict], None]) -> Callable[[dict], None]:
    """``show`` called only when the job's state changes."""
    last: list[str] = []

    def seen(status: dict) -> None:
        if not last or last[-1] != status["state"]:
            last.append(status["state"])
            show(status)

    return seen


def _holds_several_cases(path: Path, series: str | None) -> bool:
    """Whether a folder given alone is a cohort to search (scans inside it, or a DICOM
    folder of several series when no --series picks one), not one DICOM series."""
    if not path.is_dir() or series is not None:
        return False
    try:
        cases = find_cases([path])
    except SalipError:
        return False  # the single-case reader says what is wrong with it
    return len(cases) > 1 or (len(cases) == 1 and cases[0].path != path.resolve())


def _segment_many(args: argparse.Namespace) -> int:
    """``salip segment`` with several cases: one folder of outputs and run.csv."""
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
        **cluster_options(args),
        **config_options(args),
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
