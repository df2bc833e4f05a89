"""The fast paths keep their answers: slice skipping, out-of-memory recovery, precision."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import salip
from salip.core.config import SegmentConfig, SliceConfig
from salip.core.errors import ConfigError
from salip.core.organs import get_organ
from salip.io import read_input, to_canonical
from salip.io.slicing import AXES, body_slices, choose_intensity, iter_slices, to_uint8
from salip.models.precision import resolve_precision
from salip.models.sam import load_sam
from salip.models.sam_runtime import BatchSize, OutOfMemoryError, encode_images, fast_encoder
from tests.conftest import TOTALSEG, require_data

CASES = [
    ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    ("example_ct.nii.gz", "example_seg_full.nii.gz"),
    ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz"),
    ("example_ct_dicom", "example_seg_dicom.nii.gz"),
]


def _body(volume, axis):
    intensity = choose_intensity(volume, [get_organ("liver")], SliceConfig())
    return body_slices(volume, to_uint8(volume, intensity, SliceConfig()), intensity, axis)


@pytest.mark.parametrize(("image", "labels"), CASES)
def test_no_slice_with_a_labelled_organ_is_skipped(image, labels):
    volume = read_input(require_data(TOTALSEG / image))
    seg = np.asarray(nib.load(require_data(TOTALSEG / labels)).dataobj)
    labelled = to_canonical(seg, volume.geometry) > 0
    assert labelled.any()
    for axis, ax in AXES.items():
        other = tuple(a for a in range(3) if a != ax)
        with_organ = labelled.any(axis=other)
        keep = _body(volume, axis)
        assert keep.shape == with_organ.shape
        missed = np.nonzero(with_organ & ~keep)[0]
        assert missed.size == 0, f"{image} {axis}: labelled slices {missed} skipped"


def _padded_ct(tmp_path, pad=4):
    """example_ct_sm with `pad` slices of air (-1024 HU) added at both ends along z."""
    src = nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    data = np.asarray(src.dataobj)
    air = np.full(data.shape[:2] + (pad,), -1024, dtype=data.dtype)
    path = tmp_path / "padded.nii.gz"
    nib.save(nib.Nifti1Image(np.concatenate([air, data, air], axis=2), src.affine), path)
    return path, data.shape[2]


def test_air_slices_are_skipped(tmp_path):
    path, n = _padded_ct(tmp_path)
    keep = _body(read_input(path), "axial")
    assert keep.tolist() == [False] * 4 + [True] * n + [False] * 4


class Recorder:
    """Marks every pixel above 127 and records the slice indices it was given."""

    def __init__(self):
        self.indices = []

    def __call__(self, images, organs, indices):
        self.indices += list(indices)
        return [{o.name: img[..., 0] > 127 for o in organs} for img in images]


def test_segment_never_sees_skipped_slices(tmp_path):
    path, n = _padded_ct(tmp_path)
    seen = Recorder()
    result = salip.segment(
        path, organs="liver", write=False, segmenter=seen, largest_component=False
    )
    assert seen.indices == list(range(4, 4 + n))  # RAS file: canonical = file order
    assert result.report["slicing"]["skipped_slices"] == [0, 1, 2, 3, *range(4 + n, 8 + n)]
    assert not result.masks["liver"][..., :4].any() and not result.masks["liver"][..., -4:].any()
    everything = Recorder()
    full = salip.segment(
        path,
        organs="liver",
        write=False,
        segmenter=everything,
        largest_component=False,
        skip_empty=False,
    )
    assert everything.indices == list(range(n + 8))
    assert full.report["slicing"]["skipped_slices"] == []
    # the kept slices are segmented exactly as without skipping
    np.testing.assert_array_equal(result.masks["liver"], full.masks["liver"])


def _slices(count):
    volume = read_input(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    intensity = choose_intensity(volume, [get_organ("liver")], SliceConfig())
    volume8 = to_uint8(volume, intensity, SliceConfig())
    return [img for _, img in iter_slices(volume8, False, "axial")][:count]


def _inject_oom(monkeypatch, model, limit, encoder=None):
    """The image encoder (``encoder``, default the model's own) raises out-of-memory for
    batches larger than ``limit``."""
    encoder = model.image_encoder if encoder is None else encoder
    forward = encoder.forward
    calls = []

    def guarded(x):
        calls.append(len(x))
        if len(x) > limit:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return forward(x)

    monkeypatch.setattr(encoder, "forward", guarded)
    return calls


def test_encoder_halves_its_batch_on_out_of_memory(monkeypatch, tiny_sam_path):
    model = load_sam(str(tiny_sam_path)).model
    images = _slices(5)
    expected = encode_images(model, images, 1)
    calls = _inject_oom(monkeypatch, model, limit=1)
    size = BatchSize(4)
    got = encode_images(model, images, size)
    assert calls[:3] == [4, 2, 1] and set(calls[3:]) == {1}
    assert (size.value, size.reductions) == (1, 2)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="boom"):  # other errors are not swallowed
        monkeypatch.setattr(
            model.image_encoder, "forward", lambda x: (_ for _ in ()).throw(RuntimeError("boom"))
        )
        encode_images(model, images, 2)


def _crop_ct(tmp_path, start, stop):
    """Slices start..stop-1 of the example CT, saved as a NIfTI file in ``tmp_path``."""
    src = nib.load(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[..., start:stop], src.affine), path)
    return path


def _cascade_options(tiny_models):
    """segment() options for the tiny models whose masks are never empty."""
    return dict(
        organs="liver",
        write=False,
        encoder_batch_size=4,
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        scoring="salip",  # random weights: top-k always picks a crop, so masks are not empty
        strategy="slices",  # every slice through the batched cascade
        **tiny_models,
    )


def test_batched_segment_equals_per_slice_segment(tmp_path, tiny_models):
    """Slices batched through the encoder and the decoder (16 prompts per slice, 64 per
    decoder call: four slices per call) give the masks of running one slice at a time."""
    path = _crop_ct(tmp_path, 10, 16)
    options = _cascade_options(tiny_models)
    batched = salip.segment(path, **options)
    single = salip.segment(path, **{**options, "encoder_batch_size": 1})
    assert batched.masks["liver"].any()
    np.testing.assert_array_equal(batched.masks["liver"], single.masks["liver"])
    # The same crops are chosen; scores agree to float rounding (batch composition).
    chosen = [r["liver"]["chosen"] for r in (batched.report["organs"], single.report["organs"])]
    assert [(c["slice"], c["bbox"], c["area"]) for c in chosen[0]] == [
        (c["slice"], c["bbox"], c["area"]) for c in chosen[1]
    ]
    for a, b in zip(*chosen, strict=True):
        assert a["clip_score"] == pytest.approx(b["clip_score"], abs=1e-5)


def test_segment_finishes_after_out_of_memory_with_the_same_masks(
    monkeypatch, tmp_path, tiny_models
):
    import salip.models.sam as sam_module

    path = _crop_ct(tmp_path, 10, 16)
    # Out-of-memory recovery is torch's (a device's memory); ONNX Runtime runs on the CPU.
    options = {**_cascade_options(tiny_models), "runtime": "torch"}
    clean = salip.segment(path, **options)
    load = sam_module.load_sam
    guards: list[list[int]] = []

    def load_with_oom(*args, **kwargs):
        loaded = load(*args, **kwargs)
        # the cascade runs the fused-attention encoder made for this model
        encoder = fast_encoder(loaded.model)
        guards.append(_inject_oom(monkeypatch, loaded.model, limit=1, encoder=encoder))
        return loaded

    monkeypatch.setattr(sam_module, "load_sam", load_with_oom)
    recovered = salip.segment(path, **options)
    (calls,) = guards
    assert calls[:3] == [4, 2, 1] and set(calls[3:]) == {1}
    assert clean.masks["liver"].any()
    np.testing.assert_array_equal(clean.masks["liver"], recovered.masks["liver"])


def test_precision_choices():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="use one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", "cpu")


def test_bf16_encoder_returns_float32_close_to_fp32(tiny_sam_path):
    model = load_sam(str(tiny_sam_path)).model
    images = _slices(2)
    exact = encode_images(model, images, 2)
    half = encode_images(model, images, 2, precision="bf16")
    for a, b in zip(exact, half, strict=True):
        assert b.features.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(a.features.flatten(), b.features.flatten(), 0)
        assert cos > 0.99


def test_compiled_encoder_gives_the_same_masks(tmp_path, tiny_models, monkeypatch):
    """--compile: torch.compile of the encoder (one compilation here, about 30 s on CPU)."""
    path = _crop_ct(tmp_path, 10, 14)
    options = _cascade_options(tiny_models)
    eager = salip.segment(path, **options)
    compiled_modules, compile_ = [], torch.compile

    def spy(module, **kwargs):
        compiled_modules.append(type(module).__name__)
        return compile_(module, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    compiled = salip.segment(path, compile=True, **options)
    assert compiled_modules == ["SdpaImageEncoder"]  # made once, for the fused encoder
    assert eager.masks["liver"].any()
    np.testing.assert_array_equal(eager.masks["liver"], compiled.masks["liver"])


def test_auto_batch_sizes_on_cpu_are_the_fixed_defaults(tiny_models):
    """0 means auto: off CUDA, 4 slices per strategy batch, encoded one per encoder call,
    and 4 prompts per decoder call on torch, 16 on ONNX Runtime."""
    from salip.core.config import ProposalConfig
    from salip.engines.encoder import encoder_batch, slice_batch
    from salip.engines.everything_mode import decoder_batch

    assert SegmentConfig().proposals.encoder_batch_size == 0
    assert SegmentConfig().proposals.points_per_batch == 0
    enc, dec = encoder_batch(0, "cpu"), decoder_batch(ProposalConfig(), "cpu")
    assert (enc.value, enc.calibrating, dec.value, dec.calibrating) == (1, False, 4, False)
    onnx = decoder_batch(ProposalConfig(), "cpu", "onnx")
    assert (onnx.value, onnx.calibrating) == (16, False)
    assert decoder_batch(ProposalConfig(points_per_batch=5), "cpu", "onnx").value == 5
    assert slice_batch(0, "cpu") == 4 and slice_batch(7, "cpu") == 7
    assert encoder_batch(3, "cpu").value == 3
    with pytest.raises(ConfigError, match="0 .auto. or more"):
        SegmentConfig().replace(points_per_batch=-1)


def test_calibration_sizes_the_batch_from_measured_memory(monkeypatch):
    """A measured probe sets the batch to what fits in 70% of free memory, up to the cap."""
    import salip.models.memory as memory
    from salip.models.memory import PeakMeter, fit_batch

    assert fit_batch(per_item_bytes=100, free_bytes=1000, cap=64) == 7
    assert fit_batch(per_item_bytes=100, free_bytes=10**6, cap=64) == 64
    assert fit_batch(per_item_bytes=10**9, free_bytes=10, cap=64) == 1
    monkeypatch.setattr(memory, "free_device_bytes", lambda device: 10 * 2**30)
    size = BatchSize(1, cap=32)
    size.calibrating = True
    size.calibrate(PeakMeter(bytes=2 * 2**30), items=4, device=torch.device("cuda"))
    assert (size.value, size.calibrating) == (14, False)  # 7 GiB / 0.5 GiB per item
    size.calibrate(PeakMeter(bytes=1), items=1, device=torch.device("cuda"))
    assert size.value == 14  # calibrates once
    big = BatchSize(1, cap=8)
    big.calibrating = True
    big.calibrate(PeakMeter(bytes=1), items=1, device=torch.device("cuda"))
    assert big.value == 8


def test_decoder_halves_its_prompt_batch_on_out_of_memory(monkeypatch, tiny_sam_path):
    """An injected OOM above 16 prompts per decoder call: the calls shrink 64 -> 32 -> 16
    and the proposals are those of the clean run."""
    import salip.engines.everything_mode as proposals
    from salip.core.config import ProposalConfig
    from salip.models.sam_runtime import encode_images

    model = load_sam(str(tiny_sam_path)).model
    embeddings = encode_images(model, _slices(3), 3)
    config = ProposalConfig(
        points_per_side=6, points_per_batch=64, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    clean = proposals.generate_proposals_batch(model, embeddings, config)
    decode = proposals.decode_points_across
    calls = []

    def guarded(sam, features, owner, points, *args):
        calls.append(len(points))
        if len(points) > 16:
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (injected)")
        return decode(sam, features, owner, points, *args)

    monkeypatch.setattr(proposals, "decode_points_across", guarded)
    size = BatchSize(64)
    recovered = proposals.generate_proposals_batch(model, embeddings, config, size)
    assert calls[:3] == [64, 32, 16] and max(calls[3:]) == 16
    assert (size.value, size.reductions) == (16, 2)
    for a, b in zip(clean, recovered, strict=True):
        assert len(a) > 0
        np.testing.assert_array_equal(a.masks.numpy(), b.masks.numpy())


def test_fused_attention_encoder_equals_segment_anything(tiny_sam_path):
    """SdpaImageEncoder (windowed and global blocks, relative positions) gives the stock
    encoder's embeddings with the same weights, and the stock model is left untouched."""
    from salip.models.sam_attention import SdpaImageEncoder
    from salip.models.sam_runtime import fast_encoder

    model = load_sam(str(tiny_sam_path)).model
    assert (
        model.image_encoder.blocks[0].window_size > 0
        and model.image_encoder.blocks[1].window_size == 0
    )
    x = torch.randn(3, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stock = model.image_encoder(x)
        fused = fast_encoder(model)(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused_bf16 = fast_encoder(model)(x).float()
        # Global attention a few query rows at a time (ONNX export): 16 rows as 5+5+5+1.
        chunked = SdpaImageEncoder(model.image_encoder, query_rows=5)(x)
    assert isinstance(fast_encoder(model), SdpaImageEncoder) and fast_encoder(
        model
    ) is fast_encoder(model)
    torch.testing.assert_close(fused, stock, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chunked, stock, rtol=1e-4, atol=1e-4)
    cos = torch.nn.functional.cosine_similarity(fused_bf16.flatten(), stock.flatten(), 0)
    assert cos > 0.99
    assert type(model.image_encoder).__name__ == "ImageEncoderViT"
    assert not any(isinstance(m, SdpaImageEncoder) for m in model.modules())


def test_the_shared_first_layer_decoder_equals_segment_anything(tiny_sam_path):
    """Prompts of several slices, in any order, decoded with the first layer's image side
    shared per slice give segment-anything's own ``MaskDecoder.predict_masks`` per prompt."""
    from salip.models.sam_decoder import predict_masks_shared

    model = load_sam(str(tiny_sam_path)).model
    decoder, encoder = model.mask_decoder, model.prompt_encoder
    assert len(decoder.transformer.layers) >= 2  # the later layers run too
    torch.manual_seed(0)
    features = torch.randn(3, decoder.transformer_dim, *encoder.image_embedding_size)
    owner = torch.tensor([0, 0, 2, 2, 2, 1, 0])  # runs of slices, one slice twice
    points = torch.rand(len(owner), 1, 2) * 256
    labels = torch.ones(len(owner), 1, dtype=torch.int)
    with torch.no_grad():
        sparse, dense = encoder(points=(points, labels), boxes=None, masks=None)
        pe = encoder.get_dense_pe()
        ours, ours_iou = predict_masks_shared(decoder, features, owner, pe, sparse, dense)
        for i, s in enumerate(owner.tolist()):
            ref, ref_iou = decoder.predict_masks(
                image_embeddings=features[s : s + 1],
                image_pe=pe,
                sparse_prompt_embeddings=sparse[i : i + 1],
                dense_prompt_embeddings=dense[i : i + 1],
            )
            torch.testing.assert_close(ours[i : i + 1], ref, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ours_iou[i : i + 1], ref_iou, atol=1e-5, rtol=1e-4)
