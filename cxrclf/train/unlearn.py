"""Training that unlearns the source: a class-conditional adversary behind a gradient-reversal layer.

A network reads an archive's resolution, compression and intensity statistics as easily as
the disease (issue 18). Domain-adversarial training (Ganin et al. 2016) removes what the
features say about the source: a source classifier reads the pooled features (what the
classifier's head reads) through a gradient-reversal layer, the identity forward and the
gradient times ``-lambda`` backward. The adversary learns to tell the sources apart; the
backbone receives the opposite gradient and learns features from which it cannot.

Classes and sources are entangled here (COVID-19 comes only from Cohen), so the adversary
is conditioned on the class (Li et al. 2018): one head per class, each trained on that
class's images alone, so normal RSNA and normal Montgomery must look alike while COVID-19
may still differ from normal. A class drawn from a single source carries no source
information to remove: it has no head, and its images no target.

``lambda = weight * (2 / (1 + exp(-gamma p)) - 1)``, ``p`` the share of training steps done
(Ganin's ramp): the adversary learns before its reversed gradient reaches full strength.
Each head weighs its class's sources equally (inverse frequency within the class), so
naming a majority source is no free win; the accuracy reported per epoch is balanced over
(class, source) cells, whose chance level is the mean of ``1 / sources of the class``.

The adversary trains at full rate with its own Adam and sits with the classifier inside one
module (:class:`AdversarialClassifier`), which is what DDP wraps, so both are synchronised.
Its parameters never enter ``model.safetensors``: predict, evaluate, explain and export see
the classifier alone. The checkpoint keeps them, with the optimiser and the step count, so
a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrclf.errors import CxrclfError
from cxrclf.runs import SourceUnlearning

__all__ = ["AdversarialClassifier", "GradientReversal", "SourceAdversary", "SourceTargets", "SourceUnlearner", "ganin_ramp",
           "reverse_gradient", "source_targets", "unlearning_settings"]


class GradientReversal(torch.autograd.Function):
    """The identity forward; the incoming gradient times ``-scale`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = float(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * -ctx.scale, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged; gradients flowing back through it are multiplied by ``-scale``."""
    return GradientReversal.apply(x, scale)


def ganin_ramp(progress: float, gamma: float = 10.0) -> float:
    """``2 / (1 + exp(-gamma p)) - 1`` for ``p`` (the share of training done) clipped to [0, 1]: 0 at the start, near 1 at the end."""
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


@dataclass(frozen=True)
class SourceTargets:
    """Which classes the adversary reads, and every training image's head, target and loss weight."""

    class_names: tuple[str, ...]
    labels: np.ndarray                      # (N,) the class numbers the targets were made from
    conditioned: tuple[int, ...]            # class numbers drawn from two or more sources: one head each, in class order
    sources: tuple[tuple[str, ...], ...]    # per head: its class's sources, sorted; a target is a position here
    heads: np.ndarray                       # (N,) int64 the image's head; -1: its class has one source
    targets: np.ndarray                     # (N,) int64 the position of its source in its head; -1 with no head
    weights: np.ndarray                     # (N,) float32 inverse source frequency within the class; 0 with no head

    @property
    def skipped(self) -> tuple[str, ...]:
        """The classes present in training that come from one source."""
        present = {int(c) for c in np.unique(self.labels)}
        return tuple(name for number, name in enumerate(self.class_names) if number in present and number not in self.conditioned)

    @property
    def chance(self) -> float:
        """The balanced accuracy of a guessing adversary: the mean over (class, source) cells of 1 / sources of the class."""
        cells = [1.0 / len(names) for names in self.sources for _ in names]
        return float(np.mean(cells)) if cells else math.nan


def source_targets(labels: np.ndarray, sources: Sequence[str], class_names: Sequence[str]) -> SourceTargets:
    """Heads, targets and weights for training images of classes ``labels`` from ``sources`` (the manifest's source column).

    A class whose images come from two or more sources gets a head; each of its images is
    targeted at its source's position among the class's sources (sorted by name) and
    weighted ``n_class / (k * n_class_source)``, so each source of the class weighs the same.
    Images of a single-source class (and of no class, label -1) get no target.
    """
    labels = np.asarray(labels, dtype=np.int64)
    sources = np.asarray([str(s) for s in sources], dtype=object)
    if len(sources) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(sources)} sources")
    heads, targets = np.full(len(labels), -1, dtype=np.int64), np.full(len(labels), -1, dtype=np.int64)
    weights = np.zeros(len(labels), dtype=np.float32)
    conditioned, per_head = [], []
    for number in range(len(class_names)):
        in_class = labels == number
        names = tuple(sorted(set(sources[in_class])))
        if len(names) < 2:
            continue
        for position, name in enumerate(names):
            cell = in_class & (sources == name)
            heads[cell], targets[cell] = len(conditioned), position
            weights[cell] = in_class.sum() / (len(names) * cell.sum())
        conditioned.append(number)
        per_head.append(names)
    return SourceTargets(tuple(class_names), labels, tuple(conditioned), tuple(per_head), heads, targets, weights)


def unlearning_settings(weight: float, targets: SourceTargets) -> SourceUnlearning:
    """What a run records of its unlearning; a user error where no class comes from two sources."""
    if not targets.conditioned:
        raise CxrclfError("unlearning the source needs a class whose training images come from two or more sources; "
                          f"here every class comes from one ({', '.join(targets.skipped)}), so there is no source to unlearn")
    return SourceUnlearning(weight=float(weight), classes={targets.class_names[c]: names for c, names in zip(targets.conditioned, targets.sources)},
                            skipped=targets.skipped)


class SourceAdversary(nn.Module):
    """One source classifier per conditioned class: ``Linear(features, hidden) -> ReLU -> Linear(hidden, its sources)``."""

    def __init__(self, num_features: int, head_sizes: Sequence[int], hidden_units: int):
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(num_features, hidden_units), nn.ReLU(), nn.Linear(hidden_units, size))
                                   for size in head_sizes)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Every head's logits for every image (each head's loss then keeps its class's rows; DDP needs every parameter used)."""
        return [head(features) for head in self.heads]


class AdversarialClassifier(nn.Module):
    """The classifier and its adversary as one module: what training runs (and DDP wraps) when unlearning."""

    def __init__(self, classifier: nn.Module, adversary: SourceAdversary):
        super().__init__()
        self.classifier = classifier
        self.adversary = adversary

    def forward(self, x: torch.Tensor, scale: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(class logits, every head's source logits); the classifier's logits are exactly ``classifier(x)``'s."""
        features = self.classifier.pooled_features(x)
        return self.classifier.head(features), self.adversary(reverse_gradient(features, scale))


class SourceUnlearner:
    """The adversary of one training run, its optimiser, its schedule and its per-epoch record.

    The training step calls :meth:`loss` with the batch's source logits and image indices,
    then :meth:`step` after the classifier's optimiser has stepped.
    """

    def __init__(self, settings: SourceUnlearning, targets: SourceTargets, num_features: int, total_steps: int, lr: float, seed: int,
                 device: torch.device):
        self.settings, self.total_steps, self.device = settings, max(int(total_steps), 1), device
        with torch.random.fork_rng(devices=[]):  # its own draw: the classifier's random stream stays what it is without it
            torch.manual_seed(seed)
            self.adversary = SourceAdversary(num_features, [len(names) for names in targets.sources], settings.hidden_units).to(device)
        self.optimizer = torch.optim.Adam(self.adversary.parameters(), lr=lr)
        self.heads, self.targets = torch.from_numpy(targets.heads), torch.from_numpy(targets.targets)
        self.weights = torch.from_numpy(targets.weights if settings.balanced else (targets.heads >= 0).astype(np.float32))
        self.cells = (len(targets.sources), max(len(names) for names in targets.sources))
        self.steps = 0
        self._clear()

    def wrap(self, classifier: nn.Module) -> AdversarialClassifier:
        return AdversarialClassifier(classifier, self.adversary)

    def scale(self) -> float:
        """lambda now: the weight times Ganin's ramp over the share of training steps done."""
        return self.settings.weight * ganin_ramp(self.steps / self.total_steps, self.settings.gamma)

    def loss(self, source_logits: list[torch.Tensor], indices: np.ndarray) -> torch.Tensor:
        """The heads' weighted cross-entropy over the batch's targeted images (0 where none is), recorded for the epoch."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        heads, targets, weights = (t[index].to(self.device) for t in (self.heads, self.targets, self.weights))
        total = sum(logits.float().sum() for logits in source_logits) * 0.0  # every head in the graph, targeted or not
        for head, logits in enumerate(source_logits):
            rows = heads == head
            if not bool(rows.any()):
                continue
            entropy = F.cross_entropy(logits[rows].float(), targets[rows], reduction="none")
            total = total + (entropy * weights[rows]).sum()
            self._record(head, logits[rows].detach().argmax(dim=1), targets[rows], entropy.detach(), weights[rows])
        return total / weights.sum().clamp_min(1e-12)

    def step(self) -> None:
        self.optimizer.step()
        self.steps += 1

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def _record(self, head: int, guessed: torch.Tensor, targets: torch.Tensor, entropy: torch.Tensor, weights: torch.Tensor) -> None:
        self._loss += (entropy * weights).sum().double()
        self._weight += weights.sum().double()
        self._seen[head].index_add_(0, targets, torch.ones_like(targets, dtype=torch.float64))
        self._correct[head].index_add_(0, targets, (guessed == targets).double())

    def _clear(self) -> None:
        self._loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._weight = torch.zeros((), dtype=torch.float64, device=self.device)
        self._seen = torch.zeros(self.cells, dtype=torch.float64, device=self.device)
        self._correct = torch.zeros(self.cells, dtype=torch.float64, device=self.device)

    def epoch_summary(self) -> dict[str, float]:
        """The epoch's adversary loss, balanced accuracy over (class, source) cells and lambda; summed over DDP ranks; then cleared."""
        stats = torch.cat([self._loss.view(1), self._weight.view(1), self._seen.flatten(), self._correct.flatten()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        cells = self._seen.numel()
        seen, correct = stats[2:2 + cells].cpu().numpy(), stats[2 + cells:].cpu().numpy()
        observed = seen > 0
        self._clear()
        return {"source_loss": round(float(stats[0] / stats[1]) if float(stats[1]) > 0 else math.nan, 6),
                "source_accuracy": round(float(np.mean(correct[observed] / seen[observed])) if observed.any() else math.nan, 6),
                "source_lambda": round(self.scale(), 6)}

    def state(self) -> dict:
        """What a checkpoint keeps: the adversary, its optimiser and the steps taken (the ramp's position)."""
        return {"module": self.adversary.state_dict(), "optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def restore(self, state: dict) -> None:
        self.adversary.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])
