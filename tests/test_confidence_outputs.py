"""Per-organ confidence and "not found" through every output: the report, the mask files
(label map, --split, DICOM SEG), the sidecar, the statistics, the viewer, run.csv and the
benchmark's cases.csv.

A strategy injected through ``salip.segment(segmenter=...)`` gives known masks and known
recognition evidence: the liver is recognised strongly on every slice it spans (high
confidence), the spleen weakly on one slice of ten (low confidence: "not found" at the
default ``min_confidence``). The expected confidences are the evidence module's own
decisions on the same masks and evidence, with the CT's 3 mm slices.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil

import highdicom as hd
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import salip
from salip.apps.bench.methods import make_method
from salip.apps.bench.runner import CASE_COLUMNS, run_benchmark
from salip.apps.cli import main
from salip.core.config import SegmentConfig, StrategyConfig
from salip.core.errors import ConfigError
from salip.core.organs import get_organ
from salip.io import read_input, to_canonical
from salip.io.dicom_seg import grid_from_frames
from salip.io.slicing import display_slice
from salip.io.writing import sidecar_path
from salip.outputs.viewer import decode_viewer
from salip.strategies.base import SliceEvidence, StrategyResult
from salip.strategies.evidence import decide_organ
from tests.conftest import TOTALSEG, LabelStrategy, require_data


def _box(mask: np.ndarray, k: int) -> tuple[float, float, float, float]:
    """XYXY (max inclusive) of ``mask`` on axial display slice ``k``."""
    rows, cols = np.nonzero(display_slice(mask, False, "axial", k))
    return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())


class EvidenceStrategy:
    """Known canonical masks and recognition evidence; no model runs."""

    name = "evidence"
    intensity_organs = None

    def __init__(self, masks, evidence) -> None:
        self.masks, self.evidence = masks, evidence

    def run(self, view, organs, *, progress=False):
        masks = {o.name: self.masks[o.name].copy() for o in organs}
        return StrategyResult(masks, {o.name: [] for o in organs}, evidence=self.evidence)


def _strategy(shape: tuple[int, ...]) -> EvidenceStrategy:
    """Liver: 40x40x10 voxels on axial slices 5-14, recognised at 0.9 on each. Spleen:
    20x20x10 voxels on slices 10-19, recognised at 0.1 on slice 12 only."""
    liver = np.zeros(shape, dtype=bool)
    liver[20:60, 20:60, 5:15] = True
    spleen = np.zeros(shape, dtype=bool)
    spleen[70:90, 30:50, 10:20] = True
    evidence = {
        "liver": [SliceEvidence(k, 0.9, _box(liver, k)) for k in range(5, 15)],
        "spleen": [
            SliceEvidence(k, 0.1, _box(spleen, k)) if k == 12 else SliceEvidence(k, 0.0)
            for k in range(10, 20)
        ],
    }
    return EvidenceStrategy({"liver": liver, "spleen": spleen}, evidence)


def _expected(name: str) -> float:
    """The organ's confidence as the evidence module decides it (3 mm slices), rounded as
    the outputs give it."""
    strategy = _strategy((122, 101, 30))  # example_ct_sm's canonical shape
    decision = decide_organ(
        strategy.masks[name], get_organ(name), strategy.evidence[name], axis="axial",
        is_2d=False, max_gap=2, min_confidence=0.5, slice_mm=3.0,
    )  # fmt: skip
    return round(decision.confidence, 4)


LIVER, SPLEEN = _expected("liver"), _expected("spleen")
SPLEEN_REASON = f"confidence {SPLEEN:.2f} is below the minimum 0.5"


@pytest.fixture(scope="module")
def ct():
    path = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    return path, read_input(path)


def test_the_report_statistics_mask_and_viewer_say_not_found(ct, tmp_path, caplog):
    path, volume = ct
    out = {k: tmp_path / n for k, n in [("m", "m.nii.gz"), ("r", "r.json"), ("s", "s.json"),
                                        ("v", "v.html")]}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="salip"):
        result = salip.segment(
            path, organs="liver,spleen", output=out["m"], report=out["r"],
            statistics=out["s"], viewer=out["v"], segmenter=_strategy(volume.data.shape),
        )  # fmt: skip
    report = json.loads(out["r"].read_text())
    liver, spleen = report["organs"]["liver"], report["organs"]["spleen"]
    assert (liver["confidence"], liver["found"], liver["reason"]) == (LIVER, True, None)
    assert liver["voxels"] == 40 * 40 * 10 and liver["volume_ml"] == pytest.approx(16000 * 27e-3)
    assert liver["decision"]["pieces"] == [{"voxels": 16000, "evidence": 9.0, "kept": True}]
    assert (liver["decision"]["score"], liver["decision"]["share"]) == (0.9, 1.0)
    assert liver["decision"]["slices"] == 10 and liver["decision"]["confidence"] == LIVER
    assert 0.5 <= LIVER < 1
    assert (spleen["confidence"], spleen["found"], spleen["reason"]) == (
        SPLEEN,
        False,
        SPLEEN_REASON,
    )
    assert 0 < SPLEEN < 0.5
    assert (spleen["voxels"], spleen["volume_ml"], spleen["slices"]) == (0, 0.0, [])
    assert spleen["decision"]["score"] == 0.1 and spleen["decision"]["confidence"] == SPLEEN
    assert report["config"]["assembly"] == {
        "largest_component": True, "min_confidence": 0.5, "max_gap_slices": 2,
    }  # fmt: skip
    assert result.report["organs"]["spleen"]["found"] is False
    not_found = [r.getMessage() for r in caplog.records if "not found" in r.getMessage()]
    assert not_found == [f"example_ct_sm.nii.gz: spleen not found: {SPLEEN_REASON}"]
    # The label map holds the liver and no spleen; so does the returned array.
    labels = np.asarray(nib.load(out["m"]).dataobj)
    assert int((labels == 1).sum()) == 16000 and int((labels == 2).sum()) == 0
    assert int(result.masks["spleen"].sum()) == 0
    sidecar = json.loads(sidecar_path(out["m"]).read_text())
    assert sidecar["confidence"] == {"liver": LIVER, "spleen": SPLEEN}
    assert sidecar["volume_ml"]["spleen"] == 0.0
    # Statistics: the answer beside the numbers; the reason only when not found.
    stats = json.loads(out["s"].read_text())["organs"]
    assert (stats["liver"]["confidence"], stats["liver"]["found"]) == (LIVER, True)
    assert "reason" not in stats["liver"] and stats["liver"]["voxels"] == 16000
    assert (stats["spleen"]["confidence"], stats["spleen"]["found"]) == (SPLEEN, False)
    assert stats["spleen"]["reason"] == SPLEEN_REASON
    assert (stats["spleen"]["voxels"], stats["spleen"]["components"]) == (0, 0)
    # The viewer's legend data.
    _, view_labels, meta = decode_viewer(out["v"].read_text(encoding="utf-8"))
    organs = {o["name"]: o for o in meta["organs"]}
    assert (organs["liver"]["confidence"], organs["liver"]["found"]) == (LIVER, True)
    assert (organs["liver"]["voxels"], organs["spleen"]["voxels"]) == (16000, 0)
    assert (organs["spleen"]["found"], organs["spleen"]["reason"]) == (False, SPLEEN_REASON)
    assert int((view_labels == 2).sum()) == 0


def test_split_files_and_min_confidence_zero(ct, tmp_path):
    path, volume = ct
    strategy = _strategy(volume.data.shape)
    result = salip.segment(path, organs="liver,spleen", output=tmp_path / "split", split=True,
                           segmenter=strategy)  # fmt: skip
    assert int(np.asarray(nib.load(tmp_path / "split" / "liver.nii.gz").dataobj).sum()) == 16000
    assert int(np.asarray(nib.load(tmp_path / "split" / "spleen.nii.gz").dataobj).sum()) == 0
    assert result.report["organs"]["spleen"]["voxels"] == 0
    # 0 never withholds: the spleen keeps its mask, with the same (low) confidence.
    kept = salip.segment(path, organs="liver,spleen", write=False, segmenter=strategy,
                         min_confidence=0)  # fmt: skip
    spleen = kept.report["organs"]["spleen"]
    assert (spleen["confidence"], spleen["found"], spleen["reason"]) == (SPLEEN, True, None)
    assert spleen["voxels"] == 20 * 20 * 10 and int(kept.masks["spleen"].sum()) == 4000


def test_no_evidence_gives_no_confidence_and_never_withholds(ct, tmp_path):
    path, volume = ct
    canonical = np.zeros(volume.data.shape, dtype=np.uint8)
    canonical[20:60, 20:60, 5:15] = 1
    strategy = LabelStrategy(canonical, {"liver": 1, "spleen": 2})  # evidence None
    result = salip.segment(path, organs="liver,spleen", write=False, segmenter=strategy,
                           min_confidence=1.0, statistics=tmp_path / "s.json")  # fmt: skip
    liver, spleen = result.report["organs"]["liver"], result.report["organs"]["spleen"]
    assert (liver["confidence"], liver["found"], liver["reason"]) == (None, True, None)
    assert liver["decision"] is None and liver["voxels"] == 16000  # not withheld at 1.0
    # An organ whose mask is empty is not found, for that reason alone.
    assert (spleen["confidence"], spleen["found"], spleen["reason"]) == (
        None, False, "the mask is empty",
    )  # fmt: skip
    stats = json.loads((tmp_path / "s.json").read_text())["organs"]
    assert (stats["liver"]["confidence"], stats["liver"]["found"]) == (None, True)


def test_a_dicom_seg_keeps_the_segment_of_an_organ_not_found(tmp_path):
    path = require_data(TOTALSEG / "example_ct_dicom_uids")
    volume = read_input(path)
    labels = np.asarray(nib.load(require_data(TOTALSEG / "example_seg_dicom.nii.gz")).dataobj)
    liver = to_canonical(labels, volume.geometry) == 5
    slices = np.nonzero(liver.any(axis=(0, 1)))[0]
    evidence = {
        "liver": [SliceEvidence(int(k), 0.9, _box(liver, int(k))) for k in slices],
        "spleen": [SliceEvidence(int(k), 0.0) for k in slices],  # looked at, never seen
    }
    spleen = to_canonical(labels, volume.geometry) == 1
    strategy = EvidenceStrategy({"liver": liver, "spleen": spleen}, evidence)
    result = salip.segment(path, organs="liver,spleen", output=tmp_path / "m.dcm",
                           segmenter=strategy)  # fmt: skip
    assert result.report["organs"]["spleen"]["found"] is False
    assert result.report["organs"]["liver"]["found"] is True
    seg = hd.seg.segread(tmp_path / "m.dcm")
    assert [(d.SegmentNumber, d.SegmentLabel) for d in seg.SegmentSequence] == [
        (1, "liver"), (2, "spleen"),
    ]  # fmt: skip
    uids = [ds.SOPInstanceUID for ds in volume.sources]
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    grid = grid_from_frames(frames)
    # (The liver's mask as decided: gaps of up to 2 slices between its pieces are filled.)
    written = result.report["organs"]["liver"]["voxels"]
    assert int((grid == 1).sum()) == written >= int(liver.sum()) > 0
    assert int((grid == 2).sum()) == 0


def test_run_csv_has_confidence_columns_and_keeps_them_on_a_rerun(ct, tmp_path, monkeypatch):
    import salip.api.many as many

    path, _ = ct
    original = many.segment_case

    def injected(source, **kwargs):
        return original(source, **{**kwargs, "segmenter": _strategy(source.data.shape)})

    monkeypatch.setattr(many, "segment_case", injected)
    out = tmp_path / "out"
    rows = salip.segment_many([path], organs="liver,spleen", output=out)
    assert [r.status for r in rows] == ["done"]
    assert rows[0].confidence == {"liver": LIVER, "spleen": SPLEEN}

    def table():
        with open(out / "run.csv", newline="") as handle:
            reader = csv.DictReader(handle)
            return reader.fieldnames, list(reader)

    header, (row,) = table()
    assert header[-4:] == ["liver_ml", "liver_confidence", "spleen_ml", "spleen_confidence"]
    assert (float(row["liver_ml"]), float(row["liver_confidence"])) == (
        pytest.approx(16000 * 27e-3), LIVER,
    )  # fmt: skip
    assert (float(row["spleen_ml"]), float(row["spleen_confidence"])) == (0.0, SPLEEN)
    # A rerun skips the case and keeps what the ledger knew; without the ledger, the
    # sidecar says it.
    again = salip.segment_many([path], organs="liver,spleen", output=out)
    assert [r.status for r in again] == ["skipped"]
    _, (row,) = table()
    assert (float(row["spleen_ml"]), float(row["spleen_confidence"])) == (0.0, SPLEEN)
    (out / "run.csv").unlink()
    salip.segment_many([path], organs="liver,spleen", output=out)
    _, (row,) = table()
    assert (row["status"], float(row["spleen_confidence"])) == ("skipped", SPLEEN)
    # --min-confidence 0 on the command line keeps the spleen (a folder holding one scan
    # is a cohort).
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(path, scans / path.name)
    code = main(["segment", str(scans), "--organ", "liver,spleen", "-o", str(tmp_path / "kept"),
                 "--min-confidence", "0", "--no-progress"])  # fmt: skip
    assert code == 0
    with open(tmp_path / "kept" / "run.csv", newline="") as handle:
        kept = list(csv.DictReader(handle))[0]
    assert (float(kept["spleen_ml"]), float(kept["spleen_confidence"])) == (
        pytest.approx(4000 * 27e-3), SPLEEN,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_confidence": 1.5}, r"min_confidence must be in \[0, 1\]"),
        ({"min_confidence": -0.1}, r"min_confidence must be in \[0, 1\]"),
        ({"max_gap_slices": -1}, r"max_gap_slices must be 0 \(no bridging\) or more"),
        ({"max_gap_slices": 1.5}, r"max_gap_slices = 1.5 has the wrong type; expected int"),
    ],
)
def test_bad_assembly_settings_say_what_to_do(options, message):
    with pytest.raises(ConfigError, match=message):
        SegmentConfig().replace(**options)


def test_the_flags_reach_the_config():
    from salip.apps.cli.app import build_parser
    from salip.apps.cli.flags import config_options

    args = build_parser().parse_args(
        ["segment", "x.nii.gz", "--organ", "liver", "--min-confidence", "0.2",
         "--max-gap-slices", "4"]
    )  # fmt: skip
    config = SegmentConfig().replace(**config_options(args))
    assert (config.assembly.min_confidence, config.assembly.max_gap_slices) == (0.2, 4)


def test_cases_csv_has_the_confidence_and_simulated_rows_default_their_strategy(tmp_path):
    require_data(TOTALSEG / "example_ct_sm.nii.gz")
    organs = ["liver", "spleen"]
    config = tmp_path / "bench.toml"
    config.write_text(f"""
[metrics]
bootstrap_resamples = 10
worst_cases = 1

[[methods]]
name = "default"
method = "simulated"
noise = "none"

[[methods]]
name = "strict"
method = "simulated"
noise = "none"
min_confidence = 1.0

[[datasets]]
name = "ct"
kind = "nifti-multilabel"
images = "{TOTALSEG}/example_ct_sm.nii.gz"
labels = "{{dir}}/example_seg.nii.gz"
label_names = "{TOTALSEG}/labels_total.json"
organs = {json.dumps(organs)}
""")
    # A simulated row without `strategy` runs the product's default strategy.
    method = make_method({"name": "default", "method": "simulated", "noise": "none"}, {})
    assert method.config.strategy.strategy == StrategyConfig().strategy
    result = run_benchmark(config, out=tmp_path / "out")
    cases = pd.read_csv(result.out / "cases.csv")
    assert list(cases.columns) == list(CASE_COLUMNS) and "confidence" in CASE_COLUMNS
    assert (cases.status == "ok").all() and len(cases) == 2 * len(organs)
    rows = cases.set_index(["method", "organ"])
    assert StrategyConfig().strategy == "auto"
    assert set(cases.strategy) == {"volume"}  # auto runs the volume strategy on a volume
    for organ in organs:
        default, strict = rows.loc[("default", organ)], rows.loc[("strict", organ)]
        assert 0.5 <= default.confidence < 1 and default.pred_voxels > 0
        # Every confidence is below 1: at min_confidence 1 every organ is not found.
        assert strict.confidence == default.confidence and strict.pred_voxels == 0
        assert strict.dice == 0


def test_the_viewer_legend_shows_confidence_and_not_found(ct, tmp_path):
    from tests.outputs.viewer.test_viewer import _browser, opened_viewer

    _browser()  # skip before segmenting when there is no browser
    path, volume = ct
    page_path = tmp_path / "v.html"
    salip.segment(path, organs="liver,spleen", write=False, viewer=page_path,
                  segmenter=_strategy(volume.data.shape))  # fmt: skip
    with opened_viewer(page_path) as page:
        rows = page.locator("#organs .organ").all_inner_texts()
    liver, spleen = (" ".join(r.split()) for r in rows)
    assert liver.startswith("liver 16,000 voxels · slices") and f"confidence {LIVER:.2f}" in liver
    assert spleen == f"spleen not found: {SPLEEN_REASON} go"
