"""The pooled backbone features a :class:`~cxrclf.models.zoo.Classifier` feeds its head.

``Classifier.forward`` is ``head(pooled_features(x))``, where ``pooled_features`` is the
backbone's pre-logits (timm's ``forward_head(..., pre_logits=True)``: global pooling and any
head layers the architecture has, such as MobileNetV3's ``conv_head``), so the features are
``model.pooled_features(x)`` and the logits ``model.head(features)``: the model's own
modules, no hooks, and one forward pass gives both. Both run in inference mode with the
model in eval mode (BatchNorm running statistics, no dropout), whatever mode it was in; the
mode is restored afterwards. Input may be channels_last, as :class:`cxrclf.inference.RunPredictor`
makes it. Under an autocast context the features come out in its precision; they are
returned as float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, num_features) float32 pooled backbone features of the batch ``x``: the head's input."""
    _check_classifier(model)
    with _evaluating(model), torch.inference_mode():
        return model.pooled_features(x).float()


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, classes), pooled features (N, num_features)), float32, from one forward pass."""
    _check_classifier(model)
    with _evaluating(model), torch.inference_mode():
        features = model.pooled_features(x)
        logits = model.head(features)
        return logits.float(), features.float()


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_classifier(model: nn.Module) -> None:
    if not (callable(getattr(model, "pooled_features", None)) and isinstance(getattr(model, "head", None), nn.Module)):
        raise TypeError(f"expected a cxrclf Classifier (a backbone and a head, as create_model builds), got {type(model).__name__}")
