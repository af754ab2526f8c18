"""Posteroanterior or anteroposterior? A learned check on the pixels, for files that do not say.

cxrclf trains on PA films by default, but ``predict`` takes any film, and AP films come from
portable machines at the bedside and in intensive care: exactly the patients a COVID-19
model learned to call COVID-19 (an unseen hospital's AP films were called COVID-19 far more
often than its PA films). A DICOM states its view (``ViewPosition``, read by the
header rules in :mod:`cxrclf.guard.checks`); a PNG or JPEG does not. :class:`ViewCheck`
tells the two apart from the pixels alone.

Features: histograms of oriented gradients (Dalal and Triggs, 2005; ``skimage.feature.hog``:
12 px cells, 2 x 2 cell blocks, 9 orientations, L2-Hys; 1764 numbers) of two views of the
film, each squashed to 96 x 96 px with its grey levels stretched between their 1st and 99th
percentiles: the whole image, and the lungs' box widened by a margin (the built-in lung
segmenter's mask, :func:`lung_crop`). The box puts every film's chest in the same frame,
whatever the canvas around it, and shows at a higher resolution what separates the views
inside it: scapulae over the lung fields, a wider heart and mediastinum, clavicles higher and
flatter, electrodes and lines. The model: a logistic regression on the standardised
features, classes weighted to balance (its probability reads as if AP and PA were equally
common), flagged at 0.5. It costs two HOGs: the lungs' box comes from the upright mask that the lung
checks made of the same plane (:func:`cxrclf.guard.checks.input_warnings` hands it over;
called alone, the check runs the segmenter itself).

Chosen by ``benchmarks/views.py --compare`` among thumbnails, HOG of the whole image at 64
to 128 px, the lung mask's geometry, the segmenter encoder's pooled features and the pooled
features of ImageNet EfficientNet-Lite0 (docs/performance.md, "The view check"): the lungs'
box beside the whole image separates the views of RSNA and NIH patients it never saw better
than the whole image alone, and frames misled it less, with no network but the segmenter
that every install has; Lite0 would need an optional weights package. A check saved before
the lungs' box (file version 1) still loads and reads the whole image only.

The shipped check lives in ``cxrclf/builtin/view/``: ``view.safetensors`` (the scaler's
mean and scale, the coefficients and intercept as float64 tensors; as metadata the feature
settings, the threshold and the sha256 of the segmenter whose masks it was fitted on, which
must be the built-in one at run time) and ``provenance.json`` (the command, the data's
hashes, held-out AUC and the weights' sha256).

It fails where its training data did not reach (figures in the same section): on Cohen's
films, large or small, it separates the views less well and flags a fifth of their PA films
(part of that is Cohen's labels: a third of the PA films it flags carry a bedside marker,
some of them "AP"). A box drawn from a wrong mask frames the film wrongly. And it knows only
PA and AP: a lateral or a CT slice gets a probability too, which is why it runs only on
images that passed every other input check.
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

__all__ = ["BUILTIN_FOLDER", "LUNG_MARGIN", "PROVENANCE", "THRESHOLD", "WEIGHTS", "ViewCheck", "builtin_view_check", "check_features",
           "fit_view_check", "load_view_check", "lung_crop", "lung_mask", "pixel_view_warning", "view_features"]

BUILTIN_FOLDER = Path(__file__).resolve().parents[1] / "builtin" / "view"
WEIGHTS = "view.safetensors"
PROVENANCE = "provenance.json"
FILE_FORMAT = "cxrclf-view-check"
FILE_VERSION = "2"   # 2: the lungs' box beside the whole image; 1 (still read): the whole image only
THRESHOLD = 0.5  # P(AP) at or above it: an AP film (balanced class weights: as if both views were equally common)
# The lungs' box widened by this share of its mean side (cxrclf.preprocess.lung.lung_box): the clavicles, the top of the
# scapulae and the heart's borders stay inside. Chosen among 0.05, 0.15 and 0.3 on the films of benchmarks/views.py.
LUNG_MARGIN = 0.15
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


def lung_crop(pixels: np.ndarray, mask: np.ndarray, margin: float = LUNG_MARGIN) -> np.ndarray:
    """The part of ``pixels`` inside the lungs' box of ``mask``, widened by ``margin`` of its mean side; all of it for an empty mask.

    ``mask`` is a lung mask of the same picture at any size (the segmenter's square input
    plane): its box, in fractions of the mask, is cut from ``pixels`` at their own size,
    rounded outwards.
    """
    from cxrclf.preprocess.lung import lung_box

    pixels, mask = np.asarray(pixels), np.asarray(mask, bool)
    if not mask.any():
        return pixels
    top, bottom, left, right = lung_box(mask, margin)
    (rows, columns), (height, width) = pixels.shape[:2], mask.shape
    return pixels[top * rows // height:-(-bottom * rows // height), left * columns // width:-(-right * columns // width)]


def lung_mask(pixels: np.ndarray, segmenter) -> np.ndarray:
    """``segmenter``'s lung mask of ``pixels`` on its square input plane (bool (S, S)): the upright mask the lung checks make
    (:attr:`cxrclf.guard.lungs.LungFindings.mask`), for an image they did not look at."""
    from cxrclf.segment.masks import mask_from_probabilities
    from cxrclf.segment.plane import lung_plane

    probabilities = segmenter.plane_probabilities(lung_plane(pixels, segmenter.input_size), folded=True)
    return mask_from_probabilities(probabilities, probabilities.shape, segmenter.threshold)


def check_features(pixels: np.ndarray, lung_margin: float | None = LUNG_MARGIN, segmenter=None, mask: np.ndarray | None = None,
                   **hog_settings) -> np.ndarray:
    """The view check's features of a decoded grey image: :func:`view_features` of the whole image, then of its lungs' box.

    ``lung_margin`` None: the whole image only (a version-1 check). ``segmenter``: what finds
    the lungs (default: :func:`cxrclf.segment.ort.lung_network`, the built-in segmenter, loaded
    once per process); ``mask``: its upright mask of this image where the lung checks made it
    already (then no network runs). ``hog_settings``: :func:`view_features`'s ``side``,
    ``cell``, ``orientations`` and ``block``.
    """
    whole = view_features(pixels, **hog_settings)
    if lung_margin is None:
        return whole
    if mask is None:
        mask = lung_mask(pixels, segmenter or _lung_network())
    return np.concatenate([whole, view_features(lung_crop(pixels, mask, lung_margin), **hog_settings)])


def _lung_network():
    from cxrclf.segment.ort import lung_network

    network = lung_network()
    if network is None:
        raise CxrclfError("the view check needs the built-in lung segmenter: install onnxruntime or PyTorch", BUILTIN_FOLDER / WEIGHTS)
    return network


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class ViewCheck:
    """P(AP) of a frontal chest film: a logistic regression on :func:`check_features`."""

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
    lung_margin: float | None = None  # None: the whole image only
    segmenter_sha256: str = ""  # the weights whose masks it was fitted on ("": not held against the segmenter)

    def features(self, pixels: np.ndarray, segmenter=None, mask: np.ndarray | None = None) -> np.ndarray:
        """:func:`check_features` with this check's settings; refused when ``segmenter`` (default: the built-in, whose
        upright ``mask`` of the image may be handed in) is not the one it was fitted with."""
        if self.lung_margin is not None:
            segmenter = segmenter or _lung_network()
            if self.segmenter_sha256 and segmenter.sha256 != self.segmenter_sha256:
                raise CxrclfError(f"the view check was fitted on the masks of another lung segmenter (sha256 {self.segmenter_sha256[:12]}..., "
                                  f"this one {segmenter.sha256[:12]}...): reinstall cxrclf, or fit it again with benchmarks/views.py --ship",
                                  BUILTIN_FOLDER / WEIGHTS)
        return check_features(pixels, self.lung_margin, segmenter, mask, side=self.side, cell=self.cell, orientations=self.orientations,
                              block=self.block)

    def probability(self, features: np.ndarray) -> np.ndarray:
        """P(AP) for features (N, F) or (F,); the same numbers as the fitted scikit-learn pipeline."""
        features = np.asarray(features, dtype=np.float64)
        logit = ((features - self.mean) / self.scale) @ self.coef + self.intercept
        return np.exp(-np.logaddexp(0.0, -logit))  # the logistic function, without overflow far from the boundary

    def probability_ap(self, pixels: np.ndarray, segmenter=None, mask: np.ndarray | None = None) -> float:
        """P(AP) of one decoded image (``segmenter`` and ``mask``: as :meth:`features`)."""
        return float(self.probability(self.features(pixels, segmenter, mask)))

    def save(self, path: str | Path) -> Path:
        """Write a ``.safetensors`` file atomically."""
        from safetensors.numpy import save

        from cxrclf.io import write_bytes

        # one metadata entry: safetensors keeps metadata in a hash map, so several would be written in a random order
        # and the same check would hash differently each time it is saved
        settings = {"version": FILE_VERSION, "side": self.side, "cell": self.cell, "orientations": self.orientations, "block": self.block,
                    "threshold": float(self.threshold), "lung_margin": self.lung_margin, "segmenter_sha256": self.segmenter_sha256}
        metadata = {FILE_FORMAT: json.dumps(settings, sort_keys=True)}
        tensors = {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": np.array([self.intercept], dtype=np.float64)}
        path = Path(path)
        write_bytes(path, save({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, metadata=metadata))
        return path


def fit_view_check(features: np.ndarray, is_ap: np.ndarray, c: float = 0.01, **feature_settings) -> ViewCheck:
    """Fit the logistic regression (L2 penalty ``1/c``, balanced class weights, L-BFGS: deterministic) on :func:`check_features`.

    ``feature_settings``: the :class:`ViewCheck` fields the features were made with (``side``,
    ``lung_margin``, ``segmenter_sha256``...).
    """
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
        settings = _recorded_settings(metadata[FILE_FORMAT])
        if set(tensors) != set(_TENSORS):
            raise ValueError(f"tensors {sorted(tensors)}, expected {sorted(_TENSORS)}")
        hog = {key: settings[key] for key in ("side", "cell", "orientations", "block")}
        expected = view_features(np.zeros((hog["side"], hog["side"]), np.uint8), **hog).size * (1 if settings["lung_margin"] is None else 2)
        if any(tensors[name].shape != (expected,) for name in ("mean", "scale", "coef")) or tensors["intercept"].shape != (1,):
            raise ValueError(f"tensor shapes do not fit {expected} features")
        if not (np.all(tensors["scale"] > 0) and all(np.isfinite(t).all() for t in tensors.values())):
            raise ValueError("a scale that is not positive, or a value that is not finite")
    except (ValueError, KeyError, TypeError) as exc:
        raise CxrclfError(f"view check file damaged or foreign: {exc}", path) from exc
    return ViewCheck(mean=tensors["mean"], scale=tensors["scale"], coef=tensors["coef"], intercept=float(tensors["intercept"][0]),
                     sha256=sha256_file(path), **settings)


def _recorded_settings(text: str) -> dict:
    """The :class:`ViewCheck` settings in a file's metadata (version 1: the whole image only; version 2 adds the lungs' box)."""
    recorded = json.loads(text)
    if not isinstance(recorded, dict) or recorded.get("version") not in ("1", FILE_VERSION):
        raise ValueError(f"settings {text[:60]!r}, expected a JSON object of version 1 or {FILE_VERSION}")
    settings = {key: int(recorded[key]) for key in ("side", "cell", "orientations", "block")}
    settings["threshold"] = float(recorded["threshold"])
    margin = recorded.get("lung_margin") if recorded["version"] != "1" else None
    settings["lung_margin"] = None if margin is None else float(margin)
    settings["segmenter_sha256"] = str(recorded.get("segmenter_sha256") or "")
    if not 0.0 < settings["threshold"] < 1.0 or not (margin is None or 0.0 <= settings["lung_margin"] < 1.0):
        raise ValueError("threshold outside (0, 1), or a lung margin outside [0, 1)")
    return settings


@functools.lru_cache(maxsize=1)
def builtin_view_check() -> ViewCheck:
    """The check shipped in the package (read once per process)."""
    return load_view_check(BUILTIN_FOLDER / WEIGHTS)


def pixel_view_warning(pixels: np.ndarray, trained_views: Collection[str], check: ViewCheck | None = None,
                       mask: np.ndarray | None = None) -> str | None:
    """The warning "looks like an AP film (0.93); this run saw PA films only", or None when the film looks like a view the run saw.

    ``trained_views`` are the run's views (:attr:`cxrclf.runs.DataSpec.trained_views`); a run
    that saw both AP and PA films needs no check, and none is computed. ``mask``: the lung
    checks' upright mask of the image (:attr:`cxrclf.guard.lungs.LungFindings.mask`), which
    spares the segmenter's pass. With no segmenter installed a check that reads the lungs'
    box cannot run: None.
    """
    from cxrclf.segment.ort import lung_network

    families = view_families(trained_views)
    if {"AP", "PA"} <= set(families):
        return None
    check = builtin_view_check() if check is None else check
    if check.lung_margin is not None and mask is None and lung_network() is None:
        return None  # no segmenter, hence no lungs' box: no check, as no lung checks
    probability = check.probability_ap(pixels, mask=mask)
    looks, confidence = ("AP", probability) if probability >= check.threshold else ("PA", 1.0 - probability)
    if looks in families or not math.isfinite(confidence):
        return None
    article = "an" if looks == "AP" else "a"
    return f"looks like {article} {looks} film ({confidence:.2f}); this run saw {' and '.join(families)} films only"
