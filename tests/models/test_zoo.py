from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from cxrclf.errors import CxrclfError
from cxrclf.models.baseline import BASELINE_NAME, BaselineResNet, ResidualBlock
from cxrclf.models.zoo import (
    PAPER_MODELS,
    SCRATCH_SOURCE,
    backbone_blocks,
    create_model,
    input_config,
)

TINY = "test_resnet"  # timm's 0.37 M-parameter ResNet: 5 blocks (stem, layer1..layer4), 96 features
SIZE = 32


@pytest.fixture
def tiny_weights(tmp_path):
    """A 'pretrained' test_resnet checkpoint, so that freezing applies."""
    torch.manual_seed(0)
    backbone = timm.create_model(TINY, pretrained=False, num_classes=0)
    path = tmp_path / "test_resnet.safetensors"
    save_file(backbone.state_dict(), str(path))
    return path


def _head_parameters(num_features: int, num_classes: int) -> int:
    return num_features * 128 + 128 + 128 * num_classes + num_classes


@pytest.mark.parametrize("num_classes", [2, 3, 4])
def test_logits_have_one_column_per_class(num_classes):
    tiny = create_model(TINY, num_classes, pretrained=False, image_size=SIZE)
    baseline = create_model(BASELINE_NAME, num_classes, image_size=64)
    with torch.no_grad():
        assert tiny.model.eval()(torch.randn(2, 3, SIZE, SIZE)).shape == (2, num_classes)
        assert baseline.model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, num_classes)


def test_head_is_the_papers_128_unit_layer_with_dropout():
    bundle = create_model(TINY, 3, pretrained=False, dropout=0.3, image_size=SIZE)
    hidden, act, dropout, out = bundle.model.head
    assert (hidden.in_features, hidden.out_features) == (96, 128)
    assert isinstance(act, nn.ReLU)
    assert isinstance(dropout, nn.Dropout) and dropout.p == 0.3
    assert (out.in_features, out.out_features) == (128, 3)
    # forward_features + forward_head is the same computation as forward (used by CAM)
    model = bundle.model.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 96, 1, 1)
        assert torch.allclose(model.forward_head(features), model(x))


def test_baseline_is_five_residual_blocks_with_instance_norm_and_pooling():
    backbone = BaselineResNet(in_chans=1)
    blocks = list(backbone.blocks)
    assert len(blocks) == 5 and all(isinstance(b, ResidualBlock) for b in blocks)
    convs3 = [m for m in backbone.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) == 10
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in backbone.modules()) == 10 + 5  # 2 per block + skip projections
    assert sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()) == 0
    assert sum(isinstance(m, nn.MaxPool2d) for m in backbone.modules()) == 5
    assert backbone.num_features == 256
    with torch.no_grad():
        assert backbone.forward_features(torch.randn(2, 1, 64, 64)).shape == (2, 256, 2, 2)
        for side in (48, 75, 224):  # any size: ceil-mode pooling, global average pooling
            assert backbone(torch.randn(1, 1, side, side)).shape == (1, 256)
    # the skip connection: with the second convolution's output zeroed, a block passes its skip path
    block = blocks[1]
    nn.init.zeros_(block.norm2.weight)
    nn.init.zeros_(block.norm2.bias)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), block.pool(torch.relu(block.skip(x))))


def test_baseline_trains_from_scratch_even_when_pretrained_is_requested():
    bundle = create_model(BASELINE_NAME, 3, pretrained=True, trainable_blocks=0, in_chans=1, image_size=64)
    assert bundle.pretrained_source == SCRATCH_SOURCE
    assert bundle.trainable_parameters == bundle.total_parameters
    assert (bundle.trainable_blocks, bundle.total_blocks) == (5, 5)
    assert (bundle.input_size, bundle.mean, bundle.std) == (64, (0.5,), (0.5,))
    with torch.no_grad():
        assert bundle.model.eval()(torch.randn(2, 1, 64, 64)).shape == (2, 3)


def test_trainable_blocks_freeze_all_but_the_last_blocks(tiny_weights):
    stem = {n for n, _ in timm.create_model(TINY, num_classes=0).named_parameters() if n.startswith(("conv1.", "bn1."))}
    head = _head_parameters(96, 3)

    head_only = create_model(TINY, 3, weights=tiny_weights, trainable_blocks=0, image_size=SIZE)
    assert head_only.trainable_parameters == head
    assert not any(p.requires_grad for p in head_only.model.backbone.parameters())
    assert (head_only.trainable_blocks, head_only.total_blocks) == (0, 5)

    paper = create_model(TINY, 3, weights=tiny_weights, trainable_blocks=4, image_size=SIZE)
    frozen = {n for n, p in paper.model.backbone.named_parameters() if not p.requires_grad}
    assert frozen == stem
    stem_size = sum(p.numel() for n, p in paper.model.backbone.named_parameters() if n in stem)
    assert paper.trainable_parameters == paper.total_parameters - stem_size
    assert all(p.requires_grad for p in paper.model.head.parameters())

    everything = create_model(TINY, 3, weights=tiny_weights, trainable_blocks="all", image_size=SIZE)
    assert everything.trainable_parameters == everything.total_parameters
    assert everything.total_parameters == paper.total_parameters == head_only.total_parameters

    too_many = create_model(TINY, 3, weights=tiny_weights, trainable_blocks=99, image_size=SIZE)
    assert (too_many.trainable_blocks, too_many.trainable_parameters) == (5, too_many.total_parameters)
    assert head < paper.trainable_parameters < everything.trainable_parameters


@pytest.mark.slow
def test_training_step_leaves_frozen_blocks_and_their_batchnorm_statistics_alone(tiny_weights):
    torch.manual_seed(1)
    bundle = create_model(TINY, 3, weights=tiny_weights, trainable_blocks=2, image_size=SIZE)
    model = bundle.model
    model.eval().train()  # the override must hold however often the mode flips
    backbone = model.backbone
    assert not backbone.layer2[0].bn1.training and backbone.layer3[0].bn1.training
    assert model.head.dropout.training

    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, SIZE, SIZE)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    after = model.state_dict()

    frozen_prefixes = ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer2.")
    frozen_keys = [k for k in before if k.startswith(frozen_prefixes)]
    assert frozen_keys and all(torch.equal(before[k], after[k]) for k in frozen_keys)
    assert torch.equal(before["backbone.layer2.0.bn1.running_mean"], after["backbone.layer2.0.bn1.running_mean"])
    assert not torch.equal(before["backbone.layer3.0.bn1.running_mean"], after["backbone.layer3.0.bn1.running_mean"])
    # timm zero-initialises each block's last BatchNorm scale, so that is what moves first
    assert not torch.equal(before["backbone.layer4.0.bn2.weight"], after["backbone.layer4.0.bn2.weight"])
    assert not torch.equal(before["backbone.layer3.0.bn3.weight"], after["backbone.layer3.0.bn3.weight"])
    assert not torch.equal(before["head.out.weight"], after["head.out.weight"])


def test_without_pretrained_weights_everything_trains():
    bundle = create_model(TINY, 2, pretrained=False, trainable_blocks=0, image_size=SIZE)
    assert bundle.pretrained_source == SCRATCH_SOURCE
    assert bundle.trainable_parameters == bundle.total_parameters


def test_input_size_and_normalisation_come_from_timm_config():
    # read from timm's pretrained configs: no model is built
    assert input_config("nasnetalarge").input_size == 331
    assert input_config("inception_v3") == (299, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert input_config("inception_resnet_v2").input_size == 299
    assert input_config("densenet169") == (224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert input_config(BASELINE_NAME) == (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert input_config("densenet169", image_size=256).input_size == 256
    grey = input_config("densenet169", in_chans=1)
    assert grey.mean == pytest.approx((0.449,)) and grey.std == pytest.approx((0.226,))
    # the factory reports the same: test_resnet's config says 160 px
    bundle = create_model(TINY, 2, pretrained=False)
    assert (bundle.input_size, bundle.mean) == (160, (0.5, 0.5, 0.5))
    assert create_model(TINY, 2, pretrained=False, image_size=SIZE).input_size == SIZE


def test_blocks_of_paper_sized_models():
    densenet = backbone_blocks(timm.create_model("densenet169", num_classes=0))
    assert len(densenet) == 83  # stem, 82 dense layers and transitions
    assert [block[0].rsplit(".", 2)[0] for block in densenet[-4:]] == [
        f"features.denseblock4.denselayer{i}" for i in (29, 30, 31, 32)
    ]
    assert densenet[-1][-2:] == ["features.norm5.weight", "features.norm5.bias"]  # final norm joins last layer
    lite0 = backbone_blocks(timm.create_model("tf_efficientnet_lite0", num_classes=0))
    assert len(lite0) == 17  # stem, 16 blocks (the head conv joins the last)
    last_four = [block[0].rsplit(".", 2)[0] for block in lite0[-4:]]
    assert last_four == ["blocks.5.1", "blocks.5.2", "blocks.5.3", "blocks.6.0"]
    assert "conv_head.weight" in lite0[-1]


def test_one_channel_input_sums_the_pretrained_first_convolution(tiny_weights):
    from safetensors.torch import load_file

    bundle = create_model(TINY, 2, weights=tiny_weights, in_chans=1, image_size=SIZE)
    source = load_file(str(tiny_weights))["conv1.0.weight"]
    loaded = bundle.model.backbone.state_dict()["conv1.0.weight"]
    assert loaded.shape == (16, 1, 3, 3)
    assert torch.allclose(loaded, source.sum(dim=1, keepdim=True))
    assert len(bundle.mean) == len(bundle.std) == 1
    with torch.no_grad():
        assert bundle.model.eval()(torch.randn(2, 1, SIZE, SIZE)).shape == (2, 2)


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(CxrclfError) as info:
        create_model("densnet169", 3)
    message = str(info.value)
    assert "'densnet169'" in message and "did you mean densenet169" in message
    assert all(name in message for name in PAPER_MODELS)
    assert "also spelled ResNet, ResNetBaseline, InceptionV3, InceptionResNetV2, DenseNet169, NASNetLarge" in message
    assert "any timm model name" in message


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"num_classes": 1}, "num_classes"),
        ({"trainable_blocks": -1}, "trainable_blocks"),
        ({"trainable_blocks": "some"}, "trainable_blocks"),
        ({"dropout": 1.0}, "dropout"),
        ({"in_chans": 2}, "in_chans"),
        ({"image_size": 8}, "image_size"),
        ({"pretrained": False, "weights": "x.safetensors"}, "--no-pretrained"),
    ],
)
def test_invalid_arguments_are_user_errors(kwargs, fragment):
    arguments = {"num_classes": 3, **kwargs}
    with pytest.raises(CxrclfError, match=fragment.replace("-", r"\-")):
        create_model(TINY, **arguments)
