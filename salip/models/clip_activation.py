"""Which activation a CLIP's weights were trained with: QuickGELU or GELU.

OpenAI's CLIP weights (and a few others: MetaCLIP, some DFN and LAION-400M ViT-B-32 tags)
were trained with QuickGELU, ``x * sigmoid(1.702 x)``. open_clip's model configs
(``ViT-L-14``) build GELU unless they say ``quick_gelu``, and the weights alone do not tell:
the shapes are the same. open_clip records the activation per pretrained tag
(``get_pretrained_cfg(name, tag)["quick_gelu"]``); this module finds the tag a source
belongs to and reads it from there:

* a pretrained tag: its own entry;
* a weights file: the tag whose hub repository's cache folder holds it
  (``models--timm--vit_large_patch14_clip_224.openai``), or whose download URL ends in its
  file name (``ViT-L-14.pt``);
* ``hf-hub:ORG/REPO`` and ``local-dir:PATH``: the ``model_cfg`` of the config file, which
  names the activation the weights were trained with; a hub repository that is a known
  tag's, and whose config is silent, follows the tag.

``--clip-quick-gelu`` / ``--no-clip-quick-gelu`` decide where none of this applies, and
override it (with a warning) where it does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salip.models.clip_hub import hub_entry

__all__ = [
    "Activation",
    "choose_activation",
    "tag_of_file",
    "tag_of_hub_repo",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Activation:
    """The activation to build a CLIP with, and why.

    Attributes:
        quick_gelu: QuickGELU (True) or GELU (False).
        source: where the choice came from, for the report ("pretrained tag ViT-L-14
            'openai'", "--clip-quick-gelu", ...).
    """

    quick_gelu: bool
    source: str


def _tags() -> Iterator[tuple[str, str, Mapping[str, Any]]]:
    """Every (model name, tag, pretrained config) open_clip knows."""
    import open_clip

    for name, tag in open_clip.list_pretrained():
        yield name, tag, open_clip.get_pretrained_cfg(name, tag)


def tag_of_file(name: str, path: str | os.PathLike[str]) -> tuple[str, str] | None:
    """(tag, how it was recognised) of model ``name`` whose weights ``path`` is, or None.

    Recognised by name only: the hub cache folder the file sits in, or the file name of the
    tag's download URL. open_clip records no digest for hub files, so a copy renamed and
    moved elsewhere is not recognised (``--clip-quick-gelu`` then says how to build it).
    """
    import open_clip

    path = Path(path)
    parts = set(path.resolve().parts) | set(path.parts)
    for tag in open_clip.list_pretrained_tags_by_model(name):
        cfg = open_clip.get_pretrained_cfg(name, tag)
        repo, _ = hub_entry(cfg)
        if repo and f"models--{repo.replace('/', '--')}" in parts:
            return tag, f"hub cache folder of {repo}"
        url = str(cfg.get("url") or "")
        if url and os.path.basename(url) == path.name:
            return tag, f"file name {path.name} of the tag's download"
    return None


def tag_of_hub_repo(repo: str) -> tuple[str, str, bool] | None:
    """(model name, tag, quick_gelu) of the pretrained tag served from hub repo ``repo``."""
    for name, tag, cfg in _tags():
        if hub_entry(cfg)[0] == repo:
            return name, tag, bool(cfg.get("quick_gelu", False))
    return None


def _model_default(name: str) -> bool:
    import open_clip

    return bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))


def _quick_gelu_tags(name: str) -> list[str]:
    import open_clip

    return [
        tag
        for tag in open_clip.list_pretrained_tags_by_model(name)
        if open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False)
    ]


def _for_name(name: str, pretrained: str | None) -> tuple[Activation, bool]:
    """(activation, whether it is how the weights were trained) for an open_clip name."""
    import open_clip

    if pretrained and not os.path.isfile(pretrained):
        cfg = open_clip.get_pretrained_cfg(name, pretrained)
        quick = bool(cfg.get("quick_gelu", _model_default(name)))
        return Activation(quick, f"pretrained tag {name} '{pretrained}'"), True
    if pretrained:
        found = tag_of_file(name, pretrained)
        if found is not None:
            tag, how = found
            quick = bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))
            return Activation(quick, f"weights of {name} '{tag}' ({how})"), True
    return Activation(_model_default(name), f"model config {name}"), False


def _for_config(spec: str, config: Mapping[str, Any], repo: str | None) -> Activation:
    """The activation a ``local-dir:``/``hf-hub:`` config file states (or its tag's)."""
    model_cfg = config.get("model_cfg") or {}
    if "quick_gelu" in model_cfg:
        return Activation(bool(model_cfg["quick_gelu"]), f"the config of {spec}")
    known = tag_of_hub_repo(repo) if repo else None
    if known is not None:
        name, tag, quick = known
        return Activation(quick, f"pretrained tag {name} '{tag}' served from {repo}")
    return Activation(False, f"the config of {spec}")


def choose_activation(
    name: str,
    pretrained: str | None,
    requested: bool | None,
    config: Mapping[str, Any] | None = None,
) -> Activation:
    """The activation to build CLIP ``name`` with (see the module docstring).

    Args:
        name: an open_clip model name, ``hf-hub:ORG/REPO`` or ``local-dir:PATH``.
        pretrained: the tag or weights file (open_clip names only).
        requested: ``--clip-quick-gelu`` (True), ``--no-clip-quick-gelu`` (False) or None.
        config: the ``open_clip_config.json`` of a ``hf-hub:`` or ``local-dir:`` model.
    """
    if name.startswith(("hf-hub:", "local-dir:")):
        repo = name.removeprefix("hf-hub:") if name.startswith("hf-hub:") else None
        derived, trained = _for_config(name, config or {}, repo), True
    else:
        derived, trained = _for_name(name, pretrained)
    if requested is None:
        tags = (
            _quick_gelu_tags(name) if not trained and pretrained and not derived.quick_gelu else []
        )
        if tags:
            logger.warning(
                "CLIP %s with weights %s: built with GELU as the model config says; if they are "
                "weights trained with QuickGELU (tags %s), pass --clip-quick-gelu "
                "(--no-clip-quick-gelu silences this)",
                name, pretrained, ", ".join(tags),
            )  # fmt: skip
        return derived
    if trained and requested != derived.quick_gelu:
        logger.warning(
            "CLIP %s: built with %s as asked, though %s says the weights were trained with %s",
            name,
            "QuickGELU" if requested else "GELU",
            derived.source,
            "QuickGELU" if derived.quick_gelu else "GELU",
        )
    flag = "--clip-quick-gelu" if requested else "--no-clip-quick-gelu"
    return Activation(requested, flag)
