"""``cxrclf predict``: classify PNG, JPEG and DICOM files (and folders) with a trained run.

Each file is decoded, put through the run's own preprocessing (``preprocess_image`` with the
parameters in its config.json) and classified in batches by a :class:`cxrclf.inference.Predictor`.
A file that cannot be read is reported and the rest are still classified.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from cxrclf import io
from cxrclf.data.imageio import IMAGE_SUFFIXES
from cxrclf.errors import CxrclfError
from cxrclf.planes import Plane, PlaneTask, plane_from_file  # torch-free: predict runs on the onnxruntime backend without PyTorch
from cxrclf.parallel import map_images

if TYPE_CHECKING:
    from cxrclf.inference import Predictor

__all__ = ["Prediction", "Predictions", "collect_inputs", "predict_files", "results_csv", "shift_files"]


@dataclass(frozen=True)
class Prediction:
    """One file's answer, or why it has none (``error``; then only ``file`` is set).

    ``warnings`` lists the input checks' reasons and, where the run has a guard and the image's
    score is above its threshold, that one. ``in_distribution`` is False with any warning, True
    when the guard passes the image, and None when the run has no guard and no rule objected.
    ``withheld`` (``--withhold-flagged`` and a warning): ``predicted`` and ``positive`` are None,
    the probabilities are still given, for the record. ``operating_point`` is the run's per-class
    thresholds (None for a run or fold ensemble without them) and ``positive`` the classes whose
    probability is at or above their threshold (None without thresholds or when withheld);
    ``predicted`` stays the argmax.
    """
    file: str
    predicted: str | None = None
    probabilities: dict[str, float] | None = None
    ood_score: float | None = None
    in_distribution: bool | None = None
    warnings: list[str] = field(default_factory=list)
    operating_point: dict[str, float] | None = None
    positive: list[str] | None = None
    withheld: bool = False
    error: str | None = None

    def to_dict(self) -> dict:
        """The record of ``predict --json``: ``{"file", "error"}``, or every answer's field (``withheld`` only when true)."""
        if self.error is not None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "predicted": self.predicted, "probabilities": self.probabilities, "ood_score": self.ood_score,
                "in_distribution": self.in_distribution, "warnings": self.warnings, "operating_point": self.operating_point,
                "positive": self.positive} | ({"withheld": True} if self.withheld else {})


@dataclass(frozen=True)
class Predictions:
    """What :func:`predict_files` returns: one :class:`Prediction` per file, in the order given (iterable, indexable), and ``shift``:
    the batch shift test's result as a dict (:meth:`cxrclf.guard.shift.ShiftResult.to_dict` with ``tested`` true), or
    ``{"tested": false, "images", "reason"}`` where it could not run. ``class_names``, ``has_guard`` and ``has_operating_point``
    describe the predictor that answered, and ``ensemble`` whether it averaged several networks (what a reader of the answers needs)."""
    records: tuple[Prediction, ...]
    shift: dict
    class_names: tuple[str, ...]
    has_guard: bool
    has_operating_point: bool
    ensemble: bool = False

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Prediction:
        return self.records[index]

    @property
    def failed(self) -> list[Prediction]:
        """The files that could not be classified."""
        return [r for r in self.records if r.error is not None]

    def to_list(self) -> list[dict]:
        """``predict --json``: one object per file."""
        return [r.to_dict() for r in self.records]


def collect_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given, and image files found recursively in folders (sorted)."""
    files: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise CxrclfError("folder holds no PNG, JPEG or DICOM files", item)
            files.extend(found)
        else:
            files.append(item)  # a missing or unreadable file is reported per file
    if not files:
        raise CxrclfError("no input images given")
    return files


def predict_files(predictor: Predictor, files: list[Path], batch_size: int = 16, workers: int = os.cpu_count() or 1,
                  withhold_flagged: bool = False) -> Predictions:
    """One :class:`Prediction` per file (its error where it could not be read), and the batch shift test of the images read.

    Each file goes through the run's own preprocessing; the readable ones are classified in
    batches of ``batch_size``. With ``withhold_flagged``, a flagged image gets no label.
    """
    decoded = _decoded(predictor, files, workers)
    good = [i for i, d in enumerate(decoded) if d.ok]
    records = [None if d.ok else Prediction(file=str(f), error=d.error) for f, d in zip(files, decoded)]
    if good:
        assessed = predictor.assess(np.stack([decoded[i].plane for i in good]), batch_size)
        flagged = predictor.flagged(assessed.scores)
        for row, index in enumerate(good):
            records[index] = _answer(predictor, str(files[index]), list(decoded[index].warnings), assessed.probabilities[row], assessed.scores[row],
                                     bool(flagged[row]), withhold_flagged)
        from cxrclf.guard.shift import MIN_IMAGES, check_batch

        reference = predictor.shift_reference() if len(good) >= MIN_IMAGES else None  # read only when a test will run
        shift = check_batch(assessed.features, reference)
    else:
        shift = {"tested": False, "images": 0, "reason": "no image could be read"}
    return Predictions(tuple(records), shift, tuple(predictor.class_names), has_guard=predictor.guard is not None,
                       has_operating_point=predictor.operating_point is not None, ensemble=predictor.member_count > 1)


def _answer(predictor: Predictor, file: str, input_warnings: list[str], values: np.ndarray, score: float, flagged: bool,
            withhold_flagged: bool) -> Prediction:
    """One image's :class:`Prediction` from its probabilities ``values``, guard ``score`` and flag: label, guard's verdict, positive classes."""
    warnings = list(input_warnings)
    if flagged:
        warnings.append(f"out of distribution: score {score:.2f} above the run's threshold {predictor.guard_threshold:.2f}")
    probabilities = {name: float(values[c]) for c, name in enumerate(predictor.class_names)}
    withheld = withhold_flagged and bool(warnings)
    point = predictor.operating_point
    return Prediction(
        file=file, predicted=None if withheld else predictor.class_names[int(values.argmax())], probabilities=probabilities,
        ood_score=None if np.isnan(score) else float(score), in_distribution=False if warnings else (None if predictor.guard is None else True),
        warnings=warnings, operating_point=None if point is None else dict(point.thresholds),
        positive=None if point is None or withheld else point.positive(probabilities), withheld=withheld,
    )


def _decoded(predictor: Predictor, files: list[Path], workers: int) -> list[Plane]:
    """Each file's model input plane and input checks' warnings, or its error (the run's own preprocessing)."""
    tasks = [PlaneTask(str(f), predictor.params.to_dict(), predictor.input_size, predictor.trained_views) for f in files]
    return map_images(plane_from_file, tasks, workers)


def shift_files(predictor: Predictor, files: list[Path], sources: list[str] | None = None, batch_size: int = 16, workers: int = os.cpu_count() or 1) -> dict:
    """``cxrclf shift``: are these images, as a batch, drawn from the run's validation data? (see :mod:`cxrclf.guard.shift`)

    The shift test's result (``tested`` true), plus ``unreadable``: ``[{"file", "error"}]``
    for files that could not be used. Needs a run with a reference and 2 readable images.
    """
    if predictor.shift_reference() is None:
        raise CxrclfError("this run stores no shift reference (trained before cxrclf stored one); train it again to test batches", predictor.run)
    predictor.shift_reference().select(sources)  # an unknown source is refused before any image is read
    decoded = _decoded(predictor, files, workers)
    unreadable = [{"file": str(f), "error": d.error} for f, d in zip(files, decoded) if not d.ok]
    planes = [d.plane for d in decoded if d.ok]
    if len(planes) < 2:
        raise CxrclfError(f"a shift test needs at least 2 readable images, got {len(planes)}" + (f"; first error: {unreadable[0]['file']}: {unreadable[0]['error']}" if unreadable else ""))
    _, features, _ = predictor.assess(np.stack(planes), batch_size)
    from cxrclf.guard.shift import check_batch

    return check_batch(features, predictor.shift_reference(), sources, minimum=2) | {"unreadable": unreadable}


def results_csv(results: Predictions) -> str:
    """predict's ``--csv``: one row per file, errors included; ``positive`` lists classes separated by ``;``."""
    class_names = results.class_names
    rows = []
    for r in results:
        probabilities, thresholds = r.probabilities or {}, r.operating_point or {}
        rows.append([r.file, r.predicted or "", *(probabilities.get(c, "") for c in class_names),
                     "" if r.positive is None else ";".join(r.positive), *(thresholds.get(c, "") for c in class_names), "" if r.ood_score is None else r.ood_score,
                     "" if r.in_distribution is None else str(r.in_distribution).lower(), "; ".join(r.warnings), r.error or ""])
    return io.csv_text(["file", "predicted", *(f"prob_{c}" for c in class_names), "positive", *(f"operating_point_{c}" for c in class_names),
                        "ood_score", "in_distribution", "warnings", "error"], rows)
