"""``cxrclf train``: fine-tune one model on a preprocessed folder, reproducibly and resumably.

:func:`train` is a short composition of named steps: prepare (options, device, data, output
folder), load the images, build the model, describe the run (:class:`cxrclf.runs.RunConfig`),
restore a checkpoint, fit (epochs with early stopping and checkpoints), finish (config,
``latest``). The loop: Adam; mini-batches; per-epoch validation in inference mode; early
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
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxrclf import __version__, folders, io
from cxrclf.choices import Augment, Device, Recipe, SelectBy, Strategy, parse, resolve_device
from cxrclf.data.manifest import select_split
from cxrclf.errors import CxrclfError
from cxrclf.evaluate.metrics import epoch_metrics
from cxrclf.labels import SCHEMES, LabelScheme
from cxrclf.models.inputs import model_input
from cxrclf.models.names import model_label
from cxrclf.preprocess.params import PreprocessParams, read_params
from cxrclf.runs import (FINISHED, TRAINING, DataSpec, Execution, GuardSettings, ModelSpec, OperatingPoint, Outcome, ReferenceSettings, RunConfig, RunFolder,
                         TrainingSpec, scenario_code)
from cxrclf.threads import use_threads
from cxrclf.train import imbalance
from cxrclf.train.augment import random_affine
from cxrclf.train.recipe import RECIPES, Augmenter, RecipeSpec, build_optimizer, lr_factor
from cxrclf.train.data import ImageSet, load_images, read_preprocessed

__all__ = ["TrainOptions", "Trainer", "Batches", "cross_validate", "train"]


@dataclass
class TrainOptions:
    model: str
    strategy: Strategy | str
    classes: int
    data: Path = folders.PREPROCESSED
    out: Path | None = None
    epochs: int = 30
    batch_size: int = 10
    lr: float | None = None                  # None: the recipe's (the paper: 1e-4)
    patience: int = 5
    seed: int = 0
    pretrained: bool = True
    weights: Path | None = None
    trainable_blocks: int | str | None = None  # None: the recipe's (the paper: 4)
    image_size: int | None = None
    dropout: float = 0.5
    fold: int | None = None
    class_constants: dict[str, float] = field(default_factory=dict)
    select_by: SelectBy | str | None = None  # None: the recipe's (the paper: loss)
    recipe: Recipe | str = Recipe.paper
    augment: Augment | str | None = None     # None: the recipe's (the paper: copies)
    exclude_sources: tuple[str, ...] = ()
    device: Device | str = Device.auto
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    tensorboard: bool = False
    update_latest: bool = True      # False for the folds of --cv: a fold is not a deployable run
    operating_point: str = "youden"  # how the per-class thresholds are chosen on validation: youden or sensitivity=S

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
                 spec: RecipeSpec = RECIPES[Recipe.paper], steps_per_epoch: int = 1, epochs: int = 1, all_blocks: bool = False):
        self.device = device
        self.spec = spec
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.module = self.model
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

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(x)
        loss = self.loss(logits, y, self.spec.label_smoothing)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.module)
        return float(loss.detach())

    def state(self) -> dict:
        """What a checkpoint needs beyond the model: optimiser, schedule, moving average."""
        state = {"optimizer": self.optimizer.state_dict()}
        if self.scheduler is not None:
            state["scheduler"] = json.dumps(self.scheduler.state_dict())
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        return state

    def restore(self, checkpoint: dict) -> None:
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(json.loads(checkpoint["scheduler"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(checkpoint["ema"])

    def fit_epoch(self, batches: Batches, order: np.ndarray, augment: np.ndarray, batch_size: int, generator: torch.Generator, on_step: Callable[[int, int], None] | None = None) -> float:
        self.model.train()
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            x, y = batches.get(order[start:start + batch_size], augment[start:start + batch_size], generator)
            total += self.step(x, y) * len(y)
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


@dataclass
class _Progress:
    """Early-stopping state, saved in every checkpoint."""
    epoch: int = 0
    best_score: float = math.inf
    best_loss: float = math.inf
    best_epoch: int = -1
    wait: int = 0
    history: list = field(default_factory=list)


def _prepare(options: TrainOptions) -> _Setup:
    options.validate()
    device = resolve_device(options.device)
    dist_info = _distributed(device)
    use_threads(options.threads)
    frame, root = read_preprocessed(options.data)
    params = read_params(root / "preprocess.json")
    if params.uses_lungs:  # a run whose segmenter moved or changed could never predict: refuse before training, not after
        from cxrclf.preprocess.lung import segmenter_for

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
    torch.manual_seed(options.seed)
    np.random.seed(options.seed % (2**32))
    return create_model(options.model, setup.scheme.num_classes, pretrained=options.pretrained, weights=options.weights,
                        trainable_blocks=options.trainable_blocks, dropout=options.dropout, in_chans=setup.params.channels,
                        image_size=options.image_size)


def _versions() -> dict[str, str]:
    import timm

    return {"cxrclf": __version__, "torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _describe(setup: _Setup, bundle, data: _Data) -> RunConfig:
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
                              augment=options.augment),
        execution=Execution(device=options.device.value, threads=options.threads, tensorboard=options.tensorboard, versions=_versions()),
        outcome=Outcome(train_class_counts={c: int(n) for c, n in zip(scheme.classes, data.counts)},
                        class_weights=None if data.weights is None else {c: float(w) for c, w in zip(scheme.classes, data.weights)}),
        status=TRAINING,
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


def _restore(run: RunFolder, trainer: Trainer, config: RunConfig, setup: _Setup) -> _Progress:
    """The checkpoint's weights, optimiser, RNG and progress, after checking it is the same run."""
    previous = run.read_config()
    recorded = previous.data if previous.data.views else replace(previous.data, views=config.data.views)  # begun before runs recorded views
    if previous.data.manifest_sha256 != config.data.manifest_sha256 or previous.preprocess != config.preprocess or recorded != config.data:
        raise CxrclfError("the data folder changed since this run started (another manifest or preprocessing); resume with the same data or use --overwrite", setup.root)
    # a resumed run may be given more epochs or patience, and its model under another spelling (NASNetLarge for nasnetalarge)
    if (replace(previous.training, epochs=0, patience=0) != replace(config.training, epochs=0, patience=0)
            or replace(previous.model, requested_name=None) != replace(config.model, requested_name=None)):
        raise CxrclfError("checkpoint was made with other training arguments; resume with the same ones or use --overwrite", run.path)
    checkpoint = run.load_checkpoint()
    try:
        trainer.module.load_state_dict(checkpoint["model"])
        trainer.restore(checkpoint)
        torch.set_rng_state(checkpoint["torch_rng"])
        if setup.device.type == "cuda" and "cuda_rng" in checkpoint:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], setup.device)
        return _Progress(**json.loads(checkpoint["state"]))
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CxrclfError(f"checkpoint.pt does not fit this run ({exc.__class__.__name__}); start again with --overwrite", run.file(RunFolder.CHECKPOINT)) from exc


def _save_checkpoint(run: RunFolder, trainer: Trainer, progress: _Progress) -> None:
    document = {"model": trainer.module.state_dict(), **trainer.state(), "torch_rng": torch.get_rng_state(), "state": json.dumps(asdict(progress))}
    if trainer.device.type == "cuda":
        document["cuda_rng"] = torch.cuda.get_rng_state(trainer.device)  # dropout draws from it on a GPU
    run.save_checkpoint(document)


def _epoch_order(options: TrainOptions, labels: np.ndarray, num_classes: int, epoch: int, dist_info: Distributed) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([options.seed, epoch])
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


def _epoch_row(epoch: int, train_loss: float, val_loss: float, measured: dict, classes, images: int, seconds: float) -> dict:
    finite = lambda value: round(value, 6) if not math.isnan(value) else ""  # noqa: E731
    return {
        "epoch": epoch + 1, "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6),
        "val_accuracy": round(measured["accuracy"], 6), "val_auc": finite(measured["auc"]),
        **{f"val_recall_{c}": finite(r) for c, r in zip(classes, measured["recall"])},
        "images_per_s": round(images / seconds, 2), "seconds": round(seconds, 2),
    }


def _judge(progress: _Progress, options: TrainOptions, val_loss: float, val_auc: float) -> bool:
    """Early stopping and model selection; True when this epoch is the best so far."""
    score = val_loss if options.select_by is SelectBy.loss else -(val_auc if not math.isnan(val_auc) else -math.inf)
    improved = score < progress.best_score - 1e-9
    if improved:
        progress.best_score = score
    if RECIPES[options.recipe].stop_on == "auc":  # patience counts epochs without a better validation AUC
        progress.wait = 0 if improved else progress.wait + 1
    elif val_loss < progress.best_loss - 1e-9:
        progress.best_loss, progress.wait = val_loss, 0
    else:
        progress.wait += 1
    return improved


def _fit(setup: _Setup, run: RunFolder, trainer: Trainer, data: _Data, batches: tuple[Batches, Batches], progress: _Progress,
         on_step, on_epoch, log: Callable[[str], None]) -> _Progress:
    options, dist_info = setup.options, setup.dist
    board = _tensorboard(run.path) if options.tensorboard and dist_info.writer else None
    try:
        for epoch in range(progress.epoch, options.epochs):
            if progress.wait >= options.patience:
                break
            order, augment = _epoch_order(options, data.train.labels, setup.scheme.num_classes, epoch, dist_info)
            generator = torch.Generator().manual_seed(options.seed * 100_003 + epoch)
            started = time.perf_counter()
            step_callback = None
            if on_step:
                step_callback = lambda done, total: on_step(epoch, done, total, done / max(time.perf_counter() - started, 1e-9))  # noqa: E731
            train_loss = trainer.fit_epoch(batches[0], order, augment, options.batch_size, generator, step_callback)
            seconds = time.perf_counter() - started
            probabilities, val_loss = trainer.predict(batches[1], len(data.val), max(options.batch_size, 32))
            measured = epoch_metrics(data.val.labels, probabilities)
            row = _epoch_row(epoch, train_loss, val_loss, measured, setup.scheme.classes, len(order) * dist_info.world, seconds)
            improved = _judge(progress, options, val_loss, measured["auc"])
            if improved:
                progress.best_epoch = epoch + 1
                if dist_info.writer:
                    run.save_weights(trainer.kept.state_dict())
            row["best"] = int(improved)
            progress.history.append(row)
            progress.epoch = epoch + 1
            if dist_info.writer:
                run.write_metrics(progress.history)
                _save_checkpoint(run, trainer, progress)
                log(" ".join(f"{k}={v}" for k, v in row.items()))
                if board:
                    for key, value in row.items():
                        if isinstance(value, (int, float)) and key != "epoch":
                            board.add_scalar(key, value, epoch + 1)
            if on_epoch:
                on_epoch(row)
    finally:
        if board:
            board.close()
    return progress


@contextlib.contextmanager
def _run_folder(setup: _Setup) -> Iterator[RunFolder]:
    """The folder training writes into, locked: the run itself, or a stage beside it when replacing one."""
    out = setup.out
    if not setup.dist.writer:
        yield RunFolder(out)
        return
    with io.folder_lock(out):
        io.remove_stale_partials(out)
        # a new run is written in place (so --resume finds it after a kill); a replacement beside the old run
        with io.writing_place(out, "run", replace=setup.replacing) as folder:
            yield RunFolder(folder)


def train(options: TrainOptions, on_step: Callable[[int, int, int, float], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
          on_info: Callable[[str], None] | None = None) -> dict:
    """Train one run; returns its config as a dict (also in config.json) and ``run``. Callbacks feed the display."""
    info = on_info or (lambda message: None)
    setup = _prepare(options)
    options = setup.options
    bundle = _build_model(setup)
    info(f"model {model_label(bundle.name, options.model.strip())}: {bundle.trainable_parameters:,} of {bundle.total_parameters:,} parameters trainable; weights: {bundle.pretrained_source}")
    data = _load_data(setup, bundle.input_size)
    scheme = setup.scheme
    if options.strategy is Strategy.weighted:
        info("class weights (Eq. 1): " + ", ".join(f"{c} {w:.3f}" for c, w in zip(scheme.classes, data.weights)))
    else:
        info("oversampling every epoch to " + ", ".join(f"{c} {data.counts.max()} (from {n})" for c, n in zip(scheme.classes, data.counts)))
    info(f"train {len(data.train)} images, val {len(data.val)} images, input {bundle.input_size}px, device {setup.device}"
         + (f", {setup.dist.world} processes" if setup.dist.world > 1 else ""))
    spec = RECIPES[options.recipe]
    steps = math.ceil(_epoch_length(options, data.train.labels, scheme.num_classes) / setup.dist.world / options.batch_size)
    trainer = Trainer(bundle.model, options.lr, data.weights, setup.device, setup.dist, spec, steps_per_epoch=steps, epochs=options.epochs,
                      all_blocks=bundle.trainable_blocks == bundle.total_blocks)
    batches = (Batches(data.train, bundle.in_chans, bundle.mean, bundle.std, setup.device, options.augment),
               Batches(data.val, bundle.in_chans, bundle.mean, bundle.std, setup.device, Augment.none))
    config = _describe(setup, bundle, data)

    with _run_folder(setup) as run:
        progress = _Progress()
        if setup.resuming:
            progress = _restore(run, trainer, config, setup)
            info(f"resuming {run.path} after epoch {progress.epoch}")
        writer = setup.dist.writer
        if writer:
            run.write_config(config)
        log = run.append_log if writer else (lambda line: None)
        log(f"{'resumed' if setup.resuming else 'started'} {config.model.label} {config.scenario} on {options.data} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
        progress = _fit(setup, run, trainer, data, batches, progress, on_step, on_epoch, log)
        best = next((r for r in progress.history if r["epoch"] == progress.best_epoch), None)
        config = config.with_(status=FINISHED, outcome=replace(config.outcome, epochs_run=progress.epoch, stopped_early=progress.epoch < options.epochs,
                                                               best_epoch=progress.best_epoch, best=best))
        if writer:
            if progress.best_epoch < 1:
                raise CxrclfError("no epoch gave a finite validation score, so no weights were kept; check the validation split", setup.out)
            config = _after_training(run, config, trainer, data, batches, info, options.operating_point)
            run.write_config(config)
            log(f"finished: best epoch {progress.best_epoch} of {progress.epoch}")
    if writer and options.update_latest and RunFolder(setup.out).update_latest() is None:
        info(f"left {setup.out.resolve().parent / folders.LATEST} alone: it is not a pointer cxrclf made")
    if setup.dist.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return config.to_dict() | {"run": str(setup.out)}


def _after_training(run: RunFolder, config: RunConfig, trainer: Trainer, data: _Data, batches: tuple[Batches, Batches], info,
                    operating_rule: str = "youden") -> RunConfig:
    """What the best weights decide with, from one pass over the training and validation images: the
    out-of-distribution guard (fitted on training features, its threshold on validation), the shift
    test's reference (the validation features) and the operating point (validation probabilities)."""
    from cxrclf.evaluate.threshold import choose_operating_point
    from cxrclf.guard.detector import DEFAULT_QUANTILE, GaussianDetector
    from cxrclf.guard.shift import Reference

    trainer.module.load_state_dict(run.load_weights(str(trainer.device)))  # the best epoch, as inference will see it
    _, train_features = _pooled(trainer, batches[0], len(data.train))
    val_probabilities, val_features = _pooled(trainer, batches[1], len(data.val))
    detector = GaussianDetector().fit(train_features, data.train.labels)
    val_scores = detector.score(val_features)
    detector.calibrate(val_scores, DEFAULT_QUANTILE)
    detector.save(run.file(RunFolder.GUARD))
    guard = GuardSettings(kind=detector.kind, threshold=float(detector.threshold), quantile=DEFAULT_QUANTILE, feature_dim=int(train_features.shape[1]),
                          train_images=int(len(train_features)), val_images=int(len(val_features)), val_flag_rate=float(detector.flag(val_scores).mean()))
    info(f"out-of-distribution guard: {detector.kind} on {guard.feature_dim} features of {guard.train_images} training images, "
         f"threshold {guard.threshold:.1f} (the {DEFAULT_QUANTILE:.0%} quantile of validation)")
    stored = Reference(val_features, data.val.frame["source"], split="val")
    stored.save(run.file(RunFolder.REFERENCE))
    reference = ReferenceSettings(images=len(stored), sources=stored.counts, feature_dim=stored.feature_dim)
    info(f"shift test reference: {stored.describe()}")
    point = choose_operating_point(data.val.labels, val_probabilities, config.class_names, operating_rule)
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


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter  # presence checked in TrainOptions.validate

    return SummaryWriter(str(out / "tensorboard"))


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
    bests = [r["outcome"]["best"] for r in results]
    table = {k: [float(b[k]) for b in bests if b and b[k] != ""] for k in keys}
    summary = {"folds": count, "runs": [r["run"] for r in results], **{k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "values": v} for k, v in table.items() if v}}
    if int(os.environ.get("RANK", "0")) == 0:
        io.write_json(base / "cv_summary.json", summary)
    return summary
