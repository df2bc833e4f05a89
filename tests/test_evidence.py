"""Deciding organs from their 3D evidence: known answers on crafted anatomy, one per rule.

Rules (``salip.strategies.evidence``, ``slices``' track pass, the volume walk): a short gap
is bridged; a slab with little recognition evidence loses to the organ whatever its size;
an organ in two pieces is kept whole; a walk survives a bad slice; a slice with no pick
between picked ones is prompted; an organ the scan does not hold is "not found"; a volume
track takes the candidates that stay on it; two organs claiming one region settle it.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import salip
from salip.apps.bench.simulated import ReferenceAnatomy, noise_preset, simulated_engines
from salip.core.config import SegmentConfig
from salip.core.organs import get_organ
from salip.core.timing import StageTimer
from salip.io import read_input
from salip.io.slicing import display_slice
from salip.strategies.base import SliceEvidence
from salip.strategies.cascade import Engines
from salip.strategies.evidence import confidence, decide_organ
from salip.strategies.slices import SlicesStrategy
from salip.strategies.tracks import best_chain, distance_from_track, neighbours
from salip.strategies.volume import VolumeStrategy
from tests.test_volume_strategy import NAMES, SHAPE, _disc, track, view_of

LIVER = get_organ("liver")


def _box(mask: np.ndarray, index: int) -> tuple[float, float, float, float]:
    """XYXY display box of a canonical mask's slice ``index``."""
    rows, cols = np.nonzero(display_slice(mask, False, "axial", index))
    return (float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))


def _evidence(mask: np.ndarray, slices, score: float) -> list[SliceEvidence]:
    return [SliceEvidence(k, score, _box(mask, k)) for k in slices]


def _decide(mask, evidence, max_gap=2, **kwargs):
    options = dict(axis="axial", is_2d=False, max_gap=max_gap, min_confidence=0.0, **kwargs)
    return decide_organ(mask, LIVER, evidence, **options)


def test_a_short_gap_is_bridged_and_filled():
    organ = np.zeros(SHAPE, bool)
    _disc(organ, True, (30, 30), 8, [*range(5, 10), *range(12, 17)])  # no pick on 10, 11
    said = _evidence(organ, [*range(5, 10), *range(12, 17)], 0.9)
    said += [SliceEvidence(k, 0.0) for k in (10, 11)]
    bridged = _decide(organ, said)
    assert len(bridged.account["pieces"]) == 1 and bridged.found
    expected = organ.copy()
    _disc(expected, True, (30, 30), 8, [10, 11])  # filled where both sides hold the organ
    assert np.array_equal(bridged.mask, expected)
    assert bridged.account["support"] == pytest.approx(10 / 12, abs=1e-4)
    # A gap longer than max_gap leaves two pieces, and nothing is filled.
    apart = _decide(organ, said, max_gap=1)
    assert len(apart.account["pieces"]) == 2 and np.array_equal(apart.mask, organ)


def test_a_slab_with_little_evidence_loses_to_the_organ_however_large():
    organ = np.zeros(SHAPE, bool)
    _disc(organ, True, (20, 20), 4, range(0, 20))  # 20 slices, recognised on each
    slab = np.zeros(SHAPE, bool)
    _disc(slab, True, (40, 40), 15, [30, 31])  # 2 slices, more voxels than the organ
    assert slab.sum() > organ.sum()
    said = _evidence(organ, range(0, 20), 0.8) + _evidence(slab, [30, 31], 0.9)
    decided = _decide(organ | slab, said)
    assert np.array_equal(decided.mask, organ)
    assert [p["kept"] for p in decided.account["pieces"]].count(True) == 1
    assert decided.account["share"] == pytest.approx(16 / (16 + 1.8), abs=1e-4)
    # Without evidence (an injected segmenter), the largest piece is kept, as before.
    assert np.array_equal(_decide(organ | slab, None).mask, slab)


def test_an_organ_in_two_pieces_is_kept_whole():
    organ = np.zeros(SHAPE, bool)
    _disc(organ, True, (15, 15), 5, range(5, 16))
    _disc(organ, True, (48, 48), 5, range(8, 20))  # a second part, apart in 3D
    said = []
    for k in range(5, 20):
        for centre in ((15, 15), (48, 48)):
            part = np.zeros(SHAPE, bool)
            _disc(part, True, centre, 5, [k])
            if (part & organ).any():
                said.append(SliceEvidence(k, 0.9, _box(part, k)))
    decided = _decide(organ, said)
    assert len(decided.account["pieces"]) == 2 and np.array_equal(decided.mask, organ)


def test_an_empty_mask_or_weak_evidence_is_not_found():
    empty = _decide(np.zeros(SHAPE, bool), [SliceEvidence(k, 0.0) for k in range(40)])
    assert not empty.found and empty.confidence == 0.0
    assert empty.reason == "no region was recognised as the organ"
    speck = np.zeros(SHAPE, bool)
    _disc(speck, True, (30, 30), 3, [12])  # one weak pick among 40 slices looked at
    said = [SliceEvidence(k, 0.0) for k in range(40) if k != 12]
    said += _evidence(speck, [12], 0.4)
    weak = decide_organ(
        speck, LIVER, said, axis="axial", is_2d=False, max_gap=2, min_confidence=0.5
    )
    assert not weak.found and weak.confidence < 0.5 and not weak.mask.any()
    assert weak.reason.startswith(f"confidence {weak.confidence:.2f} is below the minimum 0.5")
    strong = confidence({"score": 0.9, "share": 1.0, "span_mm": 60.0})
    assert strong > 0.9 > weak.confidence


class _FailOnce:
    """A refiner that returns an empty mask the first time slice ``index`` is prompted."""

    def __init__(self, refiner, index):
        self.refiner, self.index, self.failed = refiner, index, False

    def refine(self, embedding, boxes):
        masks, iou = self.refiner.refine(embedding, boxes)
        if embedding.index == self.index and not self.failed:
            self.failed = True
            return masks & False, iou * 0
        return masks, iou


def _volume_engines(labels, config, fail_at=None):
    anatomy = ReferenceAnatomy(labels, NAMES, axis="axial")
    encoder, proposer, recogniser, refiner = simulated_engines(
        anatomy, noise_preset("none"), 0, config
    )
    if fail_at is not None:
        refiner = _FailOnce(refiner, fail_at)
    return Engines(encoder, proposer, recogniser, refiner)


def test_a_walk_survives_a_bad_slice_and_fills_it():
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (30, 30), 10, range(8, 27))  # key slices every 5: seeds 10..25
    config = SegmentConfig().replace(strategy="volume")
    engines = _volume_engines(labels, config, fail_at=17)
    result = VolumeStrategy(engines, config, 4, StageTimer()).run(view_of(labels), [LIVER])
    assert np.array_equal(result.masks["liver"], labels == 1)
    liver = track(result, "liver")
    (seventeen,) = [s for s in liver["slices"] if s["slice"] == 17]
    assert seventeen["from"] == "interpolated"
    walk = [s for s in liver["stops"] if s["seed"] == 15 and s["direction"] == 1]
    assert walk[0]["reason"] == "reached another seed"
    # With one failure allowed, the same bad slice ends that walk.
    strict = config.replace(max_walk_failures=1)
    engines = _volume_engines(labels, strict, fail_at=17)
    result = VolumeStrategy(engines, strict, 4, StageTimer()).run(view_of(labels), [LIVER])
    walk = [s for s in track(result, "liver")["stops"] if s["seed"] == 15 and s["direction"] == 1]
    assert walk[0] == {
        "seed": 15,
        "direction": 1,
        "stopped_at": 17,
        "reason": "mask vanished",
        "bad_slices": 1,
    }


class _DropOn:
    """A proposer that proposes nothing on slice ``index``."""

    def __init__(self, proposer, index):
        self.proposer, self.index = proposer, index

    def propose(self, embeddings, regions=None):
        out = self.proposer.propose(embeddings, regions)
        none = torch.zeros(0, dtype=torch.long)
        return [p.select(none) if e.index == self.index else p for p, e in zip(out, embeddings)]


def test_slices_prompts_a_slice_without_a_pick_between_picked_ones():
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (30, 30), 10, range(8, 27))
    config = SegmentConfig()
    engines = _volume_engines(labels, config)
    engines.proposer = _DropOn(engines.proposer, 15)
    strategy = SlicesStrategy.from_engines(engines, config, 4, StageTimer())
    result = strategy.run(view_of(labels), [LIVER])
    assert np.array_equal(result.masks["liver"], labels == 1)
    (filled,) = [r for r in result.chosen["liver"] if r["slice"] == 15]
    assert filled["from"] == "interpolated"
    assert result.details["tracks"]["liver"]["filled"] == [15]
    assert SliceEvidence(15, 0.0) in result.evidence["liver"]  # prompted, not recognised


def test_an_organ_the_scan_does_not_hold_is_not_found(tmp_path):
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (30, 30), 10, range(8, 27))
    _disc(labels, 4, (49, 32), 6, range(5, 30))  # kidney_right only
    config = SegmentConfig().replace(strategy="volume")
    anatomy = ReferenceAnatomy(labels, NAMES, axis="axial")
    noise = noise_preset("moderate")
    strategy = VolumeStrategy(
        Engines(*simulated_engines(anatomy, noise, 0, config)), config, 4, StageTimer()
    )
    ct = np.full(SHAPE, -1000, np.int16)
    ct[2:62, 2:62] = 40  # a body of soft tissue in air
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, np.diag([1.0, 1.0, 3.0, 1.0])), path)
    volume = read_input(path)
    # kidney_left's look-alike (kidney_right) is there; the stomach has none.
    organs = ["liver", "kidney_left", "stomach"]
    result = salip.segment(volume, organs=organs, write=False, config=config, segmenter=strategy)
    report = result.report["organs"]
    assert report["liver"]["found"] and report["liver"]["confidence"] > 0.9
    for absent in ("kidney_left", "stomach"):
        assert not report[absent]["found"] and not result.masks[absent].any()
        assert report[absent]["reason"] == "no region was recognised as the organ"


def test_a_track_takes_the_candidates_that_stay_on_it():
    near = lambda x: (x, 20.0, x + 10.0, 30.0)  # noqa: E731
    far = (80.0, 80.0, 95.0, 95.0)
    candidates = {
        0: [(near(10), 0.8)],
        5: [(near(12), 0.8)],
        10: [(far, 0.99), (near(14), 0.6)],  # the best region strays; the second is on track
        15: [(near(16), 0.8)],
        20: [(far, 0.9)],  # only the stray one
        25: [(near(18), 0.8)],
    }
    order = sorted(candidates)
    chain = best_chain(candidates, order, (1.0, 1.0), 20.0, 1)
    assert chain == {0: 0, 5: 0, 10: 1, 15: 0, 25: 0}  # slice 20 bridged, not taken
    # Without a bridge the chain breaks at 20 and the longer part wins.
    assert best_chain(candidates, order, (1.0, 1.0), 20.0, 0) == {0: 0, 5: 0, 10: 1, 15: 0}
    # In mm: pixels 3 mm wide put every step of 2 px 6 mm apart, still on track at 20 mm.
    assert best_chain(candidates, order, (3.0, 3.0), 20.0, 1) == chain
    assert best_chain({}, order, (1.0, 1.0), 20.0, 1) == {}


def test_distance_from_a_track_interpolates_its_neighbouring_slices():
    track = {0: (0.0, 0.0, 10.0, 10.0), 10: (20.0, 0.0, 30.0, 10.0)}  # centres x 5 and 25
    assert neighbours(sorted(track), 5) == [0, 10]
    assert neighbours(sorted(track), 0) == [10]  # a slice is not its own neighbour
    assert neighbours(sorted(track), 12) == [10]
    # Expected centre at slice 5: x 15; a box centred at x 15 + 4 lies 4 px = 8 mm off.
    assert distance_from_track(track, 5, (14.0, 0.0, 24.0, 10.0), (2.0, 2.0)) == 8.0
    # Slice 0 counts as a neighbour (it is not "no neighbour").
    assert distance_from_track({0: track[0]}, 5, (3.0, 0.0, 13.0, 10.0), (1.0, 1.0)) == 3.0
    assert distance_from_track({5: track[0]}, 5, track[0], (1.0, 1.0)) is None


class _TakesLiverForSpleen:
    """A recogniser that consistently also accepts the liver's regions as the spleen, at
    0.9 of the liver's own score and above the spleen's regions (a systematic confusion,
    as CLIP's between look-alikes), wherever it is asked for both organs."""

    def __init__(self, recogniser):
        self.recogniser = recogniser

    def recognise(self, images, proposals, organs, indices):
        found = self.recogniser.recognise(images, proposals, organs, indices)
        if {"liver", "spleen"} <= {o.name for o in organs}:
            for slice_found in found:
                liver = slice_found.accepted["liver"]
                score = torch.as_tensor(slice_found.score["spleen"]).clone()
                score[liver] = 0.9 * torch.as_tensor(slice_found.score["liver"])[liver]
                own = [i for i in slice_found.accepted["spleen"] if i not in liver]
                score[own] = 0.8
                slice_found.score["spleen"] = score
                slice_found.accepted["spleen"] = liver + own
        return found


@pytest.mark.parametrize("order", [("liver", "spleen"), ("spleen", "liver")])
def test_an_organ_yields_a_region_another_organ_holds_with_more_evidence(order):
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 1, (24, 24), 12, range(0, 40))  # liver on every key slice
    _disc(labels, 2, (50, 50), 6, range(10, 31))  # spleen on key slices 10..30
    config = SegmentConfig().replace(strategy="volume")
    engines = _volume_engines(labels, config)
    engines.recogniser = _TakesLiverForSpleen(engines.recogniser)
    organs = [get_organ(name) for name in order]
    result = VolumeStrategy(engines, config, 4, StageTimer()).run(view_of(labels), organs)
    spleen = track(result, "spleen")
    # The confusion ranks the liver first for the spleen on every key slice and would
    # give the spleen the liver's longer chain; the liver's own track holds more evidence.
    assert {y["to"] for y in spleen["yielded"]} == {"liver"}
    assert spleen["extent"] == [10, 30]
    assert np.array_equal(result.masks["spleen"], labels == 2)
    assert np.array_equal(result.masks["liver"], labels == 1)
    assert "yielded" not in track(result, "liver")


class _TakesLiverForSpleenOn:
    """A recogniser that, on slice ``index`` only, ranks the liver's region first for the
    spleen (score 1.0), above the spleen's own (0.8)."""

    def __init__(self, recogniser, index):
        self.recogniser, self.index = recogniser, index

    def recognise(self, images, proposals, organs, indices):
        found = self.recogniser.recognise(images, proposals, organs, indices)
        if {"liver", "spleen"} <= {o.name for o in organs}:
            for slice_found, index in zip(found, indices):
                if index != self.index:
                    continue
                liver = slice_found.accepted["liver"]
                score = torch.as_tensor(slice_found.score["spleen"]).clone()
                own = [i for i in slice_found.accepted["spleen"] if i not in liver]
                score[liver], score[own] = 1.0, 0.8
                slice_found.score["spleen"] = score
                slice_found.accepted["spleen"] = liver + own
        return found


def test_the_organ_with_another_region_on_the_slice_yields_a_shared_one():
    labels = np.zeros(SHAPE, np.int16)
    _disc(labels, 2, (30, 20), 8, range(0, 40))  # spleen on every key slice: more evidence
    _disc(labels, 1, (30, 44), 8, range(15, 26))  # liver beside it, key slices 15..25
    config = SegmentConfig().replace(strategy="volume")
    engines = _volume_engines(labels, config)
    engines.recogniser = _TakesLiverForSpleenOn(engines.recogniser, 20)
    organs = [get_organ("spleen"), get_organ("liver")]
    result = VolumeStrategy(engines, config, 4, StageTimer()).run(view_of(labels), organs)
    # The spleen's track takes the liver's region on slice 20 (it scores higher and lies
    # on the track); the spleen still has its own region there, the liver has none other,
    # so the spleen yields although its track holds more evidence.
    assert track(result, "spleen")["yielded"] == [{"slice": 20, "to": "liver"}]
    liver = track(result, "liver")
    assert "yielded" not in liver and [s["slice"] for s in liver["seeds"]] == [15, 20, 25]
    assert [s["slice"] for s in track(result, "spleen")["seeds"]] == list(range(0, 40, 5))
    assert np.array_equal(result.masks["spleen"], labels == 2)
    assert np.array_equal(result.masks["liver"], labels == 1)
