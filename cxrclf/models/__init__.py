"""Models: one factory for the paper's baseline and every timm architecture.

- :mod:`cxrclf.models.zoo` -- ``create_model(name, num_classes, ...)`` returns a
  :class:`~cxrclf.models.zoo.ModelBundle` (the model plus its input size, normalisation,
  weight source and parameter counts).
- :mod:`cxrclf.models.baseline` -- the paper's small ResNet, trained from scratch.
- :mod:`cxrclf.models.weights` -- offline-first pretrained weights and the guard that
  proves a backbone really received them.

Importing this package is cheap; torch and timm load when a submodule is imported.
"""
