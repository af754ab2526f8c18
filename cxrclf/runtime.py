"""A run exported by ``cxrclf export`` (:mod:`cxrclf.export`), classified with onnxruntime: no PyTorch needed.

An export is a set of files beside each other, named after the ``.onnx`` file::

    MODEL.onnx                   the network (dynamic batch): input "input" (N, C, S, S) float32, normalised;
                                 outputs "logits" (N, classes) and "features" (N, F), the pooled backbone
                                 features the guard scores; for a fold ensemble of M folds the outputs are
                                 (N, M, classes) and (N, M, F), one slice per fold
    MODEL.json                   the sidecar: classes, preprocessing, input size and normalisation, the
                                 guard's and the reference's files and thresholds, the operating point,
                                 the source run's identity and the export's own verification
    MODEL.guard.safetensors      the run's out-of-distribution detector (the run's own file, byte for byte);
                                 a fold ensemble has MODEL.guard-fold-K.safetensors, one per fold
    MODEL.reference.safetensors  the batch shift test's reference (fold 0's for an ensemble)

:class:`OnnxPredictor` reads them and is a :class:`cxrclf.inference.Predictor` (``params``,
``input_size``, ``trained_views``, ``assess``, ``flagged``, ``guard``, ``guard_threshold``,
``operating_point``, ``class_names``, ``shift_reference``, ``member_count``...), so ``predict
--backend onnxruntime`` gives the records, warnings and guard flags of ``predict`` on the run:
the same preprocessing (:func:`cxrclf.planes.plane_from_file`), the same normalisation
(:func:`normalise`, the numpy twin of :func:`cxrclf.models.inputs.model_input`), the same
detector code (:mod:`cxrclf.guard.detector`) and the same averaging of folds as
:class:`cxrclf.inference.FoldEnsemble`.

This module imports neither torch nor timm (a run that crops to the lungs still needs PyTorch
for its lung segmenter, and says so). Test-time augmentation is not offered: it runs on the
PyTorch backend only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cxrclf import io
from cxrclf.errors import CxrclfError

__all__ = ["Assessment", "FORMAT", "FORMAT_VERSION", "INPUT", "OUTPUTS", "OnnxPredictor", "average_members", "export_files", "load_exported", "normalise",
           "sidecar_path"]

FORMAT = "cxrclf-onnx-export"
FORMAT_VERSION = 1
INPUT = "input"
OUTPUTS = ("logits", "features")


class Assessment(NamedTuple):
    """What a predictor says about a batch of N planes (a tuple: ``probabilities, features, scores = predictor.assess(planes)``)."""
    probabilities: np.ndarray  # (N, classes), softmax
    features: np.ndarray       # (N, F), the pooled backbone features the guard and the shift test read
    scores: np.ndarray         # (N,), the out-of-distribution score; NaN without a guard


def average_members(assessed: list[Assessment], thresholds: list[float] | None) -> Assessment:
    """A fold ensemble's assessment from its members': probabilities averaged, the first member's features, and each
    member's score over its own guard ``thresholds`` averaged (above 1 is flagged; NaN without a guard)."""
    probabilities = np.mean([a.probabilities for a in assessed], axis=0)
    if thresholds is None:
        return Assessment(probabilities, assessed[0].features, np.full(len(probabilities), np.nan))
    return Assessment(probabilities, assessed[0].features, np.mean([a.scores / t for a, t in zip(assessed, thresholds)], axis=0))


def sidecar_path(model: Path) -> Path:
    """``MODEL.json`` beside ``MODEL.onnx``."""
    return Path(model).with_suffix(".json")


def export_files(model: Path, members: int, guard: bool, reference: bool) -> dict[str, Path]:
    """Every file of an export named after ``model`` (``MODEL.onnx``), by role: ``onnx``, ``sidecar``, ``guard-K``, ``reference``."""
    model = Path(model)
    files = {"onnx": model, "sidecar": sidecar_path(model)}
    if guard:
        for k in range(members):
            files[f"guard-{k}"] = model.with_suffix(".guard.safetensors" if members == 1 else f".guard-fold-{k}.safetensors")
    if reference:
        files["reference"] = model.with_suffix(".reference.safetensors")
    return files


def normalise(planes: np.ndarray, in_chans: int, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 planes (or floats in [0, 1]) -> (N, C, S, S) float32, as :func:`cxrclf.models.inputs.model_input` makes them.

    The same float32 operations in the same order (divide by 255, replicate grey, subtract the
    mean, divide by the standard deviation), so both backends feed the network identical numbers.
    """
    planes = np.asarray(planes)
    x = planes.astype(np.float32) / np.float32(255.0) if planes.dtype == np.uint8 else planes.astype(np.float32)
    x = np.broadcast_to(x[:, None], (x.shape[0], in_chans, *x.shape[1:]))
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def load_exported(model: Path | None, device: str = "auto", tta: int = 1, threads: int | None = None) -> "OnnxPredictor":
    """``predict --backend onnxruntime``'s predictor: the exported ``model`` (required: an export has no ``runs/latest``), on the CPU."""
    if model is None:
        raise CxrclfError("the onnxruntime backend needs --model MODEL.onnx (written by `cxrclf export RUN --format onnx`)")
    if str(device) == "cuda":
        raise CxrclfError("the onnxruntime backend runs on the CPU (onnxruntime's CPU build); use --device cpu or auto, "
                          "or the PyTorch backend with the run folder for a GPU")
    return OnnxPredictor(Path(model), tta=tta, threads=threads)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


class OnnxPredictor:
    """An exported run (``MODEL.onnx`` and its sidecar) with its preprocessing, classes, guard and operating point.

    ``threads`` sets onnxruntime's intra-op threads (None: its default, one per physical core).
    """

    def __init__(self, model: Path, tta: int = 1, threads: int | None = None):
        import onnxruntime

        if tta != 1:
            raise CxrclfError(f"test-time augmentation ({tta} views) runs on the PyTorch backend only; use --tta 1 with onnxruntime, "
                              "or predict with the run folder")
        model = Path(model)
        if model.suffix.lower() == ".json":
            model = model.with_suffix(".onnx")
        if model.suffix.lower() != ".onnx":
            raise CxrclfError("the onnxruntime backend takes an exported model (MODEL.onnx, written by `cxrclf export RUN --format onnx`), "
                              "not a run folder or another file", model)
        self.path = self.run = model
        self._sidecar_path = sidecar_path(model)
        self.sidecar = self._read_sidecar(model)
        self._check_files()
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own error types for a damaged or unsupported graph
            raise CxrclfError(f"onnxruntime cannot load this model ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})", model) from exc
        spec = self.sidecar
        self.class_names: list[str] = list(spec["class_names"])
        self.input_size: int = spec["input"]["size"]
        self.in_chans: int = spec["input"]["channels"]
        self.mean = np.asarray(spec["input"]["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.std = np.asarray(spec["input"]["std"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.member_count: int = spec["members"]
        self.trained_views: tuple[str, ...] = tuple(spec["trained_views"])
        self.params = self._params()
        self.operating_point = self._operating_point()
        self.detectors = self._load_guard()
        self.guard = self.detectors[0] if self.detectors else None
        self._reference = None

    # ------------------------------------------------------------------ loading

    def _file(self, name: str) -> Path:
        return self.path.parent / name

    def _read_sidecar(self, model: Path) -> dict:
        from cxrclf.runs import Fields

        path = self._sidecar_path
        if not model.is_file():
            raise CxrclfError("exported model not found (export a run with `cxrclf export RUN --format onnx --out MODEL.onnx`)", model)
        if not path.is_file():
            raise CxrclfError(f"the export's sidecar {path.name} is missing beside the model: copy every file `cxrclf export` wrote", path)
        document = io.read_json(path, "export sidecar")
        fields = Fields(document, "", path)
        if fields.str("format", "") != FORMAT:
            raise CxrclfError(f"not a cxrclf export sidecar (format {document.get('format')!r}, expected {FORMAT!r})", path)
        version = fields.int("format_version", 1, 10**6)
        if version > FORMAT_VERSION:
            raise CxrclfError(f"written by a newer cxrclf (sidecar format {version}; this one reads {FORMAT_VERSION}): upgrade cxrclf", path)
        fields.strings("class_names")
        fields.int("members", 1, 1000)
        fields.strings("trained_views")
        model_fields = fields.child("model")
        if model_fields.str("file") != model.name:
            raise CxrclfError(f"the sidecar describes {model_fields.str('file')}, not {model.name} (a renamed file? rename it back, or export again)", path)
        model_fields.str("sha256")
        inputs = fields.child("input")
        channels = inputs.int("channels", 1, 3)
        inputs.int("size", 16, 2048)
        inputs.numbers("mean", (channels,), -10.0, 10.0)
        inputs.numbers("std", (channels,), 1e-6, 10.0)
        fields.mapping("preprocess")
        return document

    def _check_files(self) -> None:
        """Every file the sidecar names is here and is the file that was exported (sha256): a swapped or damaged file is refused."""
        spec = self.sidecar
        listed = [spec["model"]] + [member for member in (spec.get("guard") or {}).get("members", [])] + ([spec["reference"]] if spec.get("reference") else [])
        for entry in listed:
            path = self._file(entry["file"])
            if not path.is_file():
                raise CxrclfError(f"{entry['file']} is missing beside the sidecar: copy every file `cxrclf export` wrote", path)
            if io.sha256_file(path) != entry["sha256"]:
                raise CxrclfError("differs from the file that was exported (its sha256 is not the sidecar's): damaged, or from another export", path)

    def _params(self):
        from cxrclf.preprocess.params import PreprocessParams

        params = PreprocessParams.from_dict(self.sidecar["preprocess"], self._sidecar_path)
        if params.uses_lungs:
            try:
                import torch  # noqa: F401  (the lung segmenter is a PyTorch network)
            except ImportError:
                raise CxrclfError(f"this export's preprocessing uses the lungs (lung {params.lung}): its lung segmenter runs on PyTorch, "
                                  "which is not installed; install torch beside onnxruntime, or export a run trained without --lung", self.path) from None
        return params

    def _operating_point(self):
        from cxrclf.runs import Fields, OperatingPoint

        if self.sidecar.get("operating_point") is None:
            return None
        return OperatingPoint.parse(Fields(self.sidecar, "", self._sidecar_path).child("operating_point"), tuple(self.class_names))

    def _load_guard(self) -> list:
        """One detector per member, each checked against the sidecar's threshold; [] for a run without a guard."""
        from cxrclf.guard.detector import load_detector

        settings = self.sidecar.get("guard")
        if settings is None:
            return []
        members = settings.get("members") or []
        if len(members) != self.member_count:
            raise CxrclfError(f"the sidecar's guard lists {len(members)} detector file(s) for {self.member_count} member network(s)", self._sidecar_path)
        detectors = []
        for entry in members:
            path = self._file(entry["file"])
            detector = load_detector(path)
            threshold = entry.get("threshold")
            if detector.threshold is None or not isinstance(threshold, (int, float)) or not math.isclose(detector.threshold, threshold, rel_tol=1e-6, abs_tol=1e-9):
                raise CxrclfError(f"its threshold {detector.threshold} differs from the sidecar's {threshold}; export the run again", path)
            if getattr(detector, "feature_dim", None) not in (None, settings.get("feature_dim")):
                raise CxrclfError(f"it was fitted on {detector.feature_dim} features per image, the sidecar says {settings.get('feature_dim')}", path)
            detectors.append(detector)
        return detectors

    def shift_reference(self):
        """The batch shift test's reference (fold 0's for an ensemble), read on first use; None when the run stored none."""
        entry = self.sidecar.get("reference")
        if entry is None:
            return None
        if self._reference is None:
            from cxrclf.guard.shift import Reference

            self._reference = Reference.load(self._file(entry["file"]))
        return self._reference

    # ------------------------------------------------------------------ inference

    def tensor(self, planes: np.ndarray) -> np.ndarray:
        """uint8 planes (N, S, S) or float planes in [0, 1] -> the network's normalised (N, C, S, S) float32 input."""
        return normalise(planes, self.in_chans, self.mean, self.std)

    def forward(self, planes: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """(logits, features) as the graph gives them: (N, classes), (N, F); (N, M, ...) for a fold ensemble."""
        logits, features = [], []
        for start in range(0, len(planes), batch_size):
            out = self.session.run(list(OUTPUTS), {INPUT: self.tensor(planes[start:start + batch_size])})
            logits.append(out[0])
            features.append(out[1])
        return np.concatenate(logits), np.concatenate(features)

    def assess_members(self, planes: np.ndarray, batch_size: int = 32) -> list[Assessment]:
        """Each member network's :class:`Assessment` (fold K's slice of the graph's outputs), its guard's raw score included."""
        if len(planes) == 0:
            return [Assessment(np.zeros((0, len(self.class_names)), dtype=np.float32), np.zeros((0, 0), dtype=np.float32), np.zeros(0))] * self.member_count
        logits, features = self.forward(planes, batch_size)
        if self.member_count == 1:
            logits, features = logits[:, None], features[:, None]
        members = []
        for k in range(self.member_count):
            detector = self.detectors[k] if self.detectors else None
            scores = np.full(len(planes), np.nan) if detector is None else detector.score(features[:, k] if detector.needs == "features" else logits[:, k])
            members.append(Assessment(_softmax(logits[:, k].astype(np.float32)), features[:, k], np.asarray(scores, dtype=np.float64)))
        return members

    def combine(self, assessed: list[Assessment]) -> Assessment:
        """One network's assessment as it is; a fold ensemble's as :meth:`cxrclf.inference.FoldEnsemble.combine` makes it."""
        if self.member_count == 1:
            return assessed[0]
        return average_members(assessed, [float(d.threshold) for d in self.detectors] if self.detectors else None)

    def assess(self, planes: np.ndarray, batch_size: int = 32) -> Assessment:
        """(probabilities (N, classes), pooled features (N, F), out-of-distribution scores (N,), NaN without a guard).

        As :meth:`cxrclf.inference.RunPredictor.assess`; for a fold ensemble as
        :meth:`cxrclf.inference.FoldEnsemble.assess`: the folds' probabilities averaged, fold 0's
        features, and the score the mean of each fold's score over its own threshold.
        """
        return self.combine(self.assess_members(planes, batch_size))

    def probabilities(self, planes: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Softmax probabilities (N, classes) for uint8 or [0, 1] float planes."""
        return self.assess(planes, batch_size)[0]

    @property
    def guard_threshold(self) -> float | None:
        if not self.detectors:
            return None
        return float(self.detectors[0].threshold) if self.member_count == 1 else 1.0

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        """True where the learned score says an image is unlike the training images (all False without a guard)."""
        if not self.detectors:
            return np.zeros(len(scores), dtype=bool)
        return self.detectors[0].flag(scores) if self.member_count == 1 else np.asarray(scores) > 1.0

    @property
    def files(self) -> list[Path]:
        """Every file of the export (what a command's outputs must not replace)."""
        spec = self.sidecar
        names = [spec["model"]["file"], *(m["file"] for m in (spec.get("guard") or {}).get("members", []))]
        names += [spec["reference"]["file"]] if spec.get("reference") else []
        return [self._sidecar_path, *(self._file(name) for name in names)]

    def __repr__(self) -> str:
        return f"OnnxPredictor({str(self.path)!r}, members={self.member_count}, guard={'yes' if self.detectors else 'no'})"
