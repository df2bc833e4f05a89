"""Load CLIP models through open_clip's factory.

Model specs:
    * an open_clip model name plus a pretrained tag (``ViT-L-14`` + ``openai``) or a local
      weights file (``ViT-B-16`` + ``/path/weights.pt``);
    * ``hf-hub:ORG/REPO`` (e.g. BiomedCLIP); ``--clip-pretrained`` is ignored;
    * ``local-dir:PATH``, a folder with ``open_clip_config.json`` and weights.
Downloaded weights go to ``<SALIP_HOME>/clip``.

Weights of a pretrained tag that are already in that cache are loaded from the cached file,
without asking the Hugging Face hub for a newer copy; an ``hf-hub:`` model whose config and
weights are cached is built with the hub in offline mode, so that no request (and none of
huggingface_hub's retries) is made. Weights that are not cached are downloaded by open_clip;
before that, a short probe of the hub (``$HF_ENDPOINT``) makes an offline machine fail in
seconds with one line, where open_clip's retries take about a minute. ``HF_HUB_OFFLINE=1``
skips the probe and fails at once. A ``local-dir:`` folder or a weights file never touches
the network.

Every model is built with the activation its weights were trained with (QuickGELU for
OpenAI's weights; :mod:`salip.models.clip_activation`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salip.core.errors import ModelError, one_line
from salip.models.clip_activation import Activation, choose_activation
from salip.models.clip_hub import (
    LOCAL_FLAGS,
    cached_tag_weights,
    clip_cache_dir,
    hub_config,
    hub_offline_mode,
    hub_weights,
    missing_offline,
    require_hub,
)
from salip.models.sam import describe_unreadable
from salip.models.specs import local_dir

__all__ = [
    "check_local_dir",
    "load_clip",
    "LoadedClip",
]

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


@dataclass
class LoadedClip:
    """A CLIP model ready for inference.

    Attributes:
        model: open_clip model in eval mode on its device.
        preprocess: open_clip's image transform (PIL image -> 3xSxS float tensor).
        tokenizer: open_clip tokenizer for the model (list[str] -> token tensor).
        name: the model spec it was loaded from.
        pretrained: the pretrained tag or file, if any.
        quick_gelu: built with QuickGELU (True) or GELU (False).
        quick_gelu_from: why (the pretrained tag, the config, the flag, ...).
    """

    model: Any
    preprocess: Any
    tokenizer: Any
    name: str
    pretrained: str | None
    quick_gelu: bool = False
    quick_gelu_from: str = "model config"

    def identity(self) -> dict[str, Any]:
        """JSON-ready description for reports."""
        return {
            "model": self.name,
            "pretrained": self.pretrained,
            "quick_gelu": self.quick_gelu,
            "quick_gelu_from": self.quick_gelu_from,
        }


def _tag_source(name: str, tag: str) -> tuple[str, dict[str, Any]]:
    """What to hand open_clip for a pretrained tag: (``pretrained``, transform overrides).

    A cached file is handed over directly, with the tag's preprocessing (mean, std,
    interpolation, resize mode), so loading it needs no network. Otherwise the tag itself,
    after checking that the hub can be reached.
    """
    import open_clip

    cached = cached_tag_weights(name, tag)
    if cached is None:
        if open_clip.get_pretrained_cfg(name, tag).get("hf_hub"):
            require_hub(f"CLIP weights {name} '{tag}' are")
        return tag, {}
    cfg = open_clip.get_pretrained_cfg(name, tag)
    logger.debug("CLIP %s '%s': cached weights %s", name, tag, cached)
    keys = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation"}
    keys["resize_mode"] = "image_resize_mode"
    return cached, {arg: cfg[key] for key, arg in keys.items() if cfg.get(key) is not None}


def _weight_files(folder: Path) -> list[Path]:
    """Weights files in a ``local-dir:`` folder."""
    return sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())


def check_local_dir(spec: str) -> None:
    """ModelError (one line) unless ``local-dir:PATH`` is a folder open_clip can load."""
    folder = local_dir(spec)
    what = f"cannot load CLIP {spec}:"
    needs = "--clip-model local-dir:PATH needs a folder with open_clip_config.json and weights"
    if not folder.is_dir():
        state = "it is a file, not a folder" if folder.exists() else "no such folder"
        raise ModelError(
            f"{what} {state}; {needs} (for a weights file alone use --clip-model NAME "
            "--clip-pretrained FILE)."
        )
    config = folder / "open_clip_config.json"
    if not config.is_file():
        raise ModelError(f"{what} the folder has no open_clip_config.json; {needs}.")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{what} {config} is not readable JSON ({one_line(exc, 100)}).") from exc
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        raise ModelError(
            f"{what} {config} has no 'model_cfg' object, so it is not an open_clip config; {needs}."
        )
    if not _weight_files(folder):
        raise ModelError(
            f"{what} the folder holds no weights file (.safetensors, .bin or .pth), so CLIP "
            "would have random weights; put the model's weights beside open_clip_config.json."
        )


def _check_spec(name: str, pretrained: str | None) -> None:
    """ModelError (one line) for an unknown model name, tag, or a folder given as weights."""
    import open_clip

    if name not in open_clip.list_models():
        raise ModelError(
            f"unknown CLIP model '{name}'; use an open_clip name (e.g. ViT-B-16, ViT-L-14), "
            'hf-hub:ORG/REPO or local-dir:PATH. `python -c "import open_clip; '
            'print(open_clip.list_models())"` lists the names.'
        )
    if not pretrained or os.path.isfile(pretrained):
        return
    if os.path.isdir(pretrained):
        raise ModelError(
            f"--clip-pretrained {pretrained} is a folder; pass the weights file inside it, or "
            f"--clip-model local-dir:{pretrained} for a folder with open_clip_config.json."
        )
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise ModelError(
            f"'{pretrained}' is neither a file nor a pretrained tag of {name}; "
            f"tags: {', '.join(tags) or 'none'}."
        )


def _read_file(name: str, source: str | None) -> Path | None:
    """The weights file open_clip reads for ``name``/``source``, when there is one."""
    if source and os.path.isfile(source):
        return Path(source)
    folder = local_dir(name)
    if folder is not None:
        files = _weight_files(folder)
        return files[0] if len(files) == 1 else None
    return None


def _read_error(path: Path) -> Exception | None:
    """Why ``path`` cannot be read as weights (safetensors or ``torch.load``), or None.

    Called only after open_clip failed, to tell an unreadable file from weights that were
    read but do not fit the model.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            load_file(str(path))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure here means "unreadable"
        return exc
    return None


def _mismatch_detail(exc: Exception) -> str:
    """One line on why readable weights do not fit a model."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return one_line(lines[1], 160)  # torch: a header, then one line per problem
    return f"{type(exc).__name__}: {one_line(exc, 160)}"


def _load_failure(name: str, pretrained: str | None, source: str | None, exc: Exception) -> str:
    """The one-line message for open_clip failing to build ``name`` from ``source``."""
    weights = _read_file(name, source)
    if weights is None or weights.suffix in (".npz", ".npy"):
        given = f" ({pretrained})" if pretrained and not name.startswith(("hf-", "local-")) else ""
        return f"cannot load CLIP '{name}'{given}: {one_line(exc)}; pass {LOCAL_FLAGS}."
    read_error = _read_error(weights)
    cached = bool(source and source != pretrained)  # a download in the cache
    fix = (
        f"delete the file to download it again, or pass {LOCAL_FLAGS}"
        if cached
        else f"pass weights trained for {name}, or the --clip-model they belong to"
    )
    if read_error is None:
        return f"the weights in {weights} do not fit CLIP {name} ({_mismatch_detail(exc)}); {fix}."
    if weights.suffix == ".safetensors":
        what = f"is not a valid safetensors file ({one_line(read_error, 100)})"
    else:
        what = describe_unreadable(weights, read_error)
    if cached:
        return f"cannot read the cached CLIP weights {weights} of {name} '{pretrained}': it {what}; {fix}."
    return (
        f"cannot read CLIP weights {weights}: it {what}; pass open_clip weights of the model "
        "(.safetensors, .bin or .pt)."
    )


def _check_text_tower(name: str, config: dict[str, Any]) -> None:
    """ModelError unless the packages a config's text tower needs are installed."""
    text = (config.get("model_cfg") or {}).get("text_cfg") or {}
    if text.get("hf_model_name") and importlib.util.find_spec("transformers") is None:
        raise ModelError(
            f"CLIP {name} has a Hugging Face text tower ({text['hf_model_name']}), which needs "
            "the transformers package: pip install 'salip[hf]' (or pip install transformers)."
        )


def _build(
    name: str, source: str | None, device: str, transform_args: dict[str, Any], act: Activation
) -> tuple[Any, Any, Any]:
    """open_clip's (model, image transform, tokenizer) for ``name``, with activation ``act``.

    open_clip's own QuickGELU warning is logged at debug level: :func:`choose_activation`
    has already warned where the choice differs from how the weights were trained.
    """
    import open_clip

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=source, device=device, cache_dir=str(clip_cache_dir()),
            force_quick_gelu=act.quick_gelu, quick_gelu=act.quick_gelu, **transform_args,
        )  # fmt: skip
        tokenizer = open_clip.get_tokenizer(name, cache_dir=str(clip_cache_dir()))
    for warning in caught:
        quiet = "QuickGELU" in str(warning.message)
        (logger.debug if quiet else logger.warning)("open_clip: %s", one_line(warning.message))
    return model, preprocess, tokenizer


def _build_hub(name: str, cached: bool, build: Any) -> tuple[Any, Any, Any]:
    """Build an ``hf-hub:`` model: offline first when its files are cached, then (for files
    the cache lacks, such as a text tower's tokenizer) online after probing the hub; and
    never with random weights, which open_clip falls back to when the download fails."""
    result = None
    if cached:
        try:
            with hub_offline_mode():
                result = build()
        except Exception as exc:
            if not missing_offline(exc):
                raise
            logger.info("CLIP %s: a file is not cached (%s); asking the hub", name, one_line(exc))
    if result is None:
        require_hub(f"files of CLIP model {name} are", "them")
        result = build()
    if hub_weights(name.removeprefix("hf-hub:")) is None:
        raise ModelError(
            f"the weights of CLIP {name} could not be downloaded, so CLIP would have random "
            f"weights; try again, or pass {LOCAL_FLAGS}."
        )
    return result


def load_clip(
    name: str,
    pretrained: str | None = None,
    *,
    device: str = "cpu",
    quick_gelu: bool | None = None,
) -> LoadedClip:
    """Load a CLIP model and its preprocessing and tokenizer.

    Args:
        name: an open_clip model name, ``hf-hub:ORG/REPO`` or ``local-dir:PATH``.
        pretrained: a pretrained tag or a weights file (open_clip names only).
        device: where the model goes.
        quick_gelu: the activation (True: QuickGELU, False: GELU); None: the one the
            weights were trained with, where it is known
            (:func:`~salip.models.clip_activation.choose_activation`).

    Raises:
        ModelError: unknown model name (lists valid ones), unknown pretrained tag (lists the
            model's tags), missing or incomplete local files, unreadable weights, or
            weights that are not cached while the hub cannot be reached. One line each.
    """
    schema_spec = name.startswith(("hf-hub:", "local-dir:"))
    source: str | None = None
    transform_args: dict[str, Any] = {}
    config: dict[str, Any] | None = None
    hub_cached = False
    if name.startswith("local-dir:"):
        check_local_dir(name)
        folder = local_dir(name)
        config = json.loads((folder / "open_clip_config.json").read_text(encoding="utf-8"))
    elif name.startswith("hf-hub:"):
        config, hub_cached = hub_config(name)
    else:
        _check_spec(name, pretrained)
        if pretrained and not os.path.isfile(pretrained):
            source, transform_args = _tag_source(name, pretrained)
        else:
            source = pretrained
    if config is not None:
        _check_text_tower(name, config)
    activation = choose_activation(name, pretrained, quick_gelu, config)

    def build() -> tuple[Any, Any, Any]:
        return _build(name, source, device, transform_args, activation)

    try:
        if name.startswith("hf-hub:"):
            model, preprocess, tokenizer = _build_hub(name, hub_cached, build)
        else:
            model, preprocess, tokenizer = build()
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read or build is a ModelError
        raise ModelError(_load_failure(name, pretrained, source, exc)) from exc
    pretrained_arg = None if schema_spec else pretrained
    if not schema_spec and not pretrained:
        logger.warning("CLIP %s has random weights: no --clip-pretrained given", name)
    model.eval()
    logger.info(
        "loaded CLIP %s (%s) on %s; %s (%s)", name, pretrained_arg or "-", device,
        "QuickGELU" if activation.quick_gelu else "GELU", activation.source,
    )  # fmt: skip
    return LoadedClip(
        model, preprocess, tokenizer, name, pretrained_arg, activation.quick_gelu, activation.source
    )
