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
    "Denoise", "Device", "ExplainMethod", "Fit", "Inpaint", "RsnaNotNormal", "SelectBy", "Split", "Strategy", "TableFormat",
    "parse", "resolve_device",
]


class Choice(str, Enum):
    def __str__(self) -> str:  # "oversample", not "Strategy.oversample", in messages and JSON
        return self.value


class Strategy(Choice):
    """How class imbalance is handled: random oversampling (scenarios R*) or Eq. 1 class weights (C*)."""
    oversample = "oversample"
    weighted = "weighted"


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


class RsnaNotNormal(Choice):
    exclude = "exclude"
    normal = "normal"


class TableFormat(Choice):
    md = "md"
    csv = "csv"


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
