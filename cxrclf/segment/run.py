"""A lung segmentation run as a value: :class:`SegmentConfig` and its folder, :class:`SegmentRun`.

The folder is a :class:`cxrclf.runs.RunFiles` over :class:`SegmentConfig`, as a classifier's
run is over :class:`~cxrclf.runs.RunConfig`, marked with the kind ``segmentation``::

    config.json        the SegmentConfig (validated on load: one line naming a bad field)
    model.safetensors  the best weights (by validation Dice)
    metrics.csv        one row per epoch;   train.log  the human log
    checkpoint.pt      the resume state
    split.csv          every pair: image, masks, patient, source, split (train / val / test)
    heldout.csv        Dice and IoU of every validation and test image, at the image's own size

The segmenter's identity, as preprocessing records it, is the folder's absolute path and
the sha256 of ``model.safetensors`` (:meth:`SegmentRun.weights_sha256`).

The package ships one finished run, the *built-in* segmenter (``cxrclf/builtin/lung/``: its
config.json, half-precision weights and ``provenance.json``, how it was made). The name
:data:`BUILTIN` (``--lung-model builtin``) means it, and it is the default wherever a
segmenter may be left unnamed; preprocessing records it as ``builtin`` with its weights'
sha256, so a cxrclf that ships other weights refuses runs cropped with the old ones.

:func:`lung_params` is that record; :func:`segmenter_for` loads the segmenter a record names
(once per process) for the callers of preprocessing, which is handed a segmenter, never loads one.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxrclf import folders, io
from cxrclf.choices import Lung, parse
from cxrclf.errors import CxrclfError
from cxrclf.runs import BaseConfig, Execution, Fields, RunFiles, Status

__all__ = ["BUILTIN", "DEFAULT_ENCODER", "DEFAULT_INPUT_SIZE", "DEFAULT_RUN", "KIND", "LUNG_MODEL_ENV", "PROVENANCE", "SegmentConfig", "SegmentData", "SegmentOutcome", "SegmentRun",
           "SegmentTraining", "SegmenterSpec", "builtin_folder", "lung_params", "resolve_segment_run", "segment_run_named", "segmenter_for"]

KIND = "segmentation"
FORMAT_VERSION = 1
DEFAULT_RUN = folders.RUNS / "lung"   # where `cxrclf segment train` writes by default
DEFAULT_ENCODER = "tf_efficientnet_lite0"
DEFAULT_INPUT_SIZE = 128
LUNG_MODEL_ENV = "CXRCLF_LUNG_MODEL"
BUILTIN = "builtin"                    # the name of the segmenter shipped in the package
PROVENANCE = "provenance.json"         # beside the built-in's config.json: how it was made


def builtin_folder() -> Path:
    """The built-in segmenter's run folder inside the installed package."""
    return folders.BUILTIN_LUNG


@dataclass(frozen=True)
class SegmenterSpec:
    """The network and what it expects: enough to rebuild it and feed it."""
    encoder: str
    input_size: int
    mean: float
    std: float
    decoder_channels: tuple[int, ...]
    threshold: float = 0.5
    pretrained_source: str = ""

    @classmethod
    def parse(cls, f: Fields) -> "SegmenterSpec":
        channels = f.numbers("decoder_channels", tuple(range(2, 9)), 1, 4096)
        if not all(c == int(c) for c in channels):
            raise f._fail("decoder_channels", "a list of whole numbers")
        return cls(encoder=f.str("encoder"), input_size=f.int("input_size", 32, 2048), mean=f.float("mean", -10.0, 10.0),
                   std=f.float("std", 1e-6, 10.0), decoder_channels=tuple(int(c) for c in channels),
                   threshold=f.float("threshold", 0.0, 1.0, 0.5), pretrained_source=f.str("pretrained_source", ""))


@dataclass(frozen=True)
class SegmentData:
    """Where the pairs came from and how they were split (by patient)."""
    nlm: str | None = None
    masks_csv: str | None = None
    pairs: int = 0
    patients: int = 0
    val_frac: float = 0.15
    test_frac: float = 0.2
    split_sha256: str = ""
    per_split: dict[str, dict[str, int]] = field(default_factory=dict)   # split -> {"images", "patients"}

    @classmethod
    def parse(cls, f: Fields) -> "SegmentData":
        per_split = f.mapping("per_split", {})
        if not all(isinstance(v, dict) for v in per_split.values()):
            raise f._fail("per_split", "an object of {images, patients} objects")
        return cls(nlm=f.optional_str("nlm"), masks_csv=f.optional_str("masks_csv"), pairs=f.int("pairs", 0, 10**9, 0),
                   patients=f.int("patients", 0, 10**9, 0), val_frac=f.float("val_frac", 0.0, 0.99, cls.val_frac),
                   test_frac=f.float("test_frac", 0.0, 0.99, cls.test_frac),
                   split_sha256=f.str("split_sha256", ""), per_split={str(k): dict(v) for k, v in per_split.items()})


@dataclass(frozen=True)
class SegmentTraining:
    """The recipe: everything that changes the weights the run ends with.

    Its defaults are the segmenter's training defaults, written here once: ``cxrclf segment
    train``'s options and :class:`cxrclf.segment.train.SegmentTrainOptions` read them.
    """
    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    patience: int = 10
    seed: int = 0
    pretrained: bool = True
    augment: bool = True

    @classmethod
    def parse(cls, f: Fields) -> "SegmentTraining":
        return cls(epochs=f.int("epochs", 1, 100_000, cls.epochs), batch_size=f.int("batch_size", 1, 100_000, cls.batch_size),
                   lr=f.float("lr", 1e-12, 10.0, cls.lr), patience=f.int("patience", 1, 100_000, cls.patience),
                   seed=f.int("seed", -(2**63), 2**63 - 1, cls.seed), pretrained=f.bool("pretrained", cls.pretrained), augment=f.bool("augment", cls.augment))


@dataclass(frozen=True)
class SegmentOutcome:
    """What training produced: the best epoch and the held-out scores (``{"images", "patients", "dice", "iou", ...}``)."""
    epochs_run: int = 0
    best_epoch: int = -1
    val: dict | None = None
    test: dict | None = None

    @classmethod
    def parse(cls, f: Fields) -> "SegmentOutcome":
        val, test = f.document.get("val"), f.document.get("test")
        return cls(epochs_run=f.int("epochs_run", 0, 10**7, 0), best_epoch=f.int("best_epoch", -1, 10**7, -1),
                   val=val if isinstance(val, dict) else None, test=test if isinstance(test, dict) else None)


@dataclass(frozen=True)
class SegmentConfig(BaseConfig):
    model: SegmenterSpec
    data: SegmentData
    training: SegmentTraining
    execution: Execution = field(default_factory=Execution)
    outcome: SegmentOutcome = field(default_factory=SegmentOutcome)
    status: Status = Status.training
    format_version: int = FORMAT_VERSION

    def build_network(self):
        """The untrained segmenter that the run's weights fit (the architecture alone: :meth:`SegmentRun.build_model` loads them)."""
        from cxrclf.segment.model import build_segmenter

        return build_segmenter(self.model.encoder, pretrained=False, decoder_channels=self.model.decoder_channels)[0]

    @property
    def network_description(self) -> str:
        return f"the segmenter {self.model.encoder}"

    def to_dict(self) -> dict:
        return {"kind": KIND, "format_version": self.format_version, "status": self.status.value, "model": io.jsonable(asdict(self.model)),
                "data": io.jsonable(asdict(self.data)), "training": asdict(self.training), "execution": io.jsonable(asdict(self.execution)),
                "outcome": io.jsonable(asdict(self.outcome))}

    @classmethod
    def from_dict(cls, document: Any, source: Path | None = None) -> "SegmentConfig":
        root = Fields(document, "", source)
        kind = document.get("kind")
        if kind != KIND:
            what = "a classification run" if "class_names" in (document.get("model") or {}) or kind is None else f"a {kind!r} folder"
            raise CxrclfError(f"is {what}, not a lung segmentation run (train one with `cxrclf segment train`)", source)
        root.int("format_version", 1, FORMAT_VERSION)
        return cls(model=SegmenterSpec.parse(root.child("model")), data=SegmentData.parse(root.child("data")),
                   training=SegmentTraining.parse(root.child("training")),
                   execution=Execution.parse(root.child("execution")) if root.has("execution") else Execution(),
                   outcome=SegmentOutcome.parse(root.child("outcome")) if root.has("outcome") else SegmentOutcome(),
                   status=Status.parse(root), format_version=FORMAT_VERSION)


class SegmentRun(RunFiles[SegmentConfig]):
    """A lung segmentation run's folder: the files every run has, and the split and held-out scores."""

    SPLIT = "split.csv"
    HELDOUT = "heldout.csv"
    KIND = KIND
    NOUN = "lung segmentation run"
    TRAIN_COMMAND = "cxrclf segment train"
    UNFINISHED = "training of this lung segmenter did not finish (killed, or still running); resume it with `cxrclf segment train --resume`"
    config_type = SegmentConfig

    def weights_sha256(self) -> str:
        return io.sha256_file(self.file(self.WEIGHTS))

    @property
    def is_builtin(self) -> bool:
        return self.path.resolve() == builtin_folder()

    @property
    def identity(self) -> str:
        """What preprocessing records as ``lung_model``: :data:`BUILTIN`, or the folder's absolute path."""
        return BUILTIN if self.is_builtin else str(self.path.resolve())


def segment_run_named(name: str | Path) -> SegmentRun:
    """The run a recorded ``lung_model`` names: :data:`BUILTIN`, or a folder (not checked here: loading says what is wrong)."""
    return SegmentRun(builtin_folder()) if str(name) == BUILTIN else SegmentRun(Path(name))


def resolve_segment_run(run: Path | str | None) -> SegmentRun:
    """``run`` if given (``builtin``: the built-in), else ``$CXRCLF_LUNG_MODEL``, else the built-in; a one-line error when none exists."""
    if run is None:
        run = os.environ.get(LUNG_MODEL_ENV) or BUILTIN
        if str(run) != BUILTIN and not Path(run).exists():
            raise CxrclfError(f"no lung segmentation run here: ${LUNG_MODEL_ENV} names a missing folder; unset it to use the built-in "
                              "segmenter, or train one with `cxrclf segment train`", run)
    if str(run) == BUILTIN:
        folder = builtin_folder()
        if not (folder / SegmentRun.WEIGHTS).is_file():
            raise CxrclfError("the built-in lung segmenter is missing from this installation (reinstall cxrclf, or name a run)", folder)
        return SegmentRun(folder)
    run = Path(run)
    if not run.is_dir():
        raise CxrclfError("lung segmentation run not found" if not run.exists() else "lung segmentation run must be a folder", run)
    return SegmentRun(run.resolve())


def lung_params(lung: Lung | str, model: Path | None) -> dict:
    """``lung``, ``lung_model`` and ``lung_model_sha256`` for :class:`~cxrclf.preprocess.params.PreprocessParams` (the segmenter's identity).

    ``model`` is a finished lung segmentation run or ``builtin`` (default ``$CXRCLF_LUNG_MODEL``,
    else the built-in segmenter, recorded as ``builtin``); nothing is looked up for ``none``.
    """
    lung = parse(Lung, lung, "lung")
    if lung is Lung.none:
        if model is not None:
            raise CxrclfError("a lung model was given but the lung step is none; choose --lung crop or --lung mask", model)
        return {"lung": Lung.none.value, "lung_model": "", "lung_model_sha256": ""}
    run = resolve_segment_run(model)
    run.require_finished(run.read_config())
    return {"lung": lung.value, "lung_model": run.identity, "lung_model_sha256": run.weights_sha256()}


_LOADED: dict[tuple[str, str], object] = {}


def segmenter_for(params):
    """The segmenter preprocessing ``params`` name (``lung_model`` at ``lung_model_sha256``), loaded once per
    process, to hand to :func:`cxrclf.preprocess.pipeline.preprocess_image`; None when they have no lung step.

    Refuses, in one line, a segmenter that is missing or whose weights changed since the
    parameters were recorded: images would no longer be cropped as the training images were.
    """
    if not params.uses_lungs:
        return None
    key = (params.lung_model, params.lung_model_sha256)
    if key not in _LOADED:
        from cxrclf.segment.infer import Segmenter

        _LOADED[key] = Segmenter(segment_run_named(params.lung_model), expected_sha256=params.lung_model_sha256)
    return _LOADED[key]
