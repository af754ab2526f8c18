"""Where a classifier looks: the share of its positive attribution inside the lung fields.

The lung fields are those of the image the model saw (its input plane: after any crop or
grey-out), found by a :class:`~cxrclf.segment.infer.Segmenter`. The share is
:func:`~cxrclf.explain.explain.positive_fraction_inside` of the attribution and that mask: 1
when all positive attribution lies in the lungs, 0 when none does. An attribution with no
positive mass has no share (None). For comparison, a map spread evenly over the image would
score the lungs' area fraction, which is reported beside it.

``explain`` reports it for one image (LIME or Grad-CAM); ``evaluate --lung-model RUN``
reports the mean over the evaluated images of Grad-CAM for the predicted class, per true
class and per source, and says so when the model looks mostly outside the lungs. Evaluate
does not import explain (they are siblings): the command hands it :func:`lung_attention`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["LOOKS_OUTSIDE", "in_lung_share", "lung_attention", "lung_share_on_figure", "plane_lung_mask", "segmenter_for_run", "summarise"]

# Below this mean share, more of the model's evidence lies outside the lungs than inside: a warning sign.
LOOKS_OUTSIDE = 0.5


def plane_lung_mask(segmenter, plane: np.ndarray) -> np.ndarray:
    """The lung mask (bool) of a model input plane (uint8 (S, S) or (S, S, C))."""
    plane = np.asarray(plane)
    return segmenter.mask(plane[..., 0] if plane.ndim == 3 else plane)


def in_lung_share(attribution: np.ndarray, lung_mask: np.ndarray) -> float | None:
    """Share of the positive attribution inside ``lung_mask``; None when nothing is positive."""
    from cxrclf.explain.explain import positive_fraction_inside

    attribution = np.asarray(attribution, np.float64)
    if not (attribution > 0).any():
        return None
    return positive_fraction_inside(attribution, np.asarray(lung_mask, bool))


def segmenter_for_run(params, lung_model: Path | str | None):
    """The segmenter that measures: ``lung_model`` if given (``builtin`` too), else the one the run's preprocessing used, else the built-in."""
    if lung_model is None and params.uses_lungs:
        from cxrclf.segment.run import segmenter_for

        return segmenter_for(params)
    from cxrclf.segment.infer import Segmenter, builtin_segmenter
    from cxrclf.segment.run import resolve_segment_run

    return builtin_segmenter() if lung_model is None else Segmenter(resolve_segment_run(lung_model))


def lung_attention(predictor, rows: pd.DataFrame, root: Path, needs_preprocessing: bool, predictions: pd.DataFrame, lung_model: Path | None,
                   workers: int) -> tuple[dict, np.ndarray]:
    """(summary, per-image share): Grad-CAM of the predicted class against the lungs of every evaluated image.

    ``rows``, ``root`` and ``needs_preprocessing`` are what :func:`cxrclf.evaluate.evaluation.load_rows`
    returned, ``predictions`` what ``predict_rows`` made of them (same order).
    """
    from cxrclf.explain.cam import grad_cam
    from cxrclf.inference import plane_from_file
    from cxrclf.planes import PlaneTask
    from cxrclf.parallel import map_images

    segmenter = segmenter_for_run(predictor.params, lung_model)
    params = predictor.params.to_dict() if needs_preprocessing else None
    tasks = [PlaneTask(str(Path(root) / p), params, predictor.input_size) for p in rows["path"]]
    decoded = map_images(plane_from_file, tasks, workers if needs_preprocessing else 1)
    shares, areas = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    for index, item in enumerate(decoded):
        if not item.ok:
            continue
        plane = item.plane
        target = predictor.class_names.index(predictions["predicted"].iloc[index])
        mask = plane_lung_mask(segmenter, plane)
        heat = np.mean([grad_cam(member, plane, target) for member in predictor.members], axis=0)  # a fold ensemble: averaged
        share = in_lung_share(heat, mask)
        shares[index] = np.nan if share is None else share
        areas[index] = float(mask.mean())
    return summarise(predictions, shares, areas, str(segmenter.path)), shares


def summarise(predictions: pd.DataFrame, shares: np.ndarray, areas: np.ndarray, segmenter: str) -> dict:
    """Means of the in-lung share and of the lung area, overall, per true class and per source, with warnings (pure)."""
    frame = pd.DataFrame({"label": predictions["label"].to_numpy(), "source": predictions["source"].to_numpy(), "share": shares, "area": areas})

    def block(sub: pd.DataFrame) -> dict:
        measured = sub.dropna(subset=["share"])
        return {"images": int(len(measured)), "in_lung_share": float(measured["share"].mean()) if len(measured) else None,
                "lung_area": float(measured["area"].mean()) if len(measured) else None,
                "below_half": int((measured["share"] < LOOKS_OUTSIDE).sum())}

    summary = {"method": "gradcam", "target": "predicted class", "segmenter": segmenter, "overall": block(frame),
               "per_class": {str(k): block(v) for k, v in frame.groupby("label", sort=True)},
               "per_source": {str(k): block(v) for k, v in frame.groupby("source", sort=True)}}
    warnings = []
    for scope, groups in (("all images", {"": summary["overall"]}), ("class", summary["per_class"]), ("source", summary["per_source"])):
        for name, values in groups.items():
            share = values["in_lung_share"]
            if share is not None and share < LOOKS_OUTSIDE:
                where = scope if not name else f"{scope} {name}"
                warnings.append(f"{where}: only {share:.0%} of the Grad-CAM evidence lies inside the lung fields (a uniform map would give "
                                f"{values['lung_area']:.0%}): the model looks mostly outside the lungs, a sign of shortcuts")
    summary["warnings"] = warnings
    return summary


def lung_share_on_figure(predictor, plane: np.ndarray, attribution: np.ndarray, picture: np.ndarray, subtitle: str,
                         lung_model: Path | None) -> tuple[np.ndarray, str, dict]:
    """For ``explain``: the overlay with the lungs outlined, the subtitle with the share, and
    ``{"in_lung_share", "lung_model"}`` for the result (the share None when no attribution is positive)."""
    import cv2

    segmenter = segmenter_for_run(predictor.params, lung_model)
    mask = plane_lung_mask(segmenter, plane)
    share = in_lung_share(attribution, mask)
    outlined = np.ascontiguousarray(np.clip(np.rint(np.asarray(picture) * 255), 0, 255).astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(outlined, contours, -1, (255, 255, 255), 1)
    text = "no positive attribution" if share is None else f"{share:.0%} of the positive attribution inside the lungs"
    return outlined.astype(np.float32) / 255.0, f"{subtitle}\n{text} (white outline)", {"in_lung_share": share, "lung_model": str(segmenter.path)}
