"""SAM and CLIP loading through the real paths, and their errors."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from salip.core.errors import ModelError
from salip.models.clip import load_clip
from salip.models.sam import OFFICIAL_ARCHS, build_sam, infer_sam_arch, load_sam
from tests.tiny_models import TINY_SAM_ARCH, register_tiny_clip


@pytest.mark.parametrize("name", list(OFFICIAL_ARCHS))
def test_official_architectures_inferred_from_shapes(name):
    with torch.device("meta"):  # shapes only, no memory
        model = build_sam(OFFICIAL_ARCHS[name])
    arch = infer_sam_arch(model.state_dict())
    assert arch == OFFICIAL_ARCHS[name]
    assert arch.name == name


def test_tiny_checkpoint_loads_with_inferred_arch(tiny_sam_path):
    loaded = load_sam(str(tiny_sam_path))
    assert loaded.arch == TINY_SAM_ARCH
    assert loaded.model.image_encoder.img_size == 256
    reference = torch.load(tiny_sam_path, weights_only=True)
    for key, value in loaded.model.state_dict().items():
        torch.testing.assert_close(value, reference[key])


def test_wrong_model_type_names_what_the_file_is(tiny_sam_path):
    with pytest.raises(ModelError, match=r"holds a custom\(embed_dim=32.*not vit_b"):
        load_sam(str(tiny_sam_path), model_type="vit_b")
    with pytest.raises(ModelError, match="unknown SAM model type"):
        load_sam(str(tiny_sam_path), model_type="vit_x")


def test_wrapped_and_prefixed_fine_tune_loads(tmp_path, tiny_sam_path):
    """MedSAM-style files: state dict under "model", keys prefixed by "module."."""
    state = torch.load(tiny_sam_path, weights_only=True)
    wrapped = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    path = tmp_path / "medsam_like.pth"
    torch.save(wrapped, path)
    assert load_sam(str(path)).arch == TINY_SAM_ARCH


def _as_cuda_checkpoint(src, dst):
    """Rewrite a torch zip checkpoint so its storages are tagged 'cuda:0' (as if saved on a
    GPU machine); the bytes of the tensors are unchanged."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info, data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU-only loading")
def test_cuda_saved_checkpoint_loads_on_cpu(tmp_path, tiny_sam_path):
    cuda_path = tmp_path / "cuda.pth"
    _as_cuda_checkpoint(tiny_sam_path, cuda_path)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(cuda_path, weights_only=True)  # proves the file is CUDA-tagged
    assert load_sam(str(cuda_path)).arch == TINY_SAM_ARCH


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ModelError, match="salip models download vit_b"):
        load_sam("vit_b")
    with pytest.raises(ModelError, match="not found"):
        load_sam(str(tmp_path / "missing.pth"))
    with pytest.raises(ModelError, match="unknown SAM checkpoint 'vit_q'.*vit_b"):
        load_sam("vit_q")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_sam(str(corrupt))
    other = tmp_path / "other.pth"
    torch.save({"linear.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ModelError, match="not a SAM checkpoint"):
        load_sam(str(other))
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buffer)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(buffer.getvalue()[:50])
    with pytest.raises(ModelError, match="cannot read checkpoint.*truncated or damaged"):
        load_sam(str(truncated))


def test_clip_name_plus_weights_file_equals_local_dir(tiny_clip_dir):
    """A registered open_clip name + a local weights file is the same model as local-dir:."""
    name = register_tiny_clip(tiny_clip_dir)
    by_name = load_clip(name, str(tiny_clip_dir / "open_clip_pytorch_model.bin"))
    by_dir = load_clip(f"local-dir:{tiny_clip_dir}")
    tokens = by_dir.tokenizer(["a liver"])
    with torch.no_grad():
        torch.testing.assert_close(
            by_name.model.encode_text(tokens), by_dir.model.encode_text(tokens)
        )


def test_clip_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown CLIP model 'ViT-Q-99'.*hf-hub"):
        load_clip("ViT-Q-99", "openai")
    with pytest.raises(ModelError, match="tags: .*openai"):
        load_clip("ViT-B-32", "not-a-tag")
    with pytest.raises(ModelError, match="cannot load CLIP"):
        load_clip(f"local-dir:{tmp_path / 'nowhere'}")


def test_sam_preprocessing_is_chosen_from_the_checkpoint(tmp_path, tiny_sam_path, monkeypatch):
    """Flag first, then a known file's SHA-256, then MedSAM's file name, else SAM's own."""
    from salip.core.errors import ConfigError
    from salip.core.hashing import file_sha256
    from salip.models import sam as sam_module

    plain = load_sam(str(tiny_sam_path))
    assert plain.preprocess.name == "sam" and plain.preprocess_from.startswith("default")
    named = tmp_path / "MedSAM_tiny.pth"
    named.write_bytes(tiny_sam_path.read_bytes())
    medsam = load_sam(str(named))
    assert (medsam.preprocess.name, medsam.preprocess_from) == (
        "medsam",
        "file name MedSAM_tiny.pth",
    )
    assert medsam.identity()["preprocess"] == "medsam"
    forced = load_sam(str(named), preprocess="sam")
    assert (forced.preprocess.name, forced.preprocess_from) == ("sam", "--sam-preprocess")
    known = {file_sha256(tiny_sam_path): ("a test file", "sam")}
    monkeypatch.setattr(sam_module, "KNOWN_SAM_FILES", known)
    by_hash = load_sam(str(named))  # the digest outranks the name
    assert (by_hash.preprocess.name, by_hash.preprocess_from) == ("sam", "SHA-256 of a test file")
    with pytest.raises(ConfigError, match="unknown SAM preprocessing 'x'; use one of sam, medsam"):
        load_sam(str(tiny_sam_path), preprocess="x")


def test_report_records_how_the_models_were_built(tmp_path, tiny_models, tiny_sam_path):
    """The report names the SAM preprocessing and the CLIP activation, and why."""
    import salip
    from tests.conftest import SLICES, require_data

    image = require_data(SLICES / "images" / "amos_0004_75.png")
    named = tmp_path / "medsam_tiny.pth"
    named.write_bytes(tiny_sam_path.read_bytes())
    options = {**tiny_models, "sam_checkpoint": str(named), "points_per_side": 4}
    result = salip.segment(image, organs=["liver"], modality="ct", write=False, **options)
    models = result.report["models"]
    assert models["sam"]["preprocess"] == "medsam"
    assert models["sam"]["preprocess_from"] == "file name medsam_tiny.pth"
    assert models["clip"]["quick_gelu"] is False
    assert models["clip"]["quick_gelu_from"].startswith("the config of local-dir:")
    again = salip.segment(image, organs=["liver"], modality="ct", write=False,
                          **{**options, "sam_preprocess": "sam", "clip_quick_gelu": True})  # fmt: skip
    models = again.report["models"]
    assert (models["sam"]["preprocess"], models["sam"]["preprocess_from"]) == (
        "sam", "--sam-preprocess"
    )  # fmt: skip
    assert (models["clip"]["quick_gelu"], models["clip"]["quick_gelu_from"]) == (
        True, "--clip-quick-gelu"
    )  # fmt: skip
