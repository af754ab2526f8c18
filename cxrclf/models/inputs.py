"""From a preprocessed image to the network's input: the one resize and the one normalisation.

Training, evaluation, predict and explain all call these, so an image reaches the network
identically whichever command feeds it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["model_input", "to_model_plane"]


def to_model_plane(image: np.ndarray, input_size: int) -> np.ndarray:
    """A preprocessed uint8 image (H, W[, C]) -> one (input_size, input_size) uint8 plane."""
    import cv2

    plane = image[..., 0] if image.ndim == 3 else image
    if plane.shape != (input_size, input_size):
        shrinking = plane.shape[0] > input_size
        plane = cv2.resize(plane, (input_size, input_size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(plane)


def model_input(planes, in_chans: int, mean, std):
    """(N, S, S) planes, uint8 or float in [0, 1], tensor on any device -> normalised (N, C, S, S).

    Grey is replicated to the model's channels; channels_last, as the models run fastest so.
    """
    import torch

    x = planes.float().div_(255.0) if planes.dtype == torch.uint8 else planes.float()
    x = x.unsqueeze(1).expand(-1, in_chans, -1, -1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)
