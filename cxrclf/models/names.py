"""The paper's model names as a user may spell them, and the one name each stands for.

The paper and Keras call the models ``NASNetLarge``, ``InceptionV3``, ``InceptionResNetV2``,
``DenseNet169`` and ``ResNet``; cxrclf builds them from timm's names (``nasnetalarge``,
``inception_v3``, ...) and the baseline from its own. :data:`MODEL_ALIASES` is the one table
that joins the two: only these names are matched loosely (any case, ``-``, ``_`` and spaces
ignored), so ``Inception-V3`` finds ``inception_v3`` while an arbitrary timm name must still
be spelled exactly. :func:`cxrclf.models.zoo.check_model_name` is where they are resolved.

Standard library only: the CLI and the evaluation report read these names without torch.
"""

from __future__ import annotations

import re

__all__ = ["BASELINE_NAME", "MODEL_ALIASES", "PAPER_MODELS", "alias_target", "model_label"]

BASELINE_NAME = "resnet-baseline"

# canonical name -> the other spellings the paper and Keras use for it
MODEL_ALIASES: dict[str, tuple[str, ...]] = {
    BASELINE_NAME: ("ResNet", "ResNetBaseline"),
    "inception_v3": ("InceptionV3",),
    "inception_resnet_v2": ("InceptionResNetV2",),
    "densenet169": ("DenseNet169",),
    "nasnetalarge": ("NASNetLarge",),
}
PAPER_MODELS = tuple(MODEL_ALIASES)


def _loose(name: str) -> str:
    return re.sub(r"[-_\s]", "", name.lower())


_BY_LOOSE_SPELLING = {_loose(spelling): canonical for canonical, spellings in MODEL_ALIASES.items() for spelling in (canonical, *spellings)}


def alias_target(name: str) -> str | None:
    """The canonical name that ``name`` spells (in any case, with or without ``-``/``_``), or None."""
    return _BY_LOOSE_SPELLING.get(_loose(name))


def model_label(name: str, requested: str | None) -> str:
    """``name``, followed by ``(requested as X)`` when the user spelled it ``X``."""
    return name if not requested or requested == name else f"{name} (requested as {requested})"
