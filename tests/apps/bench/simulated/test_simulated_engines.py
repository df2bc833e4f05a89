"""Simulated engines (salip.apps.bench.simulated): known answers without noise, each noise
kind doing what it says, seeded determinism independent of batching, and an end-to-end run
on a real CT with its multi-organ reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from salip.apps.bench.simulated import (
    NOISE_PRESETS,
    TISSUE_GRID,
    NoiseConfig,
    ReferenceAnatomy,
    SimulatedEncoder,
    SimulatedProposer,
    SimulatedRecogniser,
    SimulatedRefiner,
    noise_preset,
    similar_classes,
    simulated_engines,
)
from salip.core.config import SegmentConfig
from salip.core.errors import ConfigError
from salip.core.organs import get_organ
from salip.engines.boxes import grow_boxes
from salip.engines.everything_mode import Proposals
from salip.io.slicing import from_display, slice_image
from tests.conftest import TOTALSEG, require_data

EIGHT = np.ones((3, 3), dtype=bool)
LIVER, SPLEEN, KIDNEY_RIGHT, KIDNEY_LEFT = 5, 1, 2, 3
NAMES = {"1": "spleen", "2": "kidney_right", "3": "kidney_left", "5": "liver"}


def body_image(shape=(40, 60), rows=(2, 38), cols=(2, 58)) -> np.ndarray:
    """HxWx3 uint8 display image: a grey body rectangle on black."""
    image = np.zeros((*shape, 3), dtype=np.uint8)
    image[rows[0] : rows[1], cols[0] : cols[1]] = 120
    return image


def two_organs() -> np.ndarray:
    """40x60 labels: a liver of two components (300 and 25 px) and a spleen (225 px)."""
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[5:20, 5:25] = LIVER
    labels[25:30, 5:10] = LIVER
    labels[5:20, 35:50] = SPLEEN
    return labels


def engines(labels, noise=None, seed=0, **recogniser):
    anatomy = ReferenceAnatomy(labels, NAMES)
    return (
        anatomy,
        SimulatedEncoder(anatomy),
        SimulatedProposer(anatomy, noise, seed),
        SimulatedRecogniser(anatomy, noise, seed, **recogniser),
        SimulatedRefiner(anatomy, noise, seed),
    )


def propose(labels, noise=None, seed=0, image=None):
    anatomy, encoder, proposer, _, _ = engines(labels, noise, seed)
    (embedding,) = encoder.encode([body_image() if image is None else image], indices=[0])
    return proposer.propose([embedding])[0]


def as_set(masks) -> set[bytes]:
    return {np.packbits(np.asarray(m)).tobytes() for m in masks}


def components(mask: np.ndarray) -> list[np.ndarray]:
    lab, n = ndimage.label(mask, EIGHT)
    return [lab == k for k in range(1, n + 1)]


def tissue_chunks(tissue: np.ndarray) -> list[np.ndarray]:
    """The unlabelled tissue cut by the 4x4 grid, computed here cell by cell."""
    h, w = tissue.shape
    ch, cw = math.ceil(h / TISSUE_GRID), math.ceil(w / TISSUE_GRID)
    out = []
    for r in range(0, h, ch):
        for c in range(0, w, cw):
            cell = np.zeros_like(tissue)
            cell[r : r + ch, c : c + cw] = tissue[r : r + ch, c : c + cw]
            out += components(cell)
    return out


def proposals_of(masks: list[np.ndarray]) -> Proposals:
    from torchvision.ops import masks_to_boxes

    stacked = torch.from_numpy(np.stack(masks))
    n = len(masks)
    return Proposals(
        stacked, masks_to_boxes(stacked), torch.ones(n), torch.ones(n), torch.zeros(n, 2)
    )


# --------------------------------------------------------------------------- no noise


def test_without_noise_the_proposals_are_the_components_and_tissue_chunks():
    labels = two_organs()
    props = propose(labels)
    body = body_image()[..., 0] > 0
    expected = components(labels == LIVER) + components(labels == SPLEEN)
    expected += tissue_chunks(body & (labels == 0))
    assert len(props) == len(expected) and as_set(props.masks.numpy()) == as_set(expected)
    # A seeded random order (SAM's follows no size or class), so equal scores tie at random.
    again, other = propose(labels), propose(labels, seed=1)
    assert torch.equal(again.masks, props.masks) and not torch.equal(other.masks, props.masks)
    assert props.masks.dtype == torch.bool and props.boxes.dtype == torch.float32
    # Boxes are XYXY with the max corner inclusive; points are their centres.
    liver = props.masks.numpy().reshape(len(props), -1)[:, 5 * 60 + 5].argmax()
    assert props.boxes[liver].tolist() == [5.0, 5.0, 24.0, 19.0]
    assert props.points[liver].tolist() == [14.5, 12.0]
    assert torch.all(props.iou_preds == 1) and torch.all(props.stability == 1)


def test_without_noise_the_recogniser_accepts_the_organs_components_and_picks_the_purest():
    labels = two_organs()
    anatomy, encoder, proposer, recogniser, _ = engines(labels)
    image = body_image()
    (emb,) = encoder.encode([image], indices=[0])
    props = proposer.propose([emb])[0]
    liver, spleen = get_organ("liver"), get_organ("spleen")
    (found,) = recogniser.recognise([image], [props], [liver, spleen], indices=[0])
    masks = props.masks.numpy()
    for organ, value in ((liver, LIVER), (spleen, SPLEEN)):
        expected = as_set(components(labels == value))
        assert as_set(masks[found.accepted[organ.name]]) == expected
        (picked,) = found.picked[organ.name]  # top-k 1: one of the pure ones (a tie)
        assert as_set(masks[[picked]]) <= expected
        assert found.scores[organ.name]["purity"][picked] == 1.0
        assert len(found.score[organ.name]) == len(props)
    # Mixed parts: the purest wins; a part mostly liver is still accepted; tissue is not.
    whole = labels == LIVER
    big = components(whole)[0]
    mixed = big.copy()
    mixed[5:20, 25:33] = True  # 120 tissue pixels: purity 300 / 420
    tissue = np.zeros_like(whole)
    tissue[30:36, 20:30] = True
    props = proposals_of([mixed, tissue, big])
    (found,) = recogniser.recognise([image], [props], [liver], indices=[0])
    assert found.picked["liver"] == [2] and found.accepted["liver"] == [2, 0]
    assert found.scores["liver"]["purity"] == pytest.approx([300 / 420, 0.0, 1.0])
    probability = found.scores["liver"]["probability"]
    assert probability[2] > probability[0] > 0.5 > probability[1]


def test_without_noise_the_refiner_returns_the_dominant_component():
    labels = two_organs()
    _, encoder, _, _, refiner = engines(labels)
    (emb,) = encoder.encode([body_image()], indices=[0])
    big = components(labels == LIVER)[0]
    boxes = torch.tensor(
        [
            [5.0, 5.0, 24.0, 19.0],  # tight on the big liver component
            [12.0, 5.0, 40.0, 19.0],  # 13 liver columns, 6 spleen columns
            [28.0, 30.0, 33.0, 35.0],  # tissue only
        ]
    )
    masks, iou = refiner.refine(emb, boxes)
    assert masks.shape == (3, 40, 60) and masks.dtype == torch.bool
    assert np.array_equal(masks[0].numpy(), big) and iou[0] == pytest.approx(1.0)
    # The liver, cut to the box grown by 10% per side; its predicted IoU is its share.
    x0, _, x1, _ = grow_boxes(boxes[1].numpy(), 0.1)
    cols = np.arange(60)[None, :]
    expected = big & (cols >= math.floor(x0)) & (cols <= math.ceil(x1))
    assert np.array_equal(masks[1].numpy(), expected)
    assert iou[1] == pytest.approx(13 * 15 / (19 * 15))
    assert not masks[2].any() and iou[2] == 0.0
    empty, none = refiner.refine(emb, torch.zeros((0, 4)))
    assert empty.shape == (0, 40, 60) and none.shape == (0,)


# --------------------------------------------------------------------------- noise kinds


def labelled(props, labels, value) -> list[np.ndarray]:
    """The proposals lying wholly in label ``value``."""
    return [m for m in props.masks.numpy() if m.any() and np.all(labels[m] == value)]


def test_split_cuts_every_part_into_two_or_three_pieces():
    labels = two_organs()
    props = propose(labels, NoiseConfig(split_rate=1.0))
    pieces = labelled(props, labels, LIVER)
    assert 2 * 2 <= len(pieces) <= 3 * 2
    assert np.array_equal(np.sum(pieces, axis=0), labels == LIVER)  # disjoint, covering


def test_merge_fuses_parts_across_labels():
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[2:38, 2:30] = LIVER
    labels[2:38, 30:58] = SPLEEN  # the body is the two organs, side by side
    props = propose(labels, NoiseConfig(merge_rate=1.0, merge_keep_rate=0.0))
    union = (labels == LIVER) | (labels == SPLEEN)
    assert len(props) == 2 and all(np.array_equal(m, union) for m in props.masks.numpy())
    # A merged part is also proposed alone, with probability merge_keep_rate.
    kept = propose(labels, NoiseConfig(merge_rate=1.0, merge_keep_rate=1.0)).masks.numpy()
    assert as_set(kept) == as_set([union, labels == LIVER, labels == SPLEEN])
    # With tissue around, every organ part takes a neighbour of another class.
    labels = two_organs()
    props = propose(labels, NoiseConfig(merge_rate=1.0, merge_keep_rate=0.0))
    assert not labelled(props, labels, LIVER) and not labelled(props, labels, SPLEEN)
    kept = propose(labels, NoiseConfig(merge_rate=1.0, merge_keep_rate=1.0))
    assert labelled(kept, labels, LIVER) and labelled(kept, labels, SPLEEN)


def test_drop_removes_parts():
    labels = two_organs()
    assert len(propose(labels, NoiseConfig(drop_rate=1.0))) == 0
    some = len(propose(labels, NoiseConfig(drop_rate=0.5)))
    assert 0 < some < len(propose(labels))


def test_jitter_moves_boundaries_by_at_most_its_distance_in_mm():
    labels = two_organs()
    exact = propose(labels).masks.numpy()
    jittered = propose(labels, NoiseConfig(jitter_mm=2.0)).masks.numpy()  # 1 mm pixels
    assert not as_set(jittered) <= as_set(exact)
    disk = np.add.outer(np.arange(-2, 3) ** 2, np.arange(-2, 3) ** 2) <= 4
    for mask in jittered:
        original = exact[np.argmax([(mask & e).sum() for e in exact])]
        assert not (mask & ~ndimage.binary_dilation(original, disk)).any()
        eroded = ndimage.binary_erosion(original, disk, border_value=1)
        assert not (eroded & ~mask).any()
    # The same 2 mm on 3 mm pixels moves no pixel: the jitter is physical, not per pixel.
    coarse = ReferenceAnatomy(labels, NAMES, spacing=(3.0, 3.0))
    encoder = SimulatedEncoder(coarse)
    (emb,) = encoder.encode([body_image()], indices=[0])
    moved = SimulatedProposer(coarse, NoiseConfig(jitter_mm=2.0)).propose([emb])[0]
    assert as_set(moved.masks.numpy()) == as_set(exact)
    # 4 mm on 3 mm pixels moves a boundary by one pixel at most.
    one = SimulatedProposer(coarse, NoiseConfig(jitter_mm=4.0)).propose([emb])[0].masks.numpy()
    ring = np.ones((3, 3), dtype=bool)
    for mask in one:
        original = exact[np.argmax([(mask & e).sum() for e in exact])]
        assert not (mask & ~ndimage.binary_dilation(original, ring)).any()


def test_score_noise_and_confusion():
    labels = two_organs()
    image = body_image()
    liver = get_organ("liver")
    clean = engines(labels)
    props = propose(labels)
    (base,) = clean[3].recognise([image], [props], [liver], indices=[0])
    noisy = SimulatedRecogniser(clean[0], NoiseConfig(score_sigma=0.5), seed=1)
    (found,) = noisy.recognise([image], [props], [liver], indices=[0])
    assert found.scores["liver"]["purity"] == base.scores["liver"]["purity"]
    assert found.score["liver"] != base.score["liver"]
    # Full confusion: the spleen looks like liver, the liver like spleen.
    confused = SimulatedRecogniser(clean[0], NoiseConfig(confusion_rate=1.0))
    (found,) = confused.recognise([image], [props], [liver], indices=[0])
    masks = props.masks.numpy()
    assert as_set(masks[found.accepted["liver"]]) == as_set(components(labels == SPLEEN))
    assert similar_classes("liver") == ("spleen",)
    assert similar_classes("kidney_left") == ("kidney_right",)
    assert similar_classes("inferior_vena_cava") == ("aorta",)
    assert similar_classes("rib_right_7") == ("rib_left_7",) and similar_classes("colon") == ()


def test_a_biased_organ_is_confused_with_one_look_alike_on_every_slice():
    """bias_rate: per case and organ, not per slice: a biased spleen takes liver parts on
    most slices of the case, an unbiased one on none."""
    labels = two_organs()
    image = body_image()
    spleen = get_organ("spleen")
    # 20 axial slices that all show the same display slice.
    volume = np.stack([from_display(labels)] * 20, axis=2)
    anatomy = ReferenceAnatomy(volume, NAMES)
    props = propose(labels)
    liver_parts = as_set(components(labels == LIVER))

    def taken(seed: int, noise: NoiseConfig) -> list[bool]:
        recogniser = SimulatedRecogniser(anatomy, noise, seed)
        out = []
        for index in range(20):  # the same slice asked as 20 slices of the case
            (found,) = recogniser.recognise([image], [props], [spleen], indices=[index])
            masks = props.masks.numpy()[found.accepted["spleen"]]
            out.append(bool(as_set(masks) & liver_parts))
        return out

    biased = NoiseConfig(bias_rate=1.0, bias_swap=0.5)
    assert SimulatedRecogniser(anatomy, biased, 0).bias_class(spleen, ["liver"]) == "liver"
    assert 5 <= sum(taken(0, biased)) <= 19  # about half the slices, on each of them alike
    assert not any(taken(0, NoiseConfig(bias_rate=0.0, bias_swap=1.0)))
    # Which cases are biased is drawn once per seed and organ, at the given rate.
    sometimes = NoiseConfig(bias_rate=0.3)
    drawn = [
        SimulatedRecogniser(anatomy, sometimes, seed).bias_class(spleen, ["liver"])
        for seed in range(200)
    ]
    assert 0.2 < drawn.count("liver") / 200 < 0.4 and set(drawn) == {"liver", None}


def test_the_predicted_iou_does_not_see_the_boundary_error_and_errs_by_itself():
    labels = two_organs()
    anatomy = ReferenceAnatomy(labels, NAMES)
    (emb,) = SimulatedEncoder(anatomy).encode([body_image()], indices=[0])
    box = torch.tensor([[5.0, 5.0, 24.0, 19.0]])  # the liver's big component alone
    jittered = SimulatedRefiner(anatomy, NoiseConfig(refine_jitter_mm=3.0))
    ious = [
        float(
            SimulatedRefiner(anatomy, NoiseConfig(refine_jitter_mm=3.0), s).refine(emb, box)[1][0]
        )
        for s in range(10)
    ]
    masks = [
        SimulatedRefiner(anatomy, NoiseConfig(refine_jitter_mm=3.0), s).refine(emb, box)[0][0]
        for s in range(10)
    ]
    assert all(iou == 1.0 for iou in ious)  # the boundary moved, the prediction did not
    assert any(not np.array_equal(m.numpy(), components(labels == LIVER)[0]) for m in masks)
    assert jittered.refine(emb, box)[1][0] == 1.0
    noisy = [
        float(SimulatedRefiner(anatomy, NoiseConfig(iou_sigma=0.1), s).refine(emb, box)[1][0])
        for s in range(200)
    ]
    assert all(0.0 <= v <= 1.0 for v in noisy)
    # Clipped at 1: about half the draws fall below, spread like N(0, 0.1) there.
    below = [1.0 - v for v in noisy if v < 1.0]
    assert 70 < len(below) < 130 and 0.05 < float(np.mean(below)) < 0.12


# --------------------------------------------------------------------------- determinism


def volume_case():
    """A 30x20x4 canonical label volume (liver, spleen, kidneys) and its uint8 'CT'."""
    labels = np.zeros((30, 20, 4), dtype=np.uint8)
    labels[3:14, 4:15, :] = LIVER
    labels[17:26, 5:12, 1:] = SPLEEN
    labels[5:9, 15:18, :3] = KIDNEY_RIGHT
    labels[20:24, 14:18, :] = KIDNEY_LEFT
    volume8 = np.zeros(labels.shape, dtype=np.uint8)
    volume8[1:29, 2:19] = 100
    return labels, volume8


def run_slices(labels, volume8, noise, seed, batches):
    """Proposals, recognitions and refinements per slice index, batched as given."""
    anatomy = ReferenceAnatomy(labels, NAMES)
    encoder, proposer, recogniser, refiner = simulated_engines(anatomy, noise, seed)
    organs = [get_organ("liver"), get_organ("kidneys")]
    out = {}
    for batch in batches:
        images = [slice_image(volume8, False, "axial", i) for i in batch]
        embeddings = encoder.encode(images, encoder.prepare(images), batch)
        props = proposer.propose(embeddings)
        found = recogniser.recognise(images, props, organs, batch)
        for i, emb, p, f in zip(batch, embeddings, props, found, strict=True):
            refined = refiner.refine(emb, p.boxes[:3])
            out[i] = (p, f, refined)
    return out


def same(a, b) -> bool:
    (pa, fa, (ma, ia)), (pb, fb, (mb, ib)) = a, b
    return (
        torch.equal(pa.masks, pb.masks)
        and torch.equal(pa.boxes, pb.boxes)
        and fa == fb
        and torch.equal(ma, mb)
        and torch.equal(ia, ib)
    )


def test_outputs_depend_on_the_seed_not_on_order_or_batching():
    labels, volume8 = volume_case()
    noise = noise_preset("high")
    together = run_slices(labels, volume8, noise, 7, [[0, 1, 2, 3]])
    apart = run_slices(labels, volume8, noise, 7, [[3], [1], [2, 0]])
    assert all(same(together[i], apart[i]) for i in range(4))
    other = run_slices(labels, volume8, noise, 8, [[0, 1, 2, 3]])
    assert not all(same(together[i], other[i]) for i in range(4))
    # Without noise the seed still orders the proposals (ties break at random), but the
    # set of proposals does not depend on it.
    clean = run_slices(labels, volume8, None, 7, [[0, 1, 2, 3]])
    for i in range(4):
        alone = run_slices(labels, volume8, None, 8, [[i]])[i]
        assert as_set(clean[i][0].masks.numpy()) == as_set(alone[0].masks.numpy())


# --------------------------------------------------------------------------- laterality


def test_a_pair_organ_is_picked_per_side():
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[5:13, 8:16] = KIDNEY_RIGHT  # image left = patient right
    labels[5:13, 40:48] = KIDNEY_LEFT
    labels[20:31, 40:50] = KIDNEY_LEFT  # the bigger left component
    image = body_image()
    kidneys = get_organ("kidneys")
    props = propose(labels)
    masks = props.masks.numpy()

    def found(**options):
        recogniser = SimulatedRecogniser(ReferenceAnatomy(labels, NAMES), **options)
        return recogniser.recognise([image], [props], [kidneys], indices=[0])[0]

    both = found()
    assert len(both.accepted["kidneys"]) == 3
    sides = both.scores["kidneys"]["side"]
    assert sorted(sides[i] for i in both.picked["kidneys"]) == ["left", "right"]
    left = [i for i in both.picked["kidneys"] if sides[i] == "left"]
    assert masks[left[0]].sum() == 110  # the bigger left kidney component
    assert len(found(top_k=4).picked["kidneys"]) == 3  # 2 per side: both left, one right
    plain = found(laterality=False)
    assert "side" not in plain.scores["kidneys"]
    assert plain.picked["kidneys"] == plain.accepted["kidneys"][:2]
    anatomy = ReferenceAnatomy(labels, NAMES)
    union = anatomy.class_mask(anatomy.labels(0), "kidneys")
    assert np.array_equal(union, labels > 0)


# --------------------------------------------------------------------------- settings


def test_noise_presets_and_their_errors():
    assert NOISE_PRESETS["none"] == NoiseConfig()
    names = list(NOISE_PRESETS)
    assert names == ["none", "low", "moderate", "high"]
    for lower, higher in zip(names, names[1:]):
        a, b = NOISE_PRESETS[lower], NOISE_PRESETS[higher]
        pairs = [(getattr(a, f), getattr(b, f)) for f in NoiseConfig.__dataclass_fields__]
        assert all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)
    assert noise_preset("Moderate", drop_rate=0.5).drop_rate == 0.5
    with pytest.raises(ConfigError, match=r"Did you mean: moderate\? Valid presets: none, low"):
        noise_preset("moderat")
    with pytest.raises(ConfigError, match="Did you mean: drop_rate"):
        noise_preset("low", drop_rte=0.1)
    for bad in (dict(split_rate=1.5), dict(merge_rate=-0.1), dict(jitter_mm=-1.0)):
        with pytest.raises(ConfigError):
            noise_preset("none", **bad)
    with pytest.raises(ConfigError, match="Did you mean: jitter_mm"):
        noise_preset("low", jitter_px=1)  # the old unit is refused by name
    with pytest.raises(ConfigError, match="logit_scale"):
        NoiseConfig(logit_scale=0)


def test_bad_references_and_calls_are_refused():
    labels = two_organs()
    with pytest.raises(ConfigError, match="negative"):
        ReferenceAnatomy(labels.astype(np.int16) - 1, NAMES)
    with pytest.raises(ConfigError, match="non-integral"):
        ReferenceAnatomy(labels + 0.5, NAMES)
    with pytest.raises(ConfigError, match="shape"):
        ReferenceAnatomy(labels[None, None], NAMES)
    with pytest.raises(ConfigError, match="Did you mean: axial"):
        ReferenceAnatomy(labels[..., None], NAMES, axis="axail")
    with pytest.raises(ConfigError, match="neither value -> name nor name -> value"):
        ReferenceAnatomy(labels, {"one": "liver"})
    anatomy = ReferenceAnatomy(labels.astype(float), {**NAMES, "5": "Hepar", "9": "x"})
    assert anatomy.classes == ("spleen", "liver")  # names mapped to the vocabulary
    with pytest.raises(ConfigError, match="neither a class"):
        anatomy.class_mask(anatomy.labels(0), "livr")
    encoder = SimulatedEncoder(anatomy)
    with pytest.raises(ValueError, match="indices"):
        encoder.encode([body_image()])
    with pytest.raises(ConfigError, match="reference's slices"):
        encoder.encode([body_image((30, 60))], indices=[0])
    with pytest.raises(ValueError, match="indices"):
        SimulatedRecogniser(anatomy).recognise([], [], [])
    with pytest.raises(ConfigError, match="seed"):
        SimulatedProposer(anatomy, seed=-1)
    volume = ReferenceAnatomy(labels[..., None], NAMES)
    with pytest.raises(ConfigError, match="axis='coronal'"):
        simulated_engines(volume, config=SegmentConfig().replace(axis="coronal"))


# --------------------------------------------------------------------------- real anatomy


def test_noise_free_engines_recover_real_organs_through_segment():
    import nibabel as nib

    import salip
    from salip.apps.bench.simulated import totalseg_organ_map
    from salip.core.timing import StageTimer
    from salip.io import read_input, to_canonical
    from salip.strategies.cascade import Engines
    from salip.strategies.slices import SlicesStrategy

    path = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    reference = np.asarray(nib.load(require_data(TOTALSEG / "example_seg.nii.gz")).dataobj)
    names = json.loads(require_data(TOTALSEG / "labels_total.json").read_text())
    volume = read_input(path)
    anatomy = ReferenceAnatomy(
        to_canonical(reference, volume.geometry), names, organ_map=totalseg_organ_map()
    )
    assert {"liver", "spleen", "lung_left", "aorta"} <= set(anatomy.classes)
    config = SegmentConfig().replace(largest_component=False)
    four = Engines(*simulated_engines(anatomy, noise_preset("none"), 0, config))
    strategy = SlicesStrategy.from_engines(four, config, 8, StageTimer())
    organs = ["liver", "spleen", "kidney_left", "kidney_right"]
    result = salip.segment(
        path, organs=",".join(organs), write=False, segmenter=strategy, largest_component=False
    )
    values = {name: int(value) for value, name in names.items()}
    for organ in organs:
        mask, truth = np.asarray(result.masks[organ]) > 0, reference == values[organ]
        dice = 2 * np.count_nonzero(mask & truth) / (mask.sum() + truth.sum())
        assert dice >= 0.95, (organ, dice)
