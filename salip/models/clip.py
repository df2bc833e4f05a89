"""Load CLIP models through open_clip's factory.

Model specs:
    * an open_clip model name plus a pretrained tag (``ViT-L-14`` + ``openai``) or a local
      weights file (``ViT-B-16`` + ``/path/weights.pt``);
    * ``hf-hub:ORG/REPO`` (e.g. BiomedCLIP); ``--clip-pretrained`` is ignored;
    * ``local-dir:PATH``, a folder with ``open_clip_config.json`` and weights.
Downloaded weights go to ``<SALIP_HOME>/clip``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from salip.errors import ModelError
from salip.models.registry import salip_home

logger = logging.getLogger(__name__)


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


def load_clip(name: str, pretrained: str | None = None, *, device: str = "cpu") -> LoadedClip:
    """Load a CLIP model and its preprocessing and tokenizer.

    Raises:
        ModelError: unknown model name (lists valid ones), unknown pretrained tag (lists the
            model's tags), missing local files, or weights that cannot be fetched or loaded.
    """
    import open_clip

    schema_spec = name.startswith(("hf-hub:", "local-dir:"))
    if not schema_spec:
        if name not in open_clip.list_models():
            raise ModelError(
                f"unknown CLIP model '{name}'; use an open_clip name (e.g. ViT-B-16, ViT-L-14), "
                'hf-hub:ORG/REPO or local-dir:PATH. `python -c "import open_clip; '
                'print(open_clip.list_models())"` lists the names.'
            )
        if pretrained and not os.path.isfile(pretrained):
            tags = open_clip.list_pretrained_tags_by_model(name)
            if pretrained not in tags:
                raise ModelError(
                    f"'{pretrained}' is neither a file nor a pretrained tag of {name}; "
                    f"tags: {', '.join(tags) or 'none'}."
                )
    pretrained_arg = None if schema_spec else pretrained
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=pretrained_arg,
            device=device,
            cache_dir=str(salip_home() / "clip"),
        )
        tokenizer = open_clip.get_tokenizer(name)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(
            f"cannot load CLIP '{name}' ({pretrained or 'no weights'}): {exc}. Weights for a "
            "tag are downloaded on first use; offline, pass a local weights file with "
            "--clip-pretrained FILE or a local-dir: folder."
        ) from exc
    if not schema_spec and not pretrained:
        logger.warning("CLIP %s has random weights: no --clip-pretrained given", name)
    model.eval()
    logger.info("loaded CLIP %s (%s) on %s", name, pretrained_arg or "-", device)
    return LoadedClip(model, preprocess, tokenizer, name, pretrained_arg)
