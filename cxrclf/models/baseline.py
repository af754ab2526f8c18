"""The paper's baseline ResNet, built from its description and trained from scratch.

The paper describes five residual blocks, each of two convolutions with ReLU and a skip
connection, max-pooling after each block, and instance normalisation. Here each block is
``conv3x3 -> InstanceNorm -> ReLU -> conv3x3 -> InstanceNorm``, added to the skip path (a
1x1 projection where the width changes), then ReLU and 2x2 max-pooling. Global average
pooling turns the last map into the feature vector the paper's classification head reads.

The module follows timm's backbone conventions (``num_features``, ``forward_features``,
``forward_head``, ``group_matcher``, ``pretrained_cfg``, ``feature_info``) so that the
factory, freezing and class-activation maps treat it exactly like a timm model built with
``num_classes=0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cxrclf.models.names import BASELINE_NAME

BASELINE_WIDTHS = (16, 32, 64, 128, 256)
BASELINE_INPUT_SIZE = 224
# Trained from scratch on grey images, so there are no ImageNet statistics to match.
BASELINE_MEAN = 0.5
BASELINE_STD = 0.5
# Five ceil-mode poolings leave a map of at least 2x2 (instance normalisation needs more
# than one pixel while training) from 17 px up; 32 px is the documented floor.
BASELINE_MIN_INPUT_SIZE = 32


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with instance normalisation, a skip connection, then 2x2 max-pooling."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        # InstanceNorm with affine parameters supplies the bias, so the convolutions need none.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(out_channels, affine=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm2d(out_channels, affine=True)
        if in_channels == out_channels:
            self.skip: nn.Module = nn.Identity()
        else:
            self.skip = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.InstanceNorm2d(out_channels, affine=True),
            )
        self.act = nn.ReLU(inplace=True)
        # ceil_mode keeps odd sizes (e.g. 299 px) from dropping their last row and column.
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.skip(x)
        x = self.act(self.norm1(self.conv1(x)))
        x = self.norm2(self.conv2(x))
        return self.pool(self.act(x + shortcut))


class BaselineResNet(nn.Module):
    """Five residual blocks and global average pooling; ``forward`` returns pooled features."""

    def __init__(self, in_chans: int = 3, widths: Sequence[int] = BASELINE_WIDTHS):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        channels = (in_chans, *widths)
        self.blocks = nn.Sequential(
            *(ResidualBlock(channels[i], channels[i + 1]) for i in range(len(widths)))
        )
        self.in_chans = in_chans
        self.num_features = widths[-1]
        self.num_classes = 0
        self.feature_info = [
            {"num_chs": width, "reduction": 2 ** (i + 1), "module": f"blocks.{i}"}
            for i, width in enumerate(widths)
        ]
        self.pretrained_cfg = {
            "architecture": BASELINE_NAME,
            "input_size": (in_chans, BASELINE_INPUT_SIZE, BASELINE_INPUT_SIZE),
            "mean": (BASELINE_MEAN,) * in_chans,
            "std": (BASELINE_STD,) * in_chans,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "first_conv": "blocks.0.conv1",
            "classifier": "",
            "num_classes": 0,
        }
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups in timm's format: one group per residual block."""
        return {"blocks": r"^blocks\.(\d+)"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, shape ``(batch, num_features, height / 32, width / 32)``."""
        return self.blocks(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling; the baseline has no classifier of its own."""
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
