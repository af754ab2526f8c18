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
from cxrclf.inference import plane_from_file
from cxrclf.parallel import map_images

__all__ = ["collect_inputs", "predict_files", "results_csv"]


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


def predict_files(predictor, files: list[Path], batch_size: int = 16, workers: int = os.cpu_count() or 1, withhold_flagged: bool = False) -> list[dict]:
    """One result per file: ``{"file", "predicted", "probabilities", "ood_score", "in_distribution", "warnings"}`` or ``{"file", "error"}``.

    ``warnings`` lists the input checks' reasons and, where the run has a guard and the
    image's score is above its threshold, that one. ``in_distribution`` is False with any
    warning, True when the guard passes the image, and None when the run has no guard and no
    rule objected. With ``withhold_flagged``, a flagged image's ``predicted`` is None
    (``withheld`` True): the probabilities are still given, for the record.
    """
    tasks = [(str(f), predictor.params.to_dict(), predictor.input_size) for f in files]
    decoded = map_images(plane_from_file, tasks, workers)
    good = [i for i, d in enumerate(decoded) if "plane" in d]
    results: list[dict] = [{"file": str(f), "error": d["error"]} if "error" in d else {} for f, d in zip(files, decoded)]
    if not good:
        return results
    probabilities, _, scores = predictor.assess(np.stack([decoded[i]["plane"] for i in good]), batch_size)
    flagged = predictor.flagged(scores)
    for row, index in enumerate(good):
        values = probabilities[row]
        warnings = list(decoded[index]["warnings"])
        if flagged[row]:
            warnings.append(f"out of distribution: score {scores[row]:.2f} above the run's threshold {predictor.guard_threshold:.2f}")
        in_distribution = False if warnings else (None if predictor.guard is None else True)
        predicted = predictor.class_names[int(values.argmax())]
        withheld = withhold_flagged and bool(warnings)
        results[index] = {
            "file": str(files[index]),
            "predicted": None if withheld else predicted,
            "probabilities": {name: float(values[c]) for c, name in enumerate(predictor.class_names)},
            "ood_score": None if np.isnan(scores[row]) else float(scores[row]),
            "in_distribution": in_distribution,
            "warnings": warnings,
        } | ({"withheld": True} if withheld else {})
    return results


def results_csv(results: list[dict], class_names: list[str]) -> str:
    """predict's ``--csv``: one row per file, errors included."""
    rows = []
    for r in results:
        probabilities = r.get("probabilities", {})
        score = r.get("ood_score")
        in_distribution = r.get("in_distribution")
        rows.append([r["file"], r.get("predicted") or "", *(probabilities.get(c, "") for c in class_names), "" if score is None else score,
                     "" if in_distribution is None else str(in_distribution).lower(), "; ".join(r.get("warnings", [])), r.get("error", "")])
    return io.csv_text(["file", "predicted", *(f"prob_{c}" for c in class_names), "ood_score", "in_distribution", "warnings", "error"], rows)
