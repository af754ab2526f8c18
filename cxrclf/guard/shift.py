"""Is a batch of images, as a whole, drawn from the data the model was validated on?

The per-image guard (:mod:`cxrclf.guard.detector`) asks whether one image's features lie
far from the training images. Images from a new hospital do not, one by one: they sit
inside the training features. As a batch they do: their features gather in one corner of
that cloud (an archive can be told from its features, as the source probe in every
evaluation report shows). A two-sample test on the model's pooled backbone features sees it
(Rabanser, Guennemann and Lipton 2019, "Failing loudly"; Lopez-Paz and Oquab 2017,
"Revisiting classifier two-sample tests").

:func:`shift_test` compares a batch with a :class:`Reference` (the pooled features of the
run's validation images, which ``train`` stores in ``reference.safetensors``: images the
weights were not fitted on, since fitted images sit closer to the model) by a classifier
two-sample test. A domain classifier learns to tell the batch from the reference: kernel
ridge regression of the side (+1 batch, -1 reference) on the features, standardised over
both sets together, with a linear kernel (``K = Z Z^T / D + 1``, the 1 an intercept) and
strength ``RIDGE_PER_IMAGE`` x the number of images. Its effect size is the area under the
ROC curve of its leave-one-out predictions: 0.5 (or a little below: leave-one-out is biased
low) when the two sets cannot be told apart, 1 when they always can. The p-value is the
share of random relabellings of the pooled images (``PERMUTATIONS``, seeded: the same inputs
give the same p-value) whose AUC reaches the observed one. Standardising uses both sets
without their labels, so the permutation test stays exact; and the leave-one-out
predictions are a linear function of the labels (``(H y - diag(H) y) / (1 - diag(H))``, ``H
= K (K + lambda I)^-1``), so every permutation costs one matrix product, not a refit.

Chosen over the kernel MMD^2 test by measurement on a real run's features (docs/performance.md,
``benchmarks/shift_test.py``): the same false-positive rate, more power on subtle shifts (a
few films of an archive the run never saw).

A reference drawn in one mix of sources and a batch in another differ for real: the result
says which sources the reference holds, and :meth:`Reference.select` narrows it to some.

numpy and scipy (scikit-learn's own dependency); importing this module imports neither torch
nor scikit-learn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxrclf.errors import CxrclfError

__all__ = ["ALPHA", "MAX_IMAGES", "MIN_IMAGES", "PERMUTATIONS", "Reference", "ShiftResult", "check_batch", "classifier_permutation_test", "describe", "shift_test"]

FILE_FORMAT = "cxrclf-shift-reference"
FILE_VERSION = "1"
ALPHA = 0.01            # "shifted" below this p-value
PERMUTATIONS = 1000     # the smallest p-value is 1 / 1001
MIN_IMAGES = 20         # predict and evaluate test batches (and sources) of at least this many images
MAX_IMAGES = 1000       # a side larger than this is subsampled (seeded) to bound the cost: the kernel is (n + m)^2
RIDGE_PER_IMAGE = 0.02  # the domain classifier's ridge strength, per pooled image (chosen by measurement: docs/performance.md)
_CHUNK = 250            # permutations per matrix product (bounds memory at (n + m) x 250)


class Reference:
    """Pooled features of images the model was not fitted on, with the source of each."""

    def __init__(self, features: np.ndarray, sources: Iterable[str], split: str = "val"):
        features = np.asarray(features)
        sources = np.asarray([str(s) for s in sources], dtype=object)
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
            raise ValueError(f"reference features must be a non-empty 2-D array (images x features), got shape {features.shape}")
        if len(sources) != len(features):
            raise ValueError(f"one source per reference image: {len(features)} images, {len(sources)} sources")
        if not np.all(np.isfinite(features)):
            raise ValueError("reference features hold NaN or infinite values")
        self.features, self.sources, self.split = features, sources, str(split)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def counts(self) -> dict[str, int]:
        """Images per source, by name."""
        names, counts = np.unique(self.sources.astype(str), return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}

    def describe(self) -> str:
        """``"27 validation images: cohen 10, montgomery 5, rsna 12"``."""
        split = {"val": "validation"}.get(self.split, self.split)
        return f"{len(self)} {split} images: " + ", ".join(f"{name} {count}" for name, count in self.counts.items())

    def select(self, sources: Iterable[str] | None) -> "Reference":
        """The reference narrowed to ``sources`` (all of it for None); an unknown source is a one-line error."""
        if sources is None:
            return self
        wanted = list(dict.fromkeys(str(s).strip() for s in sources if str(s).strip()))
        if not wanted:
            raise CxrclfError("name at least one reference source (for example --reference cohen,rsna)")
        unknown = [s for s in wanted if s not in self.counts]
        if unknown:
            held = ", ".join(f"{name} ({count} images)" for name, count in self.counts.items())
            raise CxrclfError(f"the run's reference holds no source named {', '.join(unknown)}; it holds {held}")
        keep = np.isin(self.sources.astype(str), wanted)
        return Reference(self.features[keep], self.sources[keep], self.split)

    def save(self, path: str | Path) -> Path:
        """Write ``reference.safetensors`` (atomically): features (float16 where they fit, else float32)
        and each image's source as an index into the ``sources`` metadata (a JSON list)."""
        from safetensors.numpy import save

        from cxrclf.io import write_bytes

        names = sorted(set(self.sources.astype(str)))
        index = np.searchsorted(np.array(names), self.sources.astype(str)).astype(np.int32)
        features = np.asarray(self.features, dtype=np.float32)
        if np.abs(features).max() < np.finfo(np.float16).max / 2:
            features = features.astype(np.float16)  # half the size; the test needs no more than 3 digits
        metadata = {"format": FILE_FORMAT, "version": FILE_VERSION, "split": self.split, "sources": json.dumps(names)}
        path = Path(path)
        write_bytes(path, save({"features": np.ascontiguousarray(features), "source_index": index}, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Reference":
        """Read a file written by :meth:`save`; a damaged or foreign file is a one-line error."""
        from cxrclf.io import read_tensors

        path = Path(path)
        metadata, tensors = read_tensors(path, "shift reference", "the run's shift reference is missing (reference.safetensors); train the run again")
        try:
            if metadata.get("format") != FILE_FORMAT or metadata.get("version") != FILE_VERSION:
                raise ValueError(f"format {metadata.get('format')!r} version {metadata.get('version')!r}, expected {FILE_FORMAT!r} {FILE_VERSION}")
            names = json.loads(metadata["sources"])
            features, index = tensors["features"], tensors["source_index"]
            if set(tensors) != {"features", "source_index"} or features.dtype not in (np.float16, np.float32):
                raise ValueError(f"tensors {sorted(tensors)} of {features.dtype}, expected features (float16 or float32) and source_index")
            if not isinstance(names, list) or index.dtype != np.int32 or index.shape != (len(features),) or index.min() < 0 or index.max() >= len(names):
                raise ValueError("source_index does not index the sources")
            return cls(features.astype(np.float32), np.array(names, dtype=object)[index], metadata.get("split", "val"))
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            raise CxrclfError(f"shift reference damaged or foreign ({exc}); train the run again", path) from exc


@dataclass(frozen=True)
class ShiftResult:
    """One test: the batch against the reference."""
    images: int                        # batch images tested
    reference_images: int              # reference images tested against
    reference_sources: dict[str, int]  # of the reference images tested against, per source
    statistic: str                     # "classifier_auc": the domain classifier's leave-one-out AUC
    effect: float                      # the observed AUC
    null_mean: float                   # the permutations' mean AUC (about 0.5, a little below)
    null_99: float                     # ... and their 99th percentile: an effect above it is shifted at about alpha 0.01
    p_value: float
    permutations: int
    seed: int
    alpha: float
    subsampled: bool                   # a side was larger than MAX_IMAGES and was subsampled

    @property
    def shifted(self) -> bool:
        return self.p_value < self.alpha

    def to_dict(self) -> dict:
        return asdict(self) | {"shifted": self.shifted}

    def sentence(self) -> str:
        return describe(self.to_dict())


def describe(result: dict) -> str:
    """A test's result (:meth:`ShiftResult.to_dict`) in one line:
    ``p = 0.0010, domain classifier AUC 0.99 (...); 53 images against 27 reference images (cohen 14, ...)``."""
    reference = ", ".join(f"{name} {count}" for name, count in result["reference_sources"].items())
    return (f"p = {result['p_value']:.4f}, domain classifier AUC {result['effect']:.2f} (by chance {result['null_mean']:.2f}, the permutations' "
            f"99th percentile {result['null_99']:.2f}); {result['images']} images against {result['reference_images']} reference images ({reference})")


def check_batch(features: np.ndarray, reference: Reference | None, sources: Iterable[str] | None = None, minimum: int = MIN_IMAGES) -> dict:
    """The shift test of a batch's pooled ``features`` against ``reference`` (narrowed to ``sources``), as a dict.

    ``{"tested": true, ...ShiftResult.to_dict()}``, or ``{"tested": false, "images", "reason"}``
    for a run without a reference (None) or a batch of fewer than ``minimum`` images (fewer
    than :data:`MIN_IMAGES` show only large shifts: testing them on every call would add noise).
    """
    images = int(len(features))
    if images < minimum:
        return {"tested": False, "images": images, "reason": f"fewer than {minimum} images"}
    if reference is None:
        return {"tested": False, "images": images, "reason": "the run stores no shift reference (trained before cxrclf stored one)"}
    return {"tested": True} | shift_test(features, reference.select(sources)).to_dict()


def shift_test(batch: np.ndarray, reference: Reference, permutations: int = PERMUTATIONS, seed: int = 0, alpha: float = ALPHA) -> ShiftResult:
    """Test whether the ``batch`` features (N, D) come from the distribution of ``reference``'s (M, D)."""
    batch = np.asarray(batch, dtype=np.float64)
    if batch.ndim != 2 or batch.shape[1] != reference.feature_dim:
        raise CxrclfError(f"the batch's features (shape {batch.shape}) do not match the reference's {reference.feature_dim} per image: "
                          "the reference was made by another model")
    if len(batch) < 2 or len(reference) < 2:
        raise CxrclfError(f"a shift test needs at least 2 images on each side, got {len(batch)} against {len(reference)} reference images")
    rng = np.random.default_rng(seed)
    subsampled = len(batch) > MAX_IMAGES or len(reference) > MAX_IMAGES
    if len(batch) > MAX_IMAGES:
        batch = batch[np.sort(rng.choice(len(batch), MAX_IMAGES, replace=False))]
    if len(reference) > MAX_IMAGES:
        keep = np.sort(rng.choice(len(reference), MAX_IMAGES, replace=False))
        reference = Reference(reference.features[keep], reference.sources[keep], reference.split)
    effect, p_value, null = classifier_permutation_test(batch, reference.features, permutations, seed)
    return ShiftResult(images=len(batch), reference_images=len(reference), reference_sources=reference.counts, statistic="classifier_auc",
                       effect=float(effect), null_mean=float(null.mean()), null_99=float(np.quantile(null, 0.99)), p_value=float(p_value),
                       permutations=int(permutations), seed=int(seed), alpha=float(alpha), subsampled=bool(subsampled))


def classifier_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0,
                                ridge_per_image: float = RIDGE_PER_IMAGE) -> tuple[float, float, np.ndarray]:
    """(leave-one-out AUC of a ridge domain classifier telling ``x`` (n, D) from ``y`` (m, D), permutation p-value,
    the permutations' AUCs).

    ``p = (1 + #{null >= observed}) / (1 + permutations)``: exact under exchangeability, never 0.
    """
    from scipy.stats import rankdata

    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise ValueError(f"permutations must be a positive integer, got {permutations!r}")
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"a two-sample test needs at least 2 images on each side, got {n} and {m}")
    pooled = np.vstack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)])
    total = n + m
    spread = pooled.std(axis=0)
    pooled = (pooled - pooled.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    kernel = pooled @ pooled.T / pooled.shape[1] + 1.0
    strength = ridge_per_image * total
    # H = K (K + lambda I)^-1 = I - lambda (K + lambda I)^-1: the leave-one-out predictions are linear in the labels
    hat = np.eye(total) - strength * np.linalg.inv(kernel + strength * np.eye(total))
    leverage = np.diag(hat).copy()[:, None]
    rng = np.random.default_rng(seed)

    def aucs(members: np.ndarray) -> np.ndarray:
        """The leave-one-out AUC of each column's labelling (1 for the first sample's images)."""
        labels = 2.0 * members - 1.0
        left_out = (hat @ labels - leverage * labels) / (1.0 - leverage)
        ranks = rankdata(left_out, axis=0)
        return ((ranks * members).sum(axis=0) - n * (n + 1) / 2.0) / (n * m)

    observed = np.zeros((total, 1))
    observed[:n] = 1.0
    effect = float(aucs(observed)[0])
    null = np.empty(permutations)
    for start in range(0, permutations, _CHUNK):
        count = min(_CHUNK, permutations - start)
        chosen = rng.random((count, total)).argsort(axis=1)[:, :n]
        members = np.zeros((total, count))
        members[chosen.T, np.arange(count)[None, :]] = 1.0
        null[start:start + count] = aucs(members)
    p_value = (1.0 + float(np.sum(null >= effect - 1e-12))) / (1.0 + permutations)
    return effect, p_value, null
