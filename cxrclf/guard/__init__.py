"""The out-of-distribution guard: warn when an image is unlike anything the model was trained on.

A classifier answers every question it is asked: a photograph, a CT slice, noise or an
X-ray from an unseen hospital all come out as one of its classes, often confidently. The
guard adds two layers of doubt, cheapest first.

1. Rules before the model (:mod:`cxrclf.guard.checks`): the DICOM header and the pixels
   show some cases for certain -- another modality (CT, MR, ultrasound), a lateral or
   oblique view, another body part, several frames, a colour photograph, a blank or binary
   image, an extreme aspect ratio. :func:`input_warnings` returns readable reasons; it
   needs no model. Given a run's training views, it also flags a film of another view: an AP
   DICOM for a PA run, or a PNG that a small learned PA-or-AP check on its pixels
   (:mod:`cxrclf.guard.view`, shipped in ``cxrclf/builtin/view/``) finds AP. From the lungs
   (``lungs=True``; :mod:`cxrclf.guard.lungs`, the built-in lung segmenter's graph in
   onnxruntime): no pair of lung fields (a lateral, a CT or MR slice, a photograph, a crop),
   one lung field not found, a film turned by 90, 180 or 270 degrees, inverted grey levels;
   their upright mask frames the view check's lungs' box, so the segmenter runs once.
2. A learned score after the model (:mod:`cxrclf.guard.detector`): fitted on the training
   images' pooled backbone features at the end of training, a class-conditional Gaussian
   (:class:`GaussianDetector`) scores how far an image's features lie from every class;
   :class:`EnergyDetector` reads the same from the logits and needs no fit. The threshold
   is read off the validation images' scores by the split-conformal rule
   (:func:`threshold_from`: at most 5 % false alarms expected on images like them). :mod:`cxrclf.guard.features` gives the logits and features
   of a batch from one forward pass.
3. A test of the whole batch (:mod:`cxrclf.guard.shift`): images of an unseen hospital pass
   the per-image score one by one, yet as a batch a domain classifier tells them from the
   run's validation images (:func:`shift_test` against the :class:`Reference` that training
   stores); ``predict`` runs it on batches of 20 images or more.

The rules never change a prediction and the score only flags it: both are warnings for
the user, not a second classifier.

Importing this package does not import torch; :mod:`cxrclf.guard.features` does.
"""

from cxrclf.guard.checks import input_warnings
from cxrclf.guard.detector import (
    DEFAULT_QUANTILE,
    Detector,
    EnergyDetector,
    GaussianDetector,
    load_detector,
    threshold_from,
)
from cxrclf.guard.shift import Reference, shift_test

__all__ = [
    "DEFAULT_QUANTILE",
    "Detector",
    "EnergyDetector",
    "GaussianDetector",
    "Reference",
    "input_warnings",
    "load_detector",
    "logits_and_features",
    "pooled_features",
    "shift_test",
    "threshold_from",
]


def __getattr__(name: str):
    # torch is heavy (principle 4, fast start): load the feature functions on first use
    if name in ("pooled_features", "logits_and_features"):
        from cxrclf.guard import features

        return getattr(features, name)
    raise AttributeError(f"module 'cxrclf.guard' has no attribute {name!r}")
