"""``preprocess_image``: the one function that turns any decoded X-ray into model input.

The batch command, ``predict``, ``explain`` and ``evaluate`` on external data all call it,
with parameters read from the data folder or the run. Order of stages:

1. intensities to float32 in [0, 1];
2. downscale (area) to at most ``work_size`` on the long side, so 4000-pixel 16-bit inputs
   cost little memory while letters and arrows are still thin strokes; with ``deblock``, a
   light bilateral filter against JPEG's blocks (:mod:`cxrclf.preprocess.harmonize`);
3. text and marker removal (Eq. 4 threshold mask, refined, then inpainting); with
   ``detail_size``, the short side then brought down to that detail (the coarsest source's),
   after the text is gone and before the lungs are looked for, so that the segmenter, too,
   sees every source at one detail;
4. the lung step, when ``lung`` is ``crop`` or ``mask``: the segmenter the caller hands in (the
   one the parameters name, :func:`cxrclf.segment.run.segmenter_for`) finds the lung fields,
   and the image is cropped to them or greyed outside them
   (:mod:`cxrclf.preprocess.lung`); an image without a pair of lung fields raises
   :class:`~cxrclf.preprocess.lung.NoLungsFound` (``preprocess`` lists it as skipped,
   ``predict`` as that file's error);
5. resize to ``size`` (stretch, or pad to keep the aspect ratio), then, with ``intensity``,
   one intensity normalisation (CLAHE, or matching a fixed reference histogram) at the size
   the network sees;
6. adaptive TV denoising (Eq. 5) at the output size, where it is cheap and where the
   network sees the pixels, its weight chosen per image by default;
7. uint8, replicated to 3 channels or kept as 1.
"""

from __future__ import annotations

import numpy as np

from cxrclf.choices import Denoise, Fit, Intensity, parse
from cxrclf.preprocess.artifacts import remove_text
from cxrclf.preprocess.harmonize import deblock, normalize_intensity, reduce_detail
from cxrclf.preprocess.lung import LungSegmenter, apply_lungs
from cxrclf.preprocess.params import PreprocessParams
from cxrclf.preprocess.tv import as_unit_float32, denoise_tv


def _shrink(image: np.ndarray, longest: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    if max(h, w) <= longest:
        return image
    scale = longest / max(h, w)
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def resize(image: np.ndarray, size: int, fit: Fit | str) -> np.ndarray:
    """Square ``size`` x ``size``: stretch (the paper), or pad the short side with black."""
    import cv2

    h, w = image.shape[:2]
    if parse(Fit, fit, "fit") is Fit.pad:
        side = max(h, w)
        canvas = np.zeros((side, side), dtype=image.dtype)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = image
        image = canvas
    shrinking = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def preprocess_stages(image: np.ndarray, params: PreprocessParams, segmenter: LungSegmenter | None = None) -> dict[str, np.ndarray]:
    """Every stage's output (for figures); ``["final"]`` is :func:`preprocess_image`'s result.

    ``segmenter`` finds the lung fields when the lung step is on (preprocessing is handed one, never
    loads one); then ``["lung mask"]`` is its mask of the text-free image and ``["lungs"]`` the
    cropped or greyed image.
    """
    stages: dict[str, np.ndarray] = {}
    plane = image[..., :3].mean(axis=2).astype(image.dtype) if image.ndim == 3 else image
    unit = _shrink(as_unit_float32(plane), params.work_size)
    stages["input"] = unit
    if params.deblock:
        unit = stages["deblocked"] = deblock(unit)
    cleaned = remove_text(unit, threshold=params.text_threshold, method=params.inpaint, radius=params.inpaint_radius) if params.remove_text else unit
    stages["text removed"] = cleaned
    if params.detail_size:
        cleaned = stages["detail reduced"] = reduce_detail(cleaned, params.detail_size)
    if params.uses_lungs:
        if segmenter is None:
            raise ValueError(f"the lung step {params.lung} needs the segmenter its parameters name: cxrclf.segment.run.segmenter_for(params)")
        mask = segmenter.mask(cleaned)
        stages["lung mask"] = mask
        cleaned = apply_lungs(cleaned, mask, params.lung, params.lung_margin)
        stages["lungs"] = cleaned
    resized = resize(cleaned, params.size, params.fit)
    stages["resized"] = resized
    if params.intensity is not Intensity.none:
        resized = stages["intensity"] = normalize_intensity(resized, params.intensity, params.clahe_clip, params.clahe_grid)
    if params.denoise is Denoise.adaptive_tv:
        resized = denoise_tv(resized, weight=params.tv_weight, k=params.tv_k, sigma=params.tv_sigma, iterations=params.tv_iterations)
    stages["denoised"] = resized
    final = np.clip(np.rint(resized * 255.0), 0, 255).astype(np.uint8)
    stages["final"] = np.repeat(final[..., None], 3, axis=2) if params.channels == 3 else final[..., None]
    return stages


def preprocess_image(image: np.ndarray, params: PreprocessParams, segmenter: LungSegmenter | None = None) -> np.ndarray:
    """A decoded X-ray (2-D uint8/uint16/float) -> ``size`` x ``size`` x ``channels`` uint8."""
    return preprocess_stages(image, params, segmenter)["final"]
