"""``cxrclf explain``: why a run classifies one image as it does (LIME or Grad-CAM)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from cxrclf import io
from cxrclf.choices import ExplainMethod, parse
from cxrclf.data.imageio import decode
from cxrclf.errors import CxrclfError

if TYPE_CHECKING:
    from cxrclf.inference import FoldEnsemble, RunPredictor

__all__ = ["DEFAULT_FOLDER", "Explanation", "default_out", "explain_image", "positive_fraction_inside"]

DEFAULT_FOLDER = Path("explanations")


def default_out(image_path: Path, method: ExplainMethod | str) -> Path:
    """``explanations/<image stem>.<method>.png``: a folder of its own, never beside the user's files."""
    return DEFAULT_FOLDER / f"{Path(image_path).stem}.{parse(ExplainMethod, method, 'method').value}.png"


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain_image` returns: the image's answer, the class explained, where the evidence lies.

    ``regions``: the top regions (``weight``, ``area``, ``center``); ``out``: the PNG written;
    ``in_lung_share``: the share of the positive attribution inside the lung fields that
    ``lung_model`` (the segmenter used, a folder or ``builtin``) found, None when no attribution
    is positive; ``warnings``: the input checks' reasons, those from the lungs included, and the
    guard's; ``attribution``: the map itself, on the model's input plane (not in :meth:`to_dict`).
    """
    file: str
    method: ExplainMethod
    target: str
    predicted: str
    probabilities: dict[str, float]
    regions: list[dict]
    out: str
    ood_score: float | None
    in_distribution: bool | None
    warnings: list[str]
    in_lung_share: float | None
    lung_model: str
    attribution: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        """``explain --json``: every field but the attribution map."""
        return {"file": self.file, "method": self.method.value, "target": self.target, "predicted": self.predicted, "probabilities": self.probabilities,
                "regions": self.regions, "out": self.out, "ood_score": self.ood_score, "in_distribution": self.in_distribution,
                "warnings": self.warnings, "in_lung_share": self.in_lung_share, "lung_model": self.lung_model}


@dataclass(frozen=True)
class _Assessed:
    """An image as the model saw it (its input plane) and what the model and the checks said about it."""
    plane: np.ndarray
    probabilities: np.ndarray
    score: float
    warnings: list[str]


def explain_image(predictor: RunPredictor | FoldEnsemble, image_path: Path, method: ExplainMethod | str = ExplainMethod.lime, target: str | None = None,
                  num_samples: int = 1000, seed: int = 0, out: Path | None = None, overwrite: bool = False, lung_model: Path | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Explanation:
    """Write the explanation PNG (``out``, default :func:`default_out`); return the :class:`Explanation`.

    ``target``: the class to explain (default: the predicted one). ``progress(done, total)``
    follows LIME's perturbed images as the model scores them (Grad-CAM is one pass). The
    in-lung share uses ``lung_model`` (a segmentation run or ``builtin``), else the segmenter
    of the run's own preprocessing, else the built-in one (:mod:`cxrclf.explain.in_lung`).
    """
    from cxrclf.explain import overlay
    from cxrclf.explain.in_lung import lung_share_on_figure

    method = parse(ExplainMethod, method, "method")
    image_path = Path(image_path)
    out = _checked_output(predictor, image_path, method, target, num_samples, out, overwrite, lung_model)
    seen = _assess(predictor, image_path)
    predicted = predictor.class_names[int(seen.probabilities.argmax())]
    target = target or predicted
    attribution, regions, picture, subtitle = _attribution(predictor, seen.plane, method, predictor.class_names.index(target), num_samples, seed, progress)
    picture, subtitle, lung = lung_share_on_figure(predictor, seen.plane, attribution, picture, subtitle, lung_model)
    title = f"{image_path.name}: predicted {predicted} | " + ", ".join(f"{n} {p:.3f}" for n, p in zip(predictor.class_names, seen.probabilities))
    overlay.write(out, seen.plane, picture, title, subtitle, colorbar=None if method is ExplainMethod.lime else "Grad-CAM (scaled to 0-1)")
    return Explanation(
        file=str(image_path), method=method, target=target, predicted=predicted,
        probabilities={n: float(p) for n, p in zip(predictor.class_names, seen.probabilities)}, regions=regions, out=str(out),
        ood_score=None if math.isnan(seen.score) else seen.score,
        in_distribution=False if seen.warnings else (None if predictor.guard is None else True), warnings=seen.warnings,
        in_lung_share=lung["in_lung_share"], lung_model=lung["lung_model"], attribution=attribution,
    )


def _checked_output(predictor: RunPredictor | FoldEnsemble, image_path: Path, method: ExplainMethod, target: str | None, num_samples: int,
                    out: Path | None, overwrite: bool, lung_model: Path | None) -> Path:
    """The output PNG, once the target, the sample count and the output (never one of the inputs) are checked."""
    if target is not None and target not in predictor.class_names:
        raise CxrclfError(f"target {target!r} is not a class of this run ({', '.join(predictor.class_names)})")
    if num_samples < 10:
        raise CxrclfError("LIME needs at least 10 samples")
    out = Path(out) if out else default_out(image_path, method)
    io.check_output_file(out, [image_path, *predictor.folder.reads(), lung_model], suffix=".png", overwrite=overwrite)
    return out


def _assess(predictor: RunPredictor | FoldEnsemble, image_path: Path) -> _Assessed:
    """The image through the run's preprocessing and model, with the input checks' (the lungs' included) and the guard's warnings."""
    from cxrclf.guard.checks import input_warnings

    decoded = decode(image_path)
    warnings = input_warnings(decoded.pixels, decoded.info, trained_views=predictor.trained_views, lungs=True)
    try:
        plane = predictor.plane_from_decoded(decoded.pixels)
    except CxrclfError as exc:  # e.g. a run that crops to the lungs, and no lungs in this image
        raise CxrclfError(exc.reason, exc.path or image_path) from exc
    probabilities, _, scores = predictor.assess(plane[None])
    score = float(scores[0])
    if predictor.flagged(scores)[0]:
        warnings.append(f"out of distribution: score {score:.2f} above the run's threshold {predictor.guard_threshold:.2f}")
    return _Assessed(plane, probabilities[0], score, warnings)


def _attribution(predictor: RunPredictor | FoldEnsemble, plane: np.ndarray, method: ExplainMethod, target_index: int, num_samples: int, seed: int,
                 progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, list[dict], np.ndarray, str]:
    """(attribution map, top regions, overlay picture, its subtitle) for the class ``target_index``: LIME's or Grad-CAM's."""
    from cxrclf.explain import cam, lime, overlay

    target = predictor.class_names[target_index]
    if method is ExplainMethod.lime:
        segments, weights = lime.explain_lime(predictor, plane, target_index, num_samples, seed, progress=progress)
        return (lime.weight_map(segments, weights), lime.top_regions(segments, weights), overlay.lime_overlay(plane, segments, weights),
                f"LIME, {target}: green for, red against (top 5)")
    # a fold ensemble: the folds' maps averaged, as their probabilities are
    attribution = np.mean([cam.grad_cam(member, plane, target_index) for member in predictor.members], axis=0)
    return attribution, cam.top_regions(attribution), overlay.cam_overlay(plane, attribution), f"Grad-CAM for {target}"


def positive_fraction_inside(attribution: np.ndarray, region: np.ndarray) -> float:
    """Share of the positive attribution mass that falls inside ``region`` (a boolean mask)."""
    positive = np.clip(attribution, 0, None)
    total = positive.sum()
    return float(positive[region].sum() / total) if total > 0 else 0.0
