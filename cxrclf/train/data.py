"""Preprocessed images and labels for training and inference, held in memory as uint8.

Preprocessed images are grey (3 identical channels or 1); they are stored here as one
``uint8`` plane per image at the model's input size, and expanded to the model's channels
and normalised per batch. :func:`to_model_plane` is the one resize from a preprocessed image
to the network input, shared by training, evaluation, predict and explain.
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


def to_model_plane(image: np.ndarray, input_size: int) -> np.ndarray:
    """A preprocessed uint8 image (H, W[, C]) -> one (input_size, input_size) uint8 plane."""
    import cv2

    plane = image[..., 0] if image.ndim == 3 else image
    if plane.shape != (input_size, input_size):
        shrinking = plane.shape[0] > input_size
        plane = cv2.resize(plane, (input_size, input_size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(plane)


def model_input(planes, in_chans: int, mean, std):
    """(N, S, S) planes, uint8 or float in [0, 1], tensor on any device -> normalised (N, C, S, S).

    Grey is replicated to the model's channels; channels_last, as the models run fastest so.
    """
    import torch

    x = planes.float().div_(255.0) if planes.dtype == torch.uint8 else planes.float()
    x = x.unsqueeze(1).expand(-1, in_chans, -1, -1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


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


def select(frame: pd.DataFrame, split: str, fold: int | None = None) -> pd.DataFrame:
    """Rows of a split. With ``fold``, val is that fold and train is every other non-test fold."""
    if fold is None:
        return frame[frame["split"] == split]
    outside = frame[frame["split"] != "test"]
    if split == "test":
        return frame[frame["split"] == "test"]
    return outside[outside["fold"] == fold] if split == "val" else outside[outside["fold"] != fold]
