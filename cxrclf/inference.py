"""A trained run as a function from images to class probabilities: the one inference path.

``evaluate``, ``predict`` and ``explain`` all go through a :class:`Predictor`, so an image
gets the same probabilities whichever command asks (predict's numbers equal the row of
evaluate's predictions.csv). :class:`Predictor` is the interface; :class:`RunPredictor` (one
run folder) and :class:`FoldEnsemble` (the folds of a cross-validation parent, averaged)
implement it with PyTorch, :class:`cxrclf.runtime.OnnxPredictor` (an exported run) with
onnxruntime. Both PyTorch predictors also hold their networks as :attr:`~RunPredictor.members`
(Grad-CAM and the export read each network).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch

from cxrclf.choices import Device, resolve_device
from cxrclf.errors import CxrclfError
from cxrclf.models.inputs import model_input, to_model_plane
from cxrclf.planes import plane_from_file  # the torch-free path from a file to the input plane; imported here as before
from cxrclf.preprocess.params import PreprocessParams
from cxrclf.runs import RunFolder
from cxrclf.runtime import Assessment, average_members

if TYPE_CHECKING:
    from cxrclf.guard.detector import Detector
    from cxrclf.guard.shift import Reference
    from cxrclf.runs import OperatingPoint

__all__ = ["Assessment", "FoldEnsemble", "MAX_TTA", "Predictor", "RunPredictor", "load_predictor", "plane_from_file", "tta_grid"]

# Test-time augmentation: fixed small shifts (fractions of the side) and scales, in this order;
# view 0 is the image itself, so N=1 is no augmentation.
TTA_VIEWS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 1.0), (0.03, 0.0, 1.0), (-0.03, 0.0, 1.0), (0.0, 0.03, 1.0), (0.0, -0.03, 1.0),
    (0.0, 0.0, 1.05), (0.0, 0.0, 0.95), (0.03, 0.03, 1.05),
)
MAX_TTA = len(TTA_VIEWS)


def tta_grid(view: int, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """The sampling grid of TTA view ``view`` for a batch of ``shape`` (N, C, H, W)."""
    import torch.nn.functional as F

    dx, dy, scale = TTA_VIEWS[view]
    theta = torch.tensor([[1.0 / scale, 0.0, -2.0 * dx], [0.0, 1.0 / scale, -2.0 * dy]], dtype=torch.float32, device=device)
    return F.affine_grid(theta.expand(shape[0], 2, 3), list(shape), align_corners=False)


def _feature_width(model: torch.nn.Module) -> int:
    """Features per image that the run's head reads (the guard's input): the first linear layer's width."""
    return next(layer.in_features for layer in model.head.modules() if isinstance(layer, torch.nn.Linear))


@runtime_checkable
class Predictor(Protocol):
    """What ``evaluate``, ``predict``, ``shift`` and ``explain`` ask of a predictor: one run, a fold ensemble, or an export.

    ``member_count`` networks are averaged (1 for a run). :meth:`assess` is
    :meth:`combine` of :meth:`assess_members`: evaluate keeps each member's probabilities to
    show what averaging the folds buys. ``guard`` is None for a run trained without one; then
    every score is NaN and nothing is flagged. ``operating_point`` is None for a fold ensemble
    and for runs trained before runs stored one.
    """

    run: Path
    params: PreprocessParams
    class_names: list[str]
    input_size: int
    in_chans: int
    trained_views: tuple[str, ...]
    operating_point: OperatingPoint | None
    guard: Detector | None

    @property
    def member_count(self) -> int: ...

    @property
    def guard_threshold(self) -> float | None: ...

    def assess(self, planes: np.ndarray, batch_size: int = 32) -> Assessment: ...

    def assess_members(self, planes: np.ndarray, batch_size: int = 32) -> list[Assessment]: ...

    def combine(self, assessed: list[Assessment]) -> Assessment: ...

    def flagged(self, scores: np.ndarray) -> np.ndarray: ...

    def probabilities(self, planes: np.ndarray, batch_size: int = 32) -> np.ndarray: ...

    def shift_reference(self) -> Reference | None: ...


class RunPredictor:
    """A finished run's model with its preprocessing, normalisation and classes (and guard, where it has one): a :class:`Predictor`."""

    member_count = 1

    def __init__(self, run: Path | RunFolder, device: Device | str = Device.auto, allow_unfinished: bool = False, tta: int = 1):
        if not 1 <= tta <= MAX_TTA:
            raise CxrclfError(f"test-time augmentation takes 1 to {MAX_TTA} views, not {tta}")
        self.tta = tta
        self.device = resolve_device(device)
        self.folder = run if isinstance(run, RunFolder) else RunFolder(Path(run))
        self.run = self.folder.path
        self.model, self.config = self.folder.load(device=str(self.device), allow_unfinished=allow_unfinished)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.params: PreprocessParams = self.config.preprocess
        self.class_names: list[str] = self.config.class_names
        self.input_size: int = self.config.model.input_size
        self.in_chans: int = self.config.model.in_chans
        self.mean = torch.tensor(self.config.model.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.config.model.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.guard = self._load_guard()
        self.trained_views: tuple[str, ...] = self.config.data.trained_views  # what the input checks hold a film's view against
        self.operating_point = self.config.operating_point  # per-class thresholds chosen on validation; None for older runs
        self._reference = None

    def _load_guard(self):
        """The run's out-of-distribution detector, or ``None`` for a run trained without one; one that does not fit the run is refused."""
        settings = self.config.guard
        if settings is None:
            return None
        from cxrclf.guard.detector import load_detector

        network = _feature_width(self.model)
        if settings.feature_dim != network:
            raise CxrclfError(f"guard.feature_dim says {settings.feature_dim} features per image, the run's network gives {network} "
                              "(a hand-edited or foreign config.json)", self.folder.file(RunFolder.CONFIG))
        path = self.folder.file(RunFolder.GUARD)
        detector = load_detector(path)
        problems = []
        if detector.kind != settings.kind:
            problems.append(f"it holds a {detector.kind} detector, config.json says {settings.kind}")
        if detector.threshold is None or not math.isclose(detector.threshold, settings.threshold, rel_tol=1e-6, abs_tol=1e-9):
            problems.append(f"its threshold {detector.threshold} differs from config.json's {settings.threshold}")
        if detector.rule != settings.rule:
            problems.append(f"its threshold rule is {detector.rule}, config.json says {settings.rule}")
        fitted_on = getattr(detector, "feature_dim", None)
        if fitted_on is not None and fitted_on != network:
            problems.append(f"it was fitted on {fitted_on} features per image, the run's network gives {network}")
        classes = getattr(detector, "classes", None)
        # every class has training images (train refuses otherwise), so the run's detector was fitted on each of them
        if classes is not None and sorted(int(c) for c in classes) != list(range(len(self.class_names))):
            problems.append(f"it was fitted on classes {sorted(int(c) for c in classes)}, the run has {len(self.class_names)} ({', '.join(self.class_names)})")
        if problems:
            raise CxrclfError(f"guard.safetensors does not belong to this run ({'; '.join(problems)}); retrain the run, or remove the guard "
                              "block from config.json to predict without a guard", path)
        return detector

    def shift_reference(self):
        """The batch shift test's :class:`~cxrclf.guard.shift.Reference` (the validation images' features and sources),
        read on first use; None for a run trained before runs stored one."""
        settings = self.config.reference
        if settings is None:
            return None
        if self._reference is None:
            from cxrclf.guard.shift import Reference

            path = self.folder.file(RunFolder.REFERENCE)
            reference = Reference.load(path)
            network = _feature_width(self.model)
            if (len(reference), reference.counts, reference.feature_dim) != (settings.images, settings.sources, settings.feature_dim) or reference.feature_dim != network:
                raise CxrclfError(f"reference.safetensors does not belong to this run ({len(reference)} images of {reference.feature_dim} features; "
                                  f"config.json says {settings.images} of {settings.feature_dim}, the network gives {network}); retrain the run", path)
            self._reference = reference
        return self._reference

    def plane_from_decoded(self, image: np.ndarray) -> np.ndarray:
        """A decoded X-ray (any size, uint8/uint16) -> the model's uint8 input plane."""
        from cxrclf.preprocess.pipeline import preprocess_image
        from cxrclf.segment.run import segmenter_for

        return to_model_plane(preprocess_image(image, self.params, segmenter_for(self.params)), self.input_size)

    def plane_from_preprocessed(self, image: np.ndarray) -> np.ndarray:
        return to_model_plane(image, self.input_size)

    def tensor(self, planes: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 planes (N, S, S) or float planes in [0, 1] -> normalised (N, C, S, S) input."""
        x = planes if isinstance(planes, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(planes))
        return model_input(x.to(self.device), self.in_chans, self.mean, self.std)

    @property
    def members(self) -> list["RunPredictor"]:
        """The networks this predictor averages: itself."""
        return [self]

    def assess_members(self, planes: np.ndarray, batch_size: int = 32) -> list[Assessment]:
        return [self.assess(planes, batch_size)]

    def combine(self, assessed: list[Assessment]) -> Assessment:
        (only,) = assessed
        return only

    @torch.inference_mode()
    def assess(self, planes: np.ndarray, batch_size: int = 32) -> Assessment:
        """(probabilities (N, classes), pooled features (N, F), out-of-distribution scores (N,), NaN without a guard).

        One forward pass per batch gives both the probabilities (equal to :meth:`probabilities`)
        and the features the guard scores.
        """
        import torch.nn.functional as F

        from cxrclf.guard.features import logits_and_features

        probabilities, features = [], []
        autocast = self.device.type == "cuda"
        for start in range(0, len(planes), batch_size):
            x = self.tensor(planes[start:start + batch_size])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                logits, pooled = logits_and_features(self.model, x)
            probability = torch.softmax(logits.float(), dim=1)
            for view in range(1, self.tta):  # the guard reads view 0, the image as it is
                moved = F.grid_sample(x.float(), tta_grid(view, x.shape, self.device), mode="bilinear", padding_mode="border", align_corners=False)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                    probability += torch.softmax(logits_and_features(self.model, moved.contiguous(memory_format=torch.channels_last))[0].float(), dim=1)
            probabilities.append((probability / self.tta).cpu().numpy())
            features.append(pooled.float().cpu().numpy())
        if not probabilities:
            return Assessment(np.zeros((0, len(self.class_names)), dtype=np.float32), np.zeros((0, 0), dtype=np.float32), np.zeros(0))
        probabilities, features = np.concatenate(probabilities), np.concatenate(features)
        scores = self.guard.score(features) if self.guard is not None else np.full(len(features), np.nan)
        return Assessment(probabilities, features, np.asarray(scores, dtype=np.float64))

    @property
    def guard_threshold(self) -> float | None:
        return None if self.guard is None else float(self.guard.threshold)

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        """True where the learned score says an image is unlike the training images (all False without a guard)."""
        if self.guard is None:
            return np.zeros(len(scores), dtype=bool)
        return self.guard.flag(scores)

    @torch.inference_mode()
    def probabilities(self, planes: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Softmax probabilities (N, classes) for uint8 or [0, 1] float planes."""
        out = []
        autocast = self.device.type == "cuda"
        for start in range(0, len(planes), batch_size):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = self.model(self.tensor(planes[start:start + batch_size]))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), dtype=np.float32)


class FoldEnsemble:
    """The folds of a cross-validation parent run (``RUN/fold-K/``) as one :class:`Predictor`: their probabilities averaged.

    Every fold must share the preprocessing, input size and classes (they do when one
    ``train --cv`` made them). The guard's score is each fold's score over its own
    threshold, averaged: above 1 is flagged. Features (for the source probe and the shift test)
    are fold 0's, and so is the shift test's reference: the other folds' references are other
    networks' features, not comparable with fold 0's. The ensemble has no operating point: each
    fold's thresholds were chosen for its own probabilities, not for their average, and no
    validation split is left to choose them on (every fold trained on the others' validation images).
    """

    def __init__(self, parent: RunFolder, device: Device | str = Device.auto, allow_unfinished: bool = False, tta: int = 1):
        self.members: list[RunPredictor] = [RunPredictor(fold, device, allow_unfinished, tta) for fold in parent.fold_members()]
        first = self.members[0]
        for member in self.members[1:]:
            if (member.params, member.input_size, member.class_names, member.in_chans) != (first.params, first.input_size, first.class_names, first.in_chans):
                raise CxrclfError("its folds differ in preprocessing, input size or classes; they cannot be averaged", member.run)
        self.folder, self.run, self.device, self.tta = parent, parent.path, first.device, tta
        self.config = first.config
        self.params, self.class_names, self.input_size, self.in_chans = first.params, first.class_names, first.input_size, first.in_chans
        self.guard = first.guard if all(m.guard is not None for m in self.members) else None
        self.trained_views = tuple(sorted({view for member in self.members for view in member.trained_views}))
        self.operating_point = None

    def shift_reference(self):
        """Fold 0's reference, to test fold 0's features (what :meth:`assess` returns)."""
        return self.members[0].shift_reference()

    @property
    def member_count(self) -> int:
        return len(self.members)

    plane_from_decoded = RunPredictor.plane_from_decoded
    plane_from_preprocessed = RunPredictor.plane_from_preprocessed

    def tensor(self, planes):
        return self.members[0].tensor(planes)

    def assess_members(self, planes: np.ndarray, batch_size: int = 32) -> list[Assessment]:
        return [member.assess(planes, batch_size) for member in self.members]

    def combine(self, assessed: list[Assessment]) -> Assessment:
        """The folds' probabilities averaged, fold 0's features, each fold's score over its own threshold averaged."""
        return average_members(assessed, None if self.guard is None else [float(m.guard.threshold) for m in self.members])

    def assess(self, planes: np.ndarray, batch_size: int = 32) -> Assessment:
        """As :meth:`RunPredictor.assess`; the score is in units of the folds' thresholds."""
        return self.combine(self.assess_members(planes, batch_size))

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        if self.guard is None:
            return np.zeros(len(scores), dtype=bool)
        return np.asarray(scores) > 1.0

    @property
    def guard_threshold(self) -> float | None:
        return None if self.guard is None else 1.0

    def probabilities(self, planes: np.ndarray, batch_size: int = 32) -> np.ndarray:
        return np.mean([member.probabilities(planes, batch_size) for member in self.members], axis=0)


def load_predictor(run: RunFolder, device: Device | str = Device.auto, allow_unfinished: bool = False, tta: int = 1) -> RunPredictor | FoldEnsemble:
    """A run folder's predictor, or the average of its folds for a cross-validation parent (``RUN/fold-K/``)."""
    if not run.is_run and run.fold_runs():
        return FoldEnsemble(run, device, allow_unfinished, tta)
    return RunPredictor(run, device, allow_unfinished, tta)
