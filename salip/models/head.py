"""The learned organ head: a CLIP-driven dynamic segmentation head on SAM image embeddings,
and :func:`load_head` for the head.pt files ``salip head train`` writes (a head only
works on the SAM encoder it was trained on, so loading checks the checkpoint's SHA-256).

The idea is the CLIP-Driven Universal Model's (Liu et al., ICCV 2023), put on the frozen
SAM image encoder instead of a 3D U-Net. Per image and class, a controller turns the
image's global feature and the class's text embedding into the weights of a tiny per-class
segmentation head (three 1x1 convolutions) that runs on upsampled SAM features::

    SAM embedding  BxCxhxw (frozen encoder, not part of the head)
      -> upsampler (SAM MaskDecoder.output_upscaling, then a 1x1 conv)  Bx8x4hx4w
      -> global feature: mean over hxw -> Linear(C, 256)                  Bx256
    class codes    KxD (frozen CLIP text embeddings)
      -> Linear(D, 256) + ReLU                                            Kx256
    controller     Linear(512, 153) on [global, text] per (image, class)  BxKx153
      -> dynamic head 8->8 (ReLU) ->8 (ReLU) ->1, all classes in one einsum
    logits         BxKx4hx4w float32

The logits are in SAM's padded 1/4 frame, the frame of SAM's own low-resolution masks
(256x256 for a 1024-pixel SAM; 64x64 for the 256-pixel test SAM): pixel (i, j) covers
pixels [4i, 4i+4) x [4j, 4j+4) of the padded ``img_size`` square that SAM's encoder saw.
``Sam.postprocess_masks`` maps them to the original slice. Each class gets its own sigmoid
(classes may overlap), never a softmax.

Variants (same upsampler, same output contract):

* ``"clip"``: the model above; class codes are a frozen buffer of CLIP text embeddings.
* ``"randtext"``: the same, but the class codes are learned parameters (random unit
  vectors at the start): does the CLIP text matter, or only the per-class conditioning?
* ``"static"``: a plain ``Conv2d(8, K, 1)`` on the upsampled features (no global feature,
  no text, no controller).

Trainable parameters (C = SAM embedding channels, D = text embedding size, K = classes;
C must be a multiple of 8):

* upsampler ``9C²/8 + 15C/8 + 8``: ConvTranspose2d(C, C/4, 2, 2) ``C² + C/4``,
  LayerNorm2d(C/4) ``C/2``, ConvTranspose2d(C/4, C/8, 2, 2) ``C²/8 + C/8``,
  Conv2d(C/8, 8, 1) ``C + 8``;
* global ``256C + 256``; text ``256D + 256``; controller ``512*153 + 153 = 78489``;

so ``clip = 9C²/8 + 2063C/8 + 256D + 79009``, ``randtext = clip + KD`` and
``static = 9C²/8 + 15C/8 + 8 + 9K``. For real SAM (C = 256) with CLIP ViT-L-14 (D = 768)
the clip variant has **415,361** trainable parameters (upsampler 74,216 + global 65,792 +
text 196,864 + controller 78,489), whatever K is. :func:`trainable_parameters` computes it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

from salip.core.errors import ConfigError, ModelError
from salip.core.hashing import file_sha256
from salip.models.sam import LoadedSam

__all__ = [
    "DYNAMIC_PARAMS",
    "FEATURE_DIM",
    "HIDDEN_DIM",
    "MANIFEST_FORMAT",
    "PRIOR_PROBABILITY",
    "UPSCALE",
    "VARIANTS",
    "dynamic_head",
    "HeadArch",
    "load_head",
    "LoadedHead",
    "OrganHead",
    "read_head_manifest",
    "trainable_parameters",
    "upsampler",
]

logger = logging.getLogger(__name__)

#: The ``format`` of a head manifest (head.pt and manifest.json) this salip reads and writes.
MANIFEST_FORMAT = "salip-head/1"

#: Head variants: the CLIP-driven head and its two controls.
VARIANTS = ("clip", "static", "randtext")

#: Channels of the upsampled features the per-class heads run on.
FEATURE_DIM = 8

#: Width of the global-feature and text projections (the controller sees twice this).
HIDDEN_DIM = 256

#: Numbers the controller makes per class: weights 8x8, 8x8, 8x1 then biases 8, 8, 1.
DYNAMIC_PARAMS = FEATURE_DIM * FEATURE_DIM * 2 + FEATURE_DIM + FEATURE_DIM * 2 + 1

#: Spatial upsampling of the upsampler (two stride-2 transposed convolutions).
UPSCALE = 4

#: Foreground probability every class starts at (the prior initialisation of Lin et al.,
#: "Focal Loss for Dense Object Detection", 2017). Organs cover a few percent of a slice;
#: starting at 0.5 makes the first steps push every generated bias far negative, which
#: kills the dynamic head's ReLUs before they learn anything.
PRIOR_PROBABILITY = 0.01


@dataclass(frozen=True)
class HeadArch:
    """Hyper-parameters of an :class:`OrganHead`, enough to rebuild it from a manifest.

    Attributes:
        embed_dim: C, channels of the SAM image embedding (SAM's prompt embed dim).
        num_classes: K, organs the head predicts.
        variant: one of :data:`VARIANTS`.
        text_dim: D, size of a class code (CLIP text embedding); None for ``static``.
    """

    embed_dim: int
    num_classes: int
    variant: str = "clip"
    text_dim: int | None = None

    def validate(self) -> None:
        """Raise :class:`ConfigError` for sizes or a variant the head cannot have."""
        if self.variant not in VARIANTS:
            raise ConfigError(
                f"unknown head variant '{self.variant}'; use one of {', '.join(VARIANTS)}."
            )
        if self.embed_dim < 8 or self.embed_dim % 8:
            raise ConfigError(
                f"the SAM embedding has {self.embed_dim} channels; the head needs a multiple "
                "of 8 (every SAM checkpoint has 256)."
            )
        if self.num_classes < 1:
            raise ConfigError("the head needs at least one class; list them in [train] classes.")
        if self.variant != "static" and (self.text_dim is None or self.text_dim < 1):
            raise ConfigError(f"the {self.variant} head needs the text embedding size (text_dim).")


def trainable_parameters(arch: HeadArch) -> int:
    """The number of trainable parameters of an :class:`OrganHead` of ``arch`` (formula)."""
    c, k = arch.embed_dim, arch.num_classes
    upsampler = 9 * c * c // 8 + 15 * c // 8 + 8
    if arch.variant == "static":
        return upsampler + (FEATURE_DIM + 1) * k
    d = int(arch.text_dim or 0)
    controller = 2 * HIDDEN_DIM * DYNAMIC_PARAMS + DYNAMIC_PARAMS
    total = upsampler + (c + 1) * HIDDEN_DIM + (d + 1) * HIDDEN_DIM + controller
    return total + (k * d if arch.variant == "randtext" else 0)


def upsampler(embed_dim: int) -> nn.Sequential:
    """Cx h x w -> 8 x 4h x 4w: SAM's ``MaskDecoder.output_upscaling`` plus a 1x1 conv.

    Built layer by layer (not taken from a SAM model) because the head trains its own copy
    and must not share weights with the frozen decoder.
    """
    c = embed_dim
    return nn.Sequential(
        nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
        LayerNorm2d(c // 4),
        nn.GELU(),
        nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
        nn.GELU(),
        nn.Conv2d(c // 8, FEATURE_DIM, kernel_size=1),
    )


def dynamic_head(features: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Run per-(image, class) 1x1-conv heads given as flat parameter vectors.

    Hand-written because no library op applies a different small conv stack per (image,
    class); a grouped convolution would need the same reshapes. Batched with einsum, so
    every class runs at once.

    Args:
        features: Bx8xHxW float upsampled features.
        params: BxKx153 float, per (image, class): weights 8x8, 8x8, 1x8 (out x in), then
            biases 8, 8, 1 (the Universal Model's layout).

    Returns:
        BxKxHxW float logits.
    """
    f = FEATURE_DIM
    b, k = params.shape[:2]
    w1, w2, w3, b1, b2, b3 = torch.split(params, [f * f, f * f, f, f, f, 1], dim=-1)
    w1, w2, w3 = w1.view(b, k, f, f), w2.view(b, k, f, f), w3.view(b, k, 1, f)
    x = torch.relu(torch.einsum("bkoi,bihw->bkohw", w1, features) + b1[..., None, None])
    x = torch.relu(torch.einsum("bkoi,bkihw->bkohw", w2, x) + b2[..., None, None])
    x = torch.einsum("bkoi,bkihw->bkohw", w3, x) + b3[..., None, None]
    return x[:, :, 0]


class OrganHead(nn.Module):
    """The learned head (see the module docstring).

    Args:
        arch: sizes and variant.
        class_codes: KxD float class codes: the CLIP text embeddings (``clip``: stored as
            a frozen buffer, saved in the state dict) or the starting codes (``randtext``:
            default random unit vectors from the global torch RNG). Ignored for ``static``.
            Leave it out when the weights come from a state dict next.

    Raises:
        ConfigError: invalid ``arch`` or codes of the wrong shape.
    """

    def __init__(self, arch: HeadArch, class_codes: torch.Tensor | None = None):
        super().__init__()
        arch.validate()
        self.arch = arch
        k, c = arch.num_classes, arch.embed_dim
        self.upsample = upsampler(c)
        prior_logit = math.log(PRIOR_PROBABILITY / (1.0 - PRIOR_PROBABILITY))
        if arch.variant == "static":
            self.classifier = nn.Conv2d(FEATURE_DIM, k, kernel_size=1)
            nn.init.constant_(self.classifier.bias, prior_logit)
            return
        d = int(arch.text_dim or 0)
        if class_codes is not None and tuple(class_codes.shape) != (k, d):
            raise ConfigError(
                f"class codes of shape {tuple(class_codes.shape)} do not fit a head with "
                f"{k} classes and text size {d}."
            )
        if arch.variant == "clip":
            codes = torch.zeros(k, d) if class_codes is None else class_codes
            self.register_buffer("class_codes", codes.detach().float().clone())
        else:
            if class_codes is None:
                class_codes = torch.randn(k, d)
                class_codes = class_codes / class_codes.norm(dim=1, keepdim=True)
            self.class_codes = nn.Parameter(class_codes.detach().float().clone())
        self.global_proj = nn.Linear(c, HIDDEN_DIM)
        self.text_proj = nn.Linear(d, HIDDEN_DIM)
        self.controller = nn.Linear(2 * HIDDEN_DIM, DYNAMIC_PARAMS)
        with torch.no_grad():  # the last number made is the output bias b3
            self.controller.bias[-1] = prior_logit

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """SAM embeddings -> per-class logits.

        Args:
            embeddings: BxCxhxw float SAM image embeddings.

        Returns:
            BxKx4hx4w float logits in SAM's padded 1/4 frame (4h = img_size / 4).
        """
        features = self.upsample(embeddings)
        if self.arch.variant == "static":
            return self.classifier(features)
        b, k = embeddings.shape[0], self.arch.num_classes
        image = self.global_proj(embeddings.mean(dim=(2, 3)))  # Bx256
        text = torch.relu(self.text_proj(self.class_codes))  # Kx256
        joint = torch.cat(
            [image[:, None].expand(b, k, HIDDEN_DIM), text[None].expand(b, k, HIDDEN_DIM)], dim=-1
        )
        return dynamic_head(features, self.controller(joint))


@dataclass
class LoadedHead:
    """A trained head ready for inference.

    Attributes:
        model: the head in eval mode on its device.
        manifest: the manifest it was saved with (see :mod:`salip.apps.training.train`).
        classes: its classes, in output order.
        path: the head.pt file.
    """

    model: OrganHead
    manifest: dict[str, Any]
    classes: tuple[str, ...]
    path: Path

    @property
    def slicing(self) -> dict[str, Any]:
        """The slicing settings it was trained with (axis, window, percentiles, ...)."""
        return dict(self.manifest.get("slicing", {}))

    def identity(self) -> dict[str, Any]:
        """JSON-ready description for reports."""
        m = self.manifest
        return {
            "path": str(self.path),
            "variant": m.get("variant"),
            "classes": list(self.classes),
            "sam_sha256": m.get("sam", {}).get("sha256"),
            "sam_preprocess": m.get("sam", {}).get("preprocess", "sam"),
            "clip": m.get("clip"),
            "salip_version": m.get("salip_version"),
        }


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"head file not found: {path}; train one with `salip head train`.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and EOF errors all mean "unreadable"
        raise ModelError(f"{path}: cannot read the head ({type(exc).__name__}: {exc}).") from exc
    manifest = payload.get("manifest") if isinstance(payload, dict) else None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelError(
            f"{path} is not a salip head (expected a {MANIFEST_FORMAT} manifest); give the "
            "head.pt that `salip head train` wrote."
        )
    return payload


def read_head_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a head.pt (classes, variant, SAM, slicing, data), without a model.

    Raises:
        ModelError: a missing or unreadable file, or not a salip head.
    """
    return dict(_read_payload(Path(path))["manifest"])


def load_head(path: str | Path, sam: LoadedSam, *, device: str = "cpu") -> LoadedHead:
    """Load a head.pt written by :func:`salip.apps.training.train.train_head` for use with ``sam``.

    Read with ``torch.load(weights_only=True)``; the head is rebuilt from its manifest.

    Raises:
        ModelError: a missing or unreadable file, or not a salip head.
        ConfigError: ``sam`` is not the SAM checkpoint the head was trained on, or is set
            to another preprocessing profile.
    """
    path = Path(path)
    payload = _read_payload(path)
    manifest = payload["manifest"]
    trained = manifest["sam"]
    given = file_sha256(sam.path)
    if given != trained["sha256"]:
        raise ConfigError(
            f"{path} was trained on the SAM checkpoint {trained['checkpoint']} "
            f"({trained['arch']}, sha256 {trained['sha256'][:12]}...), but the SAM given is "
            f"{sam.path} (sha256 {given[:12]}...). A head only works on its own SAM: pass "
            f"--sam-checkpoint {trained['checkpoint']}, or train a head for this SAM."
        )
    profile = str(trained.get("preprocess", "sam"))  # heads before profiles: sam
    if profile != sam.preprocess.name:
        raise ConfigError(
            f"{path} was trained on embeddings made with {profile} preprocessing, but the SAM "
            f"is set to {sam.preprocess.name} ({sam.preprocess_from}); pass "
            f"--sam-preprocess {profile}, or train a head with this preprocessing."
        )
    h = manifest["head"]
    arch = HeadArch(
        embed_dim=int(h["embed_dim"]),
        num_classes=int(h["num_classes"]),
        variant=str(h["variant"]),
        text_dim=None if h["text_dim"] is None else int(h["text_dim"]),
    )
    model = OrganHead(arch)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        raise ModelError(
            f"{path}: weights do not fit the head its manifest describes: {exc}"
        ) from exc
    model.to(device).eval()
    logger.info("loaded %s head (%s) from %s", arch.variant, ", ".join(manifest["classes"]), path)
    return LoadedHead(model, manifest, tuple(manifest["classes"]), path)
