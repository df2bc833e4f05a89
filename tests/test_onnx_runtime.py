"""SAM on ONNX Runtime (``--runtime onnx``): same answers as torch, cached graphs, errors."""

from __future__ import annotations

import importlib.util
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch

import salip
from salip.core.config import ProposalConfig
from salip.core.errors import ConfigError, ModelError
from salip.core.hashing import file_sha256
from salip.engines.everything_mode import generate_proposals_batch
from salip.models import sam_onnx
from salip.models.sam import load_sam
from salip.models.sam_onnx import GRAPH_VERSION, resolve_runtime
from salip.models.sam_runtime import decode_points_across, encode_images, fast_encoder
from tests.conftest import REPO, TOTALSEG, require_data
from tests.tiny_models import make_tiny_sam


@pytest.fixture(autouse=True)
def _no_open_sessions(monkeypatch):
    """Each test opens its own sessions (the process keeps the last two open)."""
    monkeypatch.setattr(sam_onnx, "_OPEN", OrderedDict())


def _slice(seed=0, shape=(90, 140)):
    return np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)


def _iou(a, b):
    a, b = a > 0, b > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_encoder_and_point_decoder_agree_with_torch(tiny_sam_path):
    sam = load_sam(str(tiny_sam_path), runtime="onnx")
    assert sam.runtime == "onnx" and sam.identity()["runtime"] == "onnx"
    images = [_slice(0), _slice(1)]
    ours = encode_images(sam.model, images, 2, encoder=sam.onnx.encoder)
    ref = encode_images(sam.model, images, 2, encoder=fast_encoder(sam.model))
    for a, b in zip(ours, ref):
        assert a.features.dtype == torch.float32 and a.features.shape == b.features.shape
        torch.testing.assert_close(a.features, b.features, atol=1e-4, rtol=1e-4)
    # Prompts of two slices, in runs, as everything mode streams them.
    features = torch.cat([e.features for e in ref])
    owner = torch.tensor([0, 0, 0, 1, 1, 0])
    points = torch.rand(6, 1, 2, generator=torch.Generator().manual_seed(0)) * 80
    first = ref[0]
    args = (sam.model, features, owner, points, first.input_size, first.original_size)
    logits, iou = decode_points_across(*args, runtime=sam.onnx)
    ref_logits, ref_iou = decode_points_across(*args)
    assert logits.shape == ref_logits.shape and iou.shape == ref_iou.shape
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(iou, ref_iou, atol=1e-4, rtol=1e-4)


def test_everything_mode_proposals_agree_with_torch(tiny_sam_path):
    sam = load_sam(str(tiny_sam_path), runtime="onnx")
    embeddings = encode_images(sam.model, [_slice(2), _slice(3)], 1)
    config = ProposalConfig(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    ours = generate_proposals_batch(sam.model, embeddings, config, runtime=sam.onnx)
    ref = generate_proposals_batch(sam.model, embeddings, config)
    for a, b in zip(ours, ref):
        assert len(a) == len(b) > 0
        assert np.mean([_iou(x, y) for x, y in zip(a.masks, b.masks)]) >= 0.98


def test_graphs_are_cached_by_the_checkpoint_digest(tmp_path, monkeypatch, tiny_sam_path):
    first = load_sam(str(tiny_sam_path), runtime="onnx").onnx
    home = tmp_path / "salip_home"  # conftest's SALIP_HOME for this test
    assert first.folder == home / "onnx" / file_sha256(tiny_sam_path)
    names = sorted(p.name for p in first.folder.iterdir())
    assert names == [
        f"encoder-g{GRAPH_VERSION}-opset17.onnx",
        f"points-g{GRAPH_VERSION}-opset17.onnx",
    ]
    assert [p.name for p in first.folder.parent.iterdir()] == [first.folder.name]  # no leftovers

    # A second process (no open sessions) reads the cache: nothing is exported again.
    monkeypatch.setattr(sam_onnx, "_OPEN", OrderedDict())

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = load_sam(str(tiny_sam_path), runtime="onnx").onnx
    assert again is not first and again.folder == first.folder

    # Other weights, another folder (and here an export, which is now refused).
    other = make_tiny_sam(tmp_path / "other.pth", seed=7)
    with pytest.raises(AssertionError, match="exported again"):
        load_sam(str(other), runtime="onnx")


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch, tiny_sam_path):
    real = torch.onnx.export
    calls = []

    def second_fails(module, args, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(module, args, path, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", second_fails)
    with pytest.raises(ModelError, match="disk full.*--runtime torch"):
        load_sam(str(tiny_sam_path), runtime="onnx")
    cache = tmp_path / "salip_home" / "onnx"
    assert list(cache.iterdir()) == []  # neither the graph folder nor the work folder


def test_the_process_keeps_the_sessions_of_the_last_two_checkpoints(tmp_path, tiny_sam_path):
    a = load_sam(str(tiny_sam_path), runtime="onnx").onnx
    assert load_sam(str(tiny_sam_path), runtime="onnx").onnx is a
    for seed in (1, 2):
        load_sam(str(make_tiny_sam(tmp_path / f"s{seed}.pth", seed=seed)), runtime="onnx")
    assert len(sam_onnx._OPEN) == 2  # noqa: SLF001
    assert load_sam(str(tiny_sam_path), runtime="onnx").onnx is not a  # a was closed


def test_runtime_choice():
    assert resolve_runtime("auto", "cpu", "fp32", False) == "onnx"
    assert resolve_runtime("auto", "cpu", "bf16", False) == "torch"
    assert resolve_runtime("auto", "cpu", "fp32", True) == "torch"
    assert resolve_runtime("auto", "cuda", "bf16", False) == "torch"
    assert resolve_runtime("torch", "cpu", "fp32", False) == "torch"
    assert resolve_runtime("onnx", "cpu", "fp32", False) == "onnx"
    with pytest.raises(ConfigError, match="fp32 only.*--runtime torch or auto"):
        resolve_runtime("onnx", "cpu", "bf16", False)
    with pytest.raises(ConfigError, match="CPU only.*--compile"):
        resolve_runtime("onnx", "cuda:0", "fp32", True)
    with pytest.raises(ConfigError, match="auto, torch, onnx"):
        resolve_runtime("tensorrt", "cpu", "fp32", False)


def test_without_onnxruntime_auto_falls_back_and_onnx_says_what_to_install(monkeypatch, caplog):
    monkeypatch.setattr(sam_onnx, "onnxruntime_available", lambda: False)
    assert resolve_runtime("auto", "cpu", "fp32", False) == "torch"
    assert "pip install onnxruntime onnx" in caplog.text
    with pytest.raises(ConfigError, match="pip install onnxruntime onnx"):
        resolve_runtime("onnx", "cpu", "fp32", False)


def test_segment_on_onnx_matches_torch_and_says_so(tiny_models):
    image = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    # The paper's scoring, every answer kept: random weights then draw masks to compare.
    kwargs = {**tiny_models, "organs": "liver", "write": False, "strategy": "slices"}
    kwargs.update(scoring="salip", min_confidence=0.0, points_per_side=4)
    kwargs.update(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    onnx = salip.segment(image, runtime="onnx", **kwargs)
    ref = salip.segment(image, runtime="torch", **kwargs)
    assert onnx.report["models"]["sam"]["runtime"] == "onnx"
    assert ref.report["models"]["sam"]["runtime"] == "torch"
    a, b = onnx.masks["liver"], ref.masks["liver"]
    assert a.shape == b.shape and b.any()
    assert _iou(a, b) >= 0.98
    assert onnx.report["strategy"]["counts"] == ref.report["strategy"]["counts"]


def test_the_side_by_side_script_times_both_runtimes_and_their_agreement(
    tmp_path, capsys, tiny_sam_path
):
    spec = importlib.util.spec_from_file_location(
        "onnx_units", REPO / "benchmarks" / "onnx_units.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "units.json"
    args = ["--sam-checkpoint", str(tiny_sam_path), "--slices", "1", "--image-size", "48"]
    assert (
        module.main([*args, "--points-per-side", "3", "--box-prompts", "2", "--json", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert [result["runs"][r]["runtime"] for r in ("torch", "onnx")] == ["torch", "onnx"]
    for run in result["runs"].values():
        assert run["encoder_s_per_slice"] > 0 and run["everything_s_per_slice"] > 0
    agree = result["agreement"]
    assert agree["embedding_max_abs_diff"] < 1e-4 and agree["proposals_compared"] > 0
    assert agree["proposal_iou_mean"] >= 0.98 and agree["same_proposal_counts"]
    assert "| encoder, per slice |" in capsys.readouterr().out


def test_the_engines_use_the_runtime_the_model_was_loaded_with(tiny_sam_path, monkeypatch):
    from salip.engines.encoder import SamEncoder
    from salip.engines.proposer import SamProposer
    from salip.models.sam_runtime import BatchSize

    sam = load_sam(str(tiny_sam_path), runtime="onnx")
    assert SamProposer(sam, ProposalConfig(), "cpu").batch.value == 16  # AUTO_PROMPTS_ONNX
    calls = []
    real = sam.onnx.encoder
    monkeypatch.setattr(sam.onnx, "encoder", lambda x: calls.append(x.shape) or real(x))
    (embedding,) = SamEncoder(sam, BatchSize(1)).encode([_slice(4)])
    assert calls == [(1, 3, 256, 256)] and embedding.features.shape[0] == 1


def test_the_proposals_command_runs_on_the_chosen_runtime(tmp_path, tiny_models):
    from salip.api.proposals import propose

    image = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    options = {**tiny_models, "points_per_side": 4, "pred_iou_thresh": 0.0}
    options["stability_score_thresh"] = 0.0
    ours, info = propose(image, slice_index=12, runtime="onnx", **options)
    ref, ref_info = propose(image, slice_index=12, runtime="torch", **options)
    assert (info["sam"]["runtime"], ref_info["sam"]["runtime"]) == ("onnx", "torch")
    assert len(ours) == len(ref) > 0
    assert [r["bbox"] for r in ours] == [r["bbox"] for r in ref]
