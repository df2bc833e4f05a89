"""Load CLIP models through open_clip's factory.

Model specs:
    * an open_clip model name plus a pretrained tag (``ViT-L-14`` + ``openai``) or a local
      weights file (``ViT-B-16`` + ``/path/weights.pt``);
    * ``hf-hub:ORG/REPO`` (e.g. BiomedCLIP); ``--clip-pretrained`` is ignored;
    * ``local-dir:PATH``, a folder with ``open_clip_config.json`` and weights.
Downloaded weights go to ``<SALIP_HOME>/clip``.

Weights of a pretrained tag that are already in that cache are loaded from the cached file,
without asking the Hugging Face hub for a newer copy. Weights that are not cached are
downloaded by open_clip; before that, a short probe of the hub (``$HF_ENDPOINT``) makes an
offline machine fail in seconds with one line, where open_clip's retries take about a
minute. ``HF_HUB_OFFLINE=1`` skips the probe and fails at once. A ``local-dir:`` folder or
a weights file never touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import ssl
import threading
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salip.core.errors import ModelError, one_line
from salip.models.registry import salip_home
from salip.models.sam import describe_unreadable
from salip.models.specs import local_dir

logger = logging.getLogger(__name__)

#: Seconds to wait for the Hugging Face hub to answer before calling it unreachable.
PROBE_TIMEOUT_S = 3.0

#: What to pass instead of weights that cannot be fetched.
LOCAL_FLAGS = (
    "--clip-pretrained FILE (a weights file) or --clip-model local-dir:PATH (a folder with "
    "open_clip_config.json and weights)"
)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass
class LoadedClip:
    """A CLIP model ready for inference.

    Attributes:
        model: open_clip model in eval mode on its device.
        preprocess: open_clip's image transform (PIL image -> 3xSxS float tensor).
        tokenizer: open_clip tokenizer for the model (list[str] -> token tensor).
        name: the model spec it was loaded from.
        pretrained: the pretrained tag or file, if any.
    """

    model: Any
    preprocess: Any
    tokenizer: Any
    name: str
    pretrained: str | None

    def identity(self) -> dict[str, Any]:
        """JSON-ready description for reports."""
        return {"model": self.name, "pretrained": self.pretrained}


def clip_cache_dir() -> Path:
    """Where open_clip downloads CLIP weights for salip (``<SALIP_HOME>/clip``)."""
    return salip_home() / "clip"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no hub access."""
    from huggingface_hub import constants

    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in _TRUE for flag in flags) or constants.is_offline_mode()


def hub_endpoint() -> str:
    """The Hugging Face hub URL downloads go to: ``$HF_ENDPOINT``, else huggingface.co."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _head(url: str, timeout: float) -> str | None:
    """None if an HTTP server answers a HEAD request for ``url``, else why not."""
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 (http/https URL)
            return None
    except urllib.error.HTTPError:
        return None  # any HTTP status means the server is there
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):
            return None  # reachable; the download itself reports certificate problems
        return one_line(exc.reason, 100)
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        return one_line(exc, 100) or type(exc).__name__


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if ``url`` answers within about ``timeout`` seconds, else the reason (one line).

    Proxies from the environment are used, as for the download. The request runs in a
    daemon thread so that a hanging name lookup cannot hold the caller past the timeout.
    """
    result: list[str | None] = []
    thread = threading.Thread(
        target=lambda: result.append(_head(url, timeout)), name="salip-hub-probe", daemon=True
    )
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"no answer within {timeout:g} s"


def require_hub(missing: str, them: str = "them") -> None:
    """Raise ModelError (one line) unless the hub can be reached to download ``missing``.

    Args:
        missing: what is not cached, as the subject of a sentence ("CLIP weights
            ViT-L-14 'openai' are").
        them: the pronoun for it ("them", "it").
    """
    cache = clip_cache_dir()
    if hub_offline():
        raise ModelError(
            f"{missing} not in the cache ({cache}) and HF_HUB_OFFLINE is set; unset it to "
            f"download {them}, or pass {LOCAL_FLAGS}."
        )
    endpoint = hub_endpoint()
    reason = probe(endpoint)
    if reason is not None:
        raise ModelError(
            f"{missing} not in the cache ({cache}) and {endpoint} cannot be reached "
            f"({reason}); download {them} once with internet access (or set HF_ENDPOINT to a "
            f"mirror), or pass {LOCAL_FLAGS}."
        )


def _hub_file_names(filename: str) -> list[str]:
    """The files open_clip asks the hub for, in its order: safetensors first, if usable."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    names = []
    if importlib.util.find_spec("safetensors") is not None:
        if filename == HF_WEIGHTS_NAME:
            names.append(HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            names.append(filename[:-4] + ".safetensors")
    return [*names, filename]


def cached_tag_weights(name: str, tag: str) -> str | None:
    """The cached weights file of pretrained ``tag`` of model ``name``, or None.

    Looks where open_clip's download puts it: the Hugging Face cache layout under
    :func:`clip_cache_dir`, for the ``hf_hub`` entry of open_clip's pretrained config.
    """
    import open_clip
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_WEIGHTS_NAME

    hub = open_clip.get_pretrained_cfg(name, tag).get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)  # "org/model/" names the default file
    for candidate in _hub_file_names(filename or HF_WEIGHTS_NAME):
        found = try_to_load_from_cache(repo, candidate, cache_dir=clip_cache_dir())
        if isinstance(found, str):
            return found
    return None


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
    model_quick_gelu = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
    if bool(cfg.get("quick_gelu", False)) != model_quick_gelu:  # as open_clip warns for tags
        logger.warning(
            "CLIP %s '%s': QuickGELU mismatch between the model config (quick_gelu=%s) and "
            "the pretrained tag", name, tag, model_quick_gelu,
        )  # fmt: skip
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


def _check_hub_model(name: str) -> None:
    """For ``hf-hub:ORG/REPO``: ModelError unless its config is cached or the hub answers."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_CONFIG_NAME

    repo = name.removeprefix("hf-hub:")
    if not isinstance(
        try_to_load_from_cache(repo, HF_CONFIG_NAME, cache_dir=clip_cache_dir()), str
    ):
        require_hub(f"CLIP model {name} is", "it")


def load_clip(name: str, pretrained: str | None = None, *, device: str = "cpu") -> LoadedClip:
    """Load a CLIP model and its preprocessing and tokenizer.

    Raises:
        ModelError: unknown model name (lists valid ones), unknown pretrained tag (lists the
            model's tags), missing or incomplete local files, unreadable weights, or
            weights that are not cached while the hub cannot be reached. One line each.
    """
    import open_clip

    schema_spec = name.startswith(("hf-hub:", "local-dir:"))
    source: str | None = None
    transform_args: dict[str, Any] = {}
    if name.startswith("local-dir:"):
        check_local_dir(name)
    elif name.startswith("hf-hub:"):
        _check_hub_model(name)
    else:
        _check_spec(name, pretrained)
        if pretrained and not os.path.isfile(pretrained):
            source, transform_args = _tag_source(name, pretrained)
        else:
            source = pretrained
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=source, device=device, cache_dir=str(clip_cache_dir()),
            **transform_args,
        )  # fmt: skip
        tokenizer = open_clip.get_tokenizer(name, cache_dir=str(clip_cache_dir()))
    except Exception as exc:  # noqa: BLE001 - any failure to read or build is a ModelError
        raise ModelError(_load_failure(name, pretrained, source, exc)) from exc
    pretrained_arg = None if schema_spec else pretrained
    if not schema_spec and not pretrained:
        logger.warning("CLIP %s has random weights: no --clip-pretrained given", name)
    model.eval()
    logger.info("loaded CLIP %s (%s) on %s", name, pretrained_arg or "-", device)
    return LoadedClip(model, preprocess, tokenizer, name, pretrained_arg)
