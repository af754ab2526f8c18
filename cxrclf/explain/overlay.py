"""The explanation picture: the model's input and the overlay side by side, probabilities in the title."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrclf.io import write_bytes


def _figure(plane: np.ndarray, overlay_rgb: np.ndarray, title: str, subtitle: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 5.0))
    left.imshow(plane, cmap="gray", vmin=0, vmax=255)
    left.set_title("model input")
    right.imshow(overlay_rgb)
    right.set_title(subtitle)
    for ax in (left, right):
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def lime_overlay(plane: np.ndarray, segments: np.ndarray, weights: dict[int, float], count: int = 5) -> np.ndarray:
    """The ``count`` superpixels most for the class in green and most against it in red (as in the
    paper's Fig. 7), shaded by weight and outlined; the rest of the image is left grey."""
    from skimage.segmentation import find_boundaries

    grey = np.repeat(plane[..., None].astype(np.float32) / 255.0, 3, axis=2)
    ranked = sorted(weights.items(), key=lambda kv: kv[1])
    chosen = [kv for kv in ranked[-count:] if kv[1] > 0] + [kv for kv in ranked[:count] if kv[1] < 0]
    scale = max((abs(w) for _, w in chosen), default=1.0) or 1.0
    out = grey.copy()
    shown = np.zeros(segments.shape, bool)
    for segment, weight in chosen:
        member = segments == segment
        colour = np.array([0.0, 1.0, 0.0]) if weight > 0 else np.array([1.0, 0.0, 0.0])
        strength = 0.25 + 0.4 * abs(weight) / scale
        out[member] = grey[member] * (1 - strength) + colour * strength
        shown |= member
    out[find_boundaries(np.where(shown, segments, -1), mode="inner") & shown] = [1.0, 1.0, 0.0]
    return np.clip(out, 0, 1)


def cam_overlay(plane: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    import matplotlib

    grey = np.repeat(plane[..., None].astype(np.float32) / 255.0, 3, axis=2)
    colours = matplotlib.colormaps["jet"](heatmap)[..., :3]
    return np.clip(0.55 * grey + 0.45 * colours, 0, 1)


def write(path: Path, plane: np.ndarray, overlay_rgb: np.ndarray, title: str, subtitle: str) -> Path:
    write_bytes(Path(path), _figure(plane, overlay_rgb, title, subtitle))
    return Path(path)
