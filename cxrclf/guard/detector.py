"""Out-of-distribution scores learned from (or read off) the model, and their thresholds.

Two detectors share one interface: ``score`` (higher = further from the training images),
``calibrate`` (threshold from in-distribution validation scores, :func:`threshold_from`), ``flag``
(score above the threshold), ``save`` / :func:`load_detector` (a ``.safetensors`` file, no
pickle). ``needs`` says what ``score`` takes: pooled backbone features or logits
(:mod:`cxrclf.guard.features` gives both from one forward pass).

:class:`GaussianDetector` (Lee et al., 2018, "A simple unified framework for detecting
out-of-distribution samples and adversarial attacks"): one Gaussian per class on the pooled
features, with one covariance shared by all classes. The covariance of the within-class
residuals is shrunk towards a scaled identity with the Ledoit-Wolf (2004) estimate of the
shrinkage, ``(1 - s) S + s (tr S / D) I``, so that it is invertible and well conditioned when
the feature dimension exceeds the number of training images (1280 features, 200 images).
The score is the Mahalanobis distance to the nearest class mean,
``min_c sqrt((x - mu_c)^T P (x - mu_c))``: the square root makes it a distance in units of
the (shrunk) within-class standard deviation, so a score twice the threshold is twice as far;
flags do not change with it. Fit and score run in float64 numpy; the precision matrix is kept as its factor ``W``
(lower triangular, ``P = W^T W``, the inverse of the covariance's Cholesky factor), so a
distance is the length of ``W (x - mu_c)``, computed on the difference, never as
``x^T P x - 2 x^T P mu + ...`` (which cancels catastrophically far from the data).

:class:`EnergyDetector` (Liu et al., 2020, "Energy-based out-of-distribution detection"):
``-T logsumexp(logits / T)``, needing no fit; the baseline to beat.

The file holds the tensors (float64) and string metadata: ``format``, ``version``, ``kind``,
``threshold``, ``quantile``, ``rule`` (how the threshold was read off the validation scores;
files written before the rule was recorded lack it and mean ``quantile``) and the detector's
parameters. :func:`load_detector` checks all of it and raises :class:`CxrclfError` for a
truncated, damaged or foreign file. A Gaussian's file is about D x D x 8 bytes: 13 MB for
1280 features, 130 MB for NASNet's 4032.

Calibrate on held-out validation images, never on the training images: with more
features than images the training images sit much closer to their fitted means than fresh
images of the same kind, so a threshold from them would flag most new in-distribution images.

``normalise=True`` fits and scores L2-normalised features instead (direction only, as in
cosine-similarity OOD methods). It is no default: measured, it loses power on synthetic
clouds and only trades one kind of catch for another on real films. Those measurements,
and what the Gaussian and energy scores catch on pretrained features, are in
docs/performance.md ("The out-of-distribution guard").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from cxrclf.errors import CxrclfError

if TYPE_CHECKING:
    from cxrclf.runs import GuardSettings

FILE_FORMAT = "cxrclf-ood-detector"
FILE_VERSION = "1"
DEFAULT_QUANTILE = 0.95
# How a threshold is read off n validation scores (threshold_from): "conformal" for runs trained
# now; "quantile" is what runs trained before the rule was recorded used, kept so that their
# stored thresholds keep their meaning.
THRESHOLD_RULES = ("conformal", "quantile")
DEFAULT_RULE = "conformal"
LEGACY_RULE = "quantile"
# Ledoit-Wolf's shrinkage tends to 0 with many more images than features; the floor keeps the
# covariance invertible whatever the data (a dead unit, a feature 0 for every training image,
# already gets some: 0.03 with 3000 images of 10 features).
MIN_SHRINKAGE = 1e-6


def threshold_from(scores: np.ndarray, quantile: float = DEFAULT_QUANTILE, rule: str = DEFAULT_RULE) -> float:
    """The threshold above which a score is flagged, from n in-distribution (validation) ``scores``.

    ``conformal`` (split-conformal; Vovk et al. 2005, Angelopoulos and Bates 2021): the k-th
    smallest score, k = ceil((n + 1) * quantile). For a new image exchangeable with the
    validation images, P(score > threshold) <= 1 - quantile whatever the scores' distribution
    (exactly 1 - k / (n + 1) for distinct scores), once n >= quantile / (1 - quantile) (19
    scores at 0.95). With fewer, k exceeds n and the threshold is the largest score, which
    flags a new image with probability 1 / (n + 1), more than 1 - quantile: no threshold read
    off so few scores can promise the rate.

    ``quantile``: ``np.quantile``'s interpolated empirical quantile (the rule of runs trained
    before the rule was recorded). Its false-alarm rate on new images exceeds 1 - quantile
    when n is small: about 8% for 0.95 with 26 validation images (tests/guard measure it).
    """
    quantile = _check_quantile(quantile)
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"rule must be one of {', '.join(THRESHOLD_RULES)}, got {rule!r}")
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("a threshold needs at least one validation score, got none")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"validation scores must be finite, got {int(np.sum(~np.isfinite(scores)))} NaN or infinite")
    if rule == LEGACY_RULE:
        return float(np.quantile(scores, quantile))
    return float(np.sort(scores)[min(conformal_rank(scores.size, quantile), scores.size) - 1])


def conformal_rank(count: int, quantile: float) -> int:
    """k = ceil((count + 1) * quantile): the rank (1 = smallest) of the split-conformal threshold
    among ``count`` scores; above ``count`` when they are too few to promise ``1 - quantile``.

    The product is rounded to 9 decimals first, so that a quantile written in decimals lands on
    the rank it means (20 * 0.95 is 19, whatever the last bit of the binary 0.95).
    """
    return math.ceil(round((count + 1) * quantile, 9))


def describe_threshold(quantile: float, rule: str, images: int) -> str:
    """How a guard's threshold was chosen, in words (for the training log and the model card)."""
    if rule == LEGACY_RULE:
        return f"the {quantile:.0%} quantile of {images} validation images' scores"
    rank = conformal_rank(images, quantile)
    if rank > images:
        return (f"the largest of {images} validation images' scores: too few for the split-conformal {quantile:.0%} threshold, "
                f"expected false alarms on images like them 1/{images + 1}")
    return (f"the split-conformal {quantile:.0%} threshold: the {_ordinal(rank)} smallest of {images} validation images' scores; "
            f"expected false alarms on images like them at most {1 - quantile:.0%}")


def calibrate_guard(detector: GaussianDetector, val_features: np.ndarray, train_images: int, quantile: float = DEFAULT_QUANTILE,
                    rule: str = DEFAULT_RULE) -> GuardSettings:
    """Set a fitted ``detector``'s threshold from the validation images' pooled features, and
    describe it as a run's ``config.json`` records it.

    ``train`` calls it on the validation features it has just computed; they are also what the
    run's ``reference.safetensors`` stores, so a run's guard can be recalibrated under another
    rule without its images (``benchmarks/ood.py`` does, for runs trained before the rule was
    recorded).
    """
    from cxrclf.runs import GuardSettings

    scores = detector.score(val_features)
    detector.calibrate(scores, quantile, rule)
    return GuardSettings(kind=detector.kind, threshold=float(detector.threshold), quantile=float(quantile), rule=rule,
                         feature_dim=int(detector.feature_dim), train_images=int(train_images), val_images=int(scores.size),
                         val_flag_rate=float(detector.flag(scores).mean()))


class Detector:
    """Shared threshold handling and file format; subclasses define ``score``."""

    kind: ClassVar[str]
    needs: ClassVar[str]  # "features" (pooled backbone features) or "logits"

    def __init__(self) -> None:
        self.threshold: float | None = None
        self.quantile: float | None = None
        self.rule: str | None = None

    def score(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def calibrate(self, scores: np.ndarray, quantile: float = DEFAULT_QUANTILE, rule: str = DEFAULT_RULE) -> Detector:
        """Set the threshold from in-distribution validation ``scores`` (see :func:`threshold_from`)."""
        self.threshold = threshold_from(scores, quantile, rule)
        self.quantile = float(quantile)
        self.rule = rule
        return self

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """True where a score lies above the threshold: the image is unlike the training images."""
        if self.threshold is None:
            raise ValueError(f"the {self.kind} detector has no threshold yet; call calibrate(validation_scores) first")
        return np.asarray(scores, dtype=np.float64) > self.threshold

    def save(self, path: str | Path) -> Path:
        """Write a ``.safetensors`` file (atomically: a temporary name, then a rename)."""
        from safetensors.numpy import save

        from cxrclf.io import write_bytes

        metadata = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "kind": self.kind,
            "threshold": "" if self.threshold is None else repr(float(self.threshold)),
            "quantile": "" if self.quantile is None else repr(float(self.quantile)),
            "rule": self.rule or "",
            **self._metadata(),
        }
        tensors = {name: np.ascontiguousarray(array) for name, array in self._tensors().items()}
        path = Path(path)
        write_bytes(path, save(tensors, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        """Read a file written by ``save``; a file of another kind is refused."""
        detector = load_detector(path)
        if not isinstance(detector, cls):
            raise CxrclfError(f"holds a detector of kind {detector.kind!r}, not {cls.kind!r}", path)
        return detector

    def _metadata(self) -> dict[str, str]:
        raise NotImplementedError

    def _tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold}, quantile={self.quantile}, rule={self.rule})"


class GaussianDetector(Detector):
    """Class-conditional Gaussians with a shared, Ledoit-Wolf-shrunk covariance on pooled features."""

    kind = "gaussian"
    needs = "features"

    def __init__(self, normalise: bool = False) -> None:
        super().__init__()
        self.normalise = bool(normalise)
        self.classes: np.ndarray | None = None          # (C,) int64 class indices
        self.means: np.ndarray | None = None            # (C, D) float64
        self.precision_factor: np.ndarray | None = None  # (D, D) float64, lower triangular, P = W^T W
        self.shrinkage: float | None = None
        self.train_count: int | None = None

    @property
    def feature_dim(self) -> int | None:
        return None if self.means is None else int(self.means.shape[1])

    def fit(self, features: np.ndarray, labels: np.ndarray) -> GaussianDetector:
        """Fit the class means and the shared shrunk covariance on training ``features`` (N, D)."""
        features = _as_matrix(features, "training features")
        labels = np.asarray(labels)
        if labels.shape != (features.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be {features.shape[0]} integer class indices, one per row of features, got shape {labels.shape} and dtype {labels.dtype}")
        if np.any(labels < 0):
            raise ValueError("labels must be class indices >= 0; drop the images outside the label scheme (label -1) before fitting")
        classes = np.unique(labels)
        if features.shape[0] <= classes.size:
            raise ValueError(f"fitting needs more training images than classes, got {features.shape[0]} images of {classes.size} classes")
        features = self._prepare(features)

        means = np.stack([features[labels == c].mean(axis=0) for c in classes])
        residuals = features - means[np.searchsorted(classes, labels)]
        covariance, shrinkage = shrunk_covariance(residuals)
        try:
            cholesky = np.linalg.cholesky(covariance)
        except np.linalg.LinAlgError as exc:  # only for non-finite input: the shrinkage floor keeps it positive definite
            raise CxrclfError(f"the shrunk feature covariance is not positive definite ({exc})") from exc
        identity = np.eye(covariance.shape[0])
        self.precision_factor = np.tril(_solve_lower(cholesky, identity))
        self.classes = classes.astype(np.int64)
        self.means = means
        self.shrinkage = float(shrinkage)
        self.train_count = int(features.shape[0])
        return self

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance (N, C) from each row of ``features`` to each class mean."""
        if self.means is None or self.precision_factor is None:
            raise ValueError("the gaussian detector is not fitted; call fit(features, labels) first")
        features = _as_matrix(features, "features")
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"the detector was fitted on {self.feature_dim} features per image, got {features.shape[1]}")
        features = self._prepare(features)
        whitened = features @ self.precision_factor.T
        whitened_means = self.means @ self.precision_factor.T
        out = np.empty((features.shape[0], self.means.shape[0]))
        for c, whitened_mean in enumerate(whitened_means):
            out[:, c] = np.sqrt(np.einsum("nd,nd->n", whitened - whitened_mean, whitened - whitened_mean))
        return out

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the nearest class mean, (N,) float64: higher = more out of distribution."""
        return self.distances(features).min(axis=1)

    def _prepare(self, features: np.ndarray) -> np.ndarray:
        if not self.normalise:
            return features
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return features / np.maximum(norms, np.finfo(np.float64).tiny)

    def _metadata(self) -> dict[str, str]:
        if self.means is None:
            raise ValueError("the gaussian detector is not fitted; nothing to save")
        return {
            "feature_dim": str(self.feature_dim),
            "class_count": str(self.means.shape[0]),
            "shrinkage": repr(self.shrinkage),
            "train_count": str(self.train_count),
            "normalise": "true" if self.normalise else "false",
        }

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"classes": self.classes, "means": self.means, "precision_factor": self.precision_factor}

    def __repr__(self) -> str:
        return (f"GaussianDetector(feature_dim={self.feature_dim}, classes={None if self.classes is None else self.classes.tolist()}, "
                f"shrinkage={self.shrinkage}, normalise={self.normalise}, threshold={self.threshold})")


class EnergyDetector(Detector):
    """Energy score ``-T logsumexp(logits / T)`` from the classifier's logits; nothing to fit."""

    kind = "energy"
    needs = "logits"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        self.temperature = float(temperature)

    def score(self, logits: np.ndarray) -> np.ndarray:
        """(N,) float64 energies: higher = the model is less sure any class fits."""
        logits = _as_matrix(logits, "logits") / self.temperature
        top = logits.max(axis=1, keepdims=True)
        return -self.temperature * (top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))

    def _metadata(self) -> dict[str, str]:
        return {}

    def _tensors(self) -> dict[str, np.ndarray]:
        return {"temperature": np.array([self.temperature], dtype=np.float64)}

    def __repr__(self) -> str:
        return f"EnergyDetector(temperature={self.temperature}, threshold={self.threshold})"


def shrunk_covariance(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrunk covariance of already centred rows ``centred`` (N, D), and the shrinkage.

    The same estimate as ``sklearn.covariance.ledoit_wolf(centred, assume_centered=True)``, with
    the shrinkage floored at :data:`MIN_SHRINKAGE`; memory is D x D whatever N is.
    """
    count, dim = centred.shape
    covariance = centred.T @ centred / count
    scale = float(np.trace(covariance)) / dim
    if not scale > 0:
        raise CxrclfError("the training features do not vary within any class (every image of a class gives the same features); "
                          "is the model's backbone untrained or broken?")
    squared_norms = np.einsum("nd,nd->n", centred, centred)
    frobenius_squared = float(np.sum(covariance**2))  # ||S||_F^2
    # beta: the estimated variance of S's entries, summed (Ledoit and Wolf's b^2, scaled by 1/D)
    beta = (float(np.sum(squared_norms**2)) / count - frobenius_squared) / (dim * count)
    delta = (frobenius_squared - 2 * scale * float(squared_norms.sum()) / count + dim * scale**2) / dim  # ||S - scale I||_F^2 / D
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    shrinkage = max(shrinkage, MIN_SHRINKAGE)
    covariance *= 1.0 - shrinkage
    covariance[np.diag_indices(dim)] += shrinkage * scale
    return covariance, shrinkage


def load_detector(path: str | Path) -> Detector:
    """The detector saved at ``path``, whatever its kind, after checking shapes and metadata."""
    from cxrclf.io import read_tensors

    path = Path(path)
    metadata, tensors = read_tensors(path, "OOD detector", "OOD detector file not found")

    def fail(reason: str) -> CxrclfError:
        return CxrclfError(f"OOD detector file damaged or foreign: {reason}; refit it (train again, or rerun the guard's fitting)", path)

    if metadata.get("format") != FILE_FORMAT:
        raise fail(f"format is {metadata.get('format')!r}, expected {FILE_FORMAT!r}")
    if metadata.get("version") != FILE_VERSION:
        raise fail(f"version {metadata.get('version')!r}, this cxrclf reads version {FILE_VERSION}")
    kind = metadata.get("kind")
    try:
        if kind == GaussianDetector.kind:
            detector: Detector = _gaussian_from(tensors, metadata)
        elif kind == EnergyDetector.kind:
            detector = _energy_from(tensors)
        else:
            raise ValueError(f"unknown detector kind {kind!r}")
        threshold, quantile = metadata.get("threshold"), metadata.get("quantile")
        if threshold is None or quantile is None or bool(threshold) != bool(quantile):
            raise ValueError("threshold and quantile must both be present or both be empty")
        rule = metadata.get("rule", LEGACY_RULE if threshold else "")  # files written before the rule was recorded
        if bool(rule) != bool(threshold) or (rule and rule not in THRESHOLD_RULES):
            raise ValueError(f"rule {rule!r} does not fit threshold {threshold!r} (one of {', '.join(THRESHOLD_RULES)} with a threshold, empty without)")
        if threshold:
            detector.threshold = float(threshold)
            detector.quantile = _check_quantile(float(quantile))
            detector.rule = rule
            if not math.isfinite(detector.threshold):
                raise ValueError(f"threshold {threshold!r} is not finite")
    except (ValueError, KeyError, TypeError) as exc:
        raise fail(str(exc)) from exc
    return detector


def _gaussian_from(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> GaussianDetector:
    expected = {"classes", "means", "precision_factor"}
    if set(tensors) != expected:
        raise ValueError(f"tensors {sorted(tensors)}, expected {sorted(expected)}")
    classes, means, factor = tensors["classes"], tensors["means"], tensors["precision_factor"]
    dim, class_count = int(metadata["feature_dim"]), int(metadata["class_count"])
    if classes.dtype != np.int64 or classes.shape != (class_count,):
        raise ValueError(f"classes has shape {classes.shape} and dtype {classes.dtype}, expected ({class_count},) int64")
    for name, array, shape in (("means", means, (class_count, dim)), ("precision_factor", factor, (dim, dim))):
        if array.dtype != np.float64 or array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape} and dtype {array.dtype}, expected {shape} float64")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} holds NaN or infinite values")
    if np.any(np.diag(factor) <= 0) or np.any(np.triu(factor, 1)):
        raise ValueError("precision_factor is not lower triangular with a positive diagonal")
    normalise = metadata["normalise"]
    if normalise not in ("true", "false"):
        raise ValueError(f"normalise is {normalise!r}, expected 'true' or 'false'")
    detector = GaussianDetector(normalise=normalise == "true")
    detector.classes, detector.means, detector.precision_factor = classes, means, factor
    detector.shrinkage = float(metadata["shrinkage"])
    detector.train_count = int(metadata["train_count"])
    if not 0 <= detector.shrinkage <= 1 or detector.train_count <= class_count:
        raise ValueError(f"shrinkage {detector.shrinkage} or training image count {detector.train_count} out of range")
    return detector


def _energy_from(tensors: dict[str, np.ndarray]) -> EnergyDetector:
    if set(tensors) != {"temperature"}:
        raise ValueError(f"tensors {sorted(tensors)}, expected ['temperature']")
    temperature = tensors["temperature"]
    if temperature.dtype != np.float64 or temperature.shape != (1,):
        raise ValueError(f"temperature has shape {temperature.shape} and dtype {temperature.dtype}, expected (1,) float64")
    return EnergyDetector(float(temperature[0]))


def _solve_lower(lower: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``lower^-1 @ right`` for a lower-triangular ``lower`` (forward substitution)."""
    try:
        from scipy.linalg import solve_triangular
    except ImportError:  # scipy comes with scikit-learn and scikit-image; a general solve is the fallback
        return np.linalg.solve(lower, right)
    return solve_triangular(lower, right, lower=True)


def _as_matrix(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array (images x values), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} hold {int(np.sum(~np.isfinite(array)))} NaN or infinite values")
    return array


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _check_quantile(quantile: float) -> float:
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must lie strictly between 0 and 1 (0.95 flags about 5 % of in-distribution images), got {quantile!r}")
    return float(quantile)
