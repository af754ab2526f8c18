"""``cxrclf explain``: why a run classifies one image as it does (LIME or Grad-CAM)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from cxrclf import io
from cxrclf.choices import ExplainMethod, parse
from cxrclf.data.imageio import decode
from cxrclf.errors import CxrclfError

__all__ = ["DEFAULT_FOLDER", "default_out", "explain_image", "positive_fraction_inside"]

DEFAULT_FOLDER = Path("explanations")


def default_out(image_path: Path, method: ExplainMethod | str) -> Path:
    """``explanations/<image stem>.<method>.png``: a folder of its own, never beside the user's files."""
    return DEFAULT_FOLDER / f"{Path(image_path).stem}.{parse(ExplainMethod, method, 'method').value}.png"


def explain_image(predictor, image_path: Path, method: ExplainMethod | str = ExplainMethod.lime, target: str | None = None, num_samples: int = 1000,
                  seed: int = 0, out: Path | None = None, overwrite: bool = False, lung_model: Path | None = None,
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the explanation PNG; return probabilities, the explained class, the top regions and the in-lung share.

    ``progress(done, total)`` follows LIME's perturbed images as the model scores them (Grad-CAM is one pass).

    ``in_lung_share``: the share of the positive attribution inside the lung fields of the
    model's input, found by ``lung_model`` (a segmentation run or ``builtin``), else by the
    segmenter of the run's own preprocessing, else by the built-in one; None when no
    attribution is positive (:mod:`cxrclf.segment.attention`). ``warnings`` holds the input
    checks' reasons, those from the lungs (:mod:`cxrclf.guard.lungs`) included.
    """
    from cxrclf.explain import cam, lime, overlay

    method = parse(ExplainMethod, method, "method")
    if target is not None and target not in predictor.class_names:
        raise CxrclfError(f"target {target!r} is not a class of this run ({', '.join(predictor.class_names)})")
    if num_samples < 10:
        raise CxrclfError("LIME needs at least 10 samples")
    image_path = Path(image_path)
    out = Path(out) if out else default_out(image_path, method)
    io.check_output_file(out, [image_path, *predictor.folder.reads(), lung_model], suffix=".png", overwrite=overwrite)
    from cxrclf.guard.checks import input_warnings

    from cxrclf.guard.lungs import lung_warnings

    decoded = decode(image_path)
    warnings = input_warnings(decoded.pixels, decoded.info, trained_views=predictor.trained_views) + lung_warnings(decoded.pixels)
    try:
        plane = predictor.plane_from_decoded(decoded.pixels)
    except CxrclfError as exc:  # e.g. a run that crops to the lungs, and no lungs in this image
        raise CxrclfError(exc.reason, exc.path or image_path) from exc
    probabilities, _, scores = predictor.assess(plane[None])
    probabilities, score = probabilities[0], float(scores[0])
    if predictor.flagged(scores)[0]:
        warnings.append(f"out of distribution: score {score:.2f} above the run's threshold {predictor.guard_threshold:.2f}")
    predicted = predictor.class_names[int(probabilities.argmax())]
    target = target or predicted
    target_index = predictor.class_names.index(target)
    if method is ExplainMethod.lime:
        segments, weights = lime.explain_lime(predictor, plane, target_index, num_samples, seed, progress=progress)
        attribution = lime.weight_map(segments, weights)
        regions = lime.top_regions(segments, weights)
        picture = overlay.lime_overlay(plane, segments, weights)
        subtitle = f"LIME, {target}: green for, red against (top 5)"
    else:
        # a fold ensemble: the folds' maps averaged, as their probabilities are
        attribution = np.mean([cam.grad_cam(member, plane, target_index) for member in getattr(predictor, "members", [predictor])], axis=0)
        regions = cam.top_regions(attribution)
        picture = overlay.cam_overlay(plane, attribution)
        subtitle = f"Grad-CAM for {target}"
    from cxrclf.segment.attention import lung_share_on_figure

    picture, subtitle, lung = lung_share_on_figure(predictor, plane, attribution, picture, subtitle, lung_model)
    title = f"{image_path.name}: predicted {predicted} | " + ", ".join(f"{n} {p:.3f}" for n, p in zip(predictor.class_names, probabilities))
    overlay.write(out, plane, picture, title, subtitle, colorbar=None if method is ExplainMethod.lime else "Grad-CAM (scaled to 0-1)")
    return {
        "file": str(image_path), "method": method.value, "target": target, "predicted": predicted,
        "probabilities": {n: float(p) for n, p in zip(predictor.class_names, probabilities)},
        "regions": regions, "out": str(out), "attribution": attribution,
        "ood_score": None if math.isnan(score) else score, "in_distribution": False if warnings else (None if predictor.guard is None else True),
        "warnings": warnings, **lung,
    }


def positive_fraction_inside(attribution: np.ndarray, region: np.ndarray) -> float:
    """Share of the positive attribution mass that falls inside ``region`` (a boolean mask)."""
    positive = np.clip(attribution, 0, None)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else 0.0
