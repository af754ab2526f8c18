"""Burned-in text and marker removal: the paper's Eq. 4 threshold mask, then inpainting.

Eq. 4 marks the pixels at or above a threshold. On its own that also takes the spine, bone,
implants and any bright region, so :func:`text_mask` keeps only bright pixels that are
also *thin*: a white top-hat (the image minus its morphological opening by a square a few
stroke widths wide) is large on letters, digits, arrows and markers and near zero on
anything wider than the square. :func:`remove_text` fills the mask by OpenCV inpainting.

Both work at the image's own resolution, in its own dtype (uint8, uint16 or float32; float64
is processed as float32), without full-size float64 copies.
"""

from __future__ import annotations

import cv2
import numpy as np

from cxrclf.choices import Inpaint

INPAINT_METHODS = {Inpaint.telea: cv2.INPAINT_TELEA, Inpaint.ns: cv2.INPAINT_NS}

# Defaults, measured (see text_mask); PreprocessParams takes its defaults from here.
TEXT_THRESHOLD = 0.85
INPAINT_RADIUS = 3.0

# Blur (px) before the top-hat. Unblurred, noise peaks stand out from the opening (a local
# minimum, biased low by noise, the more so with the wide squares of large images): on 1024 px
# phantoms 20% of the mask fell on the noisy spine. 0.6 px removes that and keeps 2-px strokes
# (1 px blurs away the phantoms' 256-px text: error reduction fell from 0.87 to 0.55).
NOISE_BLUR_SIGMA = 0.6


def default_stroke_width(shape: tuple[int, ...]) -> int:
    """The widest stroke treated as text when none is given: 1% of the shorter side, at least 3 px."""
    return max(3, int(round(min(shape[:2]) / 100)))


def text_mask(
    image: np.ndarray,
    threshold: float = TEXT_THRESHOLD,
    contrast: float = 0.2,
    max_stroke_width: int | None = None,
    grow: int = 1,
) -> np.ndarray:
    """Where bright burned-in text, dates, arrows and markers are; bool, same shape.

    A pixel (after a 0.6 px blur against noise) is a text seed when it is at or above
    ``threshold`` (Eq. 4) and stands out from its opening by at least ``contrast``; both
    are fractions of the image's own intensity range (min to max), so uint8, uint16 and
    float images behave alike.
    The opening uses a square of side ``2 * max_stroke_width + 1`` px (default:
    :func:`default_stroke_width`), so strokes up to ``max_stroke_width`` px wide are taken
    and wider structures (spine, bone, implants, the body) are left alone. Isolated seed
    pixels (noise peaks) are dropped; the seeds then grow ``max_stroke_width`` steps into
    their anti-aliased fringe (top-hat at least half of ``contrast``) and are finally
    dilated by ``grow`` px so that inpainting starts from untouched pixels.

    Why these defaults: ``threshold`` 0.85, not lower, because a lower one also takes the
    clavicle and rib cortex of large real radiographs (the price: grey letters, about 0.8 of
    the range, stay); ``contrast`` 0.2, between a higher value that misses arrow heads over
    the spine and a lower one that spreads the mask onto noise. The measurements behind them
    are in docs/performance.md, "cxrclf preprocess".
    """
    pixels = _as_supported(image)
    if not 0.0 <= threshold <= 1.0 or not 0.0 < contrast <= 1.0:
        raise ValueError(f"expected threshold in [0, 1] and contrast in (0, 1]; got threshold={threshold}, contrast={contrast}")
    stroke = default_stroke_width(pixels.shape) if max_stroke_width is None else int(max_stroke_width)
    if stroke < 1 or grow < 0:
        raise ValueError(f"expected max_stroke_width >= 1 and grow >= 0; got {max_stroke_width} and {grow}")
    low, high = float(pixels.min()), float(pixels.max())
    if not high > low:
        return np.zeros(pixels.shape, bool)
    span = high - low
    seeds, fringe = _seeds_and_fringe(pixels, low + threshold * span, contrast * span, stroke)
    seeds = _grow_into(seeds, fringe, stroke)
    if grow > 0:
        seeds = cv2.dilate(seeds, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return seeds.view(bool)


def _seeds_and_fringe(pixels: np.ndarray, level: float, contrast: float, stroke: int) -> tuple[np.ndarray, np.ndarray]:
    """Text seeds (bright, thin, not isolated) and the fringe they may grow into, as uint8 0/1 masks.

    ``level`` and ``contrast`` are in the image's own units; ``stroke`` sets the top-hat's square.
    """
    smooth = cv2.GaussianBlur(pixels, (0, 0), NOISE_BLUR_SIGMA, borderType=cv2.BORDER_REPLICATE)
    square = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * stroke + 1, 2 * stroke + 1))
    # top-hat >= 0 everywhere (opening <= image), so uint8/uint16 do not wrap around
    residue = cv2.morphologyEx(smooth, cv2.MORPH_TOPHAT, square, borderType=cv2.BORDER_REPLICATE)
    seeds = (smooth >= _level(pixels, level)) & (residue >= _level(pixels, contrast))
    del smooth
    seeds = seeds.view(np.uint8)

    # a stroke pixel has at least two seed neighbours in its 3 x 3 window; a noise peak does not
    neighbours = cv2.boxFilter(seeds, cv2.CV_8U, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
    seeds &= neighbours >= 3
    fringe = (residue >= _level(pixels, 0.5 * contrast)).view(np.uint8)
    return seeds, fringe


def _grow_into(seeds: np.ndarray, fringe: np.ndarray, steps: int) -> np.ndarray:
    """``seeds`` grown at most ``steps`` 4-connected steps inside ``fringe`` (the strokes' anti-aliased edge)."""
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    for _ in range(steps):
        grown = cv2.dilate(seeds, cross)
        grown &= fringe
        grown |= seeds
        if np.array_equal(grown, seeds):
            break
        seeds = grown
    return seeds


def remove_text(
    image: np.ndarray,
    threshold: float = TEXT_THRESHOLD,
    method: Inpaint | str = Inpaint.telea,
    radius: float = INPAINT_RADIUS,
    contrast: float = 0.2,
    max_stroke_width: int | None = None,
    grow: int = 1,
) -> np.ndarray:
    """``image`` with its :func:`text_mask` filled by OpenCV inpainting (``telea`` or ``ns``).

    Same shape, dtype and range as ``image``; pixels outside the mask are unchanged.
    ``radius`` is the inpainting neighbourhood in px.
    """
    try:
        method = Inpaint(method)
    except ValueError:
        raise ValueError(f"unknown inpainting method {method!r}; expected one of {', '.join(INPAINT_METHODS)}") from None
    image = np.asarray(image)
    pixels = _as_supported(image)
    mask = text_mask(pixels, threshold=threshold, contrast=contrast, max_stroke_width=max_stroke_width, grow=grow)
    if not mask.any():
        return image.copy()
    if pixels.dtype == np.float32:
        # OpenCV's Telea inpainting of float images has an absolute error of a few units,
        # ruinous on [0, 1] data: inpaint on the intensity range stretched to [0, 65535].
        low, high = float(pixels.min()), float(pixels.max())
        stretch = 65535.0 / (high - low)
        filled = cv2.inpaint((pixels - np.float32(low)) * np.float32(stretch), mask.view(np.uint8), float(radius), INPAINT_METHODS[method])
        filled = filled[mask] / np.float32(stretch) + np.float32(low)
    else:
        filled = cv2.inpaint(pixels, mask.view(np.uint8), float(radius), INPAINT_METHODS[method])[mask]
    out = image.copy()
    out[mask] = filled
    return out


def _as_supported(image: np.ndarray) -> np.ndarray:
    """``image`` in a dtype OpenCV morphology and inpainting accept (float64 -> float32)."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {image.shape}")
    if image.dtype in (np.uint8, np.uint16, np.float32):
        return image
    if image.dtype == np.float64:
        return image.astype(np.float32)
    raise ValueError(f"expected a uint8, uint16, float32 or float64 image, got dtype {image.dtype}")


def _level(pixels: np.ndarray, value: float):
    """``value`` as a comparison level in the pixels' dtype (integers round up: 'at or above')."""
    if pixels.dtype.kind == "u":
        return pixels.dtype.type(min(np.iinfo(pixels.dtype).max, int(np.ceil(value - 1e-9))))
    return pixels.dtype.type(value)
