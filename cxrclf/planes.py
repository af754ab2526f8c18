"""From an image file to the network's input plane: decode, input checks, the run's preprocessing, resize.

The one path every consumer of a run takes, whichever backend then runs the network:
:class:`cxrclf.inference.RunPredictor` (PyTorch) and :class:`cxrclf.runtime.OnnxPredictor`
(onnxruntime) both classify the planes this module makes. It imports neither torch nor
timm, so that an environment with onnxruntime alone can predict (a run that crops to the
lungs still needs PyTorch for its segmenter, which :func:`cxrclf.segment.run.segmenter_for`
loads and :func:`cxrclf.preprocess.pipeline.preprocess_image` is handed; the lung-based input
checks run the built-in segmenter's graph in onnxruntime, :mod:`cxrclf.segment.ort`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxrclf.errors import CxrclfError

__all__ = ["Plane", "PlaneTask", "plane_from_file"]


@dataclass(frozen=True)
class PlaneTask:
    """What a worker is given: one file, the run's preprocessing (None: the image is preprocessed
    already), the model's input size, and the views the run was trained on (None: no view check)."""

    path: str
    params: dict | None
    size: int
    views: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Plane:
    """What a worker answers: the model's input plane and the input checks' reasons, or the file's error."""

    plane: Any = None                 # np.ndarray (size, size, channels) uint8, None with an error
    warnings: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def plane_from_file(task: PlaneTask) -> Plane:
    """One image file -> its :class:`Plane`: the model's input plane and the input checks' reasons, or its error.

    With the task's views, an AP film given to a PA run is flagged (from the header, or from
    the pixels where the header names no view). A module-level function so that it runs in
    worker processes. Any failure is this file's error: it never stops a batch.
    """
    from cxrclf.data import imageio
    from cxrclf.guard.checks import input_warnings
    from cxrclf.models.inputs import to_model_plane
    from cxrclf.preprocess.params import PreprocessParams
    from cxrclf.preprocess.pipeline import preprocess_image
    from cxrclf.segment.run import segmenter_for

    path, params, size = task.path, task.params, task.size
    try:
        decoded = imageio.decode(path)
        # an original image gets the lung checks too (a preprocessed one passed them, or was never checked)
        warnings = input_warnings(decoded.pixels, decoded.info, trained_views=task.views, lungs=params is not None)
        image = decoded.pixels
        if params is not None:
            preprocessing = PreprocessParams(**params)
            image = preprocess_image(image, preprocessing, segmenter_for(preprocessing))
        return Plane(plane=to_model_plane(image, size), warnings=tuple(warnings))
    except CxrclfError as exc:
        return Plane(error=exc.reason)
    except Exception as exc:  # a pathological image must not stop the batch
        return Plane(error=f"cannot process image ({exc.__class__.__name__}: {exc})")
