"""``cxrclf train``: fine-tune one model on a preprocessed folder, reproducibly and resumably.

The loop: Adam; mini-batches; per-epoch validation in inference mode; early stopping on
validation loss; the best weights by validation loss (or AUC with ``select_by="auc"``);
a resume checkpoint after every epoch. Under ``torchrun`` it runs DistributedDataParallel
(gloo on CPU, nccl on GPU); every rank draws the same epoch order and takes its share,
so oversampling stays correct, and only rank 0 writes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cxrclf import __version__, atomic, folders
from cxrclf.errors import CxrclfError
from cxrclf.evaluate.metrics import epoch_metrics
from cxrclf.labels import SCHEMES
from cxrclf.preprocess.params import read_params
from cxrclf.train import imbalance, run as runfolder
from cxrclf.train.augment import random_affine
from cxrclf.train.data import ImageSet, load_images, model_input, read_preprocessed, select


@dataclass
class TrainOptions:
    model: str
    strategy: str
    classes: int
    data: Path = folders.PREPROCESSED
    out: Path | None = None
    epochs: int = 30
    batch_size: int = 10
    lr: float = 1e-4
    patience: int = 5
    seed: int = 0
    pretrained: bool = True
    weights: Path | None = None
    trainable_blocks: int | str = 4
    image_size: int | None = None
    dropout: float = 0.5
    fold: int | None = None
    class_constants: dict[str, float] = field(default_factory=dict)
    select_by: str = "loss"
    device: str = "auto"
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    tensorboard: bool = False
    update_latest: bool = True      # False for the folds of --cv: a fold is not a deployable run

    def validate(self) -> None:
        if self.strategy not in imbalance.STRATEGIES:
            raise CxrclfError(f"--strategy must be oversample or weighted, not {self.strategy!r}")
        if self.classes not in SCHEMES:
            raise CxrclfError(f"--classes must be 2, 3 or 4, not {self.classes}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or not self.lr > 0:
            raise CxrclfError("--epochs, --batch-size and --patience must be at least 1 and --lr positive")
        if self.select_by not in ("loss", "auc"):
            raise CxrclfError(f"--select-by must be loss or auc, not {self.select_by!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise CxrclfError(f"--device must be auto, cpu or cuda, not {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise CxrclfError("--device cuda asked for, but no CUDA device is available")
        if self.tensorboard:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise CxrclfError("--tensorboard needs the tensorboard package: pip install 'cxrclf[tensorboard]'")
        if self.resume and self.overwrite:
            raise CxrclfError("--resume and --overwrite contradict each other; choose one")
        scheme = SCHEMES[self.classes]
        if self.class_constants and self.strategy != "weighted":
            raise CxrclfError("--class-constant sets Eq. 1's constants, which only the weighted strategy uses")
        for name in self.class_constants:
            if name not in scheme.classes:
                raise CxrclfError(f"--class-constant names {name!r}, which is not a class of the {scheme.name} scheme ({', '.join(scheme.classes)})")

    def default_out(self) -> Path:
        name = f"{self.model}-{runfolder.scenario_code(self.strategy, self.classes)}"
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


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


class Batches:
    """Turns uint8 planes into normalised model input on the device, augmenting flagged copies."""

    def __init__(self, images: ImageSet, in_chans: int, mean, std, device: torch.device):
        self.device = device
        self.in_chans = in_chans
        planes = torch.from_numpy(images.planes)
        self.planes = planes.pin_memory() if device.type == "cuda" else planes
        self.labels = torch.from_numpy(images.labels)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def get(self, indices: np.ndarray, augment: np.ndarray | None = None, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        x = self.planes[index].to(self.device, non_blocking=True).float().div_(255.0)
        if augment is not None and augment.any():
            flags = torch.from_numpy(augment).to(self.device)
            x[flags] = random_affine(x[flags].unsqueeze(1), generator).squeeze(1)
        y = self.labels[index].to(self.device, non_blocking=True)
        return model_input(x, self.in_chans, self.mean, self.std), y


class Trainer:
    """One model, one optimiser, one criterion: ``fit_epoch`` and ``predict``."""

    def __init__(self, model: torch.nn.Module, lr: float, class_weights: np.ndarray | None, device: torch.device, dist_info: Distributed):
        self.device = device
        self.model = model.to(device).to(memory_format=torch.channels_last)
        self.module = self.model
        if dist_info.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam([p for p in self.module.parameters() if p.requires_grad], lr=lr)
        self.weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32, device=device)
        self.autocast = device.type == "cuda"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.weight)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(x)
        loss = self.loss(logits, y)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

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
        """Probabilities for the first ``count`` images, and the mean loss where labels are known."""
        self.module.eval()
        probabilities, loss_sum, labelled = [], 0.0, 0
        for start in range(0, count, batch_size):
            x, y = batches.get(np.arange(start, min(start + batch_size, count)))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                logits = self.module(x).float()
            known = y >= 0
            if known.any():
                loss_sum += float(self.loss(logits[known], y[known])) * int(known.sum())
                labelled += int(known.sum())
            probabilities.append(torch.softmax(logits, dim=1).cpu().numpy())
        return np.concatenate(probabilities) if probabilities else np.zeros((0, 0)), loss_sum / max(labelled, 1)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    import timm

    return {"cxrclf": __version__, "torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _metrics_csv(history: list[dict]) -> str:
    buffer = io.StringIO()
    if history:
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    return buffer.getvalue()


def _check_out(out: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse what the options do not allow, before anything is written; True when resuming."""
    if resume:
        if not (out / runfolder.CHECKPOINT).is_file():
            raise CxrclfError("nothing to resume: no checkpoint.pt in the run folder", out)
        return True
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CxrclfError("run folder exists (pass --resume to continue it or --overwrite to replace it)", out)
    return False


def _make_out(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)


def train(options: TrainOptions, on_step: Callable[[int, int, int, float], None] | None = None, on_epoch: Callable[[dict], None] | None = None, on_info: Callable[[str], None] | None = None) -> dict:
    """Train one run; returns its summary (also in config.json). Callbacks feed the display."""
    from safetensors.torch import save_file

    from cxrclf.models.zoo import create_model

    options.validate()
    info = on_info or (lambda message: None)
    scheme = SCHEMES[options.classes]
    device = _device(options.device)
    dist_info = _distributed(device)
    if options.threads:
        torch.set_num_threads(options.threads)
    frame, root = read_preprocessed(options.data)
    params = read_params(root / "preprocess.json")
    if options.fold is not None and not 0 <= options.fold <= int(frame["fold"].max()):
        raise CxrclfError(f"--fold {options.fold} does not exist; the manifest has folds 0..{int(frame['fold'].max())}", root)
    out = Path(options.out or options.default_out())
    # rank 0 alone judges the folder: other ranks would race with its writing
    resuming = _check_out(out, options.resume, options.overwrite) if dist_info.writer else options.resume

    torch.manual_seed(options.seed)
    np.random.seed(options.seed % (2**32))
    bundle = create_model(options.model, scheme.num_classes, pretrained=options.pretrained, weights=options.weights,
                          trainable_blocks=options.trainable_blocks, dropout=options.dropout, in_chans=params.channels,
                          image_size=options.image_size)
    info(f"model {options.model}: {bundle.trainable_parameters:,} of {bundle.total_parameters:,} parameters trainable; weights: {bundle.pretrained_source}")

    splits = {}
    for name in ("train", "val"):
        rows = select(frame, name, options.fold)
        rows = rows[rows["finding"].isin(list(scheme.finding_to_class))]
        if rows.empty:
            raise CxrclfError(f"the {name} split is empty" + (f" for fold {options.fold}" if options.fold is not None else ""), root)
        splits[name] = load_images(rows, root, scheme, bundle.input_size)
    train_set, val_set = splits["train"], splits["val"]
    if options.select_by == "auc" and len(np.unique(val_set.labels)) < 2:
        raise CxrclfError("--select-by auc needs at least two classes in the validation split (its AUC is undefined); use --select-by loss", root)
    counts = imbalance.class_counts(train_set.labels, scheme.num_classes)
    constants = {scheme.classes.index(k): v for k, v in options.class_constants.items()}
    weights = imbalance.class_weights(train_set.labels, scheme.num_classes, constants) if options.strategy == "weighted" else None
    if options.strategy == "weighted":
        info("class weights (Eq. 1): " + ", ".join(f"{c} {w:.3f}" for c, w in zip(scheme.classes, weights)))
    else:
        info("oversampling every epoch to " + ", ".join(f"{c} {counts.max()} (from {n})" for c, n in zip(scheme.classes, counts)))
    info(f"train {len(train_set)} images, val {len(val_set)} images, input {bundle.input_size}px, device {device}" + (f", {dist_info.world} processes" if dist_info.world > 1 else ""))

    trainer = Trainer(bundle.model, options.lr, weights, device, dist_info)
    train_batches = Batches(train_set, bundle.in_chans, bundle.mean, bundle.std, device)
    val_batches = Batches(val_set, bundle.in_chans, bundle.mean, bundle.std, device)

    config = {
        "format_version": runfolder.FORMAT_VERSION,
        "model": options.model,
        "scenario": runfolder.scenario_code(options.strategy, options.classes),
        "label_scheme": scheme.name,
        "classes": options.classes,
        "class_names": list(scheme.classes),
        "input_size": bundle.input_size,
        "in_chans": bundle.in_chans,
        "mean": list(bundle.mean),
        "std": list(bundle.std),
        "dropout": options.dropout,
        "trainable_blocks": options.trainable_blocks,
        "pretrained_source": bundle.pretrained_source,
        "preprocess": params.to_dict(),
        "data": {"folder": str(Path(options.data).resolve()), "manifest_sha256": _sha256(root / "manifest.csv"), "fold": options.fold},
        "train": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items() if k not in ("resume", "overwrite", "out", "update_latest")},
        "train_class_counts": {c: int(n) for c, n in zip(scheme.classes, counts)},
        "class_weights": None if weights is None else {c: float(w) for c, w in zip(scheme.classes, weights)},
        "versions": _versions(),
    }

    state = {"epoch": 0, "best_score": math.inf, "best_loss": math.inf, "best_epoch": -1, "wait": 0, "history": []}
    if resuming:
        # on the CPU first: the RNG states must stay CPU tensors; load_state_dict moves the rest
        checkpoint = torch.load(out / runfolder.CHECKPOINT, map_location="cpu", weights_only=True)
        previous = runfolder.read_config(out)
        if previous.get("data", {}).get("manifest_sha256") != config["data"]["manifest_sha256"] or previous.get("preprocess") != config["preprocess"]:
            raise CxrclfError("the data folder changed since this run started (another manifest or preprocessing); resume with the same data or use --overwrite", root)
        volatile = ("device", "threads", "tensorboard", "epochs", "patience")  # a resumed run may be given more epochs
        same = {k: v for k, v in previous.get("train", {}).items() if k not in volatile} == {k: v for k, v in config["train"].items() if k not in volatile}
        if not same or previous["model"] != config["model"]:
            raise CxrclfError("checkpoint was made with other training arguments; resume with the same ones or use --overwrite", out)
        trainer.module.load_state_dict(checkpoint["model"])
        trainer.optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in checkpoint:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
        state = json.loads(checkpoint["state"])
        info(f"resuming {out} after epoch {state['epoch']}")
    if dist_info.writer:
        if not resuming:
            _make_out(out)  # only now: a run that fails while starting leaves no folder behind
        atomic.write_text(out / runfolder.CONFIG, json.dumps(config | {"status": "training"}, indent=2) + "\n")
    log = (lambda line: open(out / runfolder.LOG, "a").write(line + "\n")) if dist_info.writer else (lambda line: None)
    log(f"{'resumed' if resuming else 'started'} {options.model} {config['scenario']} on {options.data} ({time.strftime('%Y-%m-%d %H:%M:%S')})")
    board = _tensorboard(out) if options.tensorboard and dist_info.writer else None

    for epoch in range(state["epoch"], options.epochs):
        if state["wait"] >= options.patience:
            break
        rng = np.random.default_rng([options.seed, epoch])
        generator = torch.Generator().manual_seed(options.seed * 100_003 + epoch)
        if options.strategy == "oversample":
            order, augment = imbalance.oversample_epoch(train_set.labels, scheme.num_classes, rng)
        else:
            order, augment = imbalance.plain_epoch(len(train_set), rng)
        if dist_info.world > 1:
            padded = -len(order) % dist_info.world
            order, augment = np.concatenate([order, order[:padded]]), np.concatenate([augment, augment[:padded]])
            order, augment = order[dist_info.rank::dist_info.world], augment[dist_info.rank::dist_info.world]
        started = time.perf_counter()
        step_callback = None
        if on_step:
            step_callback = lambda done, total: on_step(epoch, done, total, done / max(time.perf_counter() - started, 1e-9))  # noqa: E731
        train_loss = trainer.fit_epoch(train_batches, order, augment, options.batch_size, generator, step_callback)
        seconds = time.perf_counter() - started
        probabilities, val_loss = trainer.predict(val_batches, len(val_set), max(options.batch_size, 32))
        measured = epoch_metrics(val_set.labels, probabilities)
        row = {
            "epoch": epoch + 1, "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6),
            "val_accuracy": round(measured["accuracy"], 6), "val_auc": round(measured["auc"], 6) if not math.isnan(measured["auc"]) else "",
            **{f"val_recall_{c}": (round(r, 6) if not math.isnan(r) else "") for c, r in zip(scheme.classes, measured["recall"])},
            "images_per_s": round(len(order) * dist_info.world / seconds, 2), "seconds": round(seconds, 2),
        }
        score = val_loss if options.select_by == "loss" else -(measured["auc"] if not math.isnan(measured["auc"]) else -math.inf)
        improved = score < state["best_score"] - 1e-9
        if improved:
            state.update(best_score=score, best_epoch=epoch + 1)
            if dist_info.writer:
                save_file({k: v.detach().contiguous().cpu() for k, v in trainer.module.state_dict().items()}, str(out / f".{runfolder.WEIGHTS}.tmp"))
                os.replace(out / f".{runfolder.WEIGHTS}.tmp", out / runfolder.WEIGHTS)
        if val_loss < state["best_loss"] - 1e-9:
            state.update(best_loss=val_loss, wait=0)
        else:
            state["wait"] += 1
        row["best"] = int(improved)
        state["history"].append(row)
        state["epoch"] = epoch + 1
        if dist_info.writer:
            atomic.write_text(out / runfolder.METRICS, _metrics_csv(state["history"]))
            _save_checkpoint(out, trainer, state)
            log(" ".join(f"{k}={v}" for k, v in row.items()))
            if board:
                for key, value in row.items():
                    if isinstance(value, (int, float)) and key != "epoch":
                        board.add_scalar(key, value, epoch + 1)
        if on_epoch:
            on_epoch(row)

    summary = config | {
        "status": "finished",
        "epochs_run": state["epoch"],
        "stopped_early": state["epoch"] < options.epochs,
        "best_epoch": state["best_epoch"],
        "select_by": options.select_by,
        "best": next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), None),
    }
    if dist_info.writer:
        atomic.write_text(out / runfolder.CONFIG, json.dumps(summary, indent=2) + "\n")
        log(f"finished: best epoch {state['best_epoch']} of {state['epoch']}")
        if board:
            board.close()
        if state["best_epoch"] < 1:
            raise CxrclfError("no epoch gave a finite validation score, so no weights were kept; check the validation split", out)
        if options.update_latest:
            runfolder.update_latest(out)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    summary["run"] = str(out)
    return summary


def _save_checkpoint(out: Path, trainer: Trainer, state: dict) -> None:
    buffer = io.BytesIO()
    document = {"model": trainer.module.state_dict(), "optimizer": trainer.optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "state": json.dumps(state)}
    if trainer.device.type == "cuda":
        document["cuda_rng"] = torch.cuda.get_rng_state(trainer.device)  # dropout draws from it on a GPU
    torch.save(document, buffer)
    atomic.write_bytes(out / runfolder.CHECKPOINT, buffer.getvalue())


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter  # presence checked in TrainOptions.validate

    return SummaryWriter(str(out / "tensorboard"))


def cross_validate(options: TrainOptions, folds: int | None = None, **callbacks) -> dict:
    """Train every fold into ``RUN/fold-K/`` and write ``cv_summary.json`` (mean and std)."""
    frame, root = read_preprocessed(options.data)
    count = folds or int(frame["fold"].max()) + 1
    base = Path(options.out or options.default_out())
    if base.exists() and any(base.iterdir()) and not (options.overwrite or options.resume):
        raise CxrclfError("run folder exists (pass --resume to continue it or --overwrite to replace it)", base)
    results = []
    for fold in range(count):
        fold_out = base / f"fold-{fold}"
        fold_options = TrainOptions(**{**asdict(options), "fold": fold, "out": fold_out, "update_latest": False,
                                       "resume": options.resume and (fold_out / runfolder.CHECKPOINT).is_file()})
        results.append(train(fold_options, **callbacks))
    keys = ["val_loss", "val_accuracy", "val_auc"]
    table = {k: [float(r["best"][k]) for r in results if r["best"] and r["best"][k] != ""] for k in keys}
    summary = {"folds": count, "runs": [r["run"] for r in results], **{k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "values": v} for k, v in table.items() if v}}
    if int(os.environ.get("RANK", "0")) == 0:
        atomic.write_text(base / "cv_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
