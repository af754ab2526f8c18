"""Random rotation, scaling and shift for oversampled copies, on a batch tensor, seeded."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(images: torch.Tensor, generator: torch.Generator, degrees: float = 10.0, scale: tuple[float, float] = (0.9, 1.1), shift: float = 0.08) -> torch.Tensor:
    """Apply an independent random affine map to each image of an (N, C, H, W) float batch.

    The draws come from ``generator`` (on the CPU), so the result does not depend on the device.
    """
    n = images.shape[0]
    if n == 0:
        return images
    u = torch.rand((n, 4), generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(degrees)
    factor = scale[0] + u[:, 1] * (scale[1] - scale[0])
    tx, ty = (u[:, 2] * 2 - 1) * shift * 2, (u[:, 3] * 2 - 1) * shift * 2  # grid units span 2
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1)
    grid = F.affine_grid(theta.to(device=images.device, dtype=images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
