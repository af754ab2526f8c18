"""A trained run as a value: :class:`RunConfig` (what it is) and :class:`RunFolder` (where it lives).

``RunConfig`` is frozen and typed, read from and written to ``config.json``, and validated on
load: a damaged or hand-edited file gives one line naming the field, never a traceback or a
silent default. It separates what *defines* a run (model, labels, preprocessing, data,
training recipe) from how it was *executed* (device, threads, versions) and what came *out*
(epochs run, best epoch, class counts).

``RunFolder`` knows the folder's files::

    config.json        the RunConfig (``status`` a :class:`Status`; ``outcome.best`` the best epoch's :class:`EpochScores`)
    model.safetensors  the best weights (no pickle)
    metrics.csv        one row per epoch;   train.log  the human log
    checkpoint.pt      the resume state (tensors and plain values; read with weights_only)
    guard.safetensors  the out-of-distribution detector, where the run has one
    reference.safetensors  the validation images' pooled features and sources: the batch shift test's reference

The first five are every run's, whatever network it trained: :class:`RunFiles` is the folder
over its config type, of which ``RunFolder`` (a classifier) and the lung segmenter's
:class:`cxrclf.segment.run.SegmentRun` are the two kinds; :mod:`cxrclf.fit` trains both.

Training writes runs; inference, evaluation, explanation and the benchmarks read them
through this module, which imports nothing from ``cxrclf.train``.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, Iterator, Protocol, Self, TypeVar

from cxrclf import folders, io
from cxrclf.choices import Augment, Choice, Recipe, SelectBy, Strategy, parse
from cxrclf.errors import CxrclfError
from cxrclf.labels import SCHEMES
from cxrclf.preprocess.params import PreprocessParams, required_fields

__all__ = ["BaseConfig", "DEFAULT_VIEWS", "DataSpec", "EpochScores", "Execution", "Fields", "GuardSettings", "ModelSpec", "OperatingPoint", "Outcome", "ReferenceSettings", "RunConfig",
           "RunDocument", "RunFiles", "RunFolder", "SourceUnlearning", "Status", "TrainingSpec", "resolve_run", "scenario_code"]

FORMAT_VERSION = 2
MAX_INPUT_SIZE = 2048


class Status(Choice):
    """A run's ``status`` in config.json: ``training`` from its start until training has written its last file."""
    finished = "finished"
    training = "training"

    @classmethod
    def parse(cls, f: "Fields") -> "Status":
        """``status`` of a config.json; a run written before it was recorded was still training."""
        return cls(f.str("status", cls.training.value, tuple(status.value for status in cls)))


def scenario_code(strategy: Strategy | str, classes: int) -> str:
    """The paper's scenario names: C (class weights) or R (random oversampling) + B/M3/M4."""
    return ("C" if str(strategy) == Strategy.weighted.value else "R") + {2: "B", 3: "M3", 4: "M4"}[classes]


# ----------------------------------------------------------------------------- validation

class Fields:
    """Typed reads from one JSON object, each failure one line naming the field (run and segmentation configs use it)."""

    def __init__(self, document: Any, prefix: str, source: Path | None):
        if not isinstance(document, dict):
            raise CxrclfError(f"{prefix or 'config'} must be a JSON object, not {type(document).__name__}", source)
        self.document, self.prefix, self.source = document, prefix, source

    def _fail(self, key: str, expected: str) -> CxrclfError:
        value = self.document.get(key, "<missing>")
        shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
        return CxrclfError(f"field {self.prefix}{key} must be {expected}, not {shown}", self.source)

    def has(self, key: str) -> bool:
        return key in self.document and self.document[key] is not None

    def int(self, key: str, low: int, high: int, default: int | None = None) -> int:
        value = self.document.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._fail(key, f"an integer from {low} to {high}")
        return value

    def optional_int(self, key: str, low: int, high: int) -> int | None:
        return self.int(key, low, high) if self.has(key) else None

    def float(self, key: str, low: float, high: float, default: float | None = None) -> float:
        value = self.document.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
            raise self._fail(key, f"a number from {low:g} to {high:g}")
        return float(value)

    def str(self, key: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
        value = self.document.get(key, default)
        if not isinstance(value, str) or (choices and value not in choices):
            raise self._fail(key, f"one of {', '.join(choices)}" if choices else "a string")
        return value

    def optional_str(self, key: str) -> str | None:
        return self.str(key) if self.has(key) else None

    def bool(self, key: str, default: bool | None = None) -> bool:
        value = self.document.get(key, default)
        if not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def numbers(self, key: str, count: tuple[int, ...], low: float, high: float) -> tuple[float, ...]:
        value = self.document.get(key)
        if (not isinstance(value, list) or len(value) not in count
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high for v in value)):
            raise self._fail(key, f"a list of {' or '.join(map(str, count))} numbers from {low:g} to {high:g}")
        return tuple(float(v) for v in value)

    def strings(self, key: str, default: list | None = None) -> tuple[str, ...]:
        value = self.document.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "a list of strings")
        return tuple(value)

    def mapping(self, key: str, default: dict | None = None) -> dict:
        value = self.document.get(key, default)
        if not isinstance(value, dict):
            raise self._fail(key, "a JSON object")
        return value

    def child(self, key: str) -> "Fields":
        if not isinstance(self.document.get(key), dict):
            raise self._fail(key, "a JSON object")
        return Fields(self.document[key], f"{self.prefix}{key}.", self.source)


# ----------------------------------------------------------------------------- the config

@dataclass(frozen=True)
class ModelSpec:
    """The network and what it expects: enough to rebuild it and feed it."""
    name: str  # canonical: a timm name or resnet-baseline, what create_model rebuilds
    class_names: tuple[str, ...]
    input_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dropout: float = 0.5
    trainable_blocks: int | str = 4
    pretrained_source: str = ""
    requested_name: str | None = None  # the user's spelling (NASNetLarge) when not the name itself; None too in older runs

    @property
    def classes(self) -> int:
        return len(self.class_names)

    @property
    def label(self) -> str:
        """``nasnetalarge (requested as NASNetLarge)``, or the name alone when spelled as it is."""
        from cxrclf.models.names import model_label

        return model_label(self.name, self.requested_name)

    @classmethod
    def parse(cls, f: Fields) -> "ModelSpec":
        class_names = f.strings("class_names")
        schemes = {tuple(s.classes): k for k, s in SCHEMES.items()}
        if class_names not in schemes:
            raise f._fail("class_names", "the classes of a label scheme (" + "; ".join(", ".join(s.classes) for s in SCHEMES.values()) + ")")
        in_chans = f.int("in_chans", 1, 3)
        if in_chans == 2:
            raise f._fail("in_chans", "1 or 3")
        blocks = f.document.get("trainable_blocks", cls.trainable_blocks)
        if blocks != "all" and (isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0):
            raise f._fail("trainable_blocks", "a number of blocks or 'all'")
        return cls(
            name=f.str("name"), class_names=class_names, input_size=f.int("input_size", 16, MAX_INPUT_SIZE), in_chans=in_chans,
            mean=f.numbers("mean", (in_chans,), -10.0, 10.0), std=f.numbers("std", (in_chans,), 1e-6, 10.0),
            dropout=f.float("dropout", 0.0, 0.999, cls.dropout), trainable_blocks=blocks, pretrained_source=f.str("pretrained_source", ""),
            requested_name=f.optional_str("requested_name"),
        )


# Runs made before views were recorded were trained on what `fuse` keeps by default: PA films.
DEFAULT_VIEWS: tuple[str, ...] = ("PA",)


@dataclass(frozen=True)
class DataSpec:
    """The preprocessed folder a run learned from, pinned by its manifest's hash, and the views of its training images."""
    folder: str
    manifest_sha256: str = ""
    fold: int | None = None
    exclude_sources: tuple[str, ...] = ()
    views: tuple[str, ...] = ()     # distinct manifest views of the training rows; () when not recorded

    @property
    def trained_views(self) -> tuple[str, ...]:
        """The views the run saw; :data:`DEFAULT_VIEWS` (PA) for a run that did not record them (older runs, or data with no view column)."""
        return self.views or DEFAULT_VIEWS

    @classmethod
    def parse(cls, f: Fields) -> "DataSpec":
        return cls(folder=f.str("folder"), manifest_sha256=f.str("manifest_sha256", ""), fold=f.optional_int("fold", 0, 1000),
                   exclude_sources=f.strings("exclude_sources", []), views=f.strings("views", []))


@dataclass(frozen=True)
class SourceUnlearning:
    """``train --unlearn-source``: a class-conditional source adversary behind a gradient-reversal layer (:mod:`cxrclf.train.unlearn`).

    The reversed gradient's strength is ``weight * ramp(p)``, ``p`` the share of training steps
    done; ``classes`` are the classes the adversary reads (each with its training sources) and
    ``skipped`` those drawn from one source, which carry no source information to remove.
    """
    weight: float
    ramp: str = "ganin"      # 2 / (1 + exp(-gamma p)) - 1 (Ganin et al. 2016)
    gamma: float = 10.0
    hidden_units: int = 128  # each class's head: Linear(features, hidden) -> ReLU -> Linear(hidden, its sources)
    balanced: bool = True    # a class's sources weigh equally in its head's loss
    classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    @classmethod
    def parse(cls, f: Fields) -> "SourceUnlearning":
        classes = f.mapping("classes", {})
        if not all(isinstance(v, list) and len(v) >= 2 and all(isinstance(s, str) for s in v) for v in classes.values()):
            raise f._fail("classes", "an object of lists of two or more source names")
        return cls(weight=f.float("weight", 1e-12, 1000.0), ramp=f.str("ramp", "ganin", ("ganin",)), gamma=f.float("gamma", 0.0, 1000.0, 10.0),
                   hidden_units=f.int("hidden_units", 1, 100_000, 128), balanced=f.bool("balanced", True),
                   classes={str(k): tuple(v) for k, v in classes.items()}, skipped=f.strings("skipped", []))


@dataclass(frozen=True)
class TrainingSpec:
    """The recipe: everything that changes the weights a run ends with.

    Its defaults are the classifier's training defaults, written here once: ``cxrclf train``'s
    options and :class:`cxrclf.train.loop.TrainOptions` read them, and a config.json written
    before a field existed reads as the field's default.
    """
    strategy: Strategy = Strategy.oversample
    epochs: int = 30
    batch_size: int = 10
    lr: float = 1e-4
    patience: int = 5
    seed: int = 0
    pretrained: bool = True
    weights: str | None = None
    select_by: SelectBy = SelectBy.loss
    class_constants: dict[str, float] = field(default_factory=dict)
    recipe: Recipe = Recipe.paper          # runs made before recipes existed: the paper's
    augment: Augment = Augment.copies
    unlearn_source: SourceUnlearning | None = None  # None: off (every run before it, and weight 0)

    @classmethod
    def parse(cls, f: Fields) -> "TrainingSpec":
        constants = f.mapping("class_constants", {})
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in constants.values()):
            raise f._fail("class_constants", "an object of positive numbers")
        return cls(
            strategy=parse(Strategy, f.str("strategy", cls.strategy.value), f"field {f.prefix}strategy"), epochs=f.int("epochs", 1, 100_000, cls.epochs),
            batch_size=f.int("batch_size", 1, 100_000, cls.batch_size), lr=f.float("lr", 1e-12, 10.0, cls.lr), patience=f.int("patience", 1, 100_000, cls.patience),
            seed=f.int("seed", -(2**63), 2**63 - 1, cls.seed), pretrained=f.bool("pretrained", cls.pretrained), weights=f.optional_str("weights"),
            select_by=parse(SelectBy, f.str("select_by", cls.select_by.value), f"field {f.prefix}select_by"),
            class_constants={str(k): float(v) for k, v in constants.items()},
            recipe=parse(Recipe, f.str("recipe", cls.recipe.value), f"field {f.prefix}recipe"),
            augment=parse(Augment, f.str("augment", cls.augment.value), f"field {f.prefix}augment"),
            unlearn_source=SourceUnlearning.parse(f.child("unlearn_source")) if f.has("unlearn_source") else None,
        )


@dataclass(frozen=True)
class Execution:
    """How the run was executed: nothing here changes what it learns (on one machine)."""
    device: str = "auto"
    threads: int | None = None
    tensorboard: bool = False
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, f: Fields) -> "Execution":
        return cls(device=f.str("device", "auto"), threads=f.optional_int("threads", 1, 4096), tensorboard=f.bool("tensorboard", False),
                   versions={str(k): str(v) for k, v in f.mapping("versions", {}).items()})


@dataclass(frozen=True)
class EpochScores:
    """One epoch's row of metrics.csv; the best epoch's is kept in config.json (``outcome.best``).

    A score that is undefined (the AUC, or the recall of a class with no validation image)
    is None here and ``""`` in the files, as metrics.csv writes it; a loss that was not a
    number is NaN here and null in config.json. ``notes`` are the columns a training option
    adds after the timing ones (the source adversary's), kept as they were written.
    """
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_auc: float | None
    val_recall: dict[str, float | None]
    images_per_s: float
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    COLUMNS: ClassVar[tuple[str, ...]] = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_auc", "images_per_s", "seconds", "best")
    RECALL: ClassVar[str] = "val_recall_"

    @classmethod
    def parse(cls, f: Fields) -> "EpochScores":
        """From a row of metrics.csv as training makes it, or from ``outcome.best`` in config.json."""
        def number(key: str, blank: bool = False) -> Any:  # null: NaN; "": undefined (None) where ``blank``
            value = f.document.get(key, "<missing>")
            if value is None or (blank and value == ""):
                return math.nan if value is None else None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise f._fail(key, 'a number, "" or null' if blank else "a number or null")
            return float(value)

        recalls = [key for key in f.document if key.startswith(cls.RECALL)]
        return cls(epoch=f.int("epoch", 1, 10**7), train_loss=number("train_loss"), val_loss=number("val_loss"), val_accuracy=number("val_accuracy"),
                   val_auc=number("val_auc", blank=True), val_recall={key[len(cls.RECALL):]: number(key, blank=True) for key in recalls},
                   images_per_s=number("images_per_s"), seconds=number("seconds"),
                   notes={k: v for k, v in f.document.items() if k not in cls.COLUMNS and k not in recalls})

    @classmethod
    def from_row(cls, row: dict) -> "EpochScores":
        """From a row of metrics.csv as training makes it (``"best"``, always 1 for the kept epoch, is left out)."""
        return cls.parse(Fields(row, "best.", None))

    def to_dict(self) -> dict:
        """The row as metrics.csv and config.json hold it (``best`` is 1: the kept epoch's row is always its best)."""
        blank = lambda value: "" if value is None else value  # noqa: E731
        return {"epoch": self.epoch, "train_loss": self.train_loss, "val_loss": self.val_loss, "val_accuracy": self.val_accuracy, "val_auc": blank(self.val_auc),
                **{f"{self.RECALL}{name}": blank(recall) for name, recall in self.val_recall.items()},
                "images_per_s": self.images_per_s, "seconds": self.seconds, **self.notes, "best": 1}


@dataclass(frozen=True)
class Outcome:
    """What training produced."""
    epochs_run: int = 0
    stopped_early: bool = False
    best_epoch: int = -1
    best: EpochScores | None = None
    train_class_counts: dict[str, int] = field(default_factory=dict)
    class_weights: dict[str, float] | None = None

    @classmethod
    def parse(cls, f: Fields) -> "Outcome":
        weights = f.document.get("class_weights")
        return cls(epochs_run=f.int("epochs_run", 0, 10**7, 0), stopped_early=f.bool("stopped_early", False), best_epoch=f.int("best_epoch", -1, 10**7, -1),
                   best=EpochScores.parse(f.child("best")) if isinstance(f.document.get("best"), dict) else None,
                   train_class_counts={str(k): int(v) for k, v in f.mapping("train_class_counts", {}).items()},
                   class_weights={str(k): float(v) for k, v in weights.items()} if isinstance(weights, dict) else None)

    def to_dict(self) -> dict:
        document = io.jsonable(asdict(replace(self, best=None)))
        document["best"] = None if self.best is None else io.jsonable(self.best.to_dict())
        return document


GUARD_KINDS = ("gaussian", "energy")
GUARD_RULES = ("conformal", "quantile")  # cxrclf.guard.detector.THRESHOLD_RULES; runs that record none used "quantile"


@dataclass(frozen=True)
class GuardSettings:
    """The out-of-distribution guard a run carries: what ``guard.safetensors`` must hold, checked when it loads."""
    kind: str
    threshold: float
    quantile: float
    feature_dim: int
    train_images: int = 0
    val_images: int = 0
    val_flag_rate: float | None = None
    file: str = "guard.safetensors"
    rule: str = "quantile"  # how the threshold was read off the validation scores (cxrclf.guard.detector.threshold_from)

    @classmethod
    def parse(cls, f: Fields) -> "GuardSettings":
        file = f.str("file", "guard.safetensors")
        if file != "guard.safetensors":  # the run's own file, never a path elsewhere
            raise f._fail("file", "guard.safetensors (the run's own detector file)")
        rate = f.document.get("val_flag_rate")
        kind = f.str("kind", choices=GUARD_KINDS)
        low = 0.0 if kind == "gaussian" else -1e300  # a distance is never negative; an energy may be
        return cls(kind=kind, threshold=f.float("threshold", low, 1e300), quantile=f.float("quantile", 1e-6, 1 - 1e-6),
                   feature_dim=f.int("feature_dim", 1, 10**6), train_images=f.int("train_images", 0, 10**9, 0), val_images=f.int("val_images", 0, 10**9, 0),
                   val_flag_rate=None if rate is None else f.float("val_flag_rate", 0.0, 1.0), file=file,
                   rule=f.str("rule", "quantile", GUARD_RULES))

    def to_dict(self) -> dict:
        document = io.jsonable(asdict(self))
        if self.rule == "quantile":  # a run trained before the rule was recorded: its config.json and reports stay as they were
            del document["rule"]
        return document


@dataclass(frozen=True)
class ReferenceSettings:
    """The batch shift test's reference (:mod:`cxrclf.guard.shift`): what ``reference.safetensors`` holds.

    The pooled features of the run's validation images (never its training images: the
    weights were fitted on those, so their features sit closer to the model than any new
    image's), with each image's source from the manifest.
    """
    images: int
    sources: dict[str, int]
    feature_dim: int
    split: str = "val"
    file: str = "reference.safetensors"

    @classmethod
    def parse(cls, f: Fields) -> "ReferenceSettings":
        if f.str("file", "reference.safetensors") != "reference.safetensors":  # the run's own file, never a path elsewhere
            raise f._fail("file", "reference.safetensors (the run's own reference file)")
        sources = f.mapping("sources")
        if not sources or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sources.values()):
            raise f._fail("sources", "an object of image counts per source")
        images = f.int("images", 2, 10**9)
        if sum(sources.values()) != images:
            raise f._fail("images", f"the sum of the sources' counts ({sum(sources.values())})")
        return cls(images=images, sources={str(k): int(v) for k, v in sources.items()}, feature_dim=f.int("feature_dim", 1, 10**6),
                   split=f.str("split", "val", ("val",)))

    def to_dict(self) -> dict:
        return io.jsonable(asdict(self))


@dataclass(frozen=True)
class OperatingPoint:
    """Per-class decision thresholds, each class against the rest, chosen by ``train`` on the validation
    probabilities of the best weights (a decision travels with the weights it was made for).

    ``rule`` is ``youden`` (Youden's J: the most sensitivity + specificity) or
    ``sensitivity=S`` (the most specific threshold whose validation sensitivity reaches S). A
    class is *positive* for an image when its probability is at or above its threshold: none,
    one or several classes may be; the argmax label is a separate answer.
    """
    rule: str
    thresholds: dict[str, float]
    val_images: int = 0
    val_sensitivity: dict[str, float | None] = field(default_factory=dict)
    val_specificity: dict[str, float | None] = field(default_factory=dict)

    RULES: ClassVar[str] = "youden, or sensitivity=S with a target sensitivity S in (0, 1] (for example sensitivity=0.9)"

    @staticmethod
    def parse_rule(text: str) -> str:
        """``"youden"`` or ``"sensitivity=0.9"`` (normalised); anything else is a one-line error naming the value."""
        value = str(text).strip().lower()
        if value == "youden":
            return value
        name, equals, number = value.partition("=")
        if name.strip() == "sensitivity" and equals:
            try:
                target = float(number)
            except ValueError:
                target = math.nan
            if math.isfinite(target) and 0 < target <= 1:
                return f"sensitivity={target:g}"
            raise CxrclfError(f"operating point {text!r}: the target sensitivity must be a number in (0, 1], for example sensitivity=0.9")
        raise CxrclfError(f"operating point must be {OperatingPoint.RULES}; not {text!r}")

    @property
    def target_sensitivity(self) -> float | None:
        return float(self.rule.partition("=")[2]) if self.rule.startswith("sensitivity=") else None

    def positive(self, probabilities: dict[str, float]) -> list[str]:
        """The classes whose probability is at or above their threshold, in class order."""
        return [name for name, threshold in self.thresholds.items() if probabilities[name] >= threshold]

    @classmethod
    def choose(cls, labels, probabilities, class_names: list[str] | tuple[str, ...], rule: str) -> "OperatingPoint":
        """Per-class thresholds, each class against the rest, on validation ``labels`` (N,) and ``probabilities`` (N, classes).

        ``rule`` is ``youden`` or ``sensitivity=S`` (:meth:`parse_rule`); each class's threshold is
        :func:`cxrclf.threshold.choose_threshold` on its own probability. A class with no
        validation image, or only validation images, keeps 0.5 and no validation rates.
        """
        import numpy as np

        from cxrclf.threshold import choose_threshold

        rule = cls.parse_rule(rule)
        target = float(rule.partition("=")[2]) if rule.startswith("sensitivity=") else None
        labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=float)
        chosen = {name: choose_threshold(labels == index, probabilities[:, index], target) for index, name in enumerate(class_names)}
        finite = lambda value: None if math.isnan(value) else float(value)  # noqa: E731
        return cls(rule=rule, thresholds={name: c["threshold"] for name, c in chosen.items()}, val_images=int(len(labels)),
                   val_sensitivity={name: finite(c["val_sensitivity"]) for name, c in chosen.items()},
                   val_specificity={name: finite(c["val_specificity"]) for name, c in chosen.items()})

    @classmethod
    def parse(cls, f: Fields, class_names: tuple[str, ...]) -> "OperatingPoint":
        try:
            rule = cls.parse_rule(f.str("rule"))
        except CxrclfError:
            raise f._fail("rule", OperatingPoint.RULES) from None
        thresholds = f.mapping("thresholds")
        if (list(thresholds) != list(class_names)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1 for v in thresholds.values())):
            raise f._fail("thresholds", f"an object of one threshold from 0 to 1 per class ({', '.join(class_names)})")

        def rates(key: str) -> dict[str, float | None]:
            values = f.mapping(key, {})
            if not set(values) <= set(class_names) or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1) for v in values.values()):
                raise f._fail(key, "an object of rates from 0 to 1 (or null) per class")
            return {k: None if v is None else float(v) for k, v in values.items()}

        return cls(rule=rule, thresholds={k: float(v) for k, v in thresholds.items()}, val_images=f.int("val_images", 0, 10**9, 0),
                   val_sensitivity=rates("val_sensitivity"), val_specificity=rates("val_specificity"))

    def to_dict(self) -> dict:
        return io.jsonable(asdict(self))


class BaseConfig:
    """What every run's config has, whatever network it describes: a status, and copies with changes (its subclasses are frozen dataclasses)."""
    status: Status
    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def finished(self) -> bool:
        return self.status == Status.finished

    def with_(self, **changes) -> Self:
        return replace(self, **changes)


@dataclass(frozen=True)
class RunConfig(BaseConfig):
    model: ModelSpec
    preprocess: PreprocessParams
    data: DataSpec
    training: TrainingSpec
    execution: Execution = field(default_factory=Execution)
    outcome: Outcome = field(default_factory=Outcome)
    status: Status = Status.training
    guard: GuardSettings | None = None  # the out-of-distribution guard, where the run has one
    reference: ReferenceSettings | None = None  # the batch shift test's reference (runs trained before it: None)
    operating_point: OperatingPoint | None = None  # per-class thresholds chosen on validation (runs trained before them: None)
    format_version: int = FORMAT_VERSION

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    @property
    def scenario(self) -> str:
        return scenario_code(self.training.strategy, self.model.classes)

    def build_network(self):
        """The untrained network that the run's weights fit (the architecture alone: :meth:`RunFolder.build_model` loads them)."""
        from cxrclf.models.zoo import create_model

        return create_model(self.model.name, self.model.classes, pretrained=False, trainable_blocks="all", dropout=self.model.dropout,
                            in_chans=self.model.in_chans, image_size=self.model.input_size).model

    @property
    def network_description(self) -> str:
        return f"the run's model {self.model.name}"

    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version, "status": self.status.value, "scenario": self.scenario,
            "model": io.jsonable(asdict(self.model)), "preprocess": self.preprocess.to_dict(), "data": io.jsonable(asdict(self.data)),
            "training": io.jsonable(asdict(self.training)), "execution": io.jsonable(asdict(self.execution)), "outcome": self.outcome.to_dict(),
            "guard": None if self.guard is None else self.guard.to_dict(),
            "reference": None if self.reference is None else self.reference.to_dict(),
            "operating_point": None if self.operating_point is None else self.operating_point.to_dict(),
        }

    @classmethod
    def from_dict(cls, document: Any, source: Path | None = None) -> "RunConfig":
        root = Fields(document, "", source)
        nested = isinstance(document.get("model"), dict)  # format 2 and later; 0.1's flat file had no format_version
        for key in ("format_version", "status") if nested else ():
            if key not in document:
                raise CxrclfError(f"field {key} is missing (a hand-edited or foreign config.json; cxrclf always writes it)", source)
        version = root.int("format_version", 2 if nested else 1, FORMAT_VERSION, 1)
        if version == 1:
            document = _upgrade_v1(document, source)
            root = Fields(document, "", source)
        preprocess = root.mapping("preprocess")
        missing = sorted(required_fields() - set(preprocess))  # fields added later default to what older runs did
        if missing:
            raise CxrclfError(f"field preprocess lacks {', '.join(missing)} (an incomplete or foreign run folder; its images would be "
                              "preprocessed differently from training)", source)
        if document.get("guard") is not None and not isinstance(document.get("guard"), dict):
            raise root._fail("guard", "a JSON object or null")
        guard = GuardSettings.parse(root.child("guard")) if root.has("guard") else None
        reference = ReferenceSettings.parse(root.child("reference")) if root.has("reference") else None
        model = ModelSpec.parse(root.child("model"))
        operating_point = OperatingPoint.parse(root.child("operating_point"), model.class_names) if root.has("operating_point") else None
        return cls(
            model=model, preprocess=PreprocessParams.from_dict(preprocess, source),
            data=DataSpec.parse(root.child("data")), training=TrainingSpec.parse(root.child("training")),
            execution=Execution.parse(root.child("execution")) if root.has("execution") else Execution(),
            outcome=Outcome.parse(root.child("outcome")) if root.has("outcome") else Outcome(),
            status=Status.parse(root), guard=guard, reference=reference, operating_point=operating_point,
            format_version=FORMAT_VERSION,
        )


def _upgrade_v1(old: dict, source: Path | None) -> dict:
    """The flat config.json of cxrclf 0.1 in the nested form (the same values, nothing invented)."""
    train = old.get("train") if isinstance(old.get("train"), dict) else {}
    missing = [k for k in ("model", "class_names", "input_size", "in_chans", "mean", "std", "preprocess") if k not in old]
    if missing:
        raise CxrclfError(f"field {missing[0]} is missing (an incomplete or foreign run folder)", source)
    return {
        "format_version": 2,
        "status": old.get("status", Status.finished.value),  # 0.1 wrote "training" until the end; a config without it was made by hand
        "model": {"name": old["model"], "class_names": old["class_names"], "input_size": old["input_size"], "in_chans": old["in_chans"],
                  "mean": old["mean"], "std": old["std"], "dropout": old.get("dropout", train.get("dropout", ModelSpec.dropout)),
                  "trainable_blocks": old.get("trainable_blocks", train.get("trainable_blocks", ModelSpec.trainable_blocks)), "pretrained_source": old.get("pretrained_source", "")},
        "preprocess": old["preprocess"],
        "data": {k: v for k, v in (old.get("data") or {"folder": ""}).items() if k in ("folder", "manifest_sha256", "fold")},
        "training": {k: train[k] for k in ("strategy", "epochs", "batch_size", "lr", "patience", "seed", "pretrained", "weights", "select_by", "class_constants") if k in train},
        "execution": {"device": train.get("device", "auto"), "threads": train.get("threads"), "tensorboard": bool(train.get("tensorboard", False)),
                      "versions": old.get("versions", {})},
        "outcome": {"epochs_run": old.get("epochs_run", 0), "stopped_early": old.get("stopped_early", False), "best_epoch": old.get("best_epoch", -1),
                    "best": old.get("best"), "train_class_counts": old.get("train_class_counts", {}), "class_weights": old.get("class_weights")},
        "guard": None,
    }


# ----------------------------------------------------------------------------- the folder

class RunDocument(Protocol):
    """What any run folder's config.json holds: :class:`RunConfig` (a classifier) or a lung segmenter's config."""

    @property
    def finished(self) -> bool: ...

    def to_dict(self) -> dict: ...

    @classmethod
    def from_dict(cls, document: Any, source: Path | None = None) -> Self: ...

    def build_network(self) -> Any:
        """The untrained network that the run's weights fit."""

    @property
    def network_description(self) -> str:
        """The network in an error message: "the run's model resnet-baseline"."""


C = TypeVar("C", bound=RunDocument)


class RunFiles(Generic[C]):
    """The files of one run folder, whatever network it trained, read and written atomically.

    ``config_type`` is the class of its config.json; :class:`RunFolder` (a classifier,
    :class:`RunConfig`) and :class:`cxrclf.segment.run.SegmentRun` (the lung segmenter) are
    its kinds, which add their own files and checks.
    """

    CONFIG = "config.json"
    WEIGHTS = "model.safetensors"
    METRICS = "metrics.csv"
    LOG = "train.log"
    CHECKPOINT = "checkpoint.pt"
    KIND: ClassVar[str]            # the marker training leaves (:func:`cxrclf.io.mark`)
    NOUN: ClassVar[str]            # the folder in messages: "run folder"
    TRAIN_COMMAND: ClassVar[str]   # the command that makes one
    UNFINISHED: ClassVar[str]      # why a run whose training did not finish is refused, and what to do
    config_type: type[C]

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def is_run(self) -> bool:
        return self.file(self.CONFIG).is_file()

    def read_config(self) -> C:
        self._refuse_if_not_run()
        return self.config_type.from_dict(io.read_json(self.file(self.CONFIG), "config.json"), self.file(self.CONFIG))

    def _refuse_if_not_run(self) -> None:
        """One line when the folder is missing or holds no config.json."""
        if not self.path.is_dir():
            raise CxrclfError(f"{self.NOUN} not found" if not self.path.exists() else f"{self.NOUN} must be a folder", self.path)
        if not self.is_run:
            raise CxrclfError(f"not a {self.NOUN} (no config.json); train one with `{self.TRAIN_COMMAND}`", self.path)

    def write_config(self, config: C) -> None:
        io.write_json(self.file(self.CONFIG), config.to_dict())

    def require_finished(self, config: C, allow_unfinished: bool = False) -> None:
        """Refuse a run whose training did not finish (killed, or still running) unless asked."""
        if not config.finished and not allow_unfinished:
            raise CxrclfError(self.UNFINISHED, self.path)
        if not self.file(self.WEIGHTS).is_file():
            raise CxrclfError(f"{self.NOUN} has no model.safetensors (training did not finish an epoch?)", self.path)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with io.folder_lock(self.path):
            yield

    def save_weights(self, state: dict) -> None:
        from safetensors.torch import save

        io.write_bytes(self.file(self.WEIGHTS), save({k: v.detach().contiguous().cpu() for k, v in state.items()}))

    def load_weights(self, device: str = "cpu") -> dict:
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self.file(self.WEIGHTS)
        try:
            return {k: v.to(device) for k, v in load(path.read_bytes()).items()}
        except (SafetensorError, ValueError, OSError, RuntimeError) as exc:
            raise CxrclfError(f"model.safetensors is damaged (truncated or not a safetensors file: {exc.__class__.__name__})", path) from exc

    def build_model(self, config: C, device: str = "cpu"):
        """The run's network in eval mode with its trained weights."""
        state = self.load_weights(device)
        model = config.build_network()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0][:160]
            raise CxrclfError(f"weights do not fit {config.network_description} ({first})", self.file(self.WEIGHTS)) from exc
        return model.to(device).eval()

    def load(self, device: str = "cpu", allow_unfinished: bool = False) -> tuple[Any, C]:
        """(network in eval mode, config) of a finished run."""
        config = self.read_config()
        self.require_finished(config, allow_unfinished)
        return self.build_model(config, device), config

    def append_log(self, line: str) -> None:
        with open(self.file(self.LOG), "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def write_metrics(self, history: list[dict]) -> None:
        io.write_text(self.file(self.METRICS), io.csv_text(list(history[0]), [list(r.values()) for r in history]) if history else "")

    def save_checkpoint(self, document: dict) -> None:
        import io as stdio

        import torch

        buffer = stdio.BytesIO()
        torch.save(document, buffer)
        io.write_bytes(self.file(self.CHECKPOINT), buffer.getvalue())

    def load_checkpoint(self) -> dict:
        import pickle
        import zipfile

        import torch

        path = self.file(self.CHECKPOINT)
        try:
            # on the CPU first: RNG states must stay CPU tensors; load_state_dict moves the rest
            document = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise CxrclfError("nothing to resume: no checkpoint.pt in the run folder", self.path) from exc
        except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
            raise CxrclfError(f"checkpoint.pt is damaged ({exc.__class__.__name__}); start again with --overwrite", path) from exc
        needed = {"model", "optimizer", "torch_rng", "state"}
        if not isinstance(document, dict) or not needed <= set(document):
            raise CxrclfError("checkpoint.pt is not a cxrclf checkpoint; start again with --overwrite", path)
        return document


class RunFolder(RunFiles[RunConfig]):
    """A classifier's run folder: :class:`RunConfig`, the guard's and shift test's files, and the folds of a cross-validation parent."""

    GUARD = "guard.safetensors"
    REFERENCE = "reference.safetensors"
    KIND = "run"
    NOUN = "run folder"
    TRAIN_COMMAND = "cxrclf train"
    UNFINISHED = ("training of this run did not finish (killed, or still running); resume it with `cxrclf train --resume`, "
                  "or use its best weights so far with --allow-unfinished")
    config_type = RunConfig

    def _refuse_if_not_run(self) -> None:
        if not self.path.is_dir():
            raise CxrclfError("run folder not found", self.path)
        if not self.is_run and self.fold_runs():
            raise CxrclfError("a cross-validation parent, not one run: use its folds (fold-K/) or evaluate and predict with it as an ensemble", self.path)
        super()._refuse_if_not_run()

    def update_latest(self) -> Path | None:
        """Point ``<parent>/latest`` at this run; ``None`` (nothing touched) when ``latest`` is not cxrclf's pointer.

        cxrclf's pointer is a symbolic link to a sibling name; a file, a folder or a link
        elsewhere under that name belongs to the user and is left alone.
        """
        run = self.path.resolve()
        link = run.parent / folders.LATEST
        if link.is_symlink():
            target = os.readlink(link)
            if os.sep in target or target in ("", ".", ".."):
                return None
        elif link.exists():
            return None
        temporary = run.parent / f".{folders.LATEST}.{os.getpid()}"
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        os.symlink(run.name, temporary)
        os.replace(temporary, link)
        return link

    def fold_runs(self) -> list["RunFolder"]:
        """The runs of a cross-validation parent (``fold-0/``, ``fold-1/``, ...), in fold order; empty otherwise."""
        if not self.path.is_dir():
            return []
        folds = [p for p in self.path.iterdir() if p.is_dir() and p.name.startswith("fold-") and p.name[5:].isdigit() and (p / self.CONFIG).is_file()]
        return [RunFolder(p) for p in sorted(folds, key=lambda p: int(p.name[5:]))]

    def fold_members(self) -> list["RunFolder"]:
        """The folds of a cross-validation parent, checked as one ensemble: none missing, all one model, classes and preprocessing."""
        folds = self.fold_runs()
        if not folds:
            raise CxrclfError("not a cross-validation run (no fold-K/ run folders)", self.path)
        numbers = [int(fold.path.name[5:]) for fold in folds]
        expected = max(numbers) + 1
        summary = self.file("cv_summary.json")
        if summary.is_file():
            listed = io.read_json(summary, "cv_summary.json").get("folds")
            if isinstance(listed, int) and not isinstance(listed, bool) and listed > 0:
                expected = listed
        missing = sorted(set(range(expected)) - set(numbers))
        if missing or len(numbers) != expected:
            name = f"fold-{missing[0]}" if missing else f"fold-{max(numbers)}"
            raise CxrclfError(f"{name} is missing or not a run (no config.json); the parent was trained with {expected} folds and an ensemble "
                              "of the others is not the one trained: finish it with `cxrclf train --cv --resume`, or evaluate the folds one by one",
                              self.path / name)
        first = folds[0].read_config()
        for number, fold in zip(numbers, folds):
            config = fold.read_config()
            differs = [what for what, mine, theirs in (
                ("architecture", config.model.name, first.model.name), ("classes", config.model.class_names, first.model.class_names),
                ("input size", (config.model.input_size, config.model.in_chans), (first.model.input_size, first.model.in_chans)),
                ("preprocessing", config.preprocess, first.preprocess),
                ("data", (config.data.folder, config.data.manifest_sha256), (first.data.folder, first.data.manifest_sha256))) if mine != theirs]
            if differs:
                raise CxrclfError(f"differs from fold-0 in {', '.join(differs)} (a fold replaced by another run?); the folds of one "
                                  "`cxrclf train --cv` share all of them", fold.path)
            if config.data.fold is not None and config.data.fold != number:
                raise CxrclfError(f"holds the run of fold {config.data.fold}, not of fold {number} (a fold folder moved or renamed?)", fold.path)
        return folds

    def reads(self) -> list[Path]:
        """Every folder a command reads through this run: the run (or a parent and its folds) and each lung segmenter.

        No output may be, contain or lie inside one of them (:func:`cxrclf.io.refuse_overlap`),
        ``--overwrite`` or not: a CSV named ``RUN/config.json`` must not replace the config.
        """
        folders_read = [self.path, *(fold.path for fold in self.fold_runs())]
        for folder in list(folders_read):
            with contextlib.suppress(CxrclfError, OSError):  # a damaged config is reported when the run loads
                lung_model = RunFolder(folder).read_config().preprocess.lung_model
                if lung_model:
                    folders_read.append(folders.BUILTIN_LUNG if lung_model == folders.BUILTIN else Path(lung_model))
        return folders_read


def resolve_run(run: Path | None) -> RunFolder:
    """``run`` if given, else ``$CXRCLF_MODEL``, else ``runs/latest``; a one-line error when none exists."""
    if run is None:
        env = os.environ.get("CXRCLF_MODEL")
        run = Path(env) if env else folders.RUNS / folders.LATEST
        if not run.exists():
            raise CxrclfError("no trained run found: train one with `cxrclf train`, or name a run folder", run)
    run = Path(run)
    if not run.is_dir():
        raise CxrclfError("run folder not found", run)
    return RunFolder(run.resolve())

