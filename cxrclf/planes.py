"""From an image file to the network's input plane: decode, input checks, the run's preprocessing, resize.

The one path every consumer of a run takes, whichever backend then runs the network:
:class:`cxrclf.inference.RunPredictor` (PyTorch) and :class:`cxrclf.runtime.OnnxPredictor`
(onnxruntime) both classify the planes this module makes. It imports neither torch nor
timm, so that an environment with onnxruntime alone can predict (a run that crops to the
lungs still needs PyTorch for its segmenter, which :func:`cxrclf.segment.run.segmenter_for`
loads and :func:`cxrclf.preprocess.pipeline.preprocess_image` is handed; the lung-based input
checks, :func:`cxrclf.guard.lungs.lung_warnings`, run only where PyTorch is installed).
"""

from __future__ import annotations

from cxrclf.errors import CxrclfError

__all__ = ["plane_from_file"]


def plane_from_file(task: tuple) -> dict:
    """One image file -> ``{"plane", "warnings"}`` (the model's input plane and the input checks' reasons) or ``{"error"}``.

    ``task`` is (path, preprocessing parameters or None for an already preprocessed image,
    input size[, the run's trained views]); with the views, an AP film given to a PA run is
    flagged (from the header, or from the pixels where the header names no view). A
    module-level function so that it runs in worker processes. Any failure is this file's
    error: it never stops a batch.
    """
    from cxrclf.data import imageio
    from cxrclf.guard.checks import input_warnings
    from cxrclf.guard.lungs import lung_warnings
    from cxrclf.models.inputs import to_model_plane
    from cxrclf.preprocess.params import PreprocessParams
    from cxrclf.preprocess.pipeline import preprocess_image
    from cxrclf.segment.run import segmenter_for

    path, params, size, *views = task
    try:
        decoded = imageio.decode(path)
        warnings = input_warnings(decoded.pixels, decoded.info, trained_views=views[0] if views else None)
        image = decoded.pixels
        if params is not None:  # an original image: the lungs' checks too (a preprocessed one passed them, or was never checked)
            warnings += lung_warnings(image)
            preprocessing = PreprocessParams(**params)
            image = preprocess_image(image, preprocessing, segmenter_for(preprocessing))
        return {"plane": to_model_plane(image, size), "warnings": warnings}
    except CxrclfError as exc:
        return {"error": exc.reason}
    except Exception as exc:  # a pathological image must not stop the batch
        return {"error": f"cannot process image ({exc.__class__.__name__}: {exc})"}
