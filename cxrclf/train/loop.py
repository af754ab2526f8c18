"""``cxrclf train``: fine-tune one model on a preprocessed folder, reproducibly and resumably.

:func:`train` is a short composition of the training skeleton's steps (:mod:`cxrclf.fit`,
shared with the lung segmenter): seed and build the model, prepare (options, device, data,
output folder, the run's :class:`cxrclf.runs.RunConfig`), restore a checkpoint, fit (epochs
with early stopping and checkpoints), judge, write; then what the best weights decide with
(guard, shift reference, operating point) and ``latest``. The classifier's pieces in the
skeleton are a ``_Learner``; the per-batch loss and step are :meth:`Trainer.step`. The loop: Adam; mini-batches; per-epoch validation in inference mode; early
stopping on validation loss; the best weights by validation loss (or AUC with
``select_by="auc"``). Under ``torchrun`` it runs DistributedDataParallel (gloo on CPU, nccl on
GPU); every rank draws the same epoch order and takes its share, so oversampling stays
correct, and only rank 0 writes.

The run folder is locked while training. A new run is written in place (so ``--resume``
finds its checkpoint after a kill); replacing an existing run writes the new one beside it
and swaps only when training has finished.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxrclf import fit, folders, io
from cxrclf.choices import Augment, Device, Recipe, SelectBy, Strategy, parse, resolve_device
from cxrclf.data.manifest import select_split
from cxrclf.errors import CxrclfError
from cxrclf.fit import Progress, Validation
from cxrclf.labels import SCHEMES, LabelScheme
from cxrclf.metrics import epoch_metrics
from cxrclf.models.inputs import model_input
from cxrclf.models.names import model_label
from cxrclf.preprocess.params import PreprocessParams, read_params
from cxrclf.runs import (DataSpec, EpochScores, Execution, ModelSpec, OperatingPoint, Outcome, ReferenceSettings, RunConfig, RunFolder,
                         SourceUnlearning, Status, TrainingSpec, scenario_code)
from cxrclf.threads import use_threads
from cxrclf.train import imbalance
from cxrclf.train.augment import random_affine
from cxrclf.train.recipe import RECIPES, Augmenter, RecipeSpec, build_optimizer, lr_factor
from cxrclf.train.result import TrainResult
from cxrclf.train.unlearn import SourceUnlearner, source_targets, unlearning_settings
from cxrclf.train.data import ImageSet, load_images, read_preprocessed

__all__ = ["TrainOptions", "Trainer", "Batches", "cross_validate", "train"]


@dataclass
class TrainOptions:
    model: str
    strategy: Strategy | str
    classes: int
    data: Path = folders.PREPROCESSED
    out: Path | None = None
    epochs: int = TrainingSpec.epochs        # the defaults are the recipe's, written once (TrainingSpec, ModelSpec)
    batch_size: int = TrainingSpec.batch_size
    lr: float | None = None                  # None: the recipe's (the paper: 1e-4)
    patience: int = TrainingSpec.patience
    seed: int = TrainingSpec.seed
    pretrained: bool = TrainingSpec.pretrained
    weights: Path | None = None
    trainable_blocks: int | str | None = None  # None: the recipe's (the paper: 4)
    image_size: int | None = None
    dropout: float = ModelSpec.dropout
    fold: int | None = None
    class_constants: dict[str, float] = field(default_factory=dict)
    select_by: SelectBy | str | None = None  # None: the recipe's (the paper: loss)
    recipe: Recipe | str = TrainingSpec.recipe
    augment: Augment | str | None = None     # None: the recipe's (the paper: copies)
    exclude_sources: tuple[str, ...] = ()
    device: Device | str = Device.auto
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    tensorboard: bool = False
    update_latest: bool = True      # False for the folds of --cv: a fold is not a deployable run
    operating_point: str = "youden"  # how the per-class thresholds are chosen on validation: youden or sensitivity=S
    unlearn_source: float = 0.0      # strength of the class-conditional source adversary's reversed gradient (cxrclf.train.unlearn); 0: off

    def validate(self) -> "TrainOptions":
        from cxrclf.models.zoo import check_model_name

        check_model_name(self.model)  # an unknown name fails before any data is read
        self.strategy = parse(Strategy, self.strategy, "strategy")
        self.recipe = parse(Recipe, self.recipe, "recipe")
        spec = RECIPES[self.recipe]
        self.augment = spec.augment if self.augment is None else parse(Augment, self.augment, "augment")
        self.select_by = parse(SelectBy, spec.stop_on if self.select_by is None else self.select_by, "select_by")
        self.lr = spec.lr if self.lr is None else self.lr
        self.trainable_blocks = spec.trainable_blocks if self.trainable_blocks is None else self.trainable_blocks
        self.device = parse(Device, self.device, "device")
        self.exclude_sources = tuple(self.exclude_sources)
        self.operating_point = OperatingPoint.parse_rule(self.operating_point)
        if self.classes not in SCHEMES:
            raise CxrclfError(f"classes must be 2, 3 or 4, not {self.classes}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or not self.lr > 0:
            raise CxrclfError("epochs, batch size and patience must be at least 1 and the learning rate positive")
        if self.threads is not None and self.threads < 1:
            raise CxrclfError(f"threads must be at least 1, not {self.threads}")
        if not (math.isfinite(self.unlearn_source) and 0.0 <= self.unlearn_source <= 1000.0):
            raise CxrclfError(f"the source-unlearning weight must be from 0 (off) to 1000, not {self.unlearn_source}")
        if self.tensorboard:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise CxrclfError("TensorBoard logging needs the tensorboard package: pip install 'cxrclf[tensorboard]'")
        if self.resume and self.overwrite:
            raise CxrclfError("resuming and overwriting a run contradict each other; choose one")
        scheme = SCHEMES[self.classes]
        if self.class_constants and self.strategy is not Strategy.weighted:
            raise CxrclfError("class constants set Eq. 1's weights, which only the weighted strategy uses")
        for name in self.class_constants:
            if name not in scheme.classes:
                raise CxrclfError(f"class constant for {name!r}, which is not a class of the {scheme.name} scheme ({', '.join(scheme.classes)})")
        return self

    def default_out(self) -> Path:
        from cxrclf.models.zoo import check_model_name

        # the canonical name: NASNetLarge and nasnetalarge train (and resume) the same run
        name = f"{check_model_name(self.model)}-{scenario_code(self.strategy, self.classes)}"
        return folders.RUNS / (name if self.fold is None else f"{name}-fold{self.fold}")


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def writer(self) -> bool:
        return self.rank == 0


def _distributed(device: torch.device) -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


class Batches:
    """Turns uint8 planes into normalised model input on the device, augmenting flagged copies.

    The planes stay where :class:`ImageSet` keeps them (a read-only map of the folder's cache):
    each batch is copied out, pinned for a GPU, and moved.
    """

    def __init__(self, images: ImageSet, in_chans: int, mean, std, device: torch.device, augment: Augment = Augment.copies):
        self.device = device
        self.augmenter = Augmenter(augment, images.planes.shape[-1]) if augment in (Augment.light, Augment.strong) else None
        self.augment_copies = augment is Augment.copies
        self.in_chans = in_chans
        self.images = images
        self.labels = torch.from_numpy(images.labels)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def get(self, indices: np.ndarray, augment: np.ndarray | None = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        planes = torch.from_numpy(self.images.take(indices))
        if self.device.type == "cuda":
            planes = planes.pin_memory()
        x = planes.to(self.device, non_blocking=True).float().div_(255.0)
        if augment is not None and self.augmenter is not None:
            x = self.augmenter(x.unsqueeze(1), generator).squeeze(1)  # every training image
        elif augment is not None and self.augment_copies and augment.any():
            flags = torch.from_numpy(augment).to(self.device)
            x[flags] = random_affine(x[flags].unsqueeze(1), generator).squeeze(1)
        y = self.labels[index].to(self.device, non_blocking=True)
        return model_input(x, self.in_chans, self.mean, self.std), y


class Trainer:
    """One model, one optimiser, one criterion: ``fit_epoch`` and ``predict``."""

    def __init__(self, model: torch.nn.Module, lr: float, class_weights: np.ndarray | None, device: torch.device, dist_info: Distributed,
                 spec: RecipeSpec = RECIPES[Recipe.paper], steps_per_epoch: int = 1, epochs: int = 1, all_blocks: bool = False,
                 unlearner: SourceUnlearner | None = None):
        self.device = device
        self.spec = spec
        self.module = model.to(device).to(memory_format=torch.channels_last)
        self.unlearner = unlearner
        self.model = self.module if unlearner is None else unlearner.wrap(self.module)  # what DDP wraps: the adversary too
        if dist_info.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = build_optimizer(self.module, lr, spec, all_blocks)
        self.scheduler = None
        if spec.schedule != "constant" or spec.warmup_epochs > 0:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, spec))
        self.ema = None
        if spec.ema_decay is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.module, decay=spec.ema_decay, use_warmup=True)
        self.weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32, device=device)
        self.autocast = device.type == "cuda"

    @property
    def kept(self) -> torch.nn.Module:
        """The weights that are validated and saved: the moving average where the recipe keeps one."""
        return self.ema.module if self.ema is not None else self.module

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        if smoothing:
            return F.cross_entropy(logits.float(), labels, weight=self.weight, label_smoothing=smoothing)
        return F.cross_entropy(logits.float(), labels, weight=self.weight)

    def step(self, x: torch.Tensor, y: torch.Tensor, indices: np.ndarray | None = None) -> float:
        """One optimiser step on a batch (training images ``indices``); returns the classification loss."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.unlearner is not None:
            return self._unlearning_step(x, y, indices)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(x)
        loss = self.loss(logits, y, self.spec.label_smoothing)
        loss.backward()
        self._stepped()
        return float(loss.detach())

    def _unlearning_step(self, x: torch.Tensor, y: torch.Tensor, indices: np.ndarray) -> float:
        """The step with the source adversary: the class loss plus the adversary's, whose gradient reaches the features reversed."""
        self.unlearner.zero_grad()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits, source_logits = self.model(x, self.unlearner.scale())
        loss = self.loss(logits, y, self.spec.label_smoothing)
        (loss + self.unlearner.loss(source_logits, indices)).backward()
        self._stepped()
        self.unlearner.step()
        return float(loss.detach())

    def _stepped(self) -> None:
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.module)

    def state(self) -> dict:
        """What a checkpoint needs beyond the model: optimiser, schedule, moving average."""
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None:
            state["scheduler"] = json.dumps(self.scheduler.state_dict())
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        if self.unlearner is not None:
            state["adversary"] = self.unlearner.state()
        return state

    def restore(self, checkpoint: dict) -> None:
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(json.loads(checkpoint["scheduler"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(checkpoint["ema"])
        if self.unlearner is not None:
            self.unlearner.restore(checkpoint["adversary"])

    def fit_epoch(self, batches: Batches, order: np.ndarray, augment: np.ndarray, batch_size: int, generator: torch.Generator, on_step: Callable[[int, int], None] | None = None) -> float:
        self.model.train()
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            x, y = batches.get(order[start:start + batch_size], augment[start:start + batch_size], generator)
            total += self.step(x, y, order[start:start + batch_size]) * len(y)
            seen += len(y)
            if on_step:
                on_step(seen, len(order))
        return total / max(seen, 1)

    @torch.inference_mode()
    def predict(self, batches: Batches, count: int, batch_size: int) -> tuple[np.ndarray, float]:
        """Probabilities of the kept weights for the first ``count`` images, and the mean loss where labels are known."""
        module = self.kept
        module.eval()
        probabilities, loss_sum, labelled = [], 0.0, 0
        for start in range(0, count, batch_size):
            x, y = batches.get(np.arange(start, min(start + batch_size, count)))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = module(x).float()
            known = y >= 0
            if known.any():
                loss_sum += float(self.loss(logits[known], y[known])) * int(known.sum())
                labelled += int(known.sum())
            probabilities.append(torch.softmax(logits, dim=1).cpu().numpy())
        return np.concatenate(probabilities) if probabilities else np.zeros((0, 0)), loss_sum / max(labelled, 1)




# ----------------------------------------------------------------------------- steps of train()

@dataclass
class _Setup:
    """What the first step settles: options checked, device, ranks, data, output folder."""
    options: TrainOptions
    scheme: LabelScheme
    device: torch.device
    dist: Distributed
    frame: pd.DataFrame
    root: Path
    params: PreprocessParams
    out: Path                # where the run will be when training has finished
    resuming: bool
    replacing: bool          # an existing run is replaced: train beside it, swap at the end


@dataclass
class _Data:
    train: ImageSet
    val: ImageSet
    counts: np.ndarray
    weights: np.ndarray | None


def _prepare(options: TrainOptions) -> _Setup:
    options.validate()
    device = resolve_device(options.device)
    dist_info = _distributed(device)
    use_threads(options.threads)
    frame, root = read_preprocessed(options.data)
    params = read_params(root / "preprocess.json")
    if params.uses_lungs:  # a run whose segmenter moved or changed could never predict: refuse before training, not after
        from cxrclf.segment.run import segmenter_for

        segmenter_for(params)
    if options.fold is not None and not 0 <= options.fold <= int(frame["fold"].max()):
        raise CxrclfError(f"fold {options.fold} does not exist; the manifest has folds 0..{int(frame['fold'].max())}", root)
    unknown = sorted(set(options.exclude_sources) - set(frame["source"]))
    if unknown:
        raise CxrclfError(f"no source named {', '.join(unknown)} to exclude; the data's sources are {', '.join(sorted(set(frame['source'])))}", root)
    out = Path(options.out or options.default_out())
    resuming, replacing = options.resume, False
    if dist_info.writer:  # rank 0 alone judges the folder: other ranks would race with its writing
        inputs = [root, options.weights, Path(params.lung_model) if params.lung_model else None]
        if options.resume:
            io.refuse_overlap(out, inputs)
            if not (out / RunFolder.CHECKPOINT).is_file():
                hint = " (training stopped before its first epoch ended; the same command without --resume starts it afresh)" if _never_checkpointed(out) else ""
                raise CxrclfError(f"nothing to resume: no checkpoint.pt in the run folder{hint}", out)
        else:
            replacing = io.check_output_path(out, options.overwrite, inputs, kinds=("run",), resumable=True)
            if not replacing and out.exists() and any(out.iterdir()) and not _never_checkpointed(out):
                raise CxrclfError("run folder exists (pass --resume to continue it or --overwrite to replace it)", out)
    return _Setup(options, SCHEMES[options.classes], device, dist_info, frame, root, params, out, resuming, replacing)


def _never_checkpointed(out: Path) -> bool:
    """A run folder that training left before its first checkpoint and its first weights.

    The first epoch failed or was killed: the folder holds only the config, the log and the
    marker, nothing to resume and nothing to lose, so training starts it afresh in place.
    """
    return io.output_kind(out) == "run" and not (out / RunFolder.CHECKPOINT).exists() and not (out / RunFolder.WEIGHTS).exists()


def _load_data(setup: _Setup, input_size: int) -> _Data:
    options, scheme = setup.options, setup.scheme
    sets = {}
    for name in ("train", "val"):
        rows = select_split(setup.frame, name, options.fold)
        rows = rows[rows["finding"].isin(list(scheme.finding_to_class)) & ~rows["source"].isin(options.exclude_sources)]
        if rows.empty:
            raise CxrclfError(f"the {name} split is empty" + (f" for fold {options.fold}" if options.fold is not None else ""), setup.root)
        sets[name] = load_images(rows, setup.root, scheme, input_size)
    counts = imbalance.class_counts(sets["train"].labels, scheme.num_classes)
    empty = [c for c, n in zip(scheme.classes, counts) if n == 0]
    if empty:
        raise CxrclfError(f"class {', '.join(empty)} has no training images; the {scheme.name} scheme needs images of every class "
                          "(choose a scheme with fewer classes, or add data)", setup.root)
    if options.select_by is SelectBy.auc and len(np.unique(sets["val"].labels)) < 2:
        raise CxrclfError("selecting by AUC needs at least two classes in the validation split (its AUC is undefined); select by loss", setup.root)
    constants = {scheme.classes.index(k): v for k, v in options.class_constants.items()}
    weights = imbalance.class_weights(sets["train"].labels, scheme.num_classes, constants) if options.strategy is Strategy.weighted else None
    return _Data(sets["train"], sets["val"], counts, weights)


def _build_model(setup: _Setup):
    from cxrclf.models.zoo import create_model

    options = setup.options
    fit.seed(options.seed)
    return create_model(options.model, setup.scheme.num_classes, pretrained=options.pretrained, weights=options.weights,
                        trainable_blocks=options.trainable_blocks, dropout=options.dropout, in_chans=setup.params.channels,
                        image_size=options.image_size)


def _describe(setup: _Setup, bundle, data: _Data, unlearning: SourceUnlearning | None = None) -> RunConfig:
    options, scheme = setup.options, setup.scheme
    return RunConfig(
        model=ModelSpec(name=bundle.name, class_names=tuple(scheme.classes), input_size=bundle.input_size, in_chans=bundle.in_chans,
                        mean=tuple(bundle.mean), std=tuple(bundle.std), dropout=options.dropout, trainable_blocks=options.trainable_blocks,
                        pretrained_source=bundle.pretrained_source, requested_name=_requested_name(options.model, bundle.name)),
        preprocess=setup.params,
        data=DataSpec(folder=str(Path(options.data).resolve()), manifest_sha256=io.sha256_file(setup.root / "manifest.csv"), fold=options.fold,
                      exclude_sources=tuple(options.exclude_sources), views=_training_views(data.train.frame)),
        training=TrainingSpec(strategy=options.strategy, epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, patience=options.patience,
                              seed=options.seed, pretrained=options.pretrained, weights=None if options.weights is None else str(options.weights),
                              select_by=options.select_by, class_constants=dict(options.class_constants), recipe=options.recipe,
                              augment=options.augment, unlearn_source=unlearning),
        execution=Execution(device=options.device.value, threads=options.threads, tensorboard=options.tensorboard, versions=fit.versions()),
        outcome=Outcome(train_class_counts={c: int(n) for c, n in zip(scheme.classes, data.counts)},
                        class_weights=None if data.weights is None else {c: float(w) for c, w in zip(scheme.classes, data.weights)}),
        status=Status.training,
    )


def _training_views(rows: pd.DataFrame) -> tuple[str, ...]:
    """The distinct views of the training rows, as the manifest names them (none for a manifest without views)."""
    if "view" not in rows.columns:
        return ()
    return tuple(sorted(set(rows["view"].astype(str).str.strip().str.upper()) - {""}))


def _requested_name(requested: str, canonical: str) -> str | None:
    """The user's spelling of the model (NASNetLarge) when it is not the canonical name, else None."""
    requested = requested.strip()
    return None if requested == canonical else requested


def _epoch_order(options: TrainOptions, labels: np.ndarray, num_classes: int, rng: np.random.Generator, dist_info: Distributed) -> tuple[np.ndarray, np.ndarray]:
    if options.strategy is Strategy.oversample:
        order, augment = imbalance.oversample_epoch(labels, num_classes, rng)
    else:
        order, augment = imbalance.plain_epoch(len(labels), rng)
    if dist_info.world > 1:
        padded = -len(order) % dist_info.world
        order, augment = np.concatenate([order, order[:padded]]), np.concatenate([augment, augment[:padded]])
        order, augment = order[dist_info.rank::dist_info.world], augment[dist_info.rank::dist_info.world]
    return order, augment


def _epoch_length(options: TrainOptions, labels: np.ndarray, num_classes: int) -> int:
    """Images per epoch: every training image, plus the oversampled copies."""
    counts = imbalance.class_counts(labels, num_classes)
    return int(counts.max() * num_classes) if options.strategy is Strategy.oversample else int(len(labels))


def _validation_columns(val_loss: float, measured: dict, classes) -> dict:
    finite = lambda value: round(value, 6) if not math.isnan(value) else ""  # noqa: E731
    return {"val_loss": round(val_loss, 6), "val_accuracy": round(measured["accuracy"], 6), "val_auc": finite(measured["auc"]),
            **{f"val_recall_{c}": finite(r) for c, r in zip(classes, measured["recall"])}}


class _Learner:
    """The classifier's pieces in the training skeleton (:mod:`cxrclf.fit`): the :class:`Trainer`'s steps over the epoch's
    (oversampled) order, validation loss, AUC and recalls, and the recipe's judge."""

    def __init__(self, setup: _Setup, trainer: Trainer, data: _Data, batches: tuple[Batches, Batches]):
        self.setup, self.trainer, self.data, self.batches = setup, trainer, data, batches

    @property
    def device(self) -> torch.device:
        return self.trainer.device

    def initial_bests(self) -> dict[str, float]:
        return {"best_score": math.inf, "best_loss": math.inf}

    def check_resume(self, previous: RunConfig, current: RunConfig) -> None:
        recorded = previous.data if previous.data.views else replace(previous.data, views=current.data.views)  # begun before runs recorded views
        if previous.data.manifest_sha256 != current.data.manifest_sha256 or previous.preprocess != current.preprocess or recorded != current.data:
            raise CxrclfError("the data folder changed since this run started (another manifest or preprocessing); resume with the same data or use --overwrite",
                              self.setup.root)
        # a resumed run may be given more epochs or patience, and its model under another spelling (NASNetLarge for nasnetalarge)
        if (replace(previous.training, epochs=0, patience=0) != replace(current.training, epochs=0, patience=0)
                or replace(previous.model, requested_name=None) != replace(current.model, requested_name=None)):
            raise CxrclfError("checkpoint was made with other training arguments; resume with the same ones or use --overwrite", self.setup.out)

    def checkpoint(self) -> dict:
        return {"model": self.trainer.module.state_dict(), **self.trainer.state()}

    def restore(self, checkpoint: dict) -> None:
        self.trainer.module.load_state_dict(checkpoint["model"])
        self.trainer.restore(checkpoint)

    def train_epoch(self, epoch: int, rng: np.random.Generator, generator: torch.Generator, on_step: Callable[[int, int], None] | None) -> tuple[float, int]:
        options, dist_info = self.setup.options, self.setup.dist
        order, augment = _epoch_order(options, self.data.train.labels, self.setup.scheme.num_classes, rng, dist_info)
        return self.trainer.fit_epoch(self.batches[0], order, augment, options.batch_size, generator, on_step), len(order) * dist_info.world

    def validate(self) -> Validation:
        probabilities, val_loss = self.trainer.predict(self.batches[1], len(self.data.val), max(self.setup.options.batch_size, 32))
        measured = epoch_metrics(self.data.val.labels, probabilities)
        # how well the source adversary still tells the sources apart (chance: it is fooled)
        notes = self.trainer.unlearner.epoch_summary() if self.trainer.unlearner is not None else {}
        return Validation(_validation_columns(val_loss, measured, self.setup.scheme.classes), {"loss": val_loss, "auc": float(measured["auc"])}, notes)

    def judge(self, progress: Progress, scores: dict[str, float]) -> bool:
        """The best epoch by validation loss (or AUC); patience counts epochs without a better loss (or, where the recipe stops on it, AUC)."""
        options, bests = self.setup.options, progress.bests
        auc = scores["auc"]
        score = scores["loss"] if options.select_by is SelectBy.loss else -(auc if not math.isnan(auc) else -math.inf)
        improved = score < bests["best_score"] - 1e-9
        if improved:
            bests["best_score"] = score
        if RECIPES[options.recipe].stop_on == "auc":
            progress.wait = 0 if improved else progress.wait + 1
        elif scores["loss"] < bests["best_loss"] - 1e-9:
            bests["best_loss"], progress.wait = scores["loss"], 0
        else:
            progress.wait += 1
        return improved

    def kept_weights(self) -> dict:
        return self.trainer.kept.state_dict()


def train(options: TrainOptions, on_step: Callable[[int, int, int, float], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
          on_info: Callable[[str], None] | None = None) -> TrainResult:
    """Train one run; returns its folder and its config (what config.json holds). Callbacks feed the display."""
    info = on_info or (lambda message: None)
    setup = _prepare(options)
    options = setup.options
    bundle = _build_model(setup)
    info(f"model {model_label(bundle.name, options.model.strip())}: {bundle.trainable_parameters:,} of {bundle.total_parameters:,} parameters trainable; weights: {bundle.pretrained_source}")
    data = _load_data(setup, bundle.input_size)
    _announce_data(setup, data, bundle.input_size, info)
    learner = _learner(setup, bundle, data, info)
    unlearning = None if learner.trainer.unlearner is None else learner.trainer.unlearner.settings
    config = _describe(setup, bundle, data, unlearning)
    plan = fit.Plan(config=config, out=setup.out, epochs=options.epochs, patience=options.patience, seed=options.seed, title=f"{config.model.label} {config.scenario} on {options.data}",
                    no_epoch_kept="no epoch gave a finite validation score, so no weights were kept; check the validation split",
                    resuming=setup.resuming, replacing=setup.replacing, writer=setup.dist.writer)
    with fit.run_folder(plan, RunFolder) as run:
        progress = fit.begin(run, learner, plan, info)
        with _tensorboard(run.path if options.tensorboard and plan.writer else None) as board:
            progress = fit.fit(run, learner, plan, progress, on_step, _logged(board, on_epoch))
        config = _finish(run, plan, progress, learner, info)
    if plan.writer and options.update_latest and RunFolder(setup.out).update_latest() is None:
        info(f"left {setup.out.resolve().parent / folders.LATEST} alone: it is not a pointer cxrclf made")
    if setup.dist.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return TrainResult(setup.out, config)


def _announce_data(setup: _Setup, data: _Data, input_size: int, info: Callable[[str], None]) -> None:
    """How the classes are balanced, and what trains where."""
    scheme = setup.scheme
    if setup.options.strategy is Strategy.weighted:
        info("class weights (Eq. 1): " + ", ".join(f"{c} {w:.3f}" for c, w in zip(scheme.classes, data.weights)))
    else:
        info("oversampling every epoch to " + ", ".join(f"{c} {data.counts.max()} (from {n})" for c, n in zip(scheme.classes, data.counts)))
    info(f"train {len(data.train)} images, val {len(data.val)} images, input {input_size}px, device {setup.device}"
         + (f", {setup.dist.world} processes" if setup.dist.world > 1 else ""))


def _learner(setup: _Setup, bundle, data: _Data, info: Callable[[str], None]) -> _Learner:
    """The trainer (the recipe's optimiser, schedule and averaging; the source adversary where asked) and the batches it reads."""
    options = setup.options
    steps = math.ceil(_epoch_length(options, data.train.labels, setup.scheme.num_classes) / setup.dist.world / options.batch_size)
    trainer = Trainer(bundle.model, options.lr, data.weights, setup.device, setup.dist, RECIPES[options.recipe], steps_per_epoch=steps, epochs=options.epochs,
                      all_blocks=bundle.trainable_blocks == bundle.total_blocks, unlearner=_unlearner(setup, bundle.model.num_features, data, steps, info))
    batches = (Batches(data.train, bundle.in_chans, bundle.mean, bundle.std, setup.device, options.augment),
               Batches(data.val, bundle.in_chans, bundle.mean, bundle.std, setup.device, Augment.none))
    return _Learner(setup, trainer, data, batches)


def _finish(run: RunFolder, plan: fit.Plan[RunConfig], progress: Progress, learner: _Learner, info: Callable[[str], None]) -> RunConfig:
    """The outcome, and (by the writer) what the best weights decide with, then the config written."""
    best = next((EpochScores.from_row(row) for row in progress.history if row["epoch"] == progress.best_epoch), None)
    config = plan.config.with_(status=Status.finished, outcome=replace(plan.config.outcome, epochs_run=progress.epoch, best_epoch=progress.best_epoch,
                                                                       stopped_early=progress.epoch < plan.epochs, best=best))
    if plan.writer:
        config = _after_training(run, config, learner.trainer, learner.data, learner.batches, info, learner.setup.options.operating_point)
    return fit.finish(run, plan, progress, config)


def _unlearner(setup: _Setup, num_features: int, data: _Data, steps_per_epoch: int, info: Callable[[str], None]) -> SourceUnlearner | None:
    """The class-conditional source adversary of a nonzero unlearning weight (None at 0: training exactly as without it)."""
    options = setup.options
    if options.unlearn_source == 0:
        return None
    targets = source_targets(data.train.labels, data.train.frame["source"], setup.scheme.classes)
    settings = unlearning_settings(options.unlearn_source, targets)
    info(f"unlearning the source (weight {settings.weight:g}, Ganin's ramp): a source adversary for "
         + "; ".join(f"{name} ({', '.join(sources)})" for name, sources in settings.classes.items())
         + (f"; not for {', '.join(settings.skipped)}, drawn from one source" if settings.skipped else "")
         + f"; chance balanced accuracy {targets.chance:.2f}")
    return SourceUnlearner(settings, targets, num_features, steps_per_epoch * options.epochs, options.lr, options.seed, setup.device)


def _after_training(run: RunFolder, config: RunConfig, trainer: Trainer, data: _Data, batches: tuple[Batches, Batches], info,
                    operating_rule: str = "youden") -> RunConfig:
    """What the best weights decide with, from one pass over the training and validation images: the
    out-of-distribution guard (fitted on training features, its threshold on validation), the shift
    test's reference (the validation features) and the operating point (validation probabilities)."""
    from cxrclf.guard.detector import GaussianDetector, calibrate_guard, describe_threshold
    from cxrclf.guard.shift import Reference

    trainer.module.load_state_dict(run.load_weights(str(trainer.device)))  # the best epoch, as inference will see it
    _, train_features = _pooled(trainer, batches[0], len(data.train))
    val_probabilities, val_features = _pooled(trainer, batches[1], len(data.val))
    detector = GaussianDetector().fit(train_features, data.train.labels)
    guard = calibrate_guard(detector, val_features, train_images=len(train_features))
    detector.save(run.file(RunFolder.GUARD))
    info(f"out-of-distribution guard: {detector.kind} on {guard.feature_dim} features of {guard.train_images} training images, "
         f"threshold {guard.threshold:.1f} ({describe_threshold(guard.quantile, guard.rule, guard.val_images)})")
    stored = Reference(val_features, data.val.frame["source"], split="val")
    stored.save(run.file(RunFolder.REFERENCE))
    reference = ReferenceSettings(images=len(stored), sources=stored.counts, feature_dim=stored.feature_dim)
    info(f"shift test reference: {stored.describe()}")
    point = OperatingPoint.choose(data.val.labels, val_probabilities, config.class_names, operating_rule)
    info(f"operating point ({point.rule} on {point.val_images} validation images): " + ", ".join(f"{c} {t:.3f}" for c, t in point.thresholds.items()))
    return config.with_(guard=guard, reference=reference, operating_point=point)


@torch.inference_mode()
def _pooled(trainer: Trainer, batches: Batches, count: int, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities, pooled features) of the first ``count`` images, from one forward pass, as inference computes them."""
    from cxrclf.guard.features import logits_and_features

    probabilities, features = [], []
    for start in range(0, count, batch_size):
        x, _ = batches.get(np.arange(start, min(start + batch_size, count)))
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.autocast):
            logits, pooled = logits_and_features(trainer.module, x)
        probabilities.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        features.append(pooled.float().cpu().numpy())
    return np.concatenate(probabilities), np.concatenate(features)


@contextlib.contextmanager
def _tensorboard(run: Path | None) -> Iterator:
    """A TensorBoard writer into ``run/tensorboard`` for the duration; None without a run (not asked for, or not the writing rank)."""
    if run is None:
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter  # presence checked in TrainOptions.validate

    board = SummaryWriter(str(run / "tensorboard"))
    try:
        yield board
    finally:
        board.close()


def _logged(board, on_epoch: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
    """``on_epoch`` after the row's numbers go to TensorBoard, where it logs."""
    if board is None:
        return on_epoch

    def logged(row: dict) -> None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and key != "epoch":
                board.add_scalar(key, value, row["epoch"])
        if on_epoch:
            on_epoch(row)

    return logged


def cross_validate(options: TrainOptions, folds: int | None = None, **callbacks) -> dict:
    """Train every fold into ``RUN/fold-K/`` and write ``cv_summary.json`` (mean and std)."""
    frame, root = read_preprocessed(options.data)
    count = folds or int(frame["fold"].max()) + 1
    base = Path(options.out or options.default_out())
    if not options.resume:
        io.check_output_path(base, options.overwrite, [root, options.weights], kinds=("cv",))
    if base.exists() and any(base.iterdir()) and not (options.overwrite or options.resume):
        raise CxrclfError("run folder exists (pass --resume to continue it or --overwrite to replace it)", base)
    if int(os.environ.get("RANK", "0")) == 0:
        base.mkdir(parents=True, exist_ok=True)
        io.mark(base, "cv")
    results = []
    for fold in range(count):
        fold_out = base / f"fold-{fold}"
        fold_options = TrainOptions(**{**asdict(options), "fold": fold, "out": fold_out, "update_latest": False,
                                       "resume": options.resume and (fold_out / RunFolder.CHECKPOINT).is_file()})
        results.append(train(fold_options, **callbacks))
    keys = ["val_loss", "val_accuracy", "val_auc"]
    bests = [r.config.outcome.best for r in results]
    table = {k: [float(getattr(b, k)) for b in bests if b is not None and getattr(b, k) is not None] for k in keys}  # None: an undefined AUC
    summary = {"folds": count, "runs": [str(r.run) for r in results], **{k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "values": v} for k, v in table.items() if v}}
    if int(os.environ.get("RANK", "0")) == 0:
        io.write_json(base / "cv_summary.json", summary)
    return summary
