"""``cxrclf export RUN --format onnx``: a run as files that onnxruntime runs without PyTorch.

What it writes (``MODEL.onnx``, its sidecar ``MODEL.json``, the guard's and the reference's
files) is described in :mod:`cxrclf.runtime`, which reads them. The network is exported with
both of its outputs, the logits and the pooled features, so that the out-of-distribution
guard and the batch shift test still work; everything else inference needs (classes,
preprocessing, input size and normalisation, the guard's threshold, the operating point) goes
in the sidecar, with the source run's identity (each config.json's and model.safetensors'
sha256). A fold ensemble is exported as one graph holding every fold.

The export verifies itself before anything is put in place: the files are written to a
hidden folder beside the output, read back through :class:`cxrclf.runtime.OnnxPredictor`,
and run on real images (the run's own data where it is still there, else phantoms put
through the run's preprocessing) and on two extreme planes (black, noise); onnxruntime's
probabilities must agree with PyTorch's (:meth:`cxrclf.inference.RunPredictor.assess`) to
``tolerance``, or the export fails and says by how much. The verification's figures are
recorded in the sidecar.

The graph comes from PyTorch's TorchScript-based exporter (``dynamo=False``): the
``torch.export`` one needs ``onnxscript``, which cxrclf does not install. Opset 17 is read by
onnxruntime 1.14 (2023) and later.
"""

from __future__ import annotations

import io as stdio
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrclf import __version__, io
from cxrclf.errors import CxrclfError
from cxrclf.runs import RunFolder
from cxrclf.runtime import FORMAT, FORMAT_VERSION, INPUT, OUTPUTS, export_files

if TYPE_CHECKING:
    from cxrclf.inference import FoldEnsemble, RunPredictor

__all__ = ["OPSET", "TOLERANCE", "export_lung_network", "export_onnx"]

OPSET = 17
TOLERANCE = 1e-4          # the largest difference in any probability that an export may show
VERIFY_IMAGES = 16        # real images run through both backends (plus a black and a noise plane)


def export_onnx(run: RunFolder | Path, out: Path, overwrite: bool = False, tolerance: float = TOLERANCE, allow_unfinished: bool = False) -> dict:
    """Export ``run`` (a run folder or a cross-validation parent) to ``out`` (``MODEL.onnx``) and its sidecar files.

    Returns the sidecar's content, with ``files``: every path written. Nothing is written when
    the verification fails (a :class:`CxrclfError` saying by how much).
    """
    from cxrclf.inference import load_predictor

    folder = run if isinstance(run, RunFolder) else RunFolder(Path(run))
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise CxrclfError("the output must be an .onnx file (its sidecar MODEL.json and the guard's files are written beside it)", out)
    predictor = load_predictor(folder, "cpu", allow_unfinished=allow_unfinished)  # a bad run is refused before anything is made
    files = export_files(out, len(predictor.members), guard=predictor.guard is not None, reference=predictor.shift_reference() is not None)
    for path in files.values():  # the run, its folds and its lung segmenter are inputs: no output may lie inside them
        io.check_output_file(path, folder.reads(), overwrite=overwrite)
    # a second export to the same files is refused: the two could mix their files. One lock for m.onnx and m.ONNX, which
    # share m.json.
    with io.folder_lock(out.with_suffix(".onnx")):
        io.remove_stale_partials(out)  # a killed export's staging folder
        for path in files.values():  # again, now that we hold the lock
            io.check_output_file(path, folder.reads(), overwrite=overwrite)
        return _write_export(predictor, folder, out, files, tolerance)


def _write_export(predictor: RunPredictor | FoldEnsemble, folder: RunFolder, out: Path, files: dict[str, Path], tolerance: float) -> dict:
    """Build, verify and move into place the export's files (the caller holds the lock)."""
    members = predictor.members
    network = _export_graph([member.model for member in members], predictor.in_chans, predictor.input_size)
    document = _sidecar(predictor, files, folder)
    stage = Path(tempfile.mkdtemp(dir=_parent(out), prefix=f".{out.name}.partial-"))
    try:
        staged = {role: stage / path.name for role, path in files.items()}
        io.write_bytes(staged["onnx"], network)
        for k, member in enumerate(members):
            if f"guard-{k}" in staged:
                shutil.copyfile(member.folder.file(RunFolder.GUARD), staged[f"guard-{k}"])
        if "reference" in staged:
            shutil.copyfile(members[0].folder.file(RunFolder.REFERENCE), staged["reference"])
        document["model"]["sha256"] = io.sha256_file(staged["onnx"])
        for k, entry in enumerate((document.get("guard") or {}).get("members", [])):
            entry["sha256"] = io.sha256_file(staged[f"guard-{k}"])
        if document.get("reference"):
            document["reference"]["sha256"] = io.sha256_file(staged["reference"])
        io.write_json(staged["sidecar"], document)
        document["verification"] = verify(predictor, staged["onnx"], folder, tolerance)
        io.write_json(staged["sidecar"], document)
        for role, path in files.items():  # the sidecar last: it names the others
            if role != "sidecar":
                os.replace(staged[role], path)
        os.replace(staged["sidecar"], files["sidecar"])
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return document | {"files": [str(path) for path in files.values()]}


def _parent(out: Path) -> Path:
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _two_outputs(models: list):
    """A module returning (logits, pooled features) of ``models``: one network's, or every fold's stacked on dimension 1."""
    import torch

    class TwoOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.members = torch.nn.ModuleList(models)

        def forward(self, x):
            outputs = []
            for member in self.members:
                features = member.pooled_features(x)
                outputs.append((member.head(features), features))
            if len(outputs) == 1:
                return outputs[0]
            return torch.stack([o[0] for o in outputs], dim=1), torch.stack([o[1] for o in outputs], dim=1)

    return TwoOutputs().eval()


def _export_graph(models: list, in_chans: int, input_size: int) -> bytes:
    """The ONNX bytes of the members' networks, batch dimension dynamic."""
    import torch

    network = _two_outputs([model.to(memory_format=torch.contiguous_format) for model in models])
    example = torch.zeros(2, in_chans, input_size, input_size)
    buffer = stdio.BytesIO()
    dynamic = {INPUT: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUTS}}
    with warnings.catch_warnings():
        # the TorchScript exporter's deprecation notice, and tracer notes about Python booleans in timm's shape checks
        # (fixed for the traced input size, which is the run's only size)
        warnings.simplefilter("ignore")
        with torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(network, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT], output_names=list(OUTPUTS),
                              dynamic_axes=dynamic, do_constant_folding=True)
    for model in models:  # back as the predictor keeps them (the verification runs them)
        model.to(memory_format=torch.channels_last).eval()
    return buffer.getvalue()


def _sidecar(predictor: RunPredictor | FoldEnsemble, files: dict[str, Path], folder: RunFolder) -> dict:
    """Everything inference needs besides the network, and where the network came from (hashes filled in once written)."""
    import onnxruntime
    import torch

    config = predictor.config
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": _model_entry(predictor, files),
        "members": predictor.member_count,
        "class_names": list(predictor.class_names),
        "input": {
            "size": predictor.input_size, "channels": predictor.in_chans, "mean": list(config.model.mean), "std": list(config.model.std),
            "pipeline": ("decode (PNG, JPEG, DICOM) -> the preprocessing below (cxrclf.preprocess.preprocess_image) -> first channel, "
                         "resized to size x size (cv2 INTER_AREA when shrinking, INTER_LINEAR otherwise) -> uint8 / 255 -> the grey plane "
                         "repeated to every channel -> (x - mean) / std per channel -> float32 (N, C, size, size)"),
        },
        "preprocess": predictor.params.to_dict(),
        "trained_views": list(predictor.trained_views),
        "guard": _guard_entry(predictor, files),
        "reference": _reference_entry(predictor, files),
        "operating_point": None if predictor.operating_point is None else predictor.operating_point.to_dict(),
        "source_run": _source_entry(predictor, folder),
        "versions": {"cxrclf": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
    }


def _model_entry(predictor: RunPredictor | FoldEnsemble, files: dict[str, Path]) -> dict:
    """The graph: its file, architecture, input and outputs (one slice per fold on dimension 1 for an ensemble)."""
    config, count = predictor.config, predictor.member_count
    shape = ["batch", count] if count > 1 else ["batch"]
    return {
        "file": files["onnx"].name, "sha256": "", "architecture": config.model.name, "label": config.model.label, "opset": OPSET,
        "input": {"name": INPUT, "shape": ["batch", predictor.in_chans, predictor.input_size, predictor.input_size], "dtype": "float32"},
        "outputs": {"logits": [*shape, len(predictor.class_names)], "features": [*shape, int(predictor.members[0].model.num_features)]},
    }


def _guard_entry(predictor: RunPredictor | FoldEnsemble, files: dict[str, Path]) -> dict | None:
    """The guard's settings and each member's detector file and threshold; None for a run without a guard."""
    if predictor.guard is None:
        return None
    config, count = predictor.config, predictor.member_count
    return {
        "kind": config.guard.kind, "quantile": config.guard.quantile, "feature_dim": config.guard.feature_dim,
        "threshold": predictor.guard_threshold,
        "score": ("the Mahalanobis distance of the pooled features to the nearest class mean" if count == 1 else
                  f"the mean over {count} folds of each fold's score divided by its own threshold"),
        "flagged": "score above threshold",
        "members": [{"file": files[f"guard-{k}"].name, "threshold": float(m.guard.threshold), "val_flag_rate": m.config.guard.val_flag_rate}
                    for k, m in enumerate(predictor.members)],
    }


def _reference_entry(predictor: RunPredictor | FoldEnsemble, files: dict[str, Path]) -> dict | None:
    """The batch shift test's reference (fold 0's for an ensemble); None for a run that stores none."""
    held = predictor.shift_reference()
    if held is None:
        return None
    return {"file": files["reference"].name, "images": len(held), "sources": held.counts, "feature_dim": held.feature_dim,
            "network": "fold 0's" if predictor.member_count > 1 else "the run's"}


def _source_entry(predictor: RunPredictor | FoldEnsemble, folder: RunFolder) -> dict:
    """The exported run's identity: its folder, scenario, and each member's config.json and weights (sha256)."""
    return {
        "path": str(folder.path.resolve()), "kind": "fold ensemble" if predictor.member_count > 1 else "run", "scenario": predictor.config.scenario,
        "members": [{"path": str(m.folder.path.resolve()), "config_sha256": io.sha256_file(m.folder.file(RunFolder.CONFIG)),
                     "weights_sha256": io.sha256_file(m.folder.file(RunFolder.WEIGHTS))} for m in predictor.members],
    }


def verification_planes(predictor, folder: RunFolder, count: int = VERIFY_IMAGES) -> tuple[np.ndarray, str]:
    """(uint8 planes, where they came from): real images of the run's data folder, test split first, else phantoms through the
    run's preprocessing; then a black plane and a noise plane, the extremes of what the network may be given."""
    from cxrclf.planes import PlaneTask, plane_from_file

    planes, origin = [], ""
    data = Path(predictor.config.data.folder) if predictor.config.data.folder else None
    if data is not None and (data / "manifest.csv").is_file():
        import pandas as pd

        rows = pd.read_csv(data / "manifest.csv", usecols=lambda c: c in ("path", "split", "fused_path"))
        preprocessed = "fused_path" in rows.columns
        order = {"test": 0, "val": 1, "train": 2}
        rows = rows.assign(order=rows["split"].map(order).fillna(3)).sort_values(["order", "path"], kind="stable")
        for path in rows["path"]:
            found = plane_from_file(PlaneTask(str(data / path), None if preprocessed else predictor.params.to_dict(), predictor.input_size))
            if found.ok:
                planes.append(found.plane)
            if len(planes) == count:
                break
        origin = f"{len(planes)} images of {data} (test split first)"
    if not planes:
        from cxrclf.data import synthetic
        from cxrclf.models.inputs import to_model_plane
        from cxrclf.preprocess.pipeline import preprocess_image
        from cxrclf.segment.run import segmenter_for

        rng = np.random.default_rng(0)
        for index in range(count):
            image = synthetic.to_uint8(synthetic.phantom(synthetic.FINDINGS[index % len(synthetic.FINDINGS)], rng, 2 * predictor.input_size).image)
            planes.append(to_model_plane(preprocess_image(image, predictor.params, segmenter_for(predictor.params)), predictor.input_size))
        origin = f"{count} synthetic phantoms through the run's preprocessing (the run's data folder {data} was not found)"
    size = predictor.input_size
    extremes = [np.zeros((size, size), np.uint8), np.random.default_rng(1).integers(0, 256, (size, size), dtype=np.uint8)]
    return np.stack(planes + extremes), origin + ", a black plane and a noise plane"


def verify(predictor, model: Path, folder: RunFolder, tolerance: float = TOLERANCE) -> dict:
    """Run the exported files through onnxruntime beside PyTorch on the same planes; a :class:`CxrclfError` beyond ``tolerance``."""
    import onnxruntime

    from cxrclf.runtime import OnnxPredictor

    planes, origin = verification_planes(predictor, folder)
    expected, expected_features, expected_scores = predictor.assess(planes, batch_size=8)
    exported = OnnxPredictor(model)
    probabilities, features, scores = exported.assess(planes, batch_size=8)
    single, _, _ = exported.assess(planes[:1], batch_size=1)  # the batch dimension is free: one image alone as well
    differences = np.abs(probabilities - expected).max(axis=1)
    worst = int(differences.argmax())
    difference = float(max(differences.max(), np.abs(single - expected[:1]).max()))
    if not difference <= tolerance:
        raise CxrclfError(f"onnxruntime's probabilities differ from PyTorch's by up to {difference:.2e} (image {worst + 1} of {len(planes)}; "
                          f"tolerance {tolerance:g}); nothing was exported. Report it with the run's model name ({predictor.config.model.name})", folder.path)
    flags = exported.flagged(scores) == predictor.flagged(expected_scores)
    return {
        "images": int(len(planes)), "inputs": origin, "tolerance": tolerance, "max_probability_difference": difference,
        "max_feature_difference": float(np.abs(features - expected_features).max()),
        "max_score_difference": None if predictor.guard is None else float(np.abs(scores - expected_scores).max()),
        "flags_agree": int(flags.sum()), "onnxruntime": onnxruntime.__version__,
    }


# ----------------------------------------------------------------------------- the built-in segmenter's graph

def export_lung_network(segmenter, out: Path, tolerance: float = TOLERANCE) -> dict:
    """Write ``segmenter``'s network (a :class:`~cxrclf.segment.infer.Segmenter`) as the ONNX graph the input checks run
    (:class:`cxrclf.segment.ort.OnnxLungNetwork`), verified against PyTorch before it is put in place.

    The graph takes one plane at a time and keeps its BatchNorms (onnxruntime folds them when it
    loads the graph) so that every float weight stays the value PyTorch holds; those that are exact in half precision (all of
    a segmenter shipped in half precision) are stored so and cast back to float32 in the graph:
    half the file, the same numbers. The metadata names the input size, normalisation,
    threshold and the sha256 of the weights. Returns the file's size and hash and the largest
    difference in P(lung) from PyTorch on the check planes (a smooth pattern, noise, black,
    and a batch of all three).
    """
    import onnx
    import torch

    from cxrclf.segment.ort import FILE_FORMAT, INPUT as LUNG_INPUT, OUTPUT as LUNG_OUTPUT, OnnxLungNetwork

    size, settings = segmenter.input_size, segmenter.config.model
    buffer = stdio.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        with torch.inference_mode(False), torch.no_grad():
            # one plane of the input size, no dynamic axis: onnxruntime then folds every shape computation (timm's "same"
            # padding is computed from the input's shape) and runs a plane in about 7 ms against 9-11 ms with a free batch
            # dimension, which saves nothing per plane on one thread anyway
            torch.onnx.export(segmenter.model.eval(), (torch.zeros(1, 1, size, size),), buffer, dynamo=False, opset_version=OPSET,
                              input_names=[LUNG_INPUT], output_names=[LUNG_OUTPUT], do_constant_folding=False)
    graph = _halved(onnx.load_from_string(buffer.getvalue()))
    recorded = {"input_size": size, "mean": float(settings.mean), "std": float(settings.std), "threshold": float(settings.threshold),
                "weights_sha256": segmenter.sha256}
    onnx.helper.set_model_props(graph, {FILE_FORMAT: json.dumps(recorded, sort_keys=True)})
    data = graph.SerializeToString()

    out = Path(out)
    fd, staged = tempfile.mkstemp(dir=out.parent if out.parent.exists() else None, suffix=".onnx")
    os.close(fd)
    try:
        Path(staged).write_bytes(data)
        exported = OnnxLungNetwork(staged)
        probe = np.sin(0.1 * np.arange(size * size, dtype=np.float32)).reshape(size, size) * 0.5 + 0.5
        planes = np.stack([probe, np.random.default_rng(0).random((size, size), dtype=np.float32), np.zeros((size, size), np.float32)])
        expected = segmenter.plane_probabilities(planes)
        difference = max(float(np.abs(exported.plane_probabilities(planes) - expected).max()),
                         *(float(np.abs(exported.plane_probabilities(p) - e).max()) for p, e in zip(planes, expected)))
    finally:
        os.unlink(staged)
    if not difference <= tolerance:
        raise CxrclfError(f"onnxruntime's lung probabilities differ from PyTorch's by up to {difference:.2e} (tolerance {tolerance:g}); "
                          "nothing was written", segmenter.path)
    io.write_bytes(out, data)
    return {"file": str(out), "bytes": len(data), "sha256": io.sha256_file(out), "weights_sha256": segmenter.sha256, "opset": OPSET,
            "max_probability_difference": difference, "made_by": "cxrclf.export.export_lung_network"}


def _halved(graph):
    """``graph`` with every float32 initializer that half precision holds exactly stored as float16 and cast back in the graph."""
    from onnx import TensorProto, helper, numpy_helper

    casts, kept = [], []
    for initializer in graph.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype == np.float32 and values.size > 1 and np.array_equal(values.astype(np.float16).astype(np.float32), values):
            half = numpy_helper.from_array(values.astype(np.float16), f"{initializer.name}.float16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [initializer.name], to=TensorProto.FLOAT, name=f"{initializer.name}.cast"))
        else:
            kept.append(initializer)
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    nodes = list(graph.graph.node)
    del graph.graph.node[:]
    graph.graph.node.extend(casts + nodes)
    return graph
