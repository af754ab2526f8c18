"""One factory for every model: the paper's baseline, its four transfer-learning CNNs, any timm name.

``create_model(name, num_classes)`` resolves the name (the paper's spellings, such as
``NASNetLarge``, through :mod:`cxrclf.models.names`), builds a headless backbone (timm
``num_classes=0``, or the baseline ResNet), loads pretrained weights offline-first
(:mod:`cxrclf.models.weights`), adds the paper's head, and freezes the backbone except its
last ``trainable_blocks`` blocks.

The head is the paper's: pooled features -> Linear(num_features, 128) -> ReLU -> Dropout ->
Linear(128, num_classes). The pooled features are timm's pre-logits,
``forward_head(forward_features(x), pre_logits=True)``: global pooling and whatever an
architecture does after it (MobileNetV3's ``conv_head``, ConvNeXt's head norm, a ViT's token
pooling). Their width is measured, not read from ``num_features``, which is the width
*before* the head: MobileNetV3-Small 0.5 pools 288 channels and its ``conv_head`` widens them
to 1024.

Blocks come from timm's own parameter grouping, ``group_matcher(coarse=False)`` -- the
grouping timm uses for layer-wise learning-rate decay -- so "the last 4 blocks" means the
same thing for every architecture: four DenseNet dense layers, four EfficientNet blocks,
four Inception modules. Groups that hold only normalisation parameters (DenseNet's final
``norm5``, ConvNeXt's head norm) belong to the block before them.

BatchNorm layers inside frozen blocks stay in eval mode while training (see
:meth:`Classifier.train`): with batches of ten X-rays, batch statistics would overwrite the
ImageNet running statistics that the frozen convolutions were trained against. This matches
Keras, where a frozen BatchNormalization layer runs in inference mode.

A backbone without pretrained weights (the baseline, or ``pretrained=False``) is trained
entirely: freezing randomly initialised blocks would only cripple it.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cxrclf.errors import CxrclfError
from cxrclf.models.baseline import (
    BASELINE_INPUT_SIZE,
    BASELINE_MEAN,
    BASELINE_MIN_INPUT_SIZE,
    BASELINE_STD,
    BaselineResNet,
)
from cxrclf.models.names import BASELINE_NAME, MODEL_ALIASES, PAPER_MODELS, alias_target

__all__ = ["Classifier", "HEAD_HIDDEN_UNITS", "InputConfig", "ModelBundle", "PAPER_MODELS", "PAPER_TRAINABLE_BLOCKS", "SCRATCH_SOURCE", "SUPPORTED_IN_CHANS", "WIDTH_PROBE_SIDE", "backbone_blocks", "check_model_name", "create_model", "freeze_backbone", "input_config", "parse_trainable_blocks", "pooled_width"]

PAPER_TRAINABLE_BLOCKS = 4
HEAD_HIDDEN_UNITS = 128
SCRATCH_SOURCE = "none (trained from scratch)"
SUPPORTED_IN_CHANS = (1, 3)
# pooled_width's forward pass: small, yet wide enough for every Inception (75 px at least);
# its cost is in docs/performance.md
WIDTH_PROBE_SIDE = 96


@dataclass
class ModelBundle:
    """A built model and everything needed to feed it and to record how it was made."""

    model: Classifier
    name: str  # the canonical name (timm's, or resnet-baseline), whatever spelling was asked for
    input_size: int  # side of the square input, pixels
    mean: tuple[float, ...]  # per input channel, for images scaled to [0, 1]
    std: tuple[float, ...]
    in_chans: int
    pretrained_source: str  # where the backbone weights came from, or SCRATCH_SOURCE
    trainable_parameters: int
    total_parameters: int
    trainable_blocks: int  # backbone blocks actually trainable (after "all" and clamping)
    total_blocks: int


class InputConfig(NamedTuple):
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Classifier(nn.Module):
    """A headless backbone followed by the paper's two-layer head.

    ``num_features`` is the width of the backbone's pooled features (:meth:`pooled_features`),
    as :func:`pooled_width` measures it.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, num_features: int, dropout: float = 0.5,
                 hidden_units: int = HEAD_HIDDEN_UNITS):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_features = num_features
        self.head = nn.Sequential(OrderedDict(
            hidden=nn.Linear(num_features, hidden_units),
            act=nn.ReLU(inplace=True),
            dropout=nn.Dropout(dropout),
            out=nn.Linear(hidden_units, num_classes),
        ))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (what class-activation maps read)."""
        return self.backbone.forward_features(x)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, num_features): the backbone's pre-logits, what the paper's head reads."""
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from a feature map: the backbone's pooling (and head layers), then the paper's head."""
        return self.head(self.backbone.forward_head(features, pre_logits=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled_features(x))

    def train(self, mode: bool = True) -> Classifier:
        """Switch modes, keeping BatchNorm layers whose parameters are all frozen in eval mode."""
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, _BatchNorm):
                    params = list(module.parameters(recurse=False))
                    if params and not any(p.requires_grad for p in params):
                        module.eval()
        return self


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights: Path | None = None,
    trainable_blocks: int | str = PAPER_TRAINABLE_BLOCKS,
    dropout: float = 0.5,
    in_chans: int = 3,
    image_size: int | None = None,
) -> ModelBundle:
    """Build ``name`` with the paper's head for ``num_classes`` classes.

    ``name`` is ``resnet-baseline``, a paper spelling of one of the paper's models
    (:data:`~cxrclf.models.names.MODEL_ALIASES`), or any timm model name (``timm.list_models()``),
    optionally with a pretrained tag (``resnet50.a1_in1k``). ``weights`` is a checkpoint file to use instead
    of searching for the pretrained weights; ``trainable_blocks`` is how many of the backbone's
    last blocks to fine-tune (``"all"``, or 0 for the head only). ``in_chans=1`` feeds grey
    images directly: pretrained RGB first-convolution weights are summed over channels, as
    timm does, and mean/std become the average of the RGB values. ``image_size`` overrides
    the model's native input size.
    """
    name = check_model_name(name)
    image_size, requested_blocks = _check_options(num_classes, pretrained, weights, trainable_blocks, dropout, in_chans, image_size)
    config = input_config(name, image_size=image_size, in_chans=in_chans)
    backbone = _build_backbone(name, in_chans=in_chans, image_size=image_size)
    source = _starting_weights(backbone, name, pretrained, weights)
    model = Classifier(backbone, num_classes, num_features=pooled_width(backbone, name, in_chans, config.input_size), dropout=float(dropout))
    trainable, total_blocks = freeze_backbone(model, None if source == SCRATCH_SOURCE else requested_blocks)
    model.train()
    return ModelBundle(
        model=model,
        name=name,
        input_size=config.input_size,
        mean=config.mean,
        std=config.std,
        in_chans=in_chans,
        pretrained_source=source,
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_parameters=sum(p.numel() for p in model.parameters()),
        trainable_blocks=trainable,
        total_blocks=total_blocks,
    )


def _check_options(num_classes, pretrained, weights, trainable_blocks, dropout, in_chans, image_size) -> tuple[int | None, int | None]:
    """:func:`create_model`'s arguments checked at the door (one-line errors); returns the image size and block count."""
    _check_int("num_classes", num_classes, minimum=2, hint="a classifier needs at least two classes")
    if in_chans not in SUPPORTED_IN_CHANS:
        raise CxrclfError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise CxrclfError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    if image_size is not None:
        image_size = _check_int("image_size", image_size, minimum=BASELINE_MIN_INPUT_SIZE, hint="pixels per side")
    requested_blocks = parse_trainable_blocks(trainable_blocks)
    if weights is not None and not pretrained:
        raise CxrclfError("both a weights file and no-pretrained were given; drop --no-pretrained to use --weights")
    return image_size, requested_blocks


def _starting_weights(backbone: nn.Module, name: str, pretrained: bool, weights: Path | None) -> str:
    """Load ``weights``, or the pretrained weights found for ``name``, into ``backbone``; returns where they came from."""
    from cxrclf.models.weights import load_pretrained

    if weights is not None:
        return load_pretrained(backbone, name, Path(weights))
    if pretrained and name != BASELINE_NAME:
        return load_pretrained(backbone, name, None)
    return SCRATCH_SOURCE


def check_model_name(name: str) -> str:
    """The canonical name ``name`` stands for, or a CxrclfError that lists the paper's models and close timm names.

    A timm name (or ``resnet-baseline``) is returned as it is; otherwise a paper spelling of one
    of the paper's models resolves through :data:`~cxrclf.models.names.MODEL_ALIASES`
    (``NASNetLarge`` -> ``nasnetalarge``). No other name is matched loosely.
    """
    import timm

    name = str(name).strip()
    if name == BASELINE_NAME or timm.is_model(name):
        return name
    canonical = alias_target(name)
    if canonical is not None:
        return canonical
    suggestions = difflib.get_close_matches(
        name.lower(), list(dict.fromkeys([*PAPER_MODELS, *timm.list_models()])), n=3, cutoff=0.6
    )
    hint = f"did you mean {', '.join(suggestions)}? " if suggestions else ""
    spellings = ", ".join(s for spellings in MODEL_ALIASES.values() for s in spellings)
    raise CxrclfError(
        f"unknown model {name!r}; {hint}the paper's models are {', '.join(PAPER_MODELS)} (also spelled {spellings}), "
        "and any timm model name works (python -c 'import timm; print(timm.list_models())')"
    )


def pooled_width(backbone: nn.Module, name: str, in_chans: int, input_size: int) -> int:
    """Width of ``backbone``'s pooled features, measured by one forward pass of a blank image.

    timm's ``head_hidden_size`` declares this width on most models; a measurement holds for
    every architecture and for the baseline. The pass runs in eval mode without gradients (the
    backbone's mode is restored), at :data:`WIDTH_PROBE_SIDE` px where the architecture takes
    any size, since global pooling makes the width independent of the input, else (a fixed
    size such as a ViT's, or a network that needs more pixels) at ``input_size``, the size it
    is built for. An input the architecture cannot take is a user error here, not a shape
    error in the first training step.
    """
    fixed = bool((getattr(backbone, "pretrained_cfg", None) or {}).get("fixed_input_size"))
    sides = [input_size] if fixed or input_size <= WIDTH_PROBE_SIDE else [WIDTH_PROBE_SIDE, input_size]
    was_training = backbone.training
    backbone.eval()
    try:
        for side in sides:
            try:
                with torch.inference_mode():
                    features = backbone.forward_head(backbone.forward_features(torch.zeros(1, in_chans, side, side)), pre_logits=True)
                break
            except (RuntimeError, AssertionError) as exc:  # timm checks input sizes with assertions
                if side == input_size:
                    first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:160]
                    raise CxrclfError(f"{name} cannot take a {input_size} px input ({first}); choose another image size "
                                      "(a larger one, or the model's own)") from exc
    finally:
        backbone.train(was_training)
    if features.ndim != 2:
        raise CxrclfError(f"{name} pools its features to shape {tuple(features.shape)}, not one vector per image; "
                          "the classification head needs a model with global pooling")
    return int(features.shape[1])


def input_config(name: str, *, image_size: int | None = None, in_chans: int = 3) -> InputConfig:
    """Input side and normalisation for ``name``, from timm's pretrained config (no model built)."""
    if name == BASELINE_NAME:
        size, mean, std = BASELINE_INPUT_SIZE, (BASELINE_MEAN,) * 3, (BASELINE_STD,) * 3
    else:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        if cfg is None:
            size, mean, std = 224, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        else:
            size, mean, std = max(cfg.input_size[1:]), cfg.mean, cfg.std
    if image_size is not None:
        size = image_size
    if in_chans == 1:
        # Matches summing the RGB first-conv weights: one grey channel stands in for three.
        mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
    return InputConfig(int(size), tuple(float(v) for v in mean), tuple(float(v) for v in std))


def parse_trainable_blocks(value: int | str) -> int | None:
    """``"all"`` -> None (everything trains); a count of last blocks -> int >= 0."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return None
        if not text.isdigit():
            raise CxrclfError(f"trainable_blocks must be a whole number of blocks or 'all', got {value!r}")
        value = int(text)
    return _check_int("trainable_blocks", value, minimum=0, hint="0 trains the head only; 'all' fine-tunes everything")


def backbone_blocks(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of ``backbone`` grouped into blocks, input side first.

    Uses timm's ``group_matcher(coarse=False)``; models without one fall back to their
    top-level children. Groups holding only 1-D parameters (normalisation) join the block
    before them.
    """
    from timm.models import group_parameters

    params = dict(backbone.named_parameters())
    try:
        matcher = backbone.group_matcher(coarse=False)
    except (AttributeError, NotImplementedError):
        matcher = None
    if matcher:
        grouped = group_parameters(backbone, matcher)
        groups = [grouped[key] for key in sorted(grouped)]
    else:
        by_child: dict[str, list[str]] = {}
        for param_name in params:
            by_child.setdefault(param_name.split(".", 1)[0], []).append(param_name)
        groups = list(by_child.values())

    blocks: list[list[str]] = []
    for group in groups:
        if blocks and all(params[n].ndim < 2 for n in group):
            blocks[-1].extend(group)
        else:
            blocks.append(list(group))
    return blocks


def freeze_backbone(model: Classifier, trainable_blocks: int | None) -> tuple[int, int]:
    """Freeze all but the last ``trainable_blocks`` backbone blocks (None: none frozen).

    The head always trains. Returns (blocks trainable, blocks in the backbone); a count
    larger than the backbone has trains everything.
    """
    blocks = backbone_blocks(model.backbone)
    trainable = len(blocks) if trainable_blocks is None else min(trainable_blocks, len(blocks))
    frozen = {n for block in blocks[: len(blocks) - trainable] for n in block}
    for param_name, param in model.backbone.named_parameters():
        param.requires_grad_(param_name not in frozen)
    for param in model.head.parameters():
        param.requires_grad_(True)
    return trainable, len(blocks)


def _build_backbone(name: str, *, in_chans: int, image_size: int | None) -> nn.Module:
    if name == BASELINE_NAME:
        return BaselineResNet(in_chans=in_chans)
    import timm
    from timm.models import get_pretrained_cfg

    kwargs = {}
    cfg = get_pretrained_cfg(name)
    if image_size is not None and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size  # e.g. ViTs size their position embeddings at build time
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)


def _check_int(what: str, value: object, *, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CxrclfError(f"{what} must be a whole number >= {minimum} ({hint}), got {value!r}")
    return value
