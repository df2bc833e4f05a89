"""Contrast scoring, laterality and the text-embedding cache.

Selection tests run the real :class:`salip.engines.recogniser.ClipRecogniser` with a stub CLIP whose text and
crop embeddings have a known geometry, so the right answer is known exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import salip
from salip.core.config import SegmentConfig
from salip.core.organs import get_organ
from salip.core.prompts import PromptSet
from salip.engines.recogniser import ClipRecogniser
from salip.engines.scoring import ClipScorer, contrast_scores
from salip.models.clip import LoadedClip, load_clip
from tests.conftest import SLICES, require_data

D = 8


def unit(*pairs: tuple[int, float]) -> torch.Tensor:
    v = torch.zeros(D)
    for axis, value in pairs:
        v[axis] = value
    return v / v.norm()


class StubTextModel(torch.nn.Module):
    """encode_text maps each description (by token id) to a fixed unit vector."""

    def __init__(self, vectors: torch.Tensor):
        super().__init__()
        self.register_buffer("vectors", vectors)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.vectors[tokens]


def stub_cascade(classes: dict[str, torch.Tensor], target: str, **options) -> ClipRecogniser:
    """A recogniser scoring ``target`` against the other ``classes`` (name -> text vector)."""
    texts = {name: (f"{name} description a", f"{name} description b") for name in classes}
    flat = [(name, text) for name, pair in texts.items() for text in pair]
    index = {text: i for i, (_, text) in enumerate(flat)}
    vectors = torch.stack([classes[name] for name, _ in flat])
    clip = LoadedClip(
        model=StubTextModel(vectors),
        preprocess=None,
        tokenizer=lambda batch: torch.tensor([index[t] for t in batch]),
        name="stub",
        pretrained=None,
    )
    sets = {name: PromptSet(name, "ct", "ct", texts[name], {}) for name in classes}
    rivals = [sets[name] for name in classes if name != target]
    config = SegmentConfig().replace(**options)
    return ClipRecogniser(clip, {target: sets[target]}, config, "cpu", None, {target: rivals})


# Target t, a near-identical competitor c (cosine 0.995) and the background b.
T, C, B = unit((0, 1.0)), unit((0, 1.0), (1, 0.1)), unit((2, 1.0))
BODY = np.zeros((100, 100, 3), dtype=np.uint8)
BODY[20:80, 10:90] = 180  # a centred body: midline at column 49.5
MIDDLE = torch.tensor([[40.0, 40.0, 60.0, 60.0]])


def test_contrast_picks_the_target_over_a_near_identical_competitor():
    # Crop 0 *is* the competitor; crop 1 is the target, seen with noise.
    crops = torch.stack([C, unit((0, 1.0), (3, 0.3))])
    boxes = MIDDLE.repeat(2, 1)
    classes = {"liver": T, "spleen": C, "background": B}
    salip_mode = stub_cascade(classes, "liver", scoring="salip")
    picked, info = salip_mode.select(get_organ("liver"), crops, boxes, BODY)
    assert picked == [0]  # cosine alone prefers the competitor: the paper's failure mode
    assert info["clip_score"][0] > info["clip_score"][1]
    contrast = stub_cascade(classes, "liver", scoring="contrast")
    picked, info = contrast.select(get_organ("liver"), crops, boxes, BODY)
    assert picked == [1]
    assert info["margin"][0] < 0 < info["margin"][1]
    assert info["probability"][1] > 0.5
    # The margin is configurable: demand more than crop 1 has and nothing is accepted.
    strict = stub_cascade(classes, "liver", contrast_margin=info["margin"][1] + 0.01)
    assert strict.select(get_organ("liver"), crops, boxes, BODY)[0] == []


def test_contrast_rejects_a_crop_when_background_wins():
    crops = unit((2, 1.0), (0, 0.2))[None]  # mostly background, a little liver
    classes = {"liver": T, "spleen": C, "background": B}
    picked, info = stub_cascade(classes, "liver").select(get_organ("liver"), crops, MIDDLE, BODY)
    assert picked == [] and info["margin"][0] < 0
    # The paper's scoring keeps the top-k whatever they are.
    assert stub_cascade(classes, "liver", scoring="salip").select(
        get_organ("liver"), crops, MIDDLE, BODY
    )[0] == [0]


def test_contrast_scores_match_a_softmax_by_hand():
    crops = torch.stack([T, C, B])
    classes = torch.stack([T, C, B])
    prob, margin = contrast_scores(crops, classes, 100.0)
    logits = (100.0 * crops @ classes.T).double()
    logits -= logits.max(1, keepdim=True).values  # exp(100) overflows float32
    expected = (torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)).float()
    torch.testing.assert_close(prob, expected[:, 0])
    torch.testing.assert_close(margin, expected[:, 0] - expected[:, 1:].max(1).values)
    alone, margin_alone = contrast_scores(crops, T[None], 100.0)
    assert torch.all(alone == 1) and torch.all(margin_alone == 1)


LEFT_BOX = torch.tensor([12.0, 40.0, 30.0, 60.0])  # image left = patient right
RIGHT_BOX = torch.tensor([70.0, 40.0, 88.0, 60.0])  # image right = patient left


def test_one_sided_organ_keeps_the_patients_side():
    # The better-scoring crop is on the wrong side.
    crops = torch.stack([T, unit((0, 1.0), (3, 0.2))])
    boxes = torch.stack([LEFT_BOX, RIGHT_BOX])
    classes = {"kidney_left": T, "background": B}
    cascade = stub_cascade(classes, "kidney_left")
    picked, info = cascade.select(get_organ("kidney_left"), crops, boxes, BODY)
    assert picked == [1] and info["side"] == ["right", "left"]
    off = stub_cascade(classes, "kidney_left", laterality=False)
    assert off.select(get_organ("kidney_left"), crops, boxes, BODY)[0] == [0]
    # Sagittal slices have no left-right axis in plane: no side filter.
    sagittal = stub_cascade(classes, "kidney_left", axis="sagittal")
    picked, info = sagittal.select(get_organ("kidney_left"), crops, boxes, BODY)
    assert picked == [0] and "side" not in info


def test_midline_follows_an_off_centre_body():
    body = np.zeros((100, 100, 3), dtype=np.uint8)
    body[20:80, 50:100] = 180  # body in the image's right half: midline near 74.5
    crops = torch.stack([T, T])
    boxes = torch.tensor([[55.0, 40.0, 65.0, 60.0], [80.0, 40.0, 95.0, 60.0]])
    classes = {"kidney_right": T, "background": B}
    picked, info = stub_cascade(classes, "kidney_right").select(
        get_organ("kidney_right"), crops, boxes, body
    )
    assert info["side"] == ["right", "left"] and picked == [0]


def test_pair_takes_the_best_crop_on_each_side():
    # Two strong crops on the image left, a weaker one on the image right.
    crops = torch.stack([T, unit((0, 1.0), (3, 0.1)), unit((0, 1.0), (3, 0.4))])
    boxes = torch.stack([LEFT_BOX, LEFT_BOX + 2, RIGHT_BOX])
    classes = {"kidneys": T, "background": B}
    picked, _ = stub_cascade(classes, "kidneys").select(get_organ("kidneys"), crops, boxes, BODY)
    assert sorted(picked) == [0, 2]
    off = stub_cascade(classes, "kidneys", laterality=False)
    assert off.select(get_organ("kidneys"), crops, boxes, BODY)[0] == [0, 1]


@pytest.fixture(scope="module")
def clip(tiny_clip_dir):
    return load_clip(f"local-dir:{tiny_clip_dir}")


def count_calls(monkeypatch, obj, name: str) -> list[int]:
    calls = [0]
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


def test_text_embedding_cache_is_hit_on_the_second_run(clip, tmp_path, monkeypatch, tiny_models):
    calls = count_calls(monkeypatch, clip.model, "encode_text")
    first = ClipScorer(clip, "cpu", cache_dir=tmp_path)
    a = first.text_embedding(["a bean-shaped organ", "a smooth organ"])
    first.text_embedding(["air outside the body"])
    assert calls[0] == 2 and first.cache_misses == 2
    second = ClipScorer(clip, "cpu", cache_dir=tmp_path)
    torch.testing.assert_close(second.text_embedding(["a bean-shaped organ", "a smooth organ"]), a)
    assert calls[0] == 2 and second.cache_hits == 1  # no encoder call
    second.text_embedding(["a different description"])
    assert calls[0] == 3  # new descriptions are a new key
    # Other weights under the same name are a different model: no stale hit.
    from tests.tiny_models import make_tiny_clip_dir

    other = load_clip(f"local-dir:{make_tiny_clip_dir(tmp_path / 'other', seed=1)}")
    third = ClipScorer(other, "cpu", cache_dir=tmp_path)
    third.text_embedding(["a bean-shaped organ", "a smooth organ"])
    assert third.cache_hits == 0 and third.cache_misses == 1


def test_segment_reuses_cached_text_and_one_crop_pass_for_all_organs(
    tmp_path, monkeypatch, tiny_models
):
    import salip.engines.proposer as cascade_module

    image = require_data(SLICES / "images" / "amos_0006_90.png")
    proposals = count_calls(monkeypatch, cascade_module, "generate_proposals_batch")
    crops = count_calls(monkeypatch, ClipScorer, "image_embeddings")
    options = dict(write=False, points_per_side=4, modality="ct", **tiny_models)
    one = salip.segment(image, organs=["liver"], **options)
    assert (proposals[0], crops[0]) == (1, 1)
    text = one.report["models"]["scoring"]["text_cache"]
    assert text["hits"] == 0 and text["misses"] > 1  # liver, its competitors, background
    three = salip.segment(image, organs=["liver", "spleen", "kidney_left"], **options)
    # Three organs: still one proposal pass and one crop-embedding pass.
    assert (proposals[0], crops[0]) == (2, 2)
    text3 = three.report["models"]["scoring"]["text_cache"]
    assert text3["hits"] >= text["misses"]  # everything the first run encoded is reused
    classes = three.report["models"]["scoring"]["classes"]
    assert classes["liver"][0] == "liver" and classes["liver"][-1] == "background"
    assert "spleen" in classes["liver"] and "kidney_right" not in classes["kidney_left"]
    assert three.report["models"]["scoring"]["mode"] == "contrast"
