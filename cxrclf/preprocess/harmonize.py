"""Harmonised inputs: remove what only the archive explains, before any network sees it.

Each source of the fused data has its own look: the NLM copies are 128 px, Cohen's images
are figure JPEGs of any size, RSNA's are 1024 px DICOMs, and each archive has its own
windowing and contrast. A network reads those differences as easily as the disease, and
where a class comes from one archive alone it can learn the archive instead. These pure
transforms (float32 images in [0, 1] in and out) give every image the same look:

- :func:`reduce_detail`: one effective resolution, the coarsest source's (the image's
  short side brought down to ``detail_size``; the resize to the model size then brings it
  up again), so every image carries the same, lowest detail;
- :func:`clahe` or :func:`match_reference`: one intensity normalisation. Matching to the
  fixed reference histogram of :func:`reference_quantile` (defined here, learned from no
  source) is the default: its output does not depend on the archive's windowing or gamma
  at all (any increasing intensity mapping of the input gives the same output);
- :func:`deblock`: a light edge-preserving (bilateral) filter against JPEG's 8x8 blocks.

:func:`cxrclf.preprocess.pipeline.preprocess_stages` applies them where the parameters
(:class:`~cxrclf.preprocess.params.PreprocessParams`) say, so predict, evaluate and
explain re-apply them exactly as training saw them.
"""

from __future__ import annotations

import numpy as np

from cxrclf.choices import Intensity, parse

__all__ = [
    "CLAHE_CLIP", "CLAHE_GRID", "DEBLOCK_DIAMETER", "DEBLOCK_SIGMA_COLOR", "DEBLOCK_SIGMA_SPACE", "DETAIL_SIZE", "RECOMMENDED_INTENSITY",
    "clahe", "deblock", "harmonization", "match_reference", "normalize_intensity", "reduce_detail", "reference_quantile",
]

DETAIL_SIZE = 128  # the coarsest source's detail: the NLM copies that public repositories carry are 128 px on their short side
RECOMMENDED_INTENSITY = Intensity.match
CLAHE_CLIP = 2.0   # OpenCV's clip limit (a multiple of the mean bin count): the usual value for radiographs
CLAHE_GRID = 8     # tiles per side
# Deblocking: a bilateral filter smooths steps smaller than about DEBLOCK_SIGMA_COLOR of the
# intensity range (JPEG's block edges) over a few pixels, and keeps larger edges (ribs, the heart's border).
DEBLOCK_DIAMETER = 5
DEBLOCK_SIGMA_COLOR = 0.05
DEBLOCK_SIGMA_SPACE = 2.0


def reduce_detail(image: np.ndarray, detail_size: int) -> np.ndarray:
    """The image with its short side brought down to ``detail_size`` pixels (area averaging); smaller images and 0 leave it as is."""
    import cv2

    h, w = image.shape[:2]
    if not detail_size or min(h, w) <= detail_size:
        return image
    scale = detail_size / min(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def clahe(image: np.ndarray, clip_limit: float = CLAHE_CLIP, grid: int = CLAHE_GRID) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (OpenCV's, on 16 bits), float32 in [0, 1]."""
    import cv2

    levels = np.clip(np.rint(image * 65535.0), 0, 65535).astype(np.uint16)
    equalised = cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(int(grid), int(grid))).apply(levels)
    return equalised.astype(np.float32) / np.float32(65535.0)


def reference_quantile(q: np.ndarray) -> np.ndarray:
    """The reference histogram's quantile function: density 6x(1 - x) on [0, 1] (a Beta(2, 2)).

    Its distribution function is 3x^2 - 2x^3, whose inverse has the closed form below: a
    smooth, mid-grey histogram with no pure black or white, fixed in code so that no
    source's statistics define it.
    """
    return (0.5 - np.sin(np.arcsin(1.0 - 2.0 * np.asarray(q, dtype=np.float64)) / 3.0)).astype(np.float32)


def match_reference(image: np.ndarray) -> np.ndarray:
    """Histogram matching to :func:`reference_quantile`: each pixel goes to the reference quantile of its rank.

    Ranks are taken over 16-bit levels (a histogram of 65536 bins: linear time, and finer than
    the 8-bit output); equal levels share their mid-rank, so a flat region stays flat and the
    result depends only on the order of the intensities, not on their values.
    """
    levels = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 65535.0), 0, 65535).astype(np.int64)
    counts = np.bincount(levels.ravel(), minlength=65536)
    mid_rank = (np.cumsum(counts) - counts / 2.0) / levels.size
    return reference_quantile(mid_rank)[levels]


def normalize_intensity(image: np.ndarray, method: Intensity | str, clip_limit: float = CLAHE_CLIP, grid: int = CLAHE_GRID) -> np.ndarray:
    """The image through the chosen normalisation (``none`` returns it unchanged)."""
    method = parse(Intensity, method, "the intensity normalisation")
    if method is Intensity.clahe:
        return clahe(image, clip_limit, grid)
    return match_reference(image) if method is Intensity.match else image


def deblock(image: np.ndarray) -> np.ndarray:
    """A light bilateral filter: JPEG's block edges (small steps) smoothed, anatomical edges kept."""
    import cv2

    return cv2.bilateralFilter(np.ascontiguousarray(image, dtype=np.float32), DEBLOCK_DIAMETER, DEBLOCK_SIGMA_COLOR, DEBLOCK_SIGMA_SPACE)


def harmonization(harmonize: bool, detail_size: int | None = None, intensity: Intensity | str | None = None, deblock: bool = False) -> dict:
    """The harmonisation parameters (``detail_size``, ``intensity``, ``deblock``) for a choice of options.

    ``harmonize`` turns on the recommended set (the coarsest source's detail and histogram
    matching); a value given explicitly wins, so each step can be tuned or turned off alone.
    Without ``harmonize`` and without values, the paper's pipeline: nothing changes.
    """
    recommended_detail, recommended_intensity = (DETAIL_SIZE, RECOMMENDED_INTENSITY) if harmonize else (0, Intensity.none)
    chosen = parse(Intensity, recommended_intensity if intensity is None else intensity, "the intensity normalisation")
    return {"detail_size": recommended_detail if detail_size is None else detail_size, "intensity": chosen.value, "deblock": bool(deblock)}
