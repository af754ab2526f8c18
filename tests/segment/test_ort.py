"""The built-in segmenter's ONNX graph, which the input checks run in onnxruntime: made from the shipped weights, the same masks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cxrclf import folders, io
from cxrclf.errors import CxrclfError
from cxrclf.segment import ort
from cxrclf.segment.ort import FILE_FORMAT, ONNX_FILE, OnnxLungNetwork, lung_network
from cxrclf.segment.run import PROVENANCE, SegmentRun, builtin_folder


@pytest.fixture(autouse=True)
def _fresh_networks(monkeypatch):
    """Every test chooses the network again (lung_network keeps one per process)."""
    monkeypatch.setattr(ort, "_NETWORKS", {})
    monkeypatch.delenv("CXRCLF_LUNG_NETWORK", raising=False)


def _planes() -> np.ndarray:
    from cxrclf.data import synthetic
    from cxrclf.segment.plane import lung_plane

    rng = np.random.default_rng(0)
    xray = synthetic.to_uint8(synthetic.phantom("normal", rng, 256).image)
    return np.stack([lung_plane(xray, 128), lung_plane(np.ascontiguousarray(np.rot90(xray)), 128), rng.random((128, 128), dtype=np.float32)])


def test_the_shipped_graph_is_made_from_the_shipped_weights_and_recorded():
    folder = builtin_folder()
    network = OnnxLungNetwork(folder / ONNX_FILE)
    config = SegmentRun(folder).read_config()
    assert network.sha256 == io.sha256_file(folder / SegmentRun.WEIGHTS)
    assert (network.input_size, network.threshold, network.mean, network.std) == (config.model.input_size, config.model.threshold,
                                                                                   config.model.mean, config.model.std)
    recorded = json.loads((folder / PROVENANCE).read_text())["onnx"]
    assert recorded["sha256"] == io.sha256_file(folder / ONNX_FILE) and recorded["weights_sha256"] == network.sha256
    assert (folder / ONNX_FILE).stat().st_size == recorded["bytes"] < 8_000_000  # the weights in half precision, as shipped


def test_onnxruntime_gives_pytorchs_probabilities_and_masks():
    from cxrclf.segment.infer import builtin_segmenter
    from cxrclf.segment.masks import mask_from_probabilities

    segmenter, network = builtin_segmenter(), OnnxLungNetwork(builtin_folder() / ONNX_FILE)
    planes = _planes()
    expected = segmenter.plane_probabilities(planes)
    batch = network.plane_probabilities(planes)
    assert batch.shape == planes.shape and batch.dtype == np.float32
    assert np.abs(batch - expected).max() < 1e-5
    one = network.plane_probabilities(planes[0])
    assert one.shape == (128, 128) and np.abs(one - expected[0]).max() < 1e-5
    for p, e in zip(batch, expected):
        assert np.array_equal(mask_from_probabilities(p, p.shape, 0.5), mask_from_probabilities(e, e.shape, 0.5))


def test_the_checks_run_onnxruntime_unless_told_otherwise(monkeypatch):
    from cxrclf.segment.infer import Segmenter

    assert isinstance(lung_network(), OnnxLungNetwork) and lung_network() is lung_network()  # once per process
    monkeypatch.setattr(ort, "_NETWORKS", {})
    monkeypatch.setenv("CXRCLF_LUNG_NETWORK", "torch")
    assert isinstance(lung_network(), Segmenter)
    monkeypatch.setattr(ort, "_NETWORKS", {})
    monkeypatch.setenv("CXRCLF_LUNG_NETWORK", " ONNXRuntime ")
    assert isinstance(lung_network(), OnnxLungNetwork)
    monkeypatch.setattr(ort, "_NETWORKS", {})
    monkeypatch.setenv("CXRCLF_LUNG_NETWORK", "tensorrt")  # a typo or an unsupported backend is named, not ignored
    with pytest.raises(CxrclfError, match="CXRCLF_LUNG_NETWORK is 'tensorrt': use onnxruntime or torch"):
        lung_network()


def test_a_graph_made_from_other_weights_is_not_run(monkeypatch, tmp_path):
    import onnx

    from cxrclf.segment.infer import Segmenter

    copy = tmp_path / "lung"
    shutil.copytree(builtin_folder(), copy)
    graph = onnx.load(str(copy / ONNX_FILE))
    settings = json.loads({p.key: p.value for p in graph.metadata_props}[FILE_FORMAT])
    onnx.helper.set_model_props(graph, {FILE_FORMAT: json.dumps({**settings, "weights_sha256": "0" * 64})})
    onnx.save(graph, str(copy / ONNX_FILE))
    monkeypatch.setattr(folders, "BUILTIN_LUNG", copy)
    network = lung_network()
    assert isinstance(network, Segmenter)  # the weights in PyTorch, never a stale graph


def test_a_damaged_graph_is_refused_naming_the_file(tmp_path):
    damaged = tmp_path / ONNX_FILE
    damaged.write_bytes((builtin_folder() / ONNX_FILE).read_bytes()[:5000])
    with pytest.raises(CxrclfError, match=r"damaged or foreign \(onnxruntime cannot load it: INVALID_PROTOBUF\)") as caught:
        OnnxLungNetwork(damaged)
    # the reason itself names the graph: predict reports it beside the image being checked
    assert caught.value.reason.startswith(f"lung network file {damaged} ") and str(caught.value).count(str(damaged)) == 1
    assert "\n" not in str(caught.value)


def test_export_verifies_before_writing(tmp_path):
    from cxrclf.export import export_lung_network
    from cxrclf.segment.infer import builtin_segmenter

    segmenter = builtin_segmenter()
    made = export_lung_network(segmenter, tmp_path / ONNX_FILE)
    assert made["weights_sha256"] == segmenter.sha256 and made["max_probability_difference"] < 1e-5
    network = OnnxLungNetwork(tmp_path / ONNX_FILE)
    planes = _planes()
    assert np.abs(network.plane_probabilities(planes) - segmenter.plane_probabilities(planes)).max() < 1e-5
    with pytest.raises(CxrclfError, match="differ from PyTorch's by up to .* nothing was written"):
        export_lung_network(segmenter, tmp_path / "strict.onnx", tolerance=-1.0)  # any difference is too much
    assert sorted(p.name for p in tmp_path.iterdir()) == [ONNX_FILE]


def test_without_pytorch_the_input_checks_still_read_the_lungs():
    """A runtime-only install (onnxruntime, no PyTorch): the lung checks run the graph and never import torch."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "timm"):
                    raise ImportError("no " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        from cxrclf.data import synthetic
        from cxrclf.guard.checks import input_warnings
        image = synthetic.to_uint8(synthetic.phantom("normal", np.random.default_rng(0), 256).image)
        print(input_warnings(image, None, trained_views=("PA",), lungs=True))
        print(input_warnings(np.ascontiguousarray(np.rot90(image)), None, lungs=True))
        print("torch" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["[]", "['rotated by 270 degrees (90 counter-clockwise)']", "False"]
