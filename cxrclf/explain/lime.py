"""LIME (the paper's Fig. 7) with the ``lime`` package, batched and seeded.

Superpixels come from SLIC on the grey image (lime's default quickshift is tuned for
colour photographs). A hidden superpixel is filled with the image's median grey, not
black: a black hole is a strong, unnatural signal of its own, and with it the weights on a
synthetic image with a known signal region fell to chance (docs/performance.md, "cxrclf
explain"). The classifier function runs
the run's model on whole batches, and both the sampling and the explainer are seeded, so
one input gives one explanation.
"""

from __future__ import annotations

import contextlib
import io
from typing import Callable

import numpy as np

# Images per forward pass. On the CPU, 16 was fastest for tf_efficientnet_lite0 at 224 px
# (54 img/s against 48 at 8 and 47 at 32: bigger batches spill the cache); a GPU wants more.
CPU_BATCH = 16
GPU_BATCH = 128


def default_batch(predictor) -> int:
    return GPU_BATCH if predictor.device.type == "cuda" else CPU_BATCH


def segments_for(plane: np.ndarray, count: int = 60) -> np.ndarray:
    from skimage.segmentation import slic

    return slic(plane.astype(np.float32) / 255.0, n_segments=count, compactness=0.08, channel_axis=None, start_label=0, enforce_connectivity=True)


def explain_lime(predictor, plane: np.ndarray, target: int, num_samples: int = 1000, seed: int = 0, batch_size: int | None = None, segments: int = 60,
                 progress: Callable[[int, int], None] | None = None):
    """(superpixel map, weight per superpixel) for class ``target``.

    ``progress(done, num_samples)`` is called after each batch of perturbed images the model
    has scored (the model's time is nearly all of LIME's time), and once with ``(0, num_samples)``
    before the first.
    """
    from lime import lime_image

    batch_size = batch_size or default_batch(predictor)
    scored = 0

    def classify(images: np.ndarray) -> np.ndarray:
        nonlocal scored
        probabilities = predictor.probabilities(images[..., 0], batch_size)
        scored += len(images)
        if progress:
            progress(min(scored, num_samples), num_samples)
        return probabilities

    if progress:
        progress(0, num_samples)

    segmentation = segments_for(plane, segments)
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    with contextlib.redirect_stderr(io.StringIO()):  # lime draws its own tqdm bar
        explanation = explainer.explain_instance(
            np.repeat(plane[..., None], 3, axis=2), classify, labels=(target,), top_labels=None, hide_color=float(np.median(plane)),
            num_samples=num_samples, batch_size=batch_size, segmentation_fn=lambda image: segmentation,
            random_seed=seed,
        )
    return explanation.segments, dict(explanation.local_exp[target])


def weight_map(segments: np.ndarray, weights: dict[int, float]) -> np.ndarray:
    out = np.zeros(segments.shape, dtype=np.float32)
    for segment, weight in weights.items():
        out[segments == segment] = weight
    return out


def top_regions(segments: np.ndarray, weights: dict[int, float], count: int = 10) -> list[dict]:
    h, w = segments.shape
    out = []
    for segment, weight in sorted(weights.items(), key=lambda kv: -abs(kv[1]))[:count]:
        ys, xs = np.nonzero(segments == segment)
        out.append({"segment": int(segment), "weight": float(weight), "area": float(len(xs) / (h * w)), "center": [float(xs.mean() / w), float(ys.mean() / h)]})
    return out
