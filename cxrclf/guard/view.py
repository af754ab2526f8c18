"""Posteroanterior or anteroposterior? A learned check on the pixels, for files that do not say.

cxrclf trains on PA films by default, but ``predict`` takes any film, and AP films come from
portable machines at the bedside and in intensive care: exactly the patients a COVID-19
model learned to call COVID-19 (an unseen hospital's AP films were called COVID-19 five
times as often as its PA films). A DICOM states its view (``ViewPosition``, read by the
header rules in :mod:`cxrclf.guard.checks`); a PNG or JPEG does not. :class:`ViewCheck`
tells the two apart from the pixels alone.

Features: the image squashed to 96 x 96 px, its grey levels stretched between their 1st
and 99th percentiles, then a histogram of oriented gradients (Dalal and Triggs, 2005;
``skimage.feature.hog``: 12 px cells, 2 x 2 cell blocks, 9 orientations, L2-Hys; 1764
numbers). The model: a logistic regression on the standardised features, classes weighted
to balance (its probability reads as if AP and PA were equally common), flagged at 0.5.
What the gradients see is the layout of an AP film: scapulae over the lung fields, a
wider heart and mediastinum, clavicles higher and flatter, electrodes and lines.

Chosen by ``benchmarks/views.py --compare`` among thumbnails, HOG at 64 to 128 px and the
pooled features of ImageNet EfficientNet-Lite0 at 224 px (docs/performance.md, "The view
check"): HOG at 96 px separates the views of patients it never saw about as well as Lite0
(AUC 0.97 to 0.99 on RSNA and NIH films) with nothing to load but 1764 coefficients and no
network to run; Lite0 beside it cut the PA false alarms on an unseen RSNA or NIH from 5-6 %
to 2-3 % but would need a network in every worker and an optional weights package.

The shipped check lives in ``cxrclf/builtin/view/``: ``view.safetensors`` (the scaler's
mean and scale, the coefficients and intercept as float64 tensors; feature settings and
threshold as metadata) and ``provenance.json`` (the command, the data's hashes, held-out
AUC and the weights' sha256).

It fails where its training data did not reach. On Cohen's figures cut out of papers it
ranks an AP film above a PA film only 85 % of the time and, trained without them, flags
20 % of their PA films (part of that is Cohen's labels: several films labelled PA carry the
electrodes and lines of a bedside film). A PA film on a wide black canvas can look AP to
it (5 of 67 Montgomery films). And it knows only PA and AP: a lateral or a CT slice gets a
probability too, which is why it runs only on images that passed every other input check.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrclf.errors import CxrclfError
from cxrclf.guard.checks import view_families

__all__ = ["BUILTIN_FOLDER", "PROVENANCE", "THRESHOLD", "WEIGHTS", "ViewCheck", "builtin_view_check", "fit_view_check", "load_view_check",
           "pixel_view_warning", "view_features"]

BUILTIN_FOLDER = Path(__file__).resolve().parents[1] / "builtin" / "view"
WEIGHTS = "view.safetensors"
PROVENANCE = "provenance.json"
FILE_FORMAT = "cxrclf-view-check"
FILE_VERSION = "1"
THRESHOLD = 0.5  # P(AP) at or above it: an AP film (balanced class weights: as if both views were equally common)
_TENSORS = ("mean", "scale", "coef", "intercept")


def view_features(pixels: np.ndarray, side: int = 96, cell: int = 12, orientations: int = 9, block: int = 2) -> np.ndarray:
    """HOG features (float64) of a decoded grey image (2-D ``uint8``/``uint16``, any size), squashed to ``side`` px."""
    import cv2
    from skimage.feature import hog

    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.size == 0:
        raise ValueError(f"pixels must be a non-empty 2-D grey image, got shape {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        pixels = pixels.astype(np.float32)
    small = cv2.resize(pixels, (side, side), interpolation=cv2.INTER_AREA).astype(np.float64)
    low, high = np.percentile(small, (1, 99))
    unit = np.clip((small - low) / max(high - low, 1e-6), 0.0, 1.0)
    return hog(unit, orientations=orientations, pixels_per_cell=(cell, cell), cells_per_block=(block, block),
               block_norm="L2-Hys", feature_vector=True).astype(np.float64)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class ViewCheck:
    """P(AP) of a frontal chest film: a logistic regression on :func:`view_features`."""

    mean: np.ndarray          # (F,) the scaler's
    scale: np.ndarray         # (F,)
    coef: np.ndarray          # (F,)
    intercept: float
    side: int = 96
    cell: int = 12
    orientations: int = 9
    block: int = 2
    threshold: float = THRESHOLD
    sha256: str = ""          # of the file it was loaded from ("" when fitted in memory)

    def features(self, pixels: np.ndarray) -> np.ndarray:
        return view_features(pixels, self.side, self.cell, self.orientations, self.block)

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(AP) for features (N, F) or (F,); the same numbers as the fitted scikit-learn pipeline."""
        features = np.asarray(features, dtype=np.float64)
        logit = ((features - self.mean) / self.scale) @ self.coef + self.intercept
        return np.exp(-np.logaddexp(0.0, -logit))  # the logistic function, without overflow far from the boundary

    def probability_ap(self, pixels: np.ndarray) -> float:
        """P(AP) of one decoded image."""
        return float(self.probability(self.features(pixels)))

    def save(self, path: str | Path) -> Path:
        """Write a ``.safetensors`` file atomically."""
        from safetensors.numpy import save

        from cxrclf.io import write_bytes

        # one metadata entry: safetensors keeps metadata in a hash map, so several would be written in a random order
        # and the same check would hash differently each time it is saved
        settings = {"version": FILE_VERSION, "side": self.side, "cell": self.cell, "orientations": self.orientations, "block": self.block,
                    "threshold": float(self.threshold)}
        metadata = {FILE_FORMAT: json.dumps(settings, sort_keys=True)}
        tensors = {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": np.array([self.intercept], dtype=np.float64)}
        path = Path(path)
        write_bytes(path, save({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, metadata=metadata))
        return path


def fit_view_check(features: np.ndarray, is_ap: np.ndarray, c: float = 0.01, **feature_settings) -> ViewCheck:
    """Fit the logistic regression (L2 penalty ``1/c``, balanced class weights, L-BFGS: deterministic) on HOG features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    features, is_ap = np.asarray(features, dtype=np.float64), np.asarray(is_ap, dtype=bool)
    if len(np.unique(is_ap)) < 2:
        raise ValueError("fitting the view check needs both AP and PA films")
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=10_000).fit(scaler.transform(features), is_ap)
    return ViewCheck(mean=scaler.mean_.astype(np.float64), scale=scaler.scale_.astype(np.float64), coef=model.coef_[0].astype(np.float64),
                     intercept=float(model.intercept_[0]), **feature_settings)


def load_view_check(path: str | Path) -> ViewCheck:
    """The check saved at ``path`` (a ``.safetensors`` file), after checking its metadata and shapes."""
    from cxrclf.io import read_tensors, sha256_file

    path = Path(path)
    metadata, tensors = read_tensors(path, "view check", "view check file not found (a damaged installation: reinstall cxrclf)")
    try:
        if FILE_FORMAT not in metadata:
            raise ValueError(f"no {FILE_FORMAT!r} metadata")
        recorded = json.loads(metadata[FILE_FORMAT])
        if not isinstance(recorded, dict) or recorded.get("version") != FILE_VERSION:
            raise ValueError(f"settings {metadata[FILE_FORMAT][:60]!r}, expected a JSON object of version {FILE_VERSION}")
        if set(tensors) != set(_TENSORS):
            raise ValueError(f"tensors {sorted(tensors)}, expected {sorted(_TENSORS)}")
        settings = {key: int(recorded[key]) for key in ("side", "cell", "orientations", "block")}
        threshold = float(recorded["threshold"])
        expected = view_features(np.zeros((settings["side"], settings["side"]), np.uint8), **settings).size
        if any(tensors[name].shape != (expected,) for name in ("mean", "scale", "coef")) or tensors["intercept"].shape != (1,):
            raise ValueError(f"tensor shapes do not fit {expected} features")
        if not (0.0 < threshold < 1.0 and np.all(tensors["scale"] > 0) and all(np.isfinite(t).all() for t in tensors.values())):
            raise ValueError("threshold outside (0, 1), or a scale that is not positive, or a value that is not finite")
    except (ValueError, KeyError, TypeError) as exc:
        raise CxrclfError(f"view check file damaged or foreign: {exc}", path) from exc
    return ViewCheck(mean=tensors["mean"], scale=tensors["scale"], coef=tensors["coef"], intercept=float(tensors["intercept"][0]),
                     threshold=threshold, sha256=sha256_file(path), **settings)


@functools.lru_cache(maxsize=1)
def builtin_view_check() -> ViewCheck:
    """The check shipped in the package (read once per process)."""
    return load_view_check(BUILTIN_FOLDER / WEIGHTS)


def pixel_view_warning(pixels: np.ndarray, trained_views: Collection[str], check: ViewCheck | None = None) -> str | None:
    """The warning "looks like an AP film (0.93); this run saw PA films only", or None when the film looks like a view the run saw.

    ``trained_views`` are the run's views (:attr:`cxrclf.runs.DataSpec.trained_views`); a run
    that saw both AP and PA films needs no check, and none is computed.
    """
    families = view_families(trained_views)
    if {"AP", "PA"} <= set(families):
        return None
    check = builtin_view_check() if check is None else check
    probability = check.probability_ap(pixels)
    looks, confidence = ("AP", probability) if probability >= check.threshold else ("PA", 1.0 - probability)
    if looks in families or not math.isfinite(confidence):
        return None
    article = "an" if looks == "AP" else "a"
    return f"looks like {article} {looks} film ({confidence:.2f}); this run saw {' and '.join(families)} films only"
