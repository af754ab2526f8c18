"""Training recipes: the paper's, kept exactly, and one for a few hundred images.

``paper``: Adam at the given learning rate, constant; cross-entropy; the last blocks
trainable; oversampled copies get a small random affine and nothing else is augmented;
early stopping on validation loss. This is what cxrclf has always done, bit for bit.

``small-data``: what the small-data literature does with a pretrained network and few
images, assembled from maintained libraries:

- augmentation of every training image with torchvision's transforms v2 (random resized
  crop and affine, brightness, contrast and gamma, blur and noise at ``strong``), seeded per
  batch, never a horizontal flip (the heart is on the left);
- AdamW with weight decay; a linear warm-up over the first epoch, then cosine decay;
- every block trainable, with layer-wise learning-rate decay (timm's
  ``param_groups_layer_decay``: the head at the full rate, each earlier block 0.75 times the
  next), so the early ImageNet filters move least;
- label smoothing 0.1;
- an exponential moving average of the weights (timm's ``ModelEmaV3``), which is what is
  validated and kept;
- the best epoch and early stopping by validation AUC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cxrclf.choices import Augment, Recipe

__all__ = ["RecipeSpec", "RECIPES", "Augmenter", "build_optimizer", "lr_factor"]


@dataclass(frozen=True)
class RecipeSpec:
    optimizer: str               # adam | adamw
    weight_decay: float
    warmup_epochs: float         # linear warm-up, then the schedule
    schedule: str                # constant | cosine
    layer_decay: float | None    # layer-wise learning-rate decay when every block trains
    label_smoothing: float
    ema_decay: float | None      # exponential moving average of the weights (validated and kept)
    augment: Augment
    trainable_blocks: int | str  # the recipe's default
    lr: float
    stop_on: str                 # loss | auc: early stopping and the best epoch


RECIPES: dict[Recipe, RecipeSpec] = {
    Recipe.paper: RecipeSpec(optimizer="adam", weight_decay=0.0, warmup_epochs=0.0, schedule="constant", layer_decay=None, label_smoothing=0.0,
                             ema_decay=None, augment=Augment.copies, trainable_blocks=4, lr=1e-4, stop_on="loss"),
    Recipe.small_data: RecipeSpec(optimizer="adamw", weight_decay=0.05, warmup_epochs=1.0, schedule="cosine", layer_decay=0.75, label_smoothing=0.1,
                                  ema_decay=0.9, augment=Augment.light, trainable_blocks="all", lr=3e-4, stop_on="auc"),
}


def lr_factor(step: int, steps_per_epoch: int, epochs: int, spec: RecipeSpec) -> float:
    """The learning-rate multiplier at optimiser step ``step`` (0-based): warm-up, then constant or cosine."""
    warmup = int(round(spec.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if spec.schedule == "constant":
        return 1.0
    total = max(epochs * steps_per_epoch - warmup, 1)
    progress = min((step - warmup) / total, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, lr: float, spec: RecipeSpec, all_blocks: bool) -> torch.optim.Optimizer:
    """Adam (the paper) or AdamW with layer-wise decay over the backbone's blocks when every block trains."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if spec.optimizer == "adam":
        return torch.optim.Adam(trainable, lr=lr)
    if spec.layer_decay is None or not all_blocks or not hasattr(model, "backbone") or not hasattr(model.backbone, "group_matcher"):
        return torch.optim.AdamW(trainable, lr=lr, weight_decay=spec.weight_decay)
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model.backbone, weight_decay=spec.weight_decay, layer_decay=spec.layer_decay)
    head = [p for p in model.head.parameters() if p.requires_grad]
    groups.append({"params": head, "weight_decay": spec.weight_decay, "lr_scale": 1.0})
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=spec.weight_decay)


class Augmenter:
    """Per-image random transforms (torchvision v2) of a float batch (N, 1, S, S) in [0, 1], seeded by a generator.

    Each image draws its own parameters; the draws come from ``generator`` (through a forked
    torch RNG), so the same seed gives the same batch on any device. Labels are untouched:
    the transforms move and re-light pixels, they never flip left and right.
    """

    def __init__(self, level: Augment, size: int):
        from torchvision.transforms import v2

        self.level = level
        strong = level is Augment.strong
        self.gamma = (0.7, 1.4) if strong else (0.85, 1.15)
        steps = [
            v2.RandomResizedCrop(size, scale=(0.7, 1.0) if strong else (0.85, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomAffine(degrees=10 if strong else 5, translate=(0.08, 0.08) if strong else (0.04, 0.04), scale=(0.95, 1.05)),
            v2.ColorJitter(brightness=0.25 if strong else 0.15, contrast=0.25 if strong else 0.15),
        ]
        if strong:
            steps += [v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.2))], p=0.3), v2.RandomApply([v2.GaussianNoise(sigma=0.03, clip=True)], p=0.3)]
        self.transform = v2.Compose(steps)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from torchvision.transforms.v2 import functional

        if self.level in (Augment.none, Augment.copies) or len(images) == 0:
            return images
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        device = images.device
        out = torch.empty_like(images)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for index in range(len(images)):
                image = self.transform(images[index].cpu())
                gamma = self.gamma[0] + float(torch.rand(1)) * (self.gamma[1] - self.gamma[0])
                out[index] = functional.adjust_gamma(image.clamp(0, 1), gamma).to(device)
        return out
