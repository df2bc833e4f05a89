"""Every documented model source runs as its weights were trained (README: "Model fidelity").

One test per row of the README's table. Each loads random weights of the right shapes (the
smallest model of the family) through salip's real loading path, and compares what salip
computes with the upstream reference construction: open_clip's own ``-quickgelu`` configs
for OpenAI's tags, open_clip's factory for hub and local folders, segment-anything's
``SamPredictor`` for SAM, and MedSAM's published inference steps, written out here from
their description. Where random weights could hide a wrong build, a negative control shows
the comparison fails for it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from salip.models.clip import load_clip
from salip.models.clip_activation import choose_activation
from salip.models.clip_hub import clip_cache_dir, hub_offline_mode
from salip.models.sam_preprocess import SAM_PREPROCESS
from tests.conftest import SLICES, require_data
from tests.hub_server import place_in_hub_cache, serving_hub

OPENAI_B32_REPO = "timm/vit_base_patch32_clip_224.openai"
WEIGHTS = "open_clip_pytorch_model.bin"
TEXTS = ["a CT scan of the liver", "a CT scan of the spleen"]


@pytest.fixture(scope="module")
def b32_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random ViT-B-32 weights (fp16, as small as the shapes allow), seeded."""
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu")
    path = tmp_path_factory.mktemp("b32") / WEIGHTS
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def ct_image() -> Image.Image:
    """A real CT slice, cropped off-square so that every resize mode matters."""
    image = Image.open(require_data(SLICES / "images" / "amos_0004_75.png")).convert("RGB")
    return image.crop((40, 90, 460, 390))


def features(model, preprocess, tokenizer, image) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text features, as salip's scorer computes them (before normalising)."""
    with torch.no_grad():
        return (
            model.encode_image(preprocess(image)[None]),
            model.encode_text(tokenizer(TEXTS)),
        )


def assert_same(got, expected) -> None:
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def assert_differs(got, expected) -> None:
    """A negative control: the wrong build gives visibly different features."""
    assert max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True)) > 1e-3


def quick_gelu_modules(model) -> int:
    return sum(type(m).__name__ == "QuickGELU" for m in model.modules())


def openai_reference(name: str) -> tuple:
    """open_clip's own ``NAME-quickgelu`` + ``openai`` build, from salip's cache, offline."""
    with hub_offline_mode():
        model, _, preprocess = open_clip.create_model_and_transforms(
            f"{name}-quickgelu", pretrained="openai", cache_dir=str(clip_cache_dir())
        )
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def no_mismatch_warning(caplog, caught) -> None:
    texts = [r.getMessage() for r in caplog.records] + [str(w.message) for w in caught]
    assert not [t for t in texts if "mismatch" in t.lower()], texts


# --- CLIP: open_clip names with pretrained tags ---------------------------------------------


def test_openai_tag_downloads_and_builds_with_quick_gelu(b32_weights, ct_image, monkeypatch,
                                                         caplog):  # fmt: skip
    """Row "name + OpenAI tag", tag path: the weights come from a (loopback) hub."""
    with serving_hub(monkeypatch) as hub:
        hub.add(OPENAI_B32_REPO, WEIGHTS, b32_weights)
        with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
            warnings.simplefilter("always")
            loaded = load_clip("ViT-B-32", "openai")
    assert any(WEIGHTS in r for r in hub.requests)  # really downloaded
    no_mismatch_warning(caplog, caught)
    assert loaded.identity()["quick_gelu"] is True
    assert loaded.identity()["quick_gelu_from"] == "pretrained tag ViT-B-32 'openai'"
    model, preprocess, tokenizer = openai_reference("ViT-B-32")
    assert str(loaded.preprocess) == str(preprocess)
    got = features(loaded.model, loaded.preprocess, loaded.tokenizer, ct_image)
    assert_same(got, features(model, preprocess, tokenizer, ct_image))
    # Negative control: open_clip's plain ViT-B-32 (GELU) with the same weights.
    with hub_offline_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gelu = open_clip.create_model(
            "ViT-B-32", pretrained="openai", cache_dir=str(clip_cache_dir())
        )
    assert_differs(got, features(gelu.eval(), preprocess, tokenizer, ct_image))


def test_openai_tag_from_the_cache_builds_with_quick_gelu(b32_weights, ct_image, network_calls,
                                                          online):  # fmt: skip
    """Row "name + OpenAI tag", cached-file path: no network, same model."""
    place_in_hub_cache(OPENAI_B32_REPO, WEIGHTS, b32_weights)
    loaded = load_clip("ViT-B-32", "openai")
    assert network_calls == []
    assert quick_gelu_modules(loaded.model) > 0
    model, preprocess, tokenizer = openai_reference("ViT-B-32")
    assert str(loaded.preprocess) == str(preprocess)
    got = features(loaded.model, loaded.preprocess, loaded.tokenizer, ct_image)
    assert_same(got, features(model, preprocess, tokenizer, ct_image))


def test_default_clip_from_the_cache_has_quick_gelu_and_no_warning(tmp_path, network_calls,
                                                                   online, caplog):  # fmt: skip
    """The default configuration (ViT-L-14 'openai') at its real size, from the cache."""
    from salip.core.config import ModelConfig

    default = ModelConfig()
    assert (default.clip_model, default.clip_pretrained) == ("ViT-L-14", "openai")
    with torch.device("meta"):
        shapes = open_clip.create_model(default.clip_model, device="meta").state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {
        k: (torch.randn(v.shape, generator=generator) * 0.02).half() for k, v in shapes.items()
    }
    weights = tmp_path / WEIGHTS
    torch.save(state, weights)
    del state
    place_in_hub_cache("timm/vit_large_patch14_clip_224.openai", WEIGHTS, weights)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        loaded = load_clip(default.clip_model, default.clip_pretrained)
    assert network_calls == []
    no_mismatch_warning(caplog, caught)
    # Every residual block's MLP uses QuickGELU, in both towers (12 text + 24 image blocks).
    assert quick_gelu_modules(loaded.model) == 36
    assert loaded.identity()["quick_gelu"] is True


def _documented_tags() -> list[tuple[str, str]]:
    return [
        (name, tag)
        for name in ("ViT-L-14", "ViT-B-16", "ViT-B-32")
        for tag in open_clip.list_pretrained_tags_by_model(name)
    ]


@pytest.mark.parametrize(("name", "tag"), _documented_tags())
def test_every_tag_of_the_documented_models_follows_its_pretrained_config(name, tag):
    expected = bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))
    assert choose_activation(name, tag, None).quick_gelu is expected


# --- CLIP: a weights file ----------------------------------------------------------------------


def test_weights_file_of_a_known_tag_is_built_as_that_tag(b32_weights, ct_image, tmp_path,
                                                          network_calls, caplog):  # fmt: skip
    """Row "name + weights file": recognised by its hub cache folder or download file name;
    otherwise GELU with a warning naming --clip-quick-gelu, which then builds QuickGELU."""
    in_cache = place_in_hub_cache(OPENAI_B32_REPO, WEIGHTS, b32_weights)
    reference = features(*openai_reference("ViT-B-32"), ct_image)

    loaded = load_clip("ViT-B-32", str(in_cache))
    assert loaded.quick_gelu and "ViT-B-32 'openai'" in loaded.quick_gelu_from
    assert "hub cache folder" in loaded.quick_gelu_from
    assert_same(features(loaded.model, loaded.preprocess, loaded.tokenizer, ct_image), reference)

    # The tag's download URL names the file ViT-B-32.pt.
    named = tmp_path / "ViT-B-32.pt"
    os.link(b32_weights, named)
    assert load_clip("ViT-B-32", str(named)).quick_gelu

    anonymous = tmp_path / "my_weights.bin"
    os.link(b32_weights, anonymous)
    with caplog.at_level(logging.WARNING):
        plain = load_clip("ViT-B-32", str(anonymous))
    assert not plain.quick_gelu and plain.quick_gelu_from == "model config ViT-B-32"
    assert any("--clip-quick-gelu" in r.getMessage() for r in caplog.records)
    forced = load_clip("ViT-B-32", str(anonymous), quick_gelu=True)
    assert forced.identity()["quick_gelu_from"] == "--clip-quick-gelu"
    assert_same(features(forced.model, forced.preprocess, forced.tokenizer, ct_image)[:1],
                reference[:1])  # fmt: skip
    assert network_calls == []


# --- CLIP: hf-hub: and local-dir: --------------------------------------------------------------


def _tiny_biomedclip(folder: Path) -> Path:
    """A BiomedCLIP-shaped open_clip folder: a timm ViT image tower and a Hugging Face BERT
    text tower (BiomedCLIP's own config keys), both at their smallest; random weights."""
    from transformers import BertConfig, BertTokenizerFast

    bert = folder / "bert"
    bert.mkdir(parents=True)
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *["a", "ct", "scan", "of", "the", "liver", "spleen"],
    ]
    (bert / "vocab.txt").write_text("\n".join(words) + "\n")
    BertConfig(
        vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    ).save_pretrained(bert)  # fmt: skip
    BertTokenizerFast(vocab_file=str(bert / "vocab.txt")).save_pretrained(bert)
    config = {
        "model_cfg": {
            "embed_dim": 16,
            "vision_cfg": {
                "timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                "timm_pool": "", "timm_proj": "linear", "image_size": 224,
            },
            "text_cfg": {
                "hf_model_name": str(bert), "hf_tokenizer_name": str(bert),
                "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 32,
            },
        },
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }  # fmt: skip
    model_dir = folder / "model"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{model_dir}", pretrained_text=False)
    torch.save(model.state_dict(), model_dir / WEIGHTS)
    return model_dir


def test_hf_hub_biomedclip_layout_loads_offline_as_open_clip_builds_it(tmp_path, ct_image,
                                                                       network_calls, online):  # fmt: skip
    """Row "hf-hub:" (BiomedCLIP): cached files load with no request in under 5 s, and give
    what open_clip's own hf-hub: build gives."""
    pytest.importorskip("transformers", reason="BiomedCLIP's text tower needs transformers")
    source = _tiny_biomedclip(tmp_path)
    for name in ("open_clip_config.json", WEIGHTS):
        place_in_hub_cache("salip-test/tiny-biomedclip", name, source / name)
    start = time.monotonic()
    loaded = load_clip("hf-hub:salip-test/tiny-biomedclip")
    assert time.monotonic() - start < 5
    assert network_calls == []
    assert loaded.identity()["quick_gelu"] is False
    with hub_offline_mode():
        model, preprocess = open_clip.create_model_from_pretrained(
            "hf-hub:salip-test/tiny-biomedclip", cache_dir=str(clip_cache_dir())
        )
        tokenizer = open_clip.get_tokenizer("hf-hub:salip-test/tiny-biomedclip",
                                            cache_dir=str(clip_cache_dir()))  # fmt: skip
    assert str(loaded.preprocess) == str(preprocess)
    torch.testing.assert_close(loaded.tokenizer(TEXTS), tokenizer(TEXTS))
    got = features(loaded.model, loaded.preprocess, loaded.tokenizer, ct_image)
    assert_same(got, features(model.eval(), preprocess, tokenizer, ct_image))


def test_hf_hub_repo_of_an_openai_tag_follows_the_tag(b32_weights, ct_image, network_calls,
                                                      online):  # fmt: skip
    """A hub repo that serves a known tag, with a config that does not name the activation,
    is built as the tag was trained."""
    config = tmp_config = {"model_cfg": open_clip.get_model_config("ViT-B-32")}
    assert "quick_gelu" not in config["model_cfg"]
    path = clip_cache_dir().parent / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tmp_config))
    place_in_hub_cache(OPENAI_B32_REPO, "open_clip_config.json", path)
    place_in_hub_cache(OPENAI_B32_REPO, WEIGHTS, b32_weights)
    loaded = load_clip(f"hf-hub:{OPENAI_B32_REPO}")
    assert network_calls == []
    assert loaded.quick_gelu and "ViT-B-32 'openai'" in loaded.quick_gelu_from
    model, _, tokenizer = openai_reference("ViT-B-32")
    got = features(loaded.model, loaded.preprocess, loaded.tokenizer, ct_image)
    assert_same(got, features(model, loaded.preprocess, tokenizer, ct_image))


@pytest.mark.parametrize("quick_gelu", [False, True])
def test_local_dir_follows_its_config(quick_gelu, tiny_clip_dir, tmp_path, ct_image,
                                      network_calls):  # fmt: skip
    """Row "local-dir:": the folder's config names the activation; open_clip's own build of
    the folder is the reference."""
    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["quick_gelu"] = quick_gelu
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    loaded = load_clip(f"local-dir:{folder}")
    assert loaded.quick_gelu is quick_gelu
    assert (quick_gelu_modules(loaded.model) > 0) is quick_gelu
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    assert str(loaded.preprocess) == str(preprocess)
    got = features(loaded.model, loaded.preprocess, loaded.tokenizer, ct_image)
    assert_same(got, features(model.eval(), preprocess, tokenizer, ct_image))
    assert network_calls == []


# --- SAM: official checkpoints and MedSAM ------------------------------------------------------


class MemoEncoder(torch.nn.Module):
    """An image encoder that runs once per distinct input: a second call with an equal
    tensor returns the first call's output. salip's side and the reference side each give
    the encoder their own input, and only equal inputs share an output, so the comparison
    stays honest while a vit_b encoder pass (about 15 s on two CPU cores) runs once."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.img_size = encoder.img_size
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.runs = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for seen, out in self.seen:
            if seen.shape == x.shape and torch.equal(seen, x):
                return out.clone()
        self.runs += 1
        out = self.encoder(x)
        self.seen.append((x.detach().clone(), out.detach().clone()))
        return out


@pytest.fixture(scope="module")
def vit_b_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights of SAM vit_b's shapes (fp16 on disk), with non-zero position tables."""
    from salip.models.sam import OFFICIAL_ARCHS, build_sam

    torch.manual_seed(0)
    model = build_sam(OFFICIAL_ARCHS["vit_b"])
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0, 0.02)
    path = tmp_path_factory.mktemp("vit_b") / "weights.pth"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def ct_slice(ct_image: Image.Image) -> np.ndarray:
    """The off-square CT slice as salip's display slices are: HxWx3 uint8, grey."""
    return np.asarray(ct_image.convert("L").convert("RGB")).copy()


def _with_memo_encoder(loaded) -> MemoEncoder:
    memo = MemoEncoder(loaded.model.image_encoder)
    loaded.model.image_encoder = memo
    return memo


def _same_weights_as_segment_anything(loaded, path: Path) -> None:
    from segment_anything import sam_model_registry

    reference = sam_model_registry["vit_b"](checkpoint=str(path)).state_dict()
    got = {k: v for k, v in loaded.model.state_dict().items() if not k.startswith("image_encoder.")}
    for key, value in got.items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0)
    encoder = loaded.model.image_encoder.encoder.state_dict()
    for key, value in encoder.items():
        torch.testing.assert_close(value, reference[f"image_encoder.{key}"], rtol=0, atol=0)


BOX = np.array([60.0, 40.0, 260.0, 200.0])  # XYXY in pixels of the 420x300 slice
POINT = np.array([[150.0, 120.0]])


def test_official_sam_runs_as_segment_anything_predictor(vit_b_weights, ct_slice):
    """Row "SAM vit_b/l/h": by official name from the cache; the encoder input, the box and
    point prompts and the masks equal segment-anything's SamPredictor's."""
    from segment_anything import SamPredictor

    from salip.engines.encoder import SamEncoder
    from salip.models.registry import SAM_CHECKPOINTS, checkpoint_dir
    from salip.models.sam import load_sam
    from salip.models.sam_runtime import BatchSize, decode, decode_points_across

    checkpoint_dir().mkdir(parents=True)
    os.link(vit_b_weights, checkpoint_dir() / SAM_CHECKPOINTS["vit_b"].filename)
    loaded = load_sam("vit_b")
    assert (loaded.preprocess.name, loaded.preprocess_from) == ("sam", "the official SAM vit_b")
    assert loaded.identity()["preprocess"] == "sam"
    memo = _with_memo_encoder(loaded)
    _same_weights_as_segment_anything(loaded, vit_b_weights)

    (embedding,) = SamEncoder(loaded, BatchSize(1)).encode([ct_slice])
    predictor = SamPredictor(loaded.model)
    predictor.set_image(ct_slice)
    assert memo.runs == 1  # segment-anything gave the encoder the very same input
    torch.testing.assert_close(embedding.features, predictor.features)

    ref_masks, ref_iou, _ = predictor.predict(box=BOX, multimask_output=False, return_logits=True)
    box = torch.as_tensor(BOX[None], dtype=torch.float)
    logits, iou = decode(loaded.model, embedding, boxes=box, multimask_output=False)
    torch.testing.assert_close(logits[0], torch.as_tensor(ref_masks), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou[0], torch.as_tensor(ref_iou), rtol=1e-4, atol=1e-4)
    ref_masks, ref_iou, _ = predictor.predict(point_coords=POINT, point_labels=np.array([1]),
                                              multimask_output=True, return_logits=True)  # fmt: skip
    logits, iou = decode_points_across(
        loaded.model, embedding.features, torch.zeros(1, dtype=torch.long),
        torch.as_tensor(POINT[None], dtype=torch.float), embedding.input_size,
        embedding.original_size, embedding.preprocess,
    )  # fmt: skip
    torch.testing.assert_close(logits[0], torch.as_tensor(ref_masks), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(iou[0], torch.as_tensor(ref_iou), rtol=1e-4, atol=1e-4)


def medsam_reference_input(image: np.ndarray) -> torch.Tensor:
    """MedSAM_Inference.py's image steps, written from their description: resize the HxWx3
    image to 1024x1024 (scikit-image, order 3, anti-aliased, range kept) and cast to uint8,
    min-max normalise the whole image to [0, 1], channels first. No pixel mean or std, no
    padding."""
    from skimage.transform import resize

    big = resize(image, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True)
    big = big.astype(np.uint8)
    scaled = (big - big.min()) / np.clip(big.max() - big.min(), 1e-8, None)
    return torch.tensor(scaled).float().permute(2, 0, 1)[None]


def medsam_reference_masks(model, embedding: torch.Tensor, hw: tuple[int, int], *,
                           box: np.ndarray | None = None,
                           point: np.ndarray | None = None) -> torch.Tensor:  # fmt: skip
    """MedSAM's medsam_inference steps: prompts scaled to the 1024x1024 frame by W and H
    separately, SAM's prompt encoder and mask decoder, sigmoid, bilinear resize straight to
    HxW. Returns the probabilities (MedSAM keeps those above 0.5). A point prompt (MedSAM
    itself takes boxes) is scaled and decoded the same way, with three masks."""
    import torch.nn.functional as F

    h, w = hw
    boxes = points = None
    if box is not None:
        boxes = torch.as_tensor(box / np.array([w, h, w, h]) * 1024, dtype=torch.float)[None, None]
    if point is not None:
        coords = torch.as_tensor(point / np.array([w, h]) * 1024, dtype=torch.float)[None]
        points = (coords, torch.ones(1, 1, dtype=torch.int))
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, _ = model.mask_decoder(
            image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=point is not None,
        )  # fmt: skip
        probs = torch.sigmoid(low_res)
        return F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)


def test_medsam_runs_as_its_published_inference(vit_b_weights, ct_slice, tmp_path):
    """Row "MedSAM": chosen from the file name; the encoder input, box and point prompts and
    masks equal MedSAM's published inference steps."""
    from salip.engines.encoder import SamEncoder
    from salip.models.sam import load_sam
    from salip.models.sam_runtime import BatchSize, decode, decode_points_across

    path = tmp_path / "medsam_vit_b.pth"
    os.link(vit_b_weights, path)
    loaded = load_sam(str(path))
    assert (loaded.preprocess.name, loaded.preprocess_from) == (
        "medsam", "file name medsam_vit_b.pth"
    )  # fmt: skip
    memo = _with_memo_encoder(loaded)
    h, w = ct_slice.shape[:2]

    (embedding,) = SamEncoder(loaded, BatchSize(1)).encode([ct_slice])
    assert embedding.input_size == (1024, 1024)
    with torch.no_grad():
        reference = loaded.model.image_encoder(medsam_reference_input(ct_slice))
    torch.testing.assert_close(embedding.features, reference, rtol=1e-4, atol=1e-4)
    # Negative control: SAM's own preprocessing of the same slice is another input.
    sam_input = SAM_PREPROCESS.normalise(
        loaded.model,
        torch.as_tensor(SAM_PREPROCESS.resize(ct_slice, 1024)).permute(2, 0, 1)[None].float(),
    )
    assert not torch.allclose(sam_input, medsam_reference_input(ct_slice), atol=1e-2)

    logits, _ = decode(loaded.model, embedding, boxes=torch.as_tensor(BOX[None], dtype=torch.float),
                       multimask_output=False)  # fmt: skip
    expected = medsam_reference_masks(loaded.model, embedding.features, (h, w), box=BOX)
    torch.testing.assert_close(torch.sigmoid(logits), expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(logits > 0, expected > 0.5)

    logits, _ = decode_points_across(
        loaded.model, embedding.features, torch.zeros(1, dtype=torch.long),
        torch.as_tensor(POINT[None], dtype=torch.float), embedding.input_size,
        embedding.original_size, embedding.preprocess,
    )  # fmt: skip
    expected = medsam_reference_masks(loaded.model, embedding.features, (h, w), point=POINT)
    torch.testing.assert_close(torch.sigmoid(logits), expected, rtol=1e-4, atol=1e-4)
    assert memo.runs == 1  # the reference gave the encoder the very same input
