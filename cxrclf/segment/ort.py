"""The built-in lung segmenter's network in onnxruntime: what the input checks run.

The lung checks (:mod:`cxrclf.guard.lungs`) and the view check's lungs' box
(:mod:`cxrclf.guard.view`) run the built-in segmenter once on every original image that
``predict``, ``evaluate`` and ``explain`` see. At batch 1 on one CPU thread its cost is mostly
per operation, and onnxruntime runs the same graph in about half PyTorch's time, even against
the BatchNorm-folded copy (docs/performance.md, "Lung-based input checks"). It also runs
where PyTorch is not installed (the runtime-only install), which then gets the checks too.

``cxrclf/builtin/lung/model.onnx`` is made from the shipped weights by
:func:`cxrclf.export.export_lung_network` (``python benchmarks/segment.py --ship-onnx``): the
graph as PyTorch's exporter writes it in evaluation mode for one plane (a fixed shape lets
onnxruntime fold every shape computation), BatchNorms unfolded, its float
weights stored in half precision (exactly the shipped values, which are half precision) and
cast to float32 when onnxruntime loads it (it folds the casts and the BatchNorms then). Its
metadata (:data:`FILE_FORMAT`) names the input size, normalisation, threshold and the sha256
of the weights it was made from; :func:`lung_network` uses it only when that hash is the
shipped weights', so a changed segmenter can never be run from a stale graph.

Masks that crop or grey out images for training keep coming from the PyTorch network as
trained (:class:`cxrclf.segment.infer.Segmenter`), so that preprocessing stays byte-identical to
what runs recorded; the two differ by float rounding (under 1e-5 in probability).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from cxrclf import folders
from cxrclf.errors import CxrclfError

__all__ = ["FILE_FORMAT", "ONNX_FILE", "OnnxLungNetwork", "lung_network"]

ONNX_FILE = "model.onnx"
FILE_FORMAT = "cxrclf-lung-network"
INPUT, OUTPUT = "x", "logits"
_SETTINGS = ("input_size", "mean", "std", "threshold", "weights_sha256")


class OnnxLungNetwork:
    """A segmenter network exported to ONNX (:func:`cxrclf.export.export_lung_network`), in onnxruntime on one thread.

    It answers :meth:`plane_probabilities` as :class:`~cxrclf.segment.infer.Segmenter` does,
    and carries the same ``input_size``, ``threshold`` and ``sha256`` (of the weights it was
    made from: the view check holds its masks against that hash).
    """

    def __init__(self, path: str | Path):
        import onnxruntime

        self.path = Path(path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1   # one core, as the PyTorch path; no pool to spin
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # the graph's path goes in the reason itself: a worker reports the reason beside the image it was checking
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own types: "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from PATH failed..."
            status = re.search(r"\[ONNXRuntimeError\] : \d+ : (\w+)", str(exc))
            raise CxrclfError(f"lung network file {self.path} damaged or foreign (onnxruntime cannot load it: "
                              f"{status[1] if status else exc.__class__.__name__}); reinstall cxrclf") from exc
        try:
            settings = json.loads(self.session.get_modelmeta().custom_metadata_map[FILE_FORMAT])
            self.input_size, self.threshold = int(settings["input_size"]), float(settings["threshold"])
            self.mean, self.std, self.sha256 = float(settings["mean"]), float(settings["std"]), str(settings["weights_sha256"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CxrclfError(f"lung network file {self.path} damaged or foreign (no readable {FILE_FORMAT!r} metadata: {exc!r}); "
                              "reinstall cxrclf") from exc

    def plane_probabilities(self, planes: np.ndarray, folded: bool = True) -> np.ndarray:
        """P(lung) per pixel of input planes, (S, S) or (N, S, S) float32 in [0, 1] as
        :func:`~cxrclf.segment.plane.segmenter_plane` makes them. ``folded`` is accepted for
        :class:`~cxrclf.segment.infer.Segmenter`'s signature: onnxruntime folds the graph itself."""
        planes = np.asarray(planes, np.float32)
        x = ((planes.reshape(-1, 1, 1, *planes.shape[-2:]) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)
        logits = np.stack([self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(one)})[0][0, 0] for one in x])  # the graph takes one plane
        return np.exp(-np.logaddexp(np.float32(0.0), -logits)).astype(np.float32).reshape(planes.shape)


_NETWORKS: dict[int, object] = {}   # per process: an onnxruntime session is not handed across fork


def lung_network():
    """The built-in segmenter's network for the input checks, loaded once per process: in onnxruntime where
    it is installed and ``model.onnx`` was made from the shipped weights, else the PyTorch
    :class:`~cxrclf.segment.infer.Segmenter` (its folded copy), else None (neither installed: no lung checks).

    ``CXRCLF_LUNG_NETWORK=torch`` chooses PyTorch (to compare the two); ``onnxruntime`` (or
    unset) the default; any other value is an error, not a silent default.
    """
    pid = os.getpid()
    if pid not in _NETWORKS:
        _NETWORKS.clear()
        _NETWORKS[pid] = _load()
    return _NETWORKS[pid]


LUNG_NETWORK_VARIABLE = "CXRCLF_LUNG_NETWORK"
LUNG_NETWORKS = ("onnxruntime", "torch")


def chosen_backend() -> str:
    """``$CXRCLF_LUNG_NETWORK``, lower-cased ("" when unset); any value but :data:`LUNG_NETWORKS` is an error
    (the CLI checks it once at start, so a typo is one error, not a failure per image)."""
    chosen = os.environ.get(LUNG_NETWORK_VARIABLE, "").strip().lower()
    if chosen not in ("", *LUNG_NETWORKS):
        raise CxrclfError(f"{LUNG_NETWORK_VARIABLE} is {os.environ[LUNG_NETWORK_VARIABLE]!r}: use {' or '.join(LUNG_NETWORKS)} (or leave it unset)")
    return chosen


def _load():
    onnx_file = folders.BUILTIN_LUNG / ONNX_FILE
    if chosen_backend() != "torch" and onnx_file.exists() and _onnxruntime_installed():
        network = OnnxLungNetwork(onnx_file)
        from cxrclf.io import sha256_file
        from cxrclf.segment.run import SegmentRun

        if network.sha256 == sha256_file(folders.BUILTIN_LUNG / SegmentRun.WEIGHTS):
            return network
    try:
        from cxrclf.segment.infer import builtin_segmenter
    except ImportError:  # no PyTorch (a runtime-only install) and no usable graph
        return None
    return builtin_segmenter()


def _onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None
