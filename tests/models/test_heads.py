"""The paper's head on one model of every head family timm has: the widths, a training step, freezing.

Each family pools differently before a classifier: ResNet and DenseNet pool a map, Inception-v3
and NASNet too (at sizes of their own), EfficientNet convolves before pooling, MobileNetV3
convolves *after* pooling (``conv_head``, 288 -> 1024 channels for the 0.5 small model), ConvNeXt
normalises in its head, a ViT pools tokens. The widths below are the architectures' own.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from cxrclf.errors import CxrclfError
from cxrclf.guard.features import logits_and_features, pooled_features
from cxrclf.models.zoo import HEAD_HIDDEN_UNITS, WIDTH_PROBE_SIDE, create_model, freeze_backbone, pooled_width


@dataclass(frozen=True)
class Family:
    name: str
    size: int           # a small input the architecture takes
    width: int          # its pooled (pre-logits) features
    last_two: tuple[str, ...]  # parameter-name prefixes of its last two blocks (head layers included)
    trains: bool = True  # False: nasnetalarge's step (85 M parameters) is too slow for a unit test


FAMILIES = [
    Family("test_resnet", 32, 96, ("layer3.", "layer4.")),
    Family("densenet121", 32, 1024, ("features.denseblock4.denselayer15.", "features.denseblock4.denselayer16.", "features.norm5.")),
    Family("inception_v3", 75, 2048, ("Mixed_7b.", "Mixed_7c.")),
    Family("nasnetalarge", 32, 4032, ("cell_16.", "cell_17."), trains=False),
    Family("test_efficientnet", 32, 256, ("blocks.3.", "blocks.4.", "conv_head.", "bn2.")),
    Family("mobilenetv3_small_050", 32, 1024, ("blocks.5.", "conv_head.")),
    Family("test_convnext", 32, 64, ("stages.3.", "head.norm.")),
    Family("test_vit", 32, 64, ("blocks.4.", "blocks.5.", "norm.")),
]
CLASSES = 3


def _head_parameters(width: int) -> int:
    return width * HEAD_HIDDEN_UNITS + HEAD_HIDDEN_UNITS + HEAD_HIDDEN_UNITS * CLASSES + CLASSES


def _build(family: Family):
    torch.manual_seed(0)
    return create_model(family.name, CLASSES, pretrained=False, image_size=family.size)


# nasnetalarge (85 M parameters) takes seconds to build: with the slow tests
@pytest.fixture(params=[pytest.param(f, marks=pytest.mark.slow) if f.name == "nasnetalarge" else f for f in FAMILIES], ids=lambda family: family.name)
def built(request):
    return request.param, _build(request.param)


def test_head_reads_the_pooled_features_at_their_measured_width(built):
    family, bundle = built
    model = bundle.model
    assert model.num_features == model.head.hidden.in_features == family.width
    assert bundle.total_parameters == sum(p.numel() for p in model.backbone.parameters()) + _head_parameters(family.width)
    x = torch.randn(2, 3, family.size, family.size)
    # the guard's features are exactly what the head reads: head(features) are the model's logits
    features = pooled_features(model, x)
    assert features.shape == (2, family.width)
    logits, same = logits_and_features(model, x)
    assert logits.shape == (2, CLASSES)
    torch.testing.assert_close(same, features, rtol=0, atol=0)
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(model.head(features), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_mobilenetv3_head_widens_after_pooling():
    """The issue's case: timm's num_features (288) is the width before conv_head, not the head's input."""
    bundle = create_model("mobilenetv3_small_050", CLASSES, pretrained=False, image_size=64)
    backbone = bundle.model.backbone
    assert (backbone.num_features, backbone.head_hidden_size, bundle.model.num_features) == (288, 1024, 1024)
    assert backbone.conv_head.in_channels == 288 and backbone.conv_head.out_channels == 1024


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f.trains], ids=lambda family: family.name)
def test_a_training_step_changes_the_head_and_reaches_the_backbone(family):
    bundle = _build(family)
    model = bundle.model.train()
    assert bundle.trainable_parameters == bundle.total_parameters  # no pretrained weights: everything trains
    before = {name: p.detach().clone() for name, p in model.head.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, family.size, family.size)), torch.tensor([0, 2]))
    loss.backward()
    reached = [name for name, p in model.backbone.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert any(name.startswith(family.last_two) for name in reached)
    optimizer.step()
    for name, p in model.head.named_parameters():
        assert not torch.equal(before[name], p.detach()), name


def test_freezing_keeps_the_last_blocks_and_the_backbones_head_layers_trainable(built):
    family, bundle = built
    model = bundle.model
    trainable, total = freeze_backbone(model, 2)
    assert trainable == 2 and total > 2
    params = dict(model.backbone.named_parameters())
    expected = {name for name in params if name.startswith(family.last_two)}
    assert {name for name, p in params.items() if p.requires_grad} == expected
    counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counted == sum(params[name].numel() for name in expected) + _head_parameters(family.width)
    assert counted < bundle.total_parameters


def test_an_input_the_architecture_cannot_take_is_a_user_error():
    with pytest.raises(CxrclfError, match=r"inception_v3 cannot take a 48 px input \(.*\); choose another image size"):
        create_model("inception_v3", CLASSES, pretrained=False, image_size=48)


class _NeedsPixels(nn.Module):
    """A backbone that, like a network with large unpadded kernels, refuses inputs under 128 px; records what it was fed."""

    def __init__(self, fixed: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3)
        self.pretrained_cfg = {"fixed_input_size": fixed}
        self.sides: list[int] = []

    def forward_features(self, x):
        self.sides.append(x.shape[-1])
        if x.shape[-1] < 128:
            raise RuntimeError("Kernel size can't be greater than actual input size")
        return self.conv(x)

    def forward_head(self, x, pre_logits=False):
        return x.mean(dim=(2, 3))


@pytest.mark.slow
def test_width_is_probed_small_and_at_the_built_size_only_when_needed():
    needy = _NeedsPixels().train()
    assert pooled_width(needy, "needy", 1, 160) == 5
    assert needy.sides == [WIDTH_PROBE_SIDE, 160] and needy.training  # the small probe failed; the mode is restored
    fixed = _NeedsPixels(fixed=True)
    assert pooled_width(fixed, "fixed", 1, 160) == 5 and fixed.sides == [160]  # a fixed-size model only at its size
    bundle = create_model("mobilenetv3_small_050", CLASSES, pretrained=False, image_size=128)
    assert bundle.model.num_features == 1024  # probed at 96 px, the width the 128 px input gets
    with torch.no_grad():
        assert bundle.model.eval().pooled_features(torch.randn(1, 3, 128, 128)).shape == (1, 1024)
