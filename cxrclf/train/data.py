"""Preprocessed images and labels for training and inference, held in memory as uint8.

Preprocessed images are grey (3 identical channels or 1); they are stored here as one
``uint8`` plane per image at the model's input size (:func:`cxrclf.models.inputs.to_model_plane`,
the resize that evaluation, predict and explain use too), and expanded to the model's
channels and normalised per batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrclf.data.manifest import manifest_path, read_manifest
from cxrclf.errors import CxrclfError
from cxrclf.labels import LabelScheme
from cxrclf.models.inputs import to_model_plane

__all__ = ["ImageSet", "load_images", "read_preprocessed"]


@dataclass
class ImageSet:
    planes: np.ndarray          # (N, S, S) uint8
    labels: np.ndarray          # (N,) int64, -1 where the finding is outside the scheme
    frame: pd.DataFrame         # the manifest rows, in the same order

    def __len__(self) -> int:
        return len(self.labels)


def read_preprocessed(folder: Path) -> tuple[pd.DataFrame, Path]:
    frame = read_manifest(folder)
    if "fused_path" not in frame.columns:
        raise CxrclfError("not a preprocessed folder (no fused_path column); run `cxrclf preprocess` first", manifest_path(folder))
    return frame, manifest_path(folder).parent


def _available_memory() -> int | None:
    """MemAvailable (free memory plus reclaimable cache) in bytes, where the system tells it."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def load_images(frame: pd.DataFrame, root: Path, scheme: LabelScheme, input_size: int) -> ImageSet:
    """Decode every row's preprocessed PNG once, at the model's input size, into memory."""
    import cv2

    needed = len(frame) * input_size * input_size
    available = _available_memory()
    if available is not None and needed > available // 2:
        raise CxrclfError(f"{len(frame)} images at {input_size} px need {needed / 2**30:.1f} GiB in memory, more than half of the "
                          f"{available / 2**30:.1f} GiB available; use a smaller --image-size or a machine with more memory", root)
    planes = np.empty((len(frame), input_size, input_size), dtype=np.uint8)
    for index, relative in enumerate(frame["path"]):
        image = cv2.imread(str(root / relative), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise CxrclfError("cannot read preprocessed image (re-run `cxrclf preprocess`)", root / relative)
        planes[index] = to_model_plane(image, input_size)
    labels = np.array([scheme.classes.index(scheme.finding_to_class[f]) if f in scheme.finding_to_class else -1 for f in frame["finding"]], dtype=np.int64)
    return ImageSet(planes, labels, frame.reset_index(drop=True))
