"""One training skeleton for every network cxrclf trains: the classifier and the lung segmenter.

The steps, in order::

    seed      torch's and numpy's global generators, before the network is built
    prepare   the model's own: options, data, network, the run's description (its config)
    restore   on --resume: the checkpoint's weights, optimiser, generator state and progress
    fit       epochs, each from its own seeded order and augmentation; early stopping;
              metrics.csv, the log and a checkpoint after every epoch
    judge     after each epoch the model says whether it is the best so far; its weights are kept
    write     config.json with the outcome, and the last line of the log

A model plugs in a :class:`Learner`: its network, batches, loss and validation scores, and
the rule that judges an epoch. The run folder is :class:`cxrclf.runs.RunFiles` of the
model's config type. Epoch ``e`` draws its order from ``numpy.random.default_rng([seed, e])``
and its augmentation from a torch generator seeded ``seed * 100003 + e``, so a resumed run
continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, Protocol, TypeVar

from cxrclf import io
from cxrclf.errors import CxrclfError
from cxrclf.runs import RunDocument, RunFiles

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["Learner", "Plan", "Progress", "Validation", "begin", "finish", "fit", "run_folder", "seed", "versions"]

C = TypeVar("C", bound=RunDocument)
C_contra = TypeVar("C_contra", bound=RunDocument, contravariant=True)   # a learner reads configs, never makes them
F = TypeVar("F", bound=RunFiles)

OnStep = Callable[[int, int, int, float], None]   # (epoch, images done, images in the epoch, images per second)
OnEpoch = Callable[[dict], None]                   # the epoch's row of metrics.csv


@dataclass(frozen=True)
class Plan(Generic[C]):
    """What the skeleton needs to know of one training: the run's description and folder, how long, from which seed."""
    config: C               # the run at its start (status training)
    out: Path               # where the run will be when training has finished
    epochs: int
    patience: int           # epochs without a better judgement before stopping
    seed: int
    title: str              # what the log says was started: "lung segmenter tf_efficientnet_lite0"
    no_epoch_kept: str      # the error when no epoch was judged better than nothing
    resuming: bool = False
    replacing: bool = False  # an earlier run is replaced: train beside it, swap at the end
    writer: bool = True     # False on the ranks of a distributed run but the first: they train and write nothing


@dataclass
class Progress:
    """Where training stands, saved in every checkpoint so that a resumed run continues exactly.

    ``bests`` are the running bests the model's judge compares with, by name (the
    classifier's ``best_score`` and ``best_loss``, the segmenter's ``best_dice``); they sit
    between ``epoch`` and ``best_epoch`` in the checkpoint's JSON, as they always have.
    """
    bests: dict[str, float]
    epoch: int = 0
    best_epoch: int = -1
    wait: int = 0
    history: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"epoch": self.epoch, **self.bests, "best_epoch": self.best_epoch, "wait": self.wait, "history": self.history})

    @classmethod
    def from_json(cls, text: str, bests: dict[str, float]) -> "Progress":
        """The progress a checkpoint saved; a TypeError when its judge kept other bests than ``bests`` names (another model's)."""
        document = json.loads(text)
        common = ("epoch", "best_epoch", "wait", "history")
        if not isinstance(document, dict) or set(document) != set(common) | set(bests):
            raise TypeError("the checkpoint's progress has other fields")
        return cls(bests={name: document[name] for name in bests}, **{name: document[name] for name in common})


@dataclass(frozen=True)
class Validation:
    """One epoch's validation: the columns of metrics.csv and the unrounded scores the judge compares."""
    columns: dict[str, Any]                                 # after train_loss, before the timing columns
    scores: dict[str, float]
    notes: dict[str, Any] = field(default_factory=dict)     # columns after the timing ones (the source adversary's)


class Learner(Protocol[C_contra]):
    """What a model plugs into the skeleton: its network and optimiser, batches, loss, validation and judgement."""

    @property
    def device(self) -> "torch.device": ...

    def initial_bests(self) -> dict[str, float]:
        """The judge's running bests before the first epoch."""

    def check_resume(self, previous: C_contra, current: C_contra) -> None:
        """Refuse, in one line, to resume a run whose config.json (``previous``) shows it was another than ``current``."""

    def checkpoint(self) -> dict:
        """The network's and optimiser's state (and whatever else the model restores), for checkpoint.pt."""

    def restore(self, checkpoint: dict) -> None:
        """Load what :meth:`checkpoint` saved."""

    def train_epoch(self, epoch: int, rng: "np.random.Generator", generator: "torch.Generator",
                    on_step: Callable[[int, int], None] | None) -> tuple[float, int]:
        """Epoch ``epoch`` (from 0) of training in an order drawn from ``rng``, augmented from ``generator``:
        (mean loss, images seen); ``on_step(images done, images in the epoch)`` after each batch."""

    def validate(self) -> Validation:
        """The kept weights on the validation images."""

    def judge(self, progress: Progress, scores: dict[str, float]) -> bool:
        """Whether the epoch that scored ``scores`` is the best so far; updates ``progress.bests`` and ``progress.wait``."""

    def kept_weights(self) -> dict:
        """The weights model.safetensors keeps when an epoch is judged the best."""


def versions() -> dict[str, str]:
    """The software a run was trained with, for its config's ``execution.versions``."""
    import platform

    import numpy as np
    import timm
    import torch

    from cxrclf import __version__

    return {"cxrclf": __version__, "torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__, "python": platform.python_version()}


def seed(value: int) -> None:
    """Seed torch's and numpy's global generators: the network's initial weights (and dropout) draw from them."""
    import numpy as np
    import torch

    torch.manual_seed(value)
    np.random.seed(value % (2**32))


@contextlib.contextmanager
def run_folder(plan: Plan, folder: type[F]) -> Iterator[F]:
    """The folder training writes into, locked: the run itself (new or resumed), or a stage beside it that
    replaces the run only once training has finished. Ranks that do not write get the run, untouched."""
    if not plan.writer:
        yield folder(plan.out)
        return
    with io.folder_lock(plan.out):
        io.remove_stale_partials(plan.out)
        # a new run is written in place (so --resume finds it after a kill); a replacement beside the old run
        with io.writing_place(plan.out, folder.KIND, replace=plan.replacing) as place:
            yield folder(place)


def begin(run: RunFiles[C], learner: Learner[C], plan: Plan[C], info: Callable[[str], None]) -> Progress:
    """Restore the checkpoint on --resume (or start from nothing), then write the config and the log's first line."""
    progress = Progress(learner.initial_bests())
    if plan.resuming:
        progress = _restore(run, learner, plan)
        info(f"resuming {run.path} after epoch {progress.epoch}")
    if plan.writer:
        run.write_config(plan.config)
        run.append_log(f"{'resumed' if plan.resuming else 'started'} {plan.title} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    return progress


def _restore(run: RunFiles[C], learner: Learner[C], plan: Plan[C]) -> Progress:
    import torch

    learner.check_resume(run.read_config(), plan.config)
    checkpoint = run.load_checkpoint()
    try:
        learner.restore(checkpoint)
        torch.set_rng_state(checkpoint["torch_rng"])
        if learner.device.type == "cuda" and "cuda_rng" in checkpoint:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], learner.device)
        return Progress.from_json(checkpoint["state"], learner.initial_bests())
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CxrclfError(f"checkpoint.pt does not fit this run ({exc.__class__.__name__}); start again with --overwrite", run.file(run.CHECKPOINT)) from exc


def _save_checkpoint(run: RunFiles, learner: Learner, progress: Progress) -> None:
    import torch

    document = {**learner.checkpoint(), "torch_rng": torch.get_rng_state(), "state": progress.to_json()}
    if learner.device.type == "cuda":
        document["cuda_rng"] = torch.cuda.get_rng_state(learner.device)  # dropout draws from it on a GPU
    run.save_checkpoint(document)


def fit(run: RunFiles, learner: Learner, plan: Plan, progress: Progress, on_step: OnStep | None = None, on_epoch: OnEpoch | None = None) -> Progress:
    """Epochs from ``progress.epoch`` until ``plan.epochs`` or ``plan.patience`` epochs without a better one.

    After each: the judge, the best weights, metrics.csv, the checkpoint and a log line
    (by the writer), then ``on_epoch``. Ends with a one-line error when no epoch was kept.
    """
    for epoch in range(progress.epoch, plan.epochs):
        if progress.wait >= plan.patience:
            break
        row, improved = _epoch(learner, plan, progress, epoch, on_step)
        if improved:
            progress.best_epoch = epoch + 1
            if plan.writer:
                run.save_weights(learner.kept_weights())
        row["best"] = int(improved)
        progress.history.append(row)
        progress.epoch = epoch + 1
        if plan.writer:
            run.write_metrics(progress.history)
            _save_checkpoint(run, learner, progress)
            run.append_log(" ".join(f"{k}={v}" for k, v in row.items()))
        if on_epoch:
            on_epoch(row)
    if plan.writer and progress.best_epoch < 1:
        raise CxrclfError(plan.no_epoch_kept, plan.out)
    return progress


def _epoch(learner: Learner, plan: Plan, progress: Progress, epoch: int, on_step: OnStep | None) -> tuple[dict, bool]:
    """Train and validate one epoch: its row of metrics.csv (all but ``best``) and whether the judge found it the best."""
    import numpy as np
    import torch

    rng = np.random.default_rng([plan.seed, epoch])
    generator = torch.Generator().manual_seed(plan.seed * 100_003 + epoch)
    started = time.perf_counter()
    step = None
    if on_step:
        step = lambda done, total: on_step(epoch, done, total, done / max(time.perf_counter() - started, 1e-9))  # noqa: E731
    train_loss, images = learner.train_epoch(epoch, rng, generator, step)
    seconds = time.perf_counter() - started
    validation = learner.validate()
    row = {"epoch": epoch + 1, "train_loss": round(train_loss, 6), **validation.columns,
           "images_per_s": round(images / seconds, 2), "seconds": round(seconds, 2), **validation.notes}
    return row, learner.judge(progress, validation.scores)


def finish(run: RunFiles[C], plan: Plan[C], progress: Progress, config: C, note: str = "") -> C:
    """Write the finished run's config and the log's last line (``note`` appended to it)."""
    if plan.writer:
        run.write_config(config)
        run.append_log(f"finished: best epoch {progress.best_epoch} of {progress.epoch}{note}")
    return config
