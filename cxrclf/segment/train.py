"""``cxrclf segment train``: fit the lung segmenter on (X-ray, lung mask) pairs, reproducibly and resumably.

The steps are the training skeleton's (:mod:`cxrclf.fit`, shared with the classifier): seed,
prepare (options, pairs, patient-level split, output folder; the images at the network's
input size; the network; the run's :class:`SegmentConfig`), restore, fit (epochs of augmented
batches, early stopping, a checkpoint per epoch), judge (validation Dice), write; the
segmenter then measures its best weights on the held-out patients at each image's own size
(``heldout.csv``, and the means in ``config.json``).

Loss: binary cross-entropy plus soft Dice. Optimiser: Adam with a cosine learning-rate
decay over the planned epochs (a function of the epoch, so a resumed run continues it).
Augmentation (training batches only): one random rotation, scale and shift applied to the
image and its mask together, then random gamma, contrast, brightness and noise on the image.
The run folder is written as a classifier's is: in place (so ``--resume`` finds its
checkpoint after a kill), locked while training, swapped in only when finished when it
replaces an earlier one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cxrclf import fit, io
from cxrclf.errors import CxrclfError
from cxrclf.fit import Progress, Validation
from cxrclf.runs import Execution, Status
from cxrclf.segment.data import MaskPair, find_pairs, read_pair, split_patients, table_sha256
from cxrclf.segment.masks import dice, iou, mask_from_probabilities
from cxrclf.segment.model import DECODER_CHANNELS, build_segmenter
from cxrclf.segment.plane import segmenter_plane
from cxrclf.segment.run import (DEFAULT_ENCODER, DEFAULT_INPUT_SIZE, DEFAULT_RUN, KIND, SegmentConfig, SegmentData, SegmentOutcome, SegmentRun,
                                SegmentTraining, SegmenterSpec)
from cxrclf.threads import use_threads

__all__ = ["SegmentTrainOptions", "augment_batch", "train_segmenter"]


@dataclass
class SegmentTrainOptions:
    nlm: Path | None = None
    masks: Path | None = None
    out: Path = DEFAULT_RUN
    encoder: str = DEFAULT_ENCODER
    image_size: int = DEFAULT_INPUT_SIZE
    epochs: int = SegmentTraining.epochs
    batch_size: int = SegmentTraining.batch_size
    lr: float = SegmentTraining.lr
    patience: int = SegmentTraining.patience
    seed: int = SegmentTraining.seed
    pretrained: bool = SegmentTraining.pretrained
    weights: Path | None = None
    augment: bool = SegmentTraining.augment
    val_frac: float = SegmentData.val_frac
    test_frac: float = SegmentData.test_frac
    decoder_channels: tuple[int, ...] = DECODER_CHANNELS
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False

    def validate(self) -> "SegmentTrainOptions":
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or not self.lr > 0:
            raise CxrclfError("epochs, batch size and patience must be at least 1 and the learning rate positive")
        if not 32 <= self.image_size <= 2048 or self.image_size % 32:
            raise CxrclfError(f"the segmenter's input size must be a multiple of 32 from 32 to 2048, not {self.image_size}")
        if self.threads is not None and self.threads < 1:
            raise CxrclfError(f"threads must be at least 1, not {self.threads}")
        if self.resume and self.overwrite:
            raise CxrclfError("resuming and overwriting a run contradict each other; choose one")
        if self.val_frac <= 0:
            raise CxrclfError("the segmenter needs validation patients to choose its best epoch (val_frac > 0)")
        return self


# ----------------------------------------------------------------------------- augmentation

def augment_batch(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, S, S) images in [0, 1] and masks -> the same, augmented; draws from ``generator`` (CPU).

    Geometry (both): rotation up to 10 degrees, scale 0.85-1.15, shift up to 8% of the side.
    Intensity (image only): gamma 0.6-1.6, contrast 0.8-1.2, brightness -0.1..0.1, Gaussian noise up to 0.04.
    """
    n = images.shape[0]
    if n == 0:
        return images, masks
    u = torch.rand((n, 8), generator=generator)
    angle = (u[:, 0] * 2 - 1) * math.radians(10.0)
    factor = 0.85 + u[:, 1] * 0.3
    tx, ty = (u[:, 2] * 2 - 1) * 0.16, (u[:, 3] * 2 - 1) * 0.16   # grid units span 2: 8% of the side
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1)
    grid = F.affine_grid(theta.to(images.device, images.dtype), [n, 2, *images.shape[-2:]], align_corners=False)
    both = F.grid_sample(torch.cat([images, masks], dim=1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    images, masks = both[:, :1], both[:, 1:]
    view = (n, 1, 1, 1)
    gamma = torch.exp((u[:, 4] * 2 - 1) * math.log(1.6)).view(view).to(images.device)
    contrast = (0.8 + u[:, 5] * 0.4).view(view).to(images.device)
    brightness = ((u[:, 6] * 2 - 1) * 0.1).view(view).to(images.device)
    noise = torch.randn(images.shape, generator=generator).to(images.device) * (u[:, 7] * 0.04).view(view).to(images.device)
    images = (images.clamp(0, 1) ** gamma) * contrast + brightness + noise
    return images.clamp(0, 1), masks


def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice (per image, averaged)."""
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    p = torch.sigmoid(logits)
    overlap = (p * targets).sum(dim=(1, 2, 3))
    soft_dice = (2 * overlap + 1) / (p.sum(dim=(1, 2, 3)) + targets.sum(dim=(1, 2, 3)) + 1)
    return bce + (1 - soft_dice).mean()


# ----------------------------------------------------------------------------- steps

@dataclass
class _Setup:
    options: SegmentTrainOptions
    pairs: list[MaskPair]
    splits: list[str]
    report: dict
    out: Path
    resuming: bool
    replacing: bool


@dataclass
class _Images:
    """Planes and targets at the input size; full-size truth for the held-out images."""
    planes: np.ndarray            # (N, S, S) float32 in [0, 1]
    targets: np.ndarray           # (N, S, S) float32: the share of each input pixel that is lung
    index: dict[str, np.ndarray]  # split -> row numbers
    truth: dict[int, np.ndarray]  # row -> full-size bool mask (val and test rows)


def _prepare(options: SegmentTrainOptions) -> _Setup:
    options.validate()
    use_threads(options.threads)
    pairs, report = find_pairs(options.nlm, options.masks)
    splits = split_patients(pairs, options.val_frac, options.test_frac, options.seed)
    for split in ("train", "val"):
        if split not in splits:
            raise CxrclfError(f"too few patients for a {split} split ({len({p.patient_id for p in pairs})} patients); add masks or change the fractions")
    out = Path(options.out)
    inputs = [options.nlm, options.masks, options.weights]
    resuming, replacing = options.resume, False
    if options.resume:
        io.refuse_overlap(out, inputs)
        if not (out / SegmentRun.CHECKPOINT).is_file():
            raise CxrclfError("nothing to resume: no checkpoint.pt in the segmentation run folder", out)
    else:
        replacing = io.check_output_path(out, options.overwrite, inputs, kinds=(KIND,), resumable=True)
        if not replacing and out.exists() and any(p.name != io.MARKER for p in out.iterdir()):
            raise CxrclfError("segmentation run folder exists (pass --resume to continue it or --overwrite to replace it)", out)
    return _Setup(options, pairs, splits, report, out, resuming, replacing)


def _load_images(setup: _Setup, size: int, progress: Callable[[int, int], None] | None) -> _Images:
    import cv2

    planes, targets, truth, empty = [], [], {}, []
    for row, (pair, split) in enumerate(zip(setup.pairs, setup.splits)):
        image, mask = read_pair(pair)
        if not mask.any():
            empty.append(pair)
        planes.append(segmenter_plane(image, size))
        targets.append(cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA))
        if split != "train":
            truth[row] = mask
        if progress:
            progress(row + 1, len(setup.pairs))
    if empty:  # nothing to learn from, and a Dice of 0 that looks like a result
        raise CxrclfError(_empty_masks_reason(empty, len(setup.pairs)), empty[0].masks[0])
    index = {split: np.flatnonzero(np.asarray(setup.splits) == split) for split in ("train", "val", "test")}
    return _Images(np.stack(planes), np.stack(targets), index, truth)


def _empty_masks_reason(empty: list[MaskPair], total: int) -> str:
    """One line for masks without a lung pixel: how many, and the next files after the first (which the error names)."""
    others = [str(path) for pair in empty[1:] for path in pair.masks]
    listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    more = f"; so do the masks of {len(empty) - 1} more of the {total} X-rays ({listed})" if others else ""
    return f"lung mask holds no lung (no pixel above half its range){more}: masks must mark the lungs white on black"


def _describe(setup: _Setup, mean: float, std: float, source: str) -> SegmentConfig:
    options = setup.options
    per_split = {}
    for split in ("train", "val", "test"):
        members = [p for p, s in zip(setup.pairs, setup.splits) if s == split]
        per_split[split] = {"images": len(members), "patients": len({p.patient_id for p in members}),
                            "sources": {src: sum(p.source == src for p in members) for src in sorted({p.source for p in members})}}
    return SegmentConfig(
        model=SegmenterSpec(encoder=options.encoder, input_size=options.image_size, mean=mean, std=std, decoder_channels=tuple(options.decoder_channels),
                            pretrained_source=source),
        data=SegmentData(nlm=None if options.nlm is None else str(Path(options.nlm).resolve()),
                         masks_csv=None if options.masks is None else str(Path(options.masks).resolve()),
                         pairs=len(setup.pairs), patients=len({p.patient_id for p in setup.pairs}), val_frac=options.val_frac, test_frac=options.test_frac,
                         split_sha256=table_sha256(setup.pairs, setup.splits), per_split=per_split),
        training=SegmentTraining(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr, patience=options.patience, seed=options.seed,
                                 pretrained=options.pretrained, augment=options.augment),
        execution=Execution(device="cpu", threads=options.threads, versions=fit.versions()),
        status=Status.training,
    )


def _split_table(setup: _Setup) -> str:
    rows = [[str(p.image), ";".join(map(str, p.masks)), p.patient_id, p.source, s] for p, s in zip(setup.pairs, setup.splits)]
    return io.csv_text(["image", "masks", "patient_id", "source", "split"], rows)


def _batches(planes: np.ndarray, targets: np.ndarray, rows: np.ndarray, mean: float, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(planes[rows])[:, None]
    y = torch.from_numpy(targets[rows])[:, None]
    return x, y


@torch.inference_mode()
def _probabilities(model, planes: np.ndarray, mean: float, std: float, batch_size: int = 16) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(planes), batch_size):
        x = torch.from_numpy(planes[start:start + batch_size])[:, None]
        out.append(torch.sigmoid(model((x - mean) / std))[:, 0].numpy())
    return np.concatenate(out) if out else np.zeros((0,) + planes.shape[1:], np.float32)


class _Learner:
    """The segmenter's pieces in the training skeleton (:mod:`cxrclf.fit`): augmented batches of pairs, BCE + soft Dice,
    Adam with a cosine decay, and validation Dice as the judge."""

    device = torch.device("cpu")

    def __init__(self, options: SegmentTrainOptions, out: Path, model, images: _Images, mean: float, std: float):
        self.options, self.out, self.model, self.images, self.mean, self.std = options, out, model, images, mean, std
        self.optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)

    def initial_bests(self) -> dict[str, float]:
        return {"best_dice": -1.0}

    def check_resume(self, previous: SegmentConfig, current: SegmentConfig) -> None:
        if previous.data.split_sha256 != current.data.split_sha256:
            raise CxrclfError("the masks or their split changed since this run started; resume with the same data and seed, or use --overwrite", self.out)
        if replace(previous.training, epochs=0, patience=0) != replace(current.training, epochs=0, patience=0) or previous.model != current.model:
            raise CxrclfError("checkpoint was made with other training arguments; resume with the same ones or use --overwrite", self.out)

    def checkpoint(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])

    def train_epoch(self, epoch: int, rng: np.random.Generator, generator: torch.Generator, on_step: Callable[[int, int], None] | None) -> tuple[float, int]:
        options = self.options
        for group in self.optimizer.param_groups:
            group["lr"] = options.lr * 0.5 * (1 + math.cos(math.pi * epoch / options.epochs))
        train_rows = self.images.index["train"]
        order = train_rows[rng.permutation(len(train_rows))]
        self.model.train()
        total = 0.0
        for start in range(0, len(order), options.batch_size):
            x, y = _batches(self.images.planes, self.images.targets, order[start:start + options.batch_size], self.mean, self.std)
            if options.augment:
                x, y = augment_batch(x, y, generator)
            total += self.step(x, y) * len(x)
            if on_step:
                on_step(min(start + options.batch_size, len(order)), len(order))
        return total / max(len(order), 1), len(order)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimiser step on a batch of images and masks; returns its loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = _loss(self.model((x - self.mean) / self.std), y)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def validate(self) -> Validation:
        val_rows = self.images.index["val"]
        predicted = _probabilities(self.model, self.images.planes[val_rows], self.mean, self.std) > 0.5
        truth = self.images.targets[val_rows] > 0.5
        val_dice = float(np.mean([dice(p, t) for p, t in zip(predicted, truth)]))
        val_iou = float(np.mean([iou(p, t) for p, t in zip(predicted, truth)]))
        return Validation(columns={"val_dice": round(val_dice, 6), "val_iou": round(val_iou, 6), "lr": round(self.optimizer.param_groups[0]["lr"], 8)},
                          scores={"dice": val_dice})

    def judge(self, progress: Progress, scores: dict[str, float]) -> bool:
        """The best epoch has the best validation Dice; patience counts the epochs since."""
        improved = scores["dice"] > progress.bests["best_dice"] + 1e-6
        if improved:
            progress.bests["best_dice"], progress.wait = scores["dice"], 0
        else:
            progress.wait += 1
        return improved

    def kept_weights(self) -> dict:
        return self.model.state_dict()


def _held_out(setup: _Setup, model, images: _Images, mean: float, std: float, threshold: float) -> tuple[dict, list[list]]:
    """Dice and IoU of the best weights on the validation and test patients, each image at its own size."""
    summary, rows = {}, []
    for split in ("val", "test"):
        members = images.index[split]
        if not len(members):
            summary[split] = None
            continue
        probabilities = _probabilities(model, images.planes[members], mean, std)
        scores = []
        for row, p in zip(members, probabilities):
            truth = images.truth[int(row)]
            mask = mask_from_probabilities(p, truth.shape, threshold)
            scores.append((dice(mask, truth), iou(mask, truth)))
            pair = setup.pairs[int(row)]
            rows.append([str(pair.image), pair.patient_id, pair.source, split, round(scores[-1][0], 6), round(scores[-1][1], 6)])
        values = np.asarray(scores)
        summary[split] = {"images": int(len(members)), "patients": len({setup.pairs[int(r)].patient_id for r in members}),
                          "dice": float(values[:, 0].mean()), "dice_min": float(values[:, 0].min()), "iou": float(values[:, 1].mean()),
                          "iou_min": float(values[:, 1].min())}
    return summary, rows


def train_segmenter(options: SegmentTrainOptions, on_step: Callable[[int, int, int, float], None] | None = None,
                    on_epoch: Callable[[dict], None] | None = None, on_info: Callable[[str], None] | None = None,
                    on_load: Callable[[int, int], None] | None = None) -> dict:
    """Train one lung segmenter; returns its config as a dict (also in config.json) and ``run``."""
    from cxrclf.models.zoo import input_config

    info = on_info or (lambda message: None)
    setup = _prepare(options)
    options = setup.options
    missing = {k: sum(v.values()) for k, v in setup.report.items() if v}
    info(f"{len(setup.pairs)} X-rays with lung masks of {len({p.patient_id for p in setup.pairs})} patients"
         + (" (left out: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in missing.items()) + ")" if missing else ""))
    fit.seed(options.seed)
    model, source = build_segmenter(options.encoder, pretrained=options.pretrained, decoder_channels=options.decoder_channels, weights=options.weights)
    normalisation = input_config(options.encoder, in_chans=1)
    mean, std = float(normalisation.mean[0]), float(normalisation.std[0])
    info(f"segmenter {options.encoder} + U-Net decoder, {sum(p.numel() for p in model.parameters()):,} parameters; encoder weights: {source}")
    images = _load_images(setup, options.image_size, on_load)
    info("patients: " + ", ".join(f"{split} {len({setup.pairs[int(r)].patient_id for r in rows})} ({len(rows)} images)" for split, rows in images.index.items())
         + f"; input {options.image_size}px")
    learner = _Learner(options, setup.out, model, images, mean, std)
    plan = fit.Plan(config=_describe(setup, mean, std, source), out=setup.out, epochs=options.epochs, patience=options.patience, seed=options.seed,
                    title=f"lung segmenter {options.encoder}", no_epoch_kept="no epoch was kept (no validation Dice); check the validation masks",
                    resuming=setup.resuming, replacing=setup.replacing)
    with fit.run_folder(plan, SegmentRun) as run:
        progress = fit.begin(run, learner, plan, info)
        io.write_text(run.file(SegmentRun.SPLIT), _split_table(setup))
        progress = fit.fit(run, learner, plan, progress, on_step, on_epoch)
        config = _finish(run, plan, progress, setup, learner)
    return config.to_dict() | {"run": str(setup.out)}


def _finish(run: SegmentRun, plan: fit.Plan[SegmentConfig], progress: fit.Progress, setup: _Setup, learner: _Learner) -> SegmentConfig:
    """The best weights measured on the held-out patients (heldout.csv, and the means in the config), then the config written."""
    learner.model.load_state_dict(run.load_weights())
    held_out, rows = _held_out(setup, learner.model, learner.images, learner.mean, learner.std, plan.config.model.threshold)
    io.write_text(run.file(SegmentRun.HELDOUT), io.csv_text(["image", "patient_id", "source", "split", "dice", "iou"], rows))
    config = plan.config.with_(status=Status.finished, outcome=SegmentOutcome(epochs_run=progress.epoch, best_epoch=progress.best_epoch,
                                                                             val=held_out["val"], test=held_out["test"]))
    test = held_out["test"]
    return fit.finish(run, plan, progress, config, f"; test Dice {test['dice']:.4f}, IoU {test['iou']:.4f} on {test['images']} images" if test else "")
