"""A trained run as a function from images to class probabilities: the one inference path.

``evaluate``, ``predict`` and ``explain`` all go through :class:`Predictor`, so an image
gets the same probabilities whichever command asks (predict's numbers equal the row of
evaluate's predictions.csv).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxrclf.choices import Device, resolve_device
from cxrclf.errors import CxrclfError
from cxrclf.models.inputs import model_input, to_model_plane
from cxrclf.preprocess.params import PreprocessParams
from cxrclf.runs import RunFolder

__all__ = ["Predictor", "plane_from_file"]


def plane_from_file(task: tuple[str, dict | None, int]) -> np.ndarray | str:
    """One image file -> the model's input plane, or the reason it cannot be read.

    ``task`` is (path, preprocessing parameters or None for an already preprocessed image,
    input size); a module-level function so that it runs in worker processes.
    """
    from cxrclf.data import imageio
    from cxrclf.preprocess.pipeline import preprocess_image

    path, params, size = task
    try:
        image = imageio.read_image(path)
        if params is not None:
            image = preprocess_image(image, PreprocessParams(**params))
        return to_model_plane(image, size)
    except CxrclfError as exc:
        return exc.reason
    except Exception as exc:  # a pathological image must not stop the batch
        return f"cannot process image ({exc.__class__.__name__}: {exc})"


class Predictor:
    """A finished run's model with its preprocessing, normalisation and classes (and guard, where it has one)."""

    def __init__(self, run: Path | RunFolder, device: Device | str = Device.auto, allow_unfinished: bool = False):
        self.device = resolve_device(device)
        self.folder = run if isinstance(run, RunFolder) else RunFolder(Path(run))
        self.run = self.folder.path
        self.model, self.config = self.folder.load(device=str(self.device), allow_unfinished=allow_unfinished)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.params: PreprocessParams = self.config.preprocess
        self.class_names: list[str] = self.config.class_names
        self.input_size: int = self.config.model.input_size
        self.in_chans: int = self.config.model.in_chans
        self.mean = torch.tensor(self.config.model.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.config.model.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def plane_from_decoded(self, image: np.ndarray) -> np.ndarray:
        """A decoded X-ray (any size, uint8/uint16) -> the model's uint8 input plane."""
        from cxrclf.preprocess.pipeline import preprocess_image

        return to_model_plane(preprocess_image(image, self.params), self.input_size)

    def plane_from_preprocessed(self, image: np.ndarray) -> np.ndarray:
        return to_model_plane(image, self.input_size)

    def tensor(self, planes: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 planes (N, S, S) or float planes in [0, 1] -> normalised (N, C, S, S) input."""
        x = planes if isinstance(planes, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(planes))
        return model_input(x.to(self.device), self.in_chans, self.mean, self.std)

    @torch.inference_mode()
    def probabilities(self, planes: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Softmax probabilities (N, classes) for uint8 or [0, 1] float planes."""
        out = []
        autocast = self.device.type == "cuda"
        for start in range(0, len(planes), batch_size):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = self.model(self.tensor(planes[start:start + batch_size]))
            out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), dtype=np.float32)
