"""``cxrclf predict``: classify PNG, JPEG and DICOM files (and folders) with a trained run.

Each file is decoded, put through the run's own preprocessing (``preprocess_image`` with the
parameters in its config.json) and classified in batches by :class:`cxrclf.inference.Predictor`.
A file that cannot be read is reported and the rest are still classified.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxrclf import io
from cxrclf.data.imageio import IMAGE_SUFFIXES
from cxrclf.errors import CxrclfError
from cxrclf.planes import plane_from_file  # torch-free: predict runs on the onnxruntime backend without PyTorch
from cxrclf.parallel import map_images

__all__ = ["Predictions", "collect_inputs", "predict_files", "results_csv", "shift_files"]


class Predictions(list):
    """What :func:`predict_files` returns: the per-file records, a list as ever, and ``shift``: the batch
    shift test's result as a dict (:meth:`cxrclf.guard.shift.ShiftResult.to_dict` with ``tested`` true),
    or ``{"tested": false, "images", "reason"}`` where it could not run."""

    def __init__(self, records: list[dict], shift: dict | None = None):
        super().__init__(records)
        self.shift = shift


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


def predict_files(predictor, files: list[Path], batch_size: int = 16, workers: int = os.cpu_count() or 1, withhold_flagged: bool = False) -> Predictions:
    """One result per file: ``{"file", "predicted", "probabilities", "ood_score", "in_distribution", "warnings", "operating_point",
    "positive"}`` or ``{"file", "error"}``; and the batch shift test of the images read (``.shift``, see :class:`Predictions`).

    ``warnings`` lists the input checks' reasons and, where the run has a guard and the
    image's score is above its threshold, that one. ``in_distribution`` is False with any
    warning, True when the guard passes the image, and None when the run has no guard and no
    rule objected. With ``withhold_flagged``, a flagged image's ``predicted`` is None
    (``withheld`` True): the probabilities are still given, for the record. ``operating_point`` is
    the run's per-class thresholds (None for a run or fold ensemble without them) and
    ``positive`` the classes whose probability is at or above their threshold (None without
    thresholds or when withheld); ``predicted`` stays the argmax.
    """
    decoded = _decoded(predictor, files, workers)
    good = [i for i, d in enumerate(decoded) if "plane" in d]
    results: list[dict] = [{"file": str(f), "error": d["error"]} if "error" in d else {} for f, d in zip(files, decoded)]
    if not good:
        return Predictions(results, {"tested": False, "images": 0, "reason": "no image could be read"})
    probabilities, features, scores = predictor.assess(np.stack([decoded[i]["plane"] for i in good]), batch_size)
    point = predictor.operating_point
    flagged = predictor.flagged(scores)
    for row, index in enumerate(good):
        values = probabilities[row]
        warnings = list(decoded[index]["warnings"])
        if flagged[row]:
            warnings.append(f"out of distribution: score {scores[row]:.2f} above the run's threshold {predictor.guard_threshold:.2f}")
        in_distribution = False if warnings else (None if predictor.guard is None else True)
        predicted = predictor.class_names[int(values.argmax())]
        probabilities_of = {name: float(values[c]) for c, name in enumerate(predictor.class_names)}
        withheld = withhold_flagged and bool(warnings)
        results[index] = {
            "file": str(files[index]),
            "predicted": None if withheld else predicted,
            "probabilities": probabilities_of,
            "ood_score": None if np.isnan(scores[row]) else float(scores[row]),
            "in_distribution": in_distribution,
            "warnings": warnings,
            "operating_point": None if point is None else dict(point.thresholds),
            "positive": None if point is None or withheld else point.positive(probabilities_of),
        } | ({"withheld": True} if withheld else {})
    from cxrclf.guard.shift import MIN_IMAGES, check_batch

    reference = predictor.shift_reference() if len(good) >= MIN_IMAGES else None  # read only when a test will run
    return Predictions(results, check_batch(features, reference))


def _decoded(predictor, files: list[Path], workers: int) -> list[dict]:
    """Each file's model input plane and input checks' warnings, or its error (the run's own preprocessing)."""
    tasks = [(str(f), predictor.params.to_dict(), predictor.input_size, predictor.trained_views) for f in files]
    return map_images(plane_from_file, tasks, workers)


def shift_files(predictor, files: list[Path], sources: list[str] | None = None, batch_size: int = 16, workers: int = os.cpu_count() or 1) -> dict:
    """``cxrclf shift``: are these images, as a batch, drawn from the run's validation data? (see :mod:`cxrclf.guard.shift`)

    The shift test's result (``tested`` true), plus ``unreadable``: ``[{"file", "error"}]``
    for files that could not be used. Needs a run with a reference and 2 readable images.
    """
    if predictor.shift_reference() is None:
        raise CxrclfError("this run stores no shift reference (trained before cxrclf stored one); train it again to test batches", predictor.run)
    predictor.shift_reference().select(sources)  # an unknown source is refused before any image is read
    decoded = _decoded(predictor, files, workers)
    unreadable = [{"file": str(f), "error": d["error"]} for f, d in zip(files, decoded) if "error" in d]
    planes = [d["plane"] for d in decoded if "plane" in d]
    if len(planes) < 2:
        raise CxrclfError(f"a shift test needs at least 2 readable images, got {len(planes)}" + (f"; first error: {unreadable[0]['file']}: {unreadable[0]['error']}" if unreadable else ""))
    _, features, _ = predictor.assess(np.stack(planes), batch_size)
    from cxrclf.guard.shift import check_batch

    return check_batch(features, predictor.shift_reference(), sources, minimum=2) | {"unreadable": unreadable}


def results_csv(results: list[dict], class_names: list[str]) -> str:
    """predict's ``--csv``: one row per file, errors included; ``positive`` lists classes separated by ``;``."""
    rows = []
    for r in results:
        probabilities = r.get("probabilities", {})
        score = r.get("ood_score")
        in_distribution = r.get("in_distribution")
        thresholds, positive = r.get("operating_point") or {}, r.get("positive")
        rows.append([r["file"], r.get("predicted") or "", *(probabilities.get(c, "") for c in class_names),
                     "" if positive is None else ";".join(positive), *(thresholds.get(c, "") for c in class_names), "" if score is None else score,
                     "" if in_distribution is None else str(in_distribution).lower(), "; ".join(r.get("warnings", [])), r.get("error", "")])
    return io.csv_text(["file", "predicted", *(f"prob_{c}" for c in class_names), "positive", *(f"operating_point_{c}" for c in class_names),
                        "ood_score", "in_distribution", "warnings", "error"], rows)
