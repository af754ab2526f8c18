"""A trained run as a function from images to class probabilities: the one inference path.

``evaluate``, ``predict`` and ``explain`` all go through :class:`Predictor`, so an image
gets the same probabilities whichever command asks (predict's numbers equal the row of
evaluate's predictions.csv).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrclf.choices import Device, resolve_device
from cxrclf.errors import CxrclfError
from cxrclf.models.inputs import model_input, to_model_plane
from cxrclf.preprocess.params import PreprocessParams
from cxrclf.runs import RunFolder

__all__ = ["FoldEnsemble", "MAX_TTA", "Predictor", "load_predictor", "plane_from_file", "tta_grid"]

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


def plane_from_file(task: tuple[str, dict | None, int]) -> dict:
    """One image file -> ``{"plane", "warnings"}`` (the model's input plane and the input checks' reasons) or ``{"error"}``.

    ``task`` is (path, preprocessing parameters or None for an already preprocessed image,
    input size); a module-level function so that it runs in worker processes. Any failure
    is this file's error: it never stops a batch.
    """
    from cxrclf.data import imageio
    from cxrclf.guard.checks import input_warnings
    from cxrclf.preprocess.pipeline import preprocess_image

    path, params, size = task
    try:
        decoded = imageio.decode(path)
        warnings = input_warnings(decoded.pixels, decoded.info)
        image = decoded.pixels
        if params is not None:
            image = preprocess_image(image, PreprocessParams(**params))
        return {"plane": to_model_plane(image, size), "warnings": warnings}
    except CxrclfError as exc:
        return {"error": exc.reason}
    except Exception as exc:  # a pathological image must not stop the batch
        return {"error": f"cannot process image ({exc.__class__.__name__}: {exc})"}


class Predictor:
    """A finished run's model with its preprocessing, normalisation and classes (and guard, where it has one)."""

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

    def _load_guard(self):
        """The run's out-of-distribution detector, or ``None`` for a run trained without one."""
        if not self.config.guard:
            return None
        from cxrclf.guard.detector import load_detector

        return load_detector(self.folder.file(RunFolder.GUARD))

    def plane_from_decoded(self, image: np.ndarray) -> np.ndarray:
        """A decoded X-ray (any size, uint8/uint16) -> the model's uint8 input plane."""
        from cxrclf.preprocess.pipeline import preprocess_image

        return to_model_plane(preprocess_image(image, self.params), self.input_size)

    def plane_from_preprocessed(self, image: np.ndarray) -> np.ndarray:
        return to_model_plane(image, self.input_size)

    def tensor(self, planes: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 planes (N, S, S) or float planes in [0, 1] -> normalised (N, C, S, S) input."""
        x = planes if isinstance(planes, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(planes))
        return model_input(x.to(self.device), self.in_chans, self.mean, self.std)

    @torch.inference_mode()
    def assess(self, planes: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
            return np.zeros((0, len(self.class_names)), dtype=np.float32), np.zeros((0, 0), dtype=np.float32), np.zeros(0)
        probabilities, features = np.concatenate(probabilities), np.concatenate(features)
        scores = self.guard.score(features) if self.guard is not None else np.full(len(features), np.nan)
        return probabilities, features, np.asarray(scores, dtype=np.float64)

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
    """The folds of a cross-validation parent run (``RUN/fold-K/``) as one predictor: their probabilities averaged.

    Every fold must share the preprocessing, input size and classes (they do when one
    ``train --cv`` made them). The guard's score is each fold's score over its own
    threshold, averaged: above 1 is flagged. Features (for the source probe) are fold 0's.
    """

    def __init__(self, parent: RunFolder, device: Device | str = Device.auto, allow_unfinished: bool = False, tta: int = 1):
        folds = parent.fold_runs()
        if not folds:
            raise CxrclfError("not a cross-validation run (no fold-K/ run folders)", parent.path)
        self.members = [Predictor(fold, device, allow_unfinished, tta) for fold in folds]
        first = self.members[0]
        for member in self.members[1:]:
            if (member.params, member.input_size, member.class_names, member.in_chans) != (first.params, first.input_size, first.class_names, first.in_chans):
                raise CxrclfError("its folds differ in preprocessing, input size or classes; they cannot be averaged", member.run)
        self.folder, self.run, self.device, self.tta = parent, parent.path, first.device, tta
        self.config = first.config
        self.params, self.class_names, self.input_size, self.in_chans = first.params, first.class_names, first.input_size, first.in_chans
        self.guard = first.guard if all(m.guard is not None for m in self.members) else None

    plane_from_decoded = Predictor.plane_from_decoded
    plane_from_preprocessed = Predictor.plane_from_preprocessed

    def tensor(self, planes):
        return self.members[0].tensor(planes)

    def assess_members(self, planes: np.ndarray, batch_size: int = 32) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return [member.assess(planes, batch_size) for member in self.members]

    def combine(self, assessed: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        probabilities = np.mean([a[0] for a in assessed], axis=0)
        if self.guard is None:
            scores = np.full(len(probabilities), np.nan)
        else:
            scores = np.mean([a[2] / m.guard.threshold for a, m in zip(assessed, self.members)], axis=0)
        return probabilities, assessed[0][1], scores

    def assess(self, planes: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`Predictor.assess`; the score is in units of the folds' thresholds."""
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


def load_predictor(run: RunFolder, device: Device | str = Device.auto, allow_unfinished: bool = False, tta: int = 1) -> "Predictor | FoldEnsemble":
    """A run folder's predictor, or the average of its folds for a cross-validation parent (``RUN/fold-K/``)."""
    if not run.is_run and run.fold_runs():
        return FoldEnsemble(run, device, allow_unfinished, tta)
    return Predictor(run, device, allow_unfinished, tta)
