"""The segmenter's input plane, without PyTorch: what every consumer of a lung segmenter hands the network.

:func:`segmenter_plane` is the plane a segmenter is trained and run on: the grey image resized
to the network's input side and stretched between its 1st and 99th percentiles, so that
radiographs windowed differently (DICOM, PNG figures, 16-bit) look alike to it.
:func:`lung_plane` is the plane the input checks read (the lung checks and the view check's
lungs' box): the same, with a large film shrunk first in its own integer type.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STRETCH_PERCENTILES", "lung_plane", "segmenter_plane", "shrunk"]

STRETCH_PERCENTILES = (1.0, 99.0)


def segmenter_plane(image: np.ndarray, size: int) -> np.ndarray:
    """A decoded X-ray (2-D or (H, W, C), any dtype the pipeline accepts) -> float32 (size, size) in [0, 1]."""
    import cv2

    from cxrclf.preprocess.tv import as_unit_float32

    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2).astype(np.float32) / (np.iinfo(image.dtype).max if image.dtype.kind == "u" else 1.0)
    unit = as_unit_float32(image)
    shrinking = unit.shape[0] > size or unit.shape[1] > size
    small = cv2.resize(unit, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    low, high = np.percentile(small, STRETCH_PERCENTILES)
    if high - low < 1e-6:
        return np.zeros_like(small)
    return np.clip((small - np.float32(low)) * np.float32(1.0 / (high - low)), 0.0, 1.0)


def shrunk(pixels: np.ndarray, size: int) -> np.ndarray:
    """``pixels`` resized to ``size`` x ``size`` in their own integer type, as :func:`segmenter_plane` would resize them in float.

    A 3000-pixel film turned into float32 before shrinking costs more than the network
    (docs/performance.md, "Lung-based input checks"); shrunk first, the plane differs by the
    rounding of the averaged grey levels (at most half a level), which the checks cannot see.
    """
    import cv2

    pixels = np.asarray(pixels)
    if pixels.dtype not in (np.uint8, np.uint16) or max(pixels.shape[:2]) <= size or pixels.ndim not in (2, 3):
        return pixels
    return cv2.resize(np.ascontiguousarray(pixels[..., :3] if pixels.ndim == 3 else pixels), (size, size), interpolation=cv2.INTER_AREA)


def lung_plane(pixels: np.ndarray, size: int) -> np.ndarray:
    """The plane the input checks hand the segmenter: :func:`segmenter_plane` of the :func:`shrunk` image."""
    return segmenter_plane(shrunk(pixels, size), size)
