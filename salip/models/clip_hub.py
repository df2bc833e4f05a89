"""CLIP files on the Hugging Face hub: salip's cache of them, the probe that makes an
offline machine fail in seconds, and offline mode for models whose files are all cached.

Downloaded files go to ``<SALIP_HOME>/clip`` in huggingface_hub's cache layout
(``models--ORG--REPO/snapshots/REV/FILE``), where open_clip's downloads put them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from salip.core.errors import ModelError, one_line
from salip.models.registry import salip_home

__all__ = [
    "LOCAL_FLAGS",
    "PROBE_TIMEOUT_S",
    "cached_tag_weights",
    "clip_cache_dir",
    "hub_cached",
    "hub_config",
    "hub_endpoint",
    "hub_entry",
    "hub_file_names",
    "hub_offline",
    "hub_offline_mode",
    "hub_weights",
    "missing_offline",
    "probe",
    "require_hub",
]

logger = logging.getLogger(__name__)

#: Seconds to wait for the Hugging Face hub to answer before calling it unreachable.
PROBE_TIMEOUT_S = 3.0

#: What to pass instead of weights that cannot be fetched.
LOCAL_FLAGS = (
    "--clip-pretrained FILE (a weights file) or --clip-model local-dir:PATH (a folder with "
    "open_clip_config.json and weights)"
)

_TRUE = {"1", "ON", "YES", "TRUE"}


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


def hub_file_names(filename: str) -> list[str]:
    """The files open_clip asks the hub for, in its order: safetensors first, if usable."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    names = []
    if importlib.util.find_spec("safetensors") is not None:
        if filename == HF_WEIGHTS_NAME:
            names.append(HF_SAFE_WEIGHTS_NAME)
        elif filename.endswith((".bin", ".pth")):
            names.append(filename[:-4] + ".safetensors")
    return [*names, filename]


def hub_entry(cfg: Any) -> tuple[str, str]:
    """(``ORG/REPO``, file name) of a pretrained config's ``hf_hub`` entry, split as open_clip
    splits it ("org/repo/" names the default file: ""); ("", "") when it has none."""
    hub = str(cfg.get("hf_hub") or "")
    return os.path.split(hub) if hub else ("", "")


def cached_tag_weights(name: str, tag: str) -> str | None:
    """The cached weights file of pretrained ``tag`` of model ``name``, or None.

    Looks where open_clip's download puts it: the Hugging Face cache layout under
    :func:`clip_cache_dir`, for the ``hf_hub`` entry of open_clip's pretrained config.
    """
    import open_clip

    repo, filename = hub_entry(open_clip.get_pretrained_cfg(name, tag))
    return hub_weights(repo, filename) if repo else None


def hub_cached(repo: str, filename: str) -> str | None:
    """The cached copy of ``filename`` of hub repo ``repo`` (salip's CLIP cache), or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=clip_cache_dir())
    return found if isinstance(found, str) else None


def hub_weights(repo: str, filename: str = "") -> str | None:
    """The cached weights file open_clip loads from hub repo ``repo`` (``filename``, or the
    default file; safetensors first, as open_clip asks), or None."""
    from open_clip.constants import HF_WEIGHTS_NAME

    candidates = hub_file_names(filename or HF_WEIGHTS_NAME)
    return next(filter(None, (hub_cached(repo, f) for f in candidates)), None)


def hub_config(name: str) -> tuple[dict[str, Any], bool]:
    """(``open_clip_config.json`` of ``hf-hub:ORG/REPO``, whether its weights are cached too).

    The config is read from the cache, else downloaded (after checking the hub answers).

    Raises:
        ModelError: the config is not cached and the hub cannot be reached, or it cannot
            be downloaded or read.
    """
    from open_clip.constants import HF_CONFIG_NAME

    repo = name.removeprefix("hf-hub:")
    path = hub_cached(repo, HF_CONFIG_NAME)
    if path is None:
        require_hub(f"CLIP model {name} is", "it")
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(repo, HF_CONFIG_NAME, cache_dir=clip_cache_dir())
        except Exception as exc:  # noqa: BLE001 - any failure to fetch is the same error
            raise ModelError(
                f"cannot download the config of CLIP {name} ({one_line(exc, 160)}); check "
                f"the repository name, or pass {LOCAL_FLAGS}."
            ) from exc
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot read the config of CLIP {name} ({path}: {one_line(exc, 100)}); delete "
            "the file to download it again."
        ) from exc
    if not isinstance(config, dict):
        raise ModelError(f"the config of CLIP {name} ({path}) is not a JSON object.")
    return config, hub_weights(repo) is not None


@contextlib.contextmanager
def hub_offline_mode() -> Iterator[None]:
    """huggingface_hub's offline mode for the calls inside: every file comes from the cache,
    and no request (and no retry) is made. transformers and open_clip fetch through
    huggingface_hub, which reads the flag on each call. Not thread-safe: models are loaded
    from one thread."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def missing_offline(exc: BaseException) -> bool:
    """True when ``exc`` (or its cause) says a file was needed that the cache does not hold."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        if "offline" in str(seen).lower() and "cache" in str(seen).lower():
            return True  # transformers' "... not cached ... offline mode" OSError
        seen = seen.__cause__ or seen.__context__
    return False
