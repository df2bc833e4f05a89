"""SAM on ONNX Runtime's CPU provider: the image encoder and the point-prompt decoder.

On a 2-core CPU, ONNX Runtime runs SAM's vit_b image encoder and its mask decoder faster
than torch eager, with the same masks at fp32 (benchmarks/RESULTS.md, "ONNX Runtime
against torch"). ``--runtime onnx`` (the CPU default, ``auto``) runs those two, the
everything-mode work, through ONNX Runtime; the prompt encoder, box prompts and mask
upscaling stay in torch.

Two graphs are exported from the loaded checkpoint with ``torch.onnx.export`` and cached
under ``<SALIP_HOME>/onnx/<checkpoint SHA-256>/``:

- ``encoder.onnx``: ``Sam.image_encoder``, Bx3xSxS normalised and padded images in,
  BxCxhxw embeddings out (segment-anything's own module, traced);
- ``points.onnx``: :func:`salip.models.sam_decoder.predict_masks_slice` (the mask decoder
  with its first layer's image side shared by the prompts), one slice's 1xCxhxw
  embedding and NxTxC sparse prompt embeddings in, Nx(1+M)x4hx4w low-resolution logits
  and Nx(1+M) predicted IoU out. The dense positional encoding and the no-mask embedding
  are the checkpoint's, baked in.

The folder name is the checkpoint's digest, and the file names carry :data:`GRAPH_VERSION`
and the opset, so a changed checkpoint or export never reads a stale graph. A graph is
written to a private folder first and moved into place whole, so two processes exporting
at once never read half a file.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salip.core.errors import ConfigError, ModelError
from salip.core.hashing import file_sha256
from salip.models.registry import salip_home
from salip.models.sam_decoder import owner_runs, predict_masks_slice

__all__ = [
    "GRAPH_VERSION",
    "OnnxSam",
    "RUNTIMES",
    "export_sam_onnx",
    "load_onnx_sam",
    "onnx_cache_dir",
    "onnxruntime_available",
    "open_onnx_sam",
    "resolve_runtime",
]

logger = logging.getLogger(__name__)

#: ``--runtime`` choices. auto: onnx on CPU at fp32 without ``--compile``, else torch.
RUNTIMES = ("auto", "torch", "onnx")
#: Bumped whenever the exported graphs change, so caches of older exports are not read.
GRAPH_VERSION = 3
OPSET = 17
#: Rows of queries per step in the exported encoder's global attention (of 64 in SAM).
QUERY_ROWS = 4
_INSTALL = "pip install onnxruntime onnx"
#: Open sessions by (checkpoint digest, threads), oldest first (see load_onnx_sam).
_OPEN: OrderedDict[tuple[str, int], OnnxSam] = OrderedDict()
_KEEP_OPEN = 2


def onnxruntime_available() -> bool:
    """Whether ONNX Runtime and the ``onnx`` package (which the export needs) import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(setting: str, device: str, precision: str, compile: bool) -> str:
    """``torch`` or ``onnx`` for ``--runtime setting`` on ``device`` (resolved), with the
    run's resolved ``precision`` and ``compile`` flag.

    ``auto`` is ``onnx`` on CPU at fp32 without compile, when ONNX Runtime is installed;
    ``torch`` otherwise (a missing ONNX Runtime is logged).

    Raises:
        ConfigError: an unknown setting, or ``onnx`` where it cannot run (CUDA, bf16/fp16,
            ``--compile``, ONNX Runtime not installed).
    """
    if setting not in RUNTIMES:
        raise ConfigError(f"unknown runtime '{setting}'; use one of {', '.join(RUNTIMES)}.")
    if setting == "torch":
        return "torch"
    blockers = []
    if torch.device(device).type != "cpu":
        blockers.append(f"it runs on the CPU only (device {device})")
    if precision != "fp32":
        blockers.append(f"it runs fp32 only (precision {precision})")
    if compile:
        blockers.append("--compile is a torch setting")
    if setting == "auto":
        if blockers:
            return "torch"
        if not onnxruntime_available():
            logger.warning("ONNX Runtime is not installed (%s); SAM runs on torch", _INSTALL)
            return "torch"
        return "onnx"
    if not blockers and not onnxruntime_available():
        blockers.append(f"ONNX Runtime is not installed ({_INSTALL})")
    if blockers:
        raise ConfigError(f"--runtime onnx: {'; '.join(blockers)}; use --runtime torch or auto.")
    return "onnx"


def onnx_cache_dir(checkpoint: Path) -> Path:
    """``<SALIP_HOME>/onnx/<SHA-256 of the checkpoint file>``."""
    return salip_home() / "onnx" / file_sha256(checkpoint)


class _PointGraph(torch.nn.Module):
    """The exported point decoder: (features 1xCxhxw, sparse NxTxC) -> (logits, IoU)."""

    def __init__(self, sam: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = sam.mask_decoder
        encoder = sam.prompt_encoder
        self.register_buffer("image_pe", encoder.get_dense_pe().detach().clone())
        self.register_buffer("dense", encoder.no_mask_embed.weight.detach().reshape(1, -1, 1, 1))

    def forward(self, features: torch.Tensor, sparse: torch.Tensor) -> Any:
        return predict_masks_slice(self.decoder, features, self.image_pe, sparse, self.dense)


def _export_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    """The encoder as exported: segment-anything's, with its global attention taking
    :data:`QUERY_ROWS` rows of queries at a time where the layout allows
    (:class:`~salip.models.sam_attention.SdpaImageEncoder`; the same result). ONNX Runtime
    materialises each attention's scores: for vit_b at once they are 12 x 4096 x 4096
    floats (805 MB), and several such tensors were alive together. A process running one
    vit_b encoder call peaked at 4.6 GB with all 64 rows at once, 1.6 GB with 4, in the
    same 7 s (RESULTS.md, "Host memory")."""
    from salip.models.sam_attention import SdpaImageEncoder, supports_sdpa

    return SdpaImageEncoder(encoder, QUERY_ROWS) if supports_sdpa(encoder) else encoder


def _graph_names() -> dict[str, str]:
    return {part: f"{part}-g{GRAPH_VERSION}-opset{OPSET}.onnx" for part in ("encoder", "points")}


def _export(module: torch.nn.Module, args: tuple, path: Path, names: dict[str, Any]) -> None:
    """``torch.onnx.export`` with the TorchScript exporter (no onnxscript needed);
    files over 2 GB (vit_h's encoder) keep their weights beside the graph."""
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer's warnings about Python values are about shapes fixed by the image
        # size (the encoder's) and are expected.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), opset_version=OPSET, dynamo=False, do_constant_folding=True,
            **names,
        )  # fmt: skip


def export_sam_onnx(sam: torch.nn.Module, folder: Path) -> dict[str, Path]:
    """Export ``sam``'s encoder and point decoder (module docstring) into ``folder``,
    whole or not at all. Returns the graph paths by part ("encoder", "points")."""
    files = _graph_names()
    if all((folder / name).is_file() for name in files.values()):
        return {part: folder / name for part, name in files.items()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    size = sam.image_encoder.img_size
    embed = sam.prompt_encoder.embed_dim
    h, w = sam.prompt_encoder.image_embedding_size
    if sam.device.type != "cpu":
        raise ConfigError("SAM's ONNX graphs are exported from a model on the CPU.")
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    try:
        _export(
            _export_encoder(sam.image_encoder), (torch.zeros(1, 3, size, size),), work / files["encoder"],
            {"input_names": ["images"], "output_names": ["features"],
             "dynamic_axes": {"images": {0: "slices"}, "features": {0: "slices"}}},
        )  # fmt: skip
        _export(
            _PointGraph(sam).eval(), (torch.zeros(1, embed, h, w), torch.zeros(2, 2, embed)),
            work / files["points"],
            {"input_names": ["features", "sparse"], "output_names": ["logits", "iou"],
             "dynamic_axes": {"sparse": {0: "prompts", 1: "tokens"},
                              "logits": {0: "prompts"}, "iou": {0: "prompts"}}},
        )  # fmt: skip
        folder.mkdir(exist_ok=True)
        # Whole files only (another export of the same checkpoint writes the same ones);
        # weights kept beside a graph first, the graphs that name them last.
        for item in sorted(work.iterdir(), key=lambda item: item.name in files.values()):
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {part: folder / name for part, name in files.items()}


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@dataclass
class OnnxSam:
    """A SAM's encoder and point decoder as ONNX Runtime sessions (CPU, fp32).

    Attributes:
        folder: where the graphs are cached.
        encoder_session, points_session: ``onnxruntime.InferenceSession`` of each graph.
    """

    folder: Path
    encoder_session: Any
    points_session: Any

    def encoder(self, images: torch.Tensor) -> torch.Tensor:
        """The image encoder: Bx3xSxS float normalised padded images -> BxCxhxw float32.
        Callable in place of ``Sam.image_encoder`` (``encode_images(encoder=...)``)."""
        (out,) = self.encoder_session.run(None, {"images": images.detach().float().numpy()})
        return torch.from_numpy(out)

    def predict_masks(
        self, features: torch.Tensor, owner: torch.Tensor, sparse: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`~salip.models.sam_decoder.predict_masks_shared` through the graph, one
        call per run of prompts of one slice.

        Args:
            features: SxCxhxw embeddings; owner: N int64 slice of each prompt;
            sparse: NxTxC sparse prompt embeddings.

        Returns:
            (low-resolution logits Nx(1+M)x4hx4w, predicted IoU Nx(1+M)), float32.
        """
        logits, ious = [], []
        for index, start, end in owner_runs(owner):
            feed = {
                "features": features[index : index + 1].detach().float().numpy(),
                "sparse": np.ascontiguousarray(sparse[start:end].detach().float().numpy()),
            }
            low_res, iou = self.points_session.run(None, feed)
            logits.append(torch.from_numpy(low_res))
            ious.append(torch.from_numpy(iou))
        return torch.cat(logits), torch.cat(ious)


def open_onnx_sam(sam: torch.nn.Module, folder: Path, threads: int) -> OnnxSam:
    """Sessions on ``sam``'s graphs in ``folder`` (exported there first when missing), on
    ``threads`` intra-op threads. No cache or memory of its own: see :func:`load_onnx_sam`.

    Raises:
        ModelError: an export or session that failed.
    """
    try:
        paths = export_sam_onnx(sam, folder)
        sessions = {part: _session(path, threads) for part, path in paths.items()}
    except (OSError, RuntimeError) as exc:
        raise ModelError(
            f"could not export or load SAM's ONNX graphs in {folder} ({exc}); use --runtime "
            "torch, or remove that folder to export again."
        ) from exc
    return OnnxSam(folder, sessions["encoder"], sessions["points"])


def load_onnx_sam(sam: torch.nn.Module, checkpoint: Path, threads: int | None = None) -> OnnxSam:
    """ONNX Runtime sessions for the SAM loaded from ``checkpoint``: its graphs from the
    cache (:func:`onnx_cache_dir`), exported there first when missing.

    The sessions of the last two checkpoints (by digest) stay open in the process, so a
    program that segments call after call (``salip.segment`` in a loop, a service) opens
    a vit_h encoder's 2.5 GB once, not per call.

    ``threads``: ONNX Runtime's intra-op threads; default torch's (``torch.get_num_threads``,
    the machine's cores unless set).

    Raises:
        ModelError: ONNX Runtime not installed, or an export or session that failed.
    """
    if not onnxruntime_available():
        raise ModelError(f"ONNX Runtime is not installed; {_INSTALL}, or use --runtime torch.")
    threads = threads or torch.get_num_threads()
    folder = onnx_cache_dir(checkpoint)
    key = (folder.name, threads)
    if key in _OPEN:
        _OPEN.move_to_end(key)
        return _OPEN[key]
    fresh = not folder.is_dir()
    _OPEN[key] = open_onnx_sam(sam, folder, threads)
    logger.info(
        "SAM on ONNX Runtime (%d threads), graphs %s %s",
        threads, "exported to" if fresh else "from", folder,
    )  # fmt: skip
    while len(_OPEN) > _KEEP_OPEN:
        _OPEN.popitem(last=False)
    return _OPEN[key]
