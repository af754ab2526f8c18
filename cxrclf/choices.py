"""Every closed set of choices, declared once.

Each is a ``str`` ``Enum``: typer lists and validates the values on the command line, the
library accepts the enum or its string value, and :func:`parse` turns anything else into a
one-line error about the value (not about a command-line flag).
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from cxrclf.errors import CxrclfError

__all__ = [
    "Augment", "Backend", "ExportFormat", "Recipe", "Denoise", "Device", "ExplainMethod", "Fit", "Inpaint", "Intensity", "Lung", "RsnaNotNormal", "SelectBy", "Split", "Strategy", "TableFormat",
    "parse", "resolve_device",
]


class Choice(str, Enum):
    def __str__(self) -> str:  # "oversample", not "Strategy.oversample", in messages and JSON
        return self.value


class Strategy(Choice):
    """How class imbalance is handled: random oversampling (scenarios R*) or Eq. 1 class weights (C*)."""
    oversample = "oversample"
    weighted = "weighted"


class Recipe(Choice):
    """How to train: the paper's recipe, kept exactly, or the small-data one (cxrclf.train.recipe)."""
    paper = "paper"
    small_data = "small-data"


class Augment(Choice):
    """``copies``: the paper's affine on oversampled copies only; ``none``; ``light``/``strong``: every image (transforms v2)."""
    copies = "copies"
    none = "none"
    light = "light"
    strong = "strong"


class SelectBy(Choice):
    loss = "loss"
    auc = "auc"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Split(Choice):
    test = "test"
    val = "val"
    train = "train"
    all = "all"


class ExplainMethod(Choice):
    lime = "lime"
    gradcam = "gradcam"


class Fit(Choice):
    stretch = "stretch"
    pad = "pad"


class Inpaint(Choice):
    telea = "telea"
    ns = "ns"


class Denoise(Choice):
    adaptive_tv = "adaptive-tv"
    none = "none"


class Intensity(Choice):
    """One intensity normalisation for every source (harmonised inputs): none (the paper), CLAHE, or matching a fixed reference histogram."""
    none = "none"
    clahe = "clahe"
    match = "match"


class Lung(Choice):
    """What preprocessing does with the lung fields a segmenter finds: nothing (the paper), crop to them, or grey out the rest."""
    none = "none"
    crop = "crop"
    mask = "mask"


class RsnaNotNormal(Choice):
    exclude = "exclude"
    normal = "normal"


class TableFormat(Choice):
    md = "md"
    csv = "csv"


class Backend(Choice):
    """What runs the network: PyTorch on a run folder, or onnxruntime on a run exported with ``cxrclf export``."""
    pytorch = "pytorch"
    onnxruntime = "onnxruntime"


class ExportFormat(Choice):
    onnx = "onnx"


E = TypeVar("E", bound=Choice)


def parse(kind: type[E], value: object, what: str) -> E:
    """``value`` as a member of ``kind``; a one-line error naming ``what`` and the allowed values."""
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value))
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise CxrclfError(f"{what} must be one of {allowed}, not {value!r}") from None


def resolve_device(value: object = Device.auto):
    """The torch device for a :class:`Device` choice (``cuda`` under torchrun is the local rank's GPU)."""
    import os

    import torch

    choice = parse(Device, value, "device")
    if choice is Device.auto:
        choice = Device.cuda if torch.cuda.is_available() else Device.cpu
    if choice is Device.cuda:
        if not torch.cuda.is_available():
            raise CxrclfError("device cuda asked for, but no CUDA device is available")
        if "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(choice.value)
