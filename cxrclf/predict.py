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


def predict_files(predictor, files: list[Path], batch_size: int = 16, workers: int = os.cpu_count() or 1) -> list[dict]:
    """One result per file: ``{"file", "predicted", "probabilities"}`` or ``{"file", "error"}``."""
    tasks = [(str(f), predictor.params.to_dict(), predictor.input_size) for f in files]
    planes = map_images(plane_from_file, tasks, workers)
    good = [i for i, p in enumerate(planes) if not isinstance(p, str)]
    probabilities = predictor.probabilities(np.stack([planes[i] for i in good]), batch_size) if good else np.zeros((0, 0))
    results: list[dict] = [{"file": str(f), "error": planes[i]} if isinstance(planes[i], str) else {} for i, f in enumerate(files)]
    for row, index in enumerate(good):
        values = probabilities[row]
        results[index] = {
            "file": str(files[index]),
            "predicted": predictor.class_names[int(values.argmax())],
            "probabilities": {name: float(values[c]) for c, name in enumerate(predictor.class_names)},
        }
    return results


def results_csv(results: list[dict], class_names: list[str]) -> str:
    """predict's ``--csv``: one row per file, errors included."""
    rows = []
    for r in results:
        probabilities = r.get("probabilities", {})
        rows.append([r["file"], r.get("predicted", ""), *(probabilities.get(c, "") for c in class_names), r.get("error", "")])
    return io.csv_text(["file", "predicted", *(f"prob_{c}" for c in class_names), "error"], rows)
