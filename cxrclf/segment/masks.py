"""Lung masks as arrays: from the network's probabilities, compared (Dice, IoU), drawn and encoded.

Pure functions on arrays; only :func:`encode_mask` and :func:`encode_overlay` produce file bytes,
which the callers write through :mod:`cxrclf.io`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dice", "encode_mask", "encode_overlay", "iou", "mask_from_probabilities", "overlay"]

# Components smaller than this share of the largest are dropped: stray specks, not a lung.
MIN_COMPONENT_SHARE = 0.2


def mask_from_probabilities(probabilities: np.ndarray, shape: tuple[int, int], threshold: float = 0.5, keep: int = 2) -> np.ndarray:
    """The lung mask (bool, ``shape``) from the network's probability map (any size).

    The map is resized (bilinear) to ``shape`` and thresholded; of the connected regions the
    ``keep`` largest are kept (two lungs) when at least :data:`MIN_COMPONENT_SHARE` of the
    largest, and holes inside them are filled.
    """
    import cv2

    probabilities = np.asarray(probabilities, np.float32)
    height, width = int(shape[0]), int(shape[1])
    if probabilities.shape != (height, width):
        probabilities = cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR)
    binary = (probabilities > threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return np.zeros((height, width), bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas)[:keep]
    chosen = [int(i) + 1 for i in order if areas[i] >= MIN_COMPONENT_SHARE * areas[order[0]]]
    mask = np.isin(labels, chosen)
    # fill holes: background not connected to the border is lung
    background = (~mask).astype(np.uint8)
    flood = np.pad(background, 1, constant_values=1)
    cv2.floodFill(flood, None, (0, 0), 2)
    return mask | (flood[1:-1, 1:-1] == 1)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """2 |A and B| / (|A| + |B|); 1 when both are empty."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    total = int(predicted.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((predicted & truth).sum()) / total


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """|A and B| / |A or B|; 1 when both are empty."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    union = int((predicted | truth).sum())
    return 1.0 if union == 0 else int((predicted & truth).sum()) / union


def overlay(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (0, 200, 90)) -> np.ndarray:
    """RGB uint8: the grey image, the lungs tinted and outlined."""
    import cv2

    from cxrclf.data.imageio import to_uint8

    grey = to_uint8(np.asarray(image)) if np.asarray(image).dtype != np.float32 else np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    tint = np.array(colour, np.float32)
    rgb[mask] = 0.65 * rgb[mask] + 0.35 * tint
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    cv2.drawContours(out, contours, -1, (255, 220, 0), max(1, round(max(mask.shape) / 300)))
    return out


def encode_mask(mask: np.ndarray) -> bytes:
    """A 0/255 PNG, the layout of the NLM masks."""
    from cxrclf.data.imageio import encode_png

    return encode_png(np.asarray(mask, bool).astype(np.uint8) * 255)


def encode_overlay(rgb: np.ndarray) -> bytes:
    from cxrclf.data.imageio import encode_png

    return encode_png(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV writes BGR
