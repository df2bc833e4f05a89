"""Tiny random-weight SAM and CLIP models, saved as files for tests.

They are built with the same constructors real checkpoints use and loaded back through
salip's ordinary loading path (``load_sam`` on a .pth file, open_clip's ``local-dir:`` and
NAME + weights-file paths). With random weights the masks mean nothing: tests that use them
check machinery, equivalence and geometry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from salip.models.sam import SamArch, build_sam

#: 256-pixel SAM: 16x16 embedding grid, 4-pixel windows, one global-attention block.
TINY_SAM_ARCH = SamArch(
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=(1,),
    image_size=256,
    patch_size=16,
    window_size=4,
    prompt_embed_dim=32,
    decoder_depth=2,
    decoder_mlp_dim=64,
    iou_head_depth=3,
    iou_head_hidden_dim=32,
    num_multimask_outputs=3,
    mask_in_chans=16,
)

TINY_CLIP_NAME = "salip-tiny-clip"
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def make_tiny_sam(path: Path, seed: int = 0, arch: SamArch = TINY_SAM_ARCH) -> Path:
    """Save a random-weight SAM state dict (segment-anything format) to ``path``: the tiny
    test SAM, or any ``arch`` (an official one for timing at real size)."""
    torch.manual_seed(seed)
    model = build_sam(arch)
    # Non-zero relative-position and positional tables, so every parameter matters.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "rel_pos" in name or "pos_embed" in name:
                param.normal_(0, 0.02)
    torch.save(model.state_dict(), path)
    return path


def make_tiny_clip_dir(
    folder: Path, seed: int = 0, model_cfg: dict[str, Any] | None = None
) -> Path:
    """Write an open_clip ``local-dir:`` folder (config + random weights): the tiny test
    CLIP, or the model of any open_clip ``model_cfg`` (e.g. ViT-B-16's, for timing)."""
    import open_clip

    model_cfg = TINY_CLIP_CFG if model_cfg is None else model_cfg
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def register_tiny_clip(folder: Path) -> str:
    """Register the tiny CLIP config under :data:`TINY_CLIP_NAME` with open_clip."""
    import open_clip

    cfg_dir = folder / "registered"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(cfg_dir)
    return TINY_CLIP_NAME


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.tiny_models FOLDER``: write the tiny models for the smoke benchmark.

    Writes ``FOLDER/sam_tiny.pth`` and the ``FOLDER/clip_tiny/`` open_clip folder (random
    weights: for checking machinery only; ``benchmarks/configs/shared-smoke.toml`` uses them).
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m tests.tiny_models FOLDER\n")
        return 2
    folder = Path(args[0])
    folder.mkdir(parents=True, exist_ok=True)
    make_tiny_sam(folder / "sam_tiny.pth")
    make_tiny_clip_dir(folder / "clip_tiny")
    sys.stdout.write(f"tiny random-weight models in {folder}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
