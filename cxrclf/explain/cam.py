"""Grad-CAM (class activation maps, the paper's Fig. 8) for any convolutional model of the zoo.

The target layer is found without configuration: the zoo's models expose
``forward_features`` (the backbone's last feature map) and ``forward_head``, so the
gradient of the target logit is taken with respect to that map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrclf.errors import CxrclfError

__all__ = ["grad_cam", "top_regions"]


def grad_cam(predictor, plane: np.ndarray, target: int) -> np.ndarray:
    """Heatmap in [0, 1] of the plane's shape: where evidence for ``target`` lies."""
    model = predictor.model
    x = predictor.tensor(plane[None])
    with torch.enable_grad():
        features = model.forward_features(x)
        if features.ndim != 4:
            raise CxrclfError(f"Grad-CAM needs a convolutional feature map, but {predictor.config.model.name} gives shape {tuple(features.shape)}; use --method lime")
        features = features.detach().float().requires_grad_(True)
        logits = model.forward_head(features)
        logits[0, target].backward()
    weights = features.grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=plane.shape, mode="bilinear", align_corners=False)[0, 0].detach().cpu().numpy()
    # min-max scaling, as Grad-CAM maps are usually shown: the weakest evidence becomes 0
    low, high = float(cam.min()), float(cam.max())
    return ((cam - low) / (high - low)).astype(np.float32) if high > low else np.zeros_like(cam, dtype=np.float32)


def top_regions(heatmap: np.ndarray, level: float = 0.5, count: int = 5) -> list[dict]:
    """Connected regions above ``level``: mean heat, area fraction and centre (fractions of width/height)."""
    import cv2

    labels_count, labels = cv2.connectedComponents((heatmap >= level).astype(np.uint8))
    regions = []
    h, w = heatmap.shape
    for label in range(1, labels_count):
        ys, xs = np.nonzero(labels == label)
        regions.append({"weight": float(heatmap[ys, xs].mean()), "area": float(len(xs) / (h * w)), "center": [float(xs.mean() / w), float(ys.mean() / h)]})
    return sorted(regions, key=lambda r: -r["weight"] * r["area"])[:count]
