"""The lung segmenter: a U-Net decoder on a timm encoder in ``features_only`` mode.

The encoder is any timm CNN that has a ``features_only`` mode (one grey input channel; its
pretrained RGB first convolution summed over channels, as timm does), loaded offline-first
through :func:`cxrclf.models.weights.load_pretrained`. The decoder climbs the encoder's
feature pyramid: at each level it upsamples, concatenates the encoder's map of that
resolution and applies two 3x3 convolutions with BatchNorm and ReLU; a last block at full
resolution gives one logit per pixel (lung or not).

The network's input is :func:`cxrclf.segment.plane.segmenter_plane`: the grey image resized
to the input side and stretched between its 1st and 99th percentiles, so radiographs
windowed differently (DICOM, PNG figures, 16-bit) look alike to it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrclf.errors import CxrclfError
from cxrclf.segment.run import DEFAULT_ENCODER

__all__ = ["DECODER_CHANNELS", "LungUNet", "build_segmenter", "inference_copy"]

# Channels of the decoder blocks, deepest first: one block per encoder level below the deepest.
DECODER_CHANNELS = (48, 32, 24, 16)


class _ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )


class _UpBlock(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = _ConvBlock(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


class LungUNet(nn.Module):
    """``encoder`` (timm ``features_only``) + U-Net decoder -> one logit per input pixel, (N, 1, H, W).

    The decoder climbs to the encoder's finest level (half the input side for the usual
    CNNs) and the logits are upsampled bilinearly: with a block at full resolution (and wider
    blocks, 96-64-48-32-16) the decoder cost 346 M multiply-adds at 128 px against 73 M now,
    three times the encoder's 116 M; lung borders need no more than half the resolution.
    """

    def __init__(self, encoder: nn.Module, decoder_channels: tuple[int, ...] = DECODER_CHANNELS):
        super().__init__()
        channels = list(encoder.feature_info.channels())
        if len(decoder_channels) != len(channels) - 1:
            raise CxrclfError(f"the decoder needs {len(channels) - 1} channel counts for this encoder's {len(channels)} levels, "
                              f"not {len(decoder_channels)}")
        self.encoder = encoder
        blocks, previous = [], channels[-1]
        for skip, width in zip(reversed(channels[:-1]), decoder_channels):
            blocks.append(_UpBlock(previous, skip, width))
            previous = width
        self.decoder = nn.ModuleList(blocks)
        self.out = nn.Conv2d(previous, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = features[-1]
        for block, skip in zip(self.decoder, reversed(features[:-1])):
            y = block(y, skip)
        return F.interpolate(self.out(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_segmenter(encoder: str = DEFAULT_ENCODER, pretrained: bool = True, decoder_channels: tuple[int, ...] = DECODER_CHANNELS,
                    weights=None):
    """(network, where its encoder weights came from). ``weights``: an encoder checkpoint file instead of the search."""
    import timm

    from cxrclf.models.zoo import SCRATCH_SOURCE, check_model_name

    name = check_model_name(encoder)
    if name == "resnet-baseline":
        raise CxrclfError("the lung segmenter needs a timm encoder (such as tf_efficientnet_lite0), not resnet-baseline")
    try:
        backbone = timm.create_model(name, features_only=True, pretrained=False, in_chans=1)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise CxrclfError(f"{name} has no features_only mode ({str(exc).splitlines()[0][:80]}); choose a convolutional encoder "
                          "such as tf_efficientnet_lite0") from exc
    source = SCRATCH_SOURCE
    if pretrained or weights is not None:
        from cxrclf.models.weights import load_pretrained

        source = load_pretrained(backbone, name, weights)
    return LungUNet(backbone, tuple(int(c) for c in decoder_channels)), source


# The largest difference in P(lung) that inference_copy may make on its check input: the built-in segmenter's copy
# differs by under 4e-6 on real films, a wrongly folded network by far more.
FOLDED_TOLERANCE = 1e-4


@torch.inference_mode()
def inference_copy(model: nn.Module, input_size: int) -> nn.Module:
    """A copy of ``model`` that computes the same map with fewer operations: every BatchNorm
    folded into the convolution just before it (timm's BatchNormAct2d keeps its activation),
    weights in channels-last memory.

    At batch 1 on one CPU thread the segmenter's cost is mostly per operation, not per pixel
    (its 56 BatchNorms are 56 of about 190 operations): the copy takes about 30% less time
    (docs/performance.md, "Lung-based input checks"). Its probabilities differ from the
    model's by float rounding only; a module whose registration order does not follow its
    forward pass could be folded wrongly, so the copy is compared with the model on one
    fixed input and ``model`` itself is returned where they differ by more than
    :data:`FOLDED_TOLERANCE`.
    """
    import copy

    folded = copy.deepcopy(model).eval()
    for parent in list(folded.modules()):
        conv = None
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d) and conv is not None and child.affine and child.running_var is not None:
                _fold_batch_norm(conv, child)
                after = [m for m in (getattr(child, "drop", None), getattr(child, "act", None)) if isinstance(m, nn.Module)]
                setattr(parent, name, nn.Sequential(*after) if after else nn.Identity())
                conv = None
            elif isinstance(child, nn.Conv2d):
                conv = child
            elif not isinstance(child, nn.Identity):  # anything between a convolution and a BatchNorm keeps them apart
                conv = None
    folded = folded.to(memory_format=torch.channels_last)
    probe = torch.sin(0.1 * torch.arange(input_size * input_size, dtype=torch.float32)).reshape(1, 1, input_size, input_size)
    difference = (torch.sigmoid(folded(probe.contiguous(memory_format=torch.channels_last))) - torch.sigmoid(model(probe))).abs().max()
    return folded if float(difference) <= FOLDED_TOLERANCE else model


def _fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """``conv`` followed by ``norm`` (in evaluation) as one convolution with a bias, in place."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias, requires_grad=False)
