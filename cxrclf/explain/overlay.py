"""The explanation picture: the model's input and the overlay side by side, probabilities in the title,
a colour bar beside a heat map, and no empty margins (the figure is cropped to what it draws)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrclf.io import write_bytes


CAM_COLOURMAP = "jet"

# The layout, in inches at 100 dpi: two square panels under two lines of title, placed by hand
# so that nothing is left empty (the figure used to keep a fifth of its height blank below the
# panels); a heat map adds its colour bar to the right. LIME: 900 x 500 pixels; Grad-CAM: 980 x 500.
PANEL = 4.18
TOP = 0.72      # the two-line title and the panel titles
BOTTOM = 0.1     # room for the colour bar's lowest tick label
GAP = 0.15
MARGIN = 0.245
BAR = 0.8       # the colour bar with its ticks and label
DPI = 100


def _figure(plane: np.ndarray, overlay_rgb: np.ndarray, title: str, subtitle: str, colorbar: str | None = None) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = 2 * MARGIN + 2 * PANEL + GAP + (BAR if colorbar else 0.0), TOP + PANEL + BOTTOM
    fig = plt.figure(figsize=(width, height))

    def box(left: float, side: float) -> list[float]:  # inches -> figure fractions
        return [left / width, BOTTOM / height, side / width, PANEL / height]

    left = fig.add_axes(box(MARGIN, PANEL))
    right = fig.add_axes(box(MARGIN + PANEL + GAP, PANEL))
    left.imshow(plane, cmap="gray", vmin=0, vmax=255)
    left.set_title("model input", fontsize=10)
    right.imshow(overlay_rgb)
    right.set_title(subtitle, fontsize=10)
    for ax in (left, right):
        ax.axis("off")
    if colorbar:
        # the overlay blends grey with the colour map; the bar shows the map's own colours for 0..1
        scale = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, 1.0), cmap=CAM_COLOURMAP)
        bar = fig.colorbar(scale, cax=fig.add_axes(box(MARGIN + 2 * PANEL + GAP + 0.1, 0.15)))
        bar.set_label(colorbar, fontsize=9)
        bar.ax.tick_params(labelsize=8)
    fig.suptitle(title.replace(" | ", "\n", 1), fontsize=10, y=1 - 0.05 / height, va="top")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
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
    colours = matplotlib.colormaps[CAM_COLOURMAP](heatmap)[..., :3]
    return np.clip(0.55 * grey + 0.45 * colours, 0, 1)


def write(path: Path, plane: np.ndarray, overlay_rgb: np.ndarray, title: str, subtitle: str, colorbar: str | None = None) -> Path:
    """The PNG: the model's input and the overlay side by side; ``colorbar`` labels the heat map's scale (Grad-CAM)."""
    write_bytes(Path(path), _figure(plane, overlay_rgb, title, subtitle, colorbar))
    return Path(path)
