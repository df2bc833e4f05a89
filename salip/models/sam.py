"""Load SAM checkpoints in segment-anything's format, inferring the architecture.

Official vit_b/vit_l/vit_h checkpoints and fine-tunes saved in the same format (MedSAM,
SAM-Med2D style state dicts) all load without a model-type flag: the encoder's width, depth,
heads, global-attention blocks and image size are read from the tensor shapes.
"""

from __future__ import annotations

import logging
import re
import warnings
import zipfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from salip.core.errors import ConfigError, ModelError, one_line
from salip.models.registry import SAM_CHECKPOINTS, cached_checkpoint, checkpoint_dir
from salip.models.sam_preprocess import SAM_PREPROCESS, SamPreprocess, get_preprocess

if TYPE_CHECKING:
    from salip.models.sam_onnx import OnnxSam

__all__ = [
    "DECODER_NUM_HEADS",
    "KNOWN_SAM_FILES",
    "OFFICIAL_ARCHS",
    "SAM_CHECKPOINT_HINT",
    "build_sam",
    "choose_preprocess",
    "describe_unreadable",
    "infer_sam_arch",
    "load_sam",
    "LoadedSam",
    "resolve_sam_checkpoint",
    "SamArch",
]

logger = logging.getLogger(__name__)

#: segment-anything's mask decoder always uses 8 attention heads; the count is not
#: recoverable from weight shapes, so it is fixed here as in ``build_sam.py``.
DECODER_NUM_HEADS = 8

#: What to give instead of a file that is not a SAM checkpoint; ends those error messages.
SAM_CHECKPOINT_HINT = (
    "pass an official name (vit_b, vit_l or vit_h, fetched with `salip models download NAME`) "
    "or a segment-anything .pth state dict"
)

#: The first bytes of a PyTorch zip checkpoint (a zip local-file header).
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class SamArch:
    """Hyper-parameters of a SAM model, as read from a state dict."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3
    mask_in_chans: int = 16

    @property
    def name(self) -> str:
        """ "vit_b", "vit_l", "vit_h" for the official layouts, else a description."""
        for name, arch in OFFICIAL_ARCHS.items():
            if arch == self:
                return name
        return (
            f"custom(embed_dim={self.embed_dim}, depth={self.depth}, heads={self.num_heads}, "
            f"image_size={self.image_size})"
        )


OFFICIAL_ARCHS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11), 1024),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23), 1024),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31), 1024),
}


@dataclass
class LoadedSam:
    """A SAM model ready for inference, with where it came from.

    Attributes:
        model: segment_anything ``Sam``, in eval mode on its device.
        arch: the architecture read from the weights.
        path: the checkpoint file.
        preprocess: how the checkpoint's family wants its input
            (:mod:`salip.models.sam_preprocess`); every encoder call uses it.
        preprocess_from: why that profile (the flag, the file's hash or name, the default).
        onnx: the encoder and point decoder on ONNX Runtime (:mod:`salip.models.sam_onnx`),
            or None to run them on torch.
    """

    model: Any
    arch: SamArch
    path: Path
    preprocess: SamPreprocess = SAM_PREPROCESS
    preprocess_from: str = "default"
    onnx: OnnxSam | None = None

    @property
    def runtime(self) -> str:
        """ "onnx" when the encoder and point decoder run on ONNX Runtime, else "torch"."""
        return "torch" if self.onnx is None else "onnx"

    def identity(self) -> dict[str, Any]:
        """JSON-ready description for reports."""
        return {
            "path": str(self.path),
            "arch": self.arch.name,
            **asdict(self.arch),
            "preprocess": self.preprocess.name,
            "preprocess_from": self.preprocess_from,
            "runtime": self.runtime,
        }


#: SHA-256 of checkpoint files whose family is known -> (what the file is, profile name).
#: The official SAM files are listed; MedSAM's published file is recognised by its name,
#: since its digest is not recorded here (add it, with the profile, to recognise it renamed).
KNOWN_SAM_FILES: dict[str, tuple[str, str]] = {
    info.sha256: (f"the official SAM {name}", "sam") for name, info in SAM_CHECKPOINTS.items()
}

#: File-name stems (lower case) of checkpoints trained with another family's input.
_NAMED_FAMILIES = (("medsam", "medsam"),)


def choose_preprocess(spec: str, path: Path, setting: str = "auto") -> tuple[SamPreprocess, str]:
    """The preprocessing profile of a SAM checkpoint, and why it was chosen.

    In order: ``setting`` when it names a profile (``--sam-preprocess``); ``sam`` for an
    official name (its download was checked against the official digest); the profile of a
    file whose SHA-256 is in :data:`KNOWN_SAM_FILES`; ``medsam`` for a file whose name
    contains "medsam" (``medsam_vit_b.pth``, MedSAM's published name); else ``sam``.

    Raises:
        ConfigError: ``setting`` is neither "auto" nor a profile name.
    """
    if setting != "auto":
        return get_preprocess(setting), "--sam-preprocess"
    if spec in SAM_CHECKPOINTS and not Path(spec).expanduser().is_file():
        return SAM_PREPROCESS, f"the official SAM {spec}"
    from salip.core.hashing import file_sha256

    known = KNOWN_SAM_FILES.get(file_sha256(path))
    if known is not None:
        return get_preprocess(known[1]), f"SHA-256 of {known[0]}"
    stem = path.name.lower()
    for marker, profile in _NAMED_FAMILIES:
        if marker in stem:
            return get_preprocess(profile), f"file name {path.name}"
    return SAM_PREPROCESS, "default (pass --sam-preprocess for a fine-tune trained otherwise)"


def _unwrap(checkpoint: Any) -> dict[str, Any]:
    """Return the SAM state dict inside common checkpoint wrappers."""
    if isinstance(checkpoint, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            inner = checkpoint.get(key)
            if isinstance(inner, dict) and any(
                isinstance(k, str) and "image_encoder" in k for k in inner
            ):
                checkpoint = inner
                break
    if not isinstance(checkpoint, dict):
        raise ModelError(f"it holds a {type(checkpoint).__name__}, not a state dict")
    # DataParallel and training wrappers prefix every key; strip the prefix when what
    # follows is a SAM part.
    prefixes = ("module.", "sam.", "model.")
    parts = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
    state = {}
    for key, value in checkpoint.items():
        for prefix in prefixes if isinstance(key, str) else ():
            if key.startswith(prefix) and key[len(prefix) :].startswith(parts):
                key = key[len(prefix) :]
                break
        state[key] = value
    return state


def infer_sam_arch(state_dict: dict[str, Any]) -> SamArch:
    """Read a :class:`SamArch` from the tensor shapes of a SAM state dict.

    Raises:
        ModelError: if the state dict is not a SAM model in segment-anything's layout.
    """
    try:
        patch = state_dict["image_encoder.patch_embed.proj.weight"]  # (embed, 3, p, p)
        embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
        grid = int(state_dict["image_encoder.pos_embed"].shape[1])  # (1, g, g, embed)
        blocks = sorted(
            {
                int(m.group(1))
                for k in state_dict
                if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))
            }
        )
        depth = len(blocks)
        rel = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in blocks]
        head_dim = int(rel[0].shape[1])
        global_idx = tuple(i for i, r in zip(blocks, rel) if int(r.shape[0]) == 2 * grid - 1)
        windowed = [int(r.shape[0]) for r in rel if int(r.shape[0]) != 2 * grid - 1]
        window_size = (windowed[0] + 1) // 2 if windowed else 0
        prompt_dim = int(state_dict["image_encoder.neck.0.weight"].shape[0])
        dec_layers = {
            int(m.group(1))
            for k in state_dict
            if (m := re.match(r"mask_decoder\.transformer\.layers\.(\d+)\.", k))
        }
        mlp_dim = int(state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0])
        iou_layers = {
            int(m.group(1))
            for k in state_dict
            if (m := re.match(r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight", k))
        }
        iou_hidden = int(state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0])
        mask_tokens = int(state_dict["mask_decoder.mask_tokens.weight"].shape[0])
        mask_in = int(state_dict["prompt_encoder.mask_downscaling.0.weight"].shape[0]) * 4
    except (KeyError, IndexError, AttributeError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise ModelError(
            f"not a SAM checkpoint in segment-anything's format (missing or odd {exc}); "
            f"{SAM_CHECKPOINT_HINT}."
        ) from exc
    if depth == 0 or head_dim == 0 or embed_dim % head_dim:
        raise ModelError(
            f"not a SAM checkpoint in segment-anything's format; {SAM_CHECKPOINT_HINT}."
        )
    return SamArch(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        global_attn_indexes=global_idx,
        image_size=grid * patch_size,
        patch_size=patch_size,
        window_size=window_size,
        prompt_embed_dim=prompt_dim,
        decoder_depth=len(dec_layers),
        decoder_mlp_dim=mlp_dim,
        iou_head_depth=len(iou_layers),
        iou_head_hidden_dim=iou_hidden,
        num_multimask_outputs=mask_tokens - 1,
        mask_in_chans=mask_in,
    )


def build_sam(arch: SamArch) -> Any:
    """Build an untrained segment-anything ``Sam`` model of architecture ``arch``.

    Mirrors ``segment_anything.build_sam._build_sam`` with every size taken from ``arch``.
    """
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = arch.image_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.depth,
            embed_dim=arch.embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=DECODER_NUM_HEADS,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def resolve_sam_checkpoint(spec: str) -> Path:
    """Turn ``--sam-checkpoint`` (a path or an official name) into an existing file.

    Raises:
        ModelError: the file is missing or a folder, or the official checkpoint is not cached
            yet (the message gives the download command).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if spec in SAM_CHECKPOINTS:
        cached = cached_checkpoint(spec)
        if cached is not None:
            return cached
        raise ModelError(
            f"SAM checkpoint '{spec}' is not in the cache ({checkpoint_dir()}). "
            f"Get it with `salip models download {spec}`, or pass a file with --sam-checkpoint."
        )
    if path.is_dir():
        raise ModelError(f"{path} is a folder, not a SAM checkpoint file; {SAM_CHECKPOINT_HINT}.")
    if path.suffix or "/" in spec or "\\" in spec:
        raise ModelError(f"SAM checkpoint file not found: {spec}.")
    raise ModelError(
        f"unknown SAM checkpoint '{spec}'; give a .pth file or one of {', '.join(SAM_CHECKPOINTS)}."
    )


def _file_head(path: Path, size: int = 512) -> bytes | None:
    """The first ``size`` bytes of ``path``, or None if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return None


def _looks_like_text(head: bytes) -> bool:
    """True for bytes that read as UTF-8 text (a config, an HTML page, a pointer file)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at the end is still text
        return exc.start >= len(head) - 3
    return True


def _describe_zip(path: Path) -> str:
    """What a file starting with a zip header is, when torch could not load it."""
    if not zipfile.is_zipfile(path):
        return "is a truncated or damaged PyTorch checkpoint (an interrupted download or copy?)"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        names = []
    if any(name.endswith("data.pkl") for name in names):
        return "is a damaged PyTorch checkpoint (an interrupted download or copy?)"
    return "is a zip archive but not a PyTorch checkpoint"


def _describe_text(head: bytes) -> str:
    """What a text file given as a checkpoint is."""
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the file itself (run `git lfs pull`)"
    if re.search(rb"<(!doctype|html)", head.lower()):
        return "is an HTML page, not a checkpoint (a failed download?)"
    return "is a text file, not a checkpoint"


def describe_unreadable(path: Path, exc: BaseException) -> str:
    """Say what ``path`` is, given that ``torch.load`` failed on it with ``exc``.

    Returns a predicate for a one-line error, after "it" ("is empty", "is a text file, not
    a checkpoint", ...): the file's first bytes tell a text file, a truncated zip checkpoint,
    a pickle with code and random bytes apart, where torch gives several lines of advice.
    """
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if refused:  # weights_only=True met a class or function: never unpickle it
        return (
            f"holds Python objects besides tensors ({refused.group(1)}), which salip does not "
            "load because unpickling them can run code (re-save the weights with "
            "torch.save(model.state_dict(), FILE))"
        )
    head = _file_head(path)
    if head is None or isinstance(exc, PermissionError):
        reason = getattr(exc, "strerror", None) or one_line(exc, 80)
        return f"is not readable ({reason}; check its permissions)"
    if not head:
        return "is empty"
    if head.startswith(_ZIP_MAGIC):
        return _describe_zip(path)
    if head.startswith(b"\x80"):  # pickle protocol 2+: torch's legacy format or plain pickle
        if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
            return "is a truncated or damaged checkpoint (an interrupted download or copy?)"
        return "is a Python pickle, not a PyTorch weights file"
    if _looks_like_text(head):
        return _describe_text(head)
    return "is not a PyTorch checkpoint (unrecognised content)"


def _read_checkpoint(path: Path) -> Any:
    """``torch.load`` the file safely (weights only, onto the CPU); ModelError if it fails.

    ``weights_only=True`` refuses pickled objects other than tensors and plain containers,
    so a file cannot run code while it is read. torch's warnings are logged, not printed.
    """
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip, EOF and text errors all mean "unreadable"
            raise ModelError(
                f"cannot read checkpoint {path}: it {describe_unreadable(path, exc)}; "
                f"{SAM_CHECKPOINT_HINT}."
            ) from exc
        finally:
            for warning in caught:
                logger.debug("torch.load(%s): %s", path, one_line(warning.message))
    return checkpoint


def _load_weights(model: Any, state: dict[str, Any], arch: SamArch, path: Path) -> None:
    """Load ``state`` into ``model`` strictly; ModelError (one line) if it does not fit."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # torch: "Error(s) in loading state_dict for Sam:" then one indented line per problem.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = one_line(lines[1] if len(lines) > 1 else exc, 160)
        raise ModelError(
            f"{path}: the weights do not fit the {arch.name} SAM their shapes describe "
            f"({detail}); {SAM_CHECKPOINT_HINT}."
        ) from exc


def load_sam(
    spec: str,
    *,
    device: str = "cpu",
    model_type: str | None = None,
    preprocess: str = "auto",
    runtime: str = "torch",
) -> LoadedSam:
    """Load a SAM checkpoint (file path or official name) onto ``device``.

    The file is read with ``torch.load(weights_only=True, map_location="cpu")``, so a
    checkpoint saved on a GPU loads on a CPU-only machine, and a file cannot run code.
    ``preprocess`` names the input profile (``sam``, ``medsam``), or ``auto`` to choose it
    from the checkpoint (:func:`choose_preprocess`). ``runtime`` is ``torch``, or ``onnx``
    (resolved by :func:`~salip.models.sam_onnx.resolve_runtime`) to also open the model's
    ONNX Runtime graphs, exporting them to the cache first when missing.

    Raises:
        ModelError: missing, unreadable or non-SAM file, or a ``model_type`` that does not
            match what the file holds. The message is one line that names the file, says
            what it is, and what to give instead.
        ConfigError: an unknown ``preprocess``.
    """
    path = resolve_sam_checkpoint(spec)
    checkpoint = _read_checkpoint(path)
    try:
        state = _unwrap(checkpoint)
        arch = infer_sam_arch(state)
    except ModelError as exc:
        message = str(exc).rstrip(".")
        hint = "" if SAM_CHECKPOINT_HINT in message else f"; {SAM_CHECKPOINT_HINT}"
        raise ModelError(f"{path}: {message}{hint}.") from exc
    if model_type is not None:
        if model_type not in OFFICIAL_ARCHS:
            raise ModelError(
                f"unknown SAM model type '{model_type}'; use one of {', '.join(OFFICIAL_ARCHS)} "
                "or leave it out to read the architecture from the file."
            )
        if OFFICIAL_ARCHS[model_type] != arch:
            raise ModelError(
                f"{path} holds a {arch.name} SAM, not {model_type}; drop --sam-model-type "
                "or pass the matching checkpoint."
            )
    model = build_sam(arch)
    _load_weights(model, state, arch, path)
    profile, reason = choose_preprocess(spec, path, preprocess)
    model.to(device)
    logger.info(
        "loaded SAM %s from %s on %s; %s preprocessing (%s)",
        arch.name, path, device, profile.name, reason,
    )  # fmt: skip
    onnx = None
    if runtime == "onnx":
        from salip.models.sam_onnx import load_onnx_sam

        onnx = load_onnx_sam(model, path)
    elif runtime != "torch":
        raise ConfigError(f"unknown SAM runtime '{runtime}'; use torch or onnx.")
    return LoadedSam(model, arch, path, profile, reason, onnx)
