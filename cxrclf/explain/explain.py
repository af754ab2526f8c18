"""``cxrclf explain``: why a run classifies one image as it does (LIME or Grad-CAM)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrclf.data.imageio import read_image
from cxrclf.errors import CxrclfError

METHODS = ("lime", "gradcam")


def explain_image(predictor, image_path: Path, method: str = "lime", target: str | None = None, num_samples: int = 1000,
                  seed: int = 0, out: Path | None = None) -> dict:
    """Write the explanation PNG; return probabilities, the explained class and the top regions."""
    from cxrclf.explain import cam, lime, overlay

    if method not in METHODS:
        raise CxrclfError(f"--method must be lime or gradcam, not {method!r}")
    if target is not None and target not in predictor.class_names:
        raise CxrclfError(f"--target {target!r} is not a class of this run ({', '.join(predictor.class_names)})")
    if num_samples < 10:
        raise CxrclfError("--num-samples must be at least 10")
    image_path = Path(image_path)
    out = Path(out) if out else Path(f"{image_path.stem}.{method}.png")
    if out.suffix.lower() != ".png":
        raise CxrclfError("explanation output must be a .png file", out)
    plane = predictor.plane_from_decoded(read_image(image_path))
    probabilities = predictor.probabilities(plane[None])[0]
    predicted = predictor.class_names[int(probabilities.argmax())]
    target = target or predicted
    target_index = predictor.class_names.index(target)
    if method == "lime":
        segments, weights = lime.explain_lime(predictor, plane, target_index, num_samples, seed)
        attribution = lime.weight_map(segments, weights)
        regions = lime.top_regions(segments, weights)
        picture = overlay.lime_overlay(plane, segments, weights)
        subtitle = f"LIME, {target}: green for, red against (top 5)"
    else:
        attribution = cam.grad_cam(predictor, plane, target_index)
        regions = cam.top_regions(attribution)
        picture = overlay.cam_overlay(plane, attribution)
        subtitle = f"Grad-CAM for {target}"
    title = f"{image_path.name}: predicted {predicted} | " + ", ".join(f"{n} {p:.3f}" for n, p in zip(predictor.class_names, probabilities))
    overlay.write(out, plane, picture, title, subtitle)
    return {
        "file": str(image_path), "method": method, "target": target, "predicted": predicted,
        "probabilities": {n: float(p) for n, p in zip(predictor.class_names, probabilities)},
        "regions": regions, "out": str(out), "attribution": attribution,
    }


def positive_fraction_inside(attribution: np.ndarray, region: np.ndarray) -> float:
    """Share of the positive attribution mass that falls inside ``region`` (a boolean mask)."""
    positive = np.clip(attribution, 0, None)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else 0.0
