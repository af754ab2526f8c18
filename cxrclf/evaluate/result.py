"""What ``cxrclf evaluate`` returns and writes as metrics.json: frozen values that the report, the console and the card read.

:class:`Metrics` holds every number computed from the predictions alone
(:func:`cxrclf.evaluate.evaluation.compute_metrics`); :class:`Evaluation` adds what was
evaluated and the sections that need more than the predictions: the run's stored operating
point, the batch shift test, the shortcut measurements, the guard, the views, the folds and the
lungs. Those sections stay the JSON objects that the functions computing them return
(:func:`~cxrclf.evaluate.evaluation.guard_metrics`, ``shift_metrics``, ``shortcut_metrics``,
``view_metrics``, ``fold_spread``, ``operating_point_metrics``): their shape is documented there.

``to_dict()`` is metrics.json, its keys in the order cxrclf has always written them;
``from_dict()`` reads one back, an older one included: a section that an older cxrclf did not
write is None (or empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxrclf.errors import CxrclfError
from cxrclf.labels import COVID19

__all__ = ["Bootstrap", "Calibration", "Evaluation", "FOCUS", "FocusMetrics", "Metrics"]

FOCUS = COVID19  # the class every evaluation reports against the rest


@dataclass(frozen=True)
class Calibration:
    """Top-label expected calibration error (10 bins), Brier score, and the reliability diagram's bins."""
    ece: float
    brier: float
    bins: list[dict]

    def to_dict(self) -> dict:
        return {"ece": self.ece, "brier": self.brier, "bins": self.bins}


@dataclass(frozen=True)
class Bootstrap:
    """How the 95% intervals were resampled: over patients, ``resamples`` times from ``seed``."""
    resamples: int
    seed: int
    unit: str = "patient"
    level: float = 0.95

    def to_dict(self) -> dict:
        return {"resamples": self.resamples, "seed": self.seed, "unit": self.unit, "level": self.level}


@dataclass(frozen=True)
class FocusMetrics:
    """COVID-19 against the rest (``covid19_vs_rest`` in metrics.json).

    ``at_argmax``: precision, recall, specificity, F1, AUC and the counts when the most probable
    class decides; ``clopper_pearson``: exact 95% intervals of its recall and specificity;
    ``operating_point``: the threshold evaluate reports at (its rule, where it was chosen, the
    validation rates) and the rates at it, None without one; ``operating_point_recomputed``:
    one recomputed on validation for ``--sensitivity`` beside the run's stored one.
    """
    at_argmax: dict
    clopper_pearson: dict
    operating_point: dict | None = None
    operating_point_recomputed: dict | None = None

    def to_dict(self) -> dict:
        document = {"at_argmax": self.at_argmax}
        if self.operating_point is not None:
            document["operating_point"] = self.operating_point
        document["clopper_pearson"] = self.clopper_pearson
        if self.operating_point_recomputed is not None:
            document["operating_point_recomputed"] = self.operating_point_recomputed
        return document

    @classmethod
    def from_dict(cls, document: dict) -> "FocusMetrics":
        return cls(at_argmax=document.get("at_argmax") or {}, clopper_pearson=document.get("clopper_pearson") or {},
                   operating_point=document.get("operating_point"), operating_point_recomputed=document.get("operating_point_recomputed"))


@dataclass(frozen=True)
class Metrics:
    """Every number of the report that the predictions alone give (pure: :func:`~cxrclf.evaluate.evaluation.compute_metrics`).

    ``overall``: accuracy, macro averages, per class and the confusion matrix; ``point``: the
    headline (``accuracy``, ``macro_<metric>``, ``covid19_<metric>``); ``intervals``: the same
    keys, each its bootstrap ``[low, high]`` (None without a bootstrap); ``per_source``: per
    source its images ``n``, ``accuracy`` and, per class present, ``classes`` (support) and ``recall``.
    """
    n_images: int
    n_patients: int
    classes: list[str]
    overall: dict
    focus: FocusMetrics
    point: dict[str, float]
    calibration: Calibration
    per_source: dict[str, dict]
    intervals: dict[str, list] | None = None
    bootstrap: Bootstrap | None = None

    def to_dict(self) -> dict:
        document = {"n_images": self.n_images, "n_patients": self.n_patients, "classes": self.classes, "overall": self.overall,
                    f"{FOCUS}_vs_rest": self.focus.to_dict(), "point": self.point}
        if self.intervals is not None:
            document["intervals"] = self.intervals
        if self.bootstrap is not None:
            document["bootstrap"] = self.bootstrap.to_dict()
        return document | {"calibration": self.calibration.to_dict(), "per_source": self.per_source}

    def interval(self, key: str) -> list | None:
        """The bootstrap interval of ``point[key]``, or None (no bootstrap, or none for this key)."""
        return (self.intervals or {}).get(key)

    @classmethod
    def from_dict(cls, document: dict, source: Path | None = None) -> "Metrics":
        missing = [key for key in ("n_images", "n_patients", "point") if key not in document]
        if missing:
            raise CxrclfError(f"not an evaluation's metrics.json (it lacks {', '.join(missing)}); run `cxrclf evaluate` again", source)
        calibration, bootstrap = document.get("calibration") or {}, document.get("bootstrap")
        return cls(
            n_images=document["n_images"], n_patients=document["n_patients"], classes=list(document.get("classes") or []),
            overall=document.get("overall") or {}, focus=FocusMetrics.from_dict(document.get(f"{FOCUS}_vs_rest") or {}),
            point=document["point"], per_source=document.get("per_source") or {}, intervals=document.get("intervals"),
            calibration=Calibration(calibration.get("ece"), calibration.get("brier"), calibration.get("bins") or []),
            bootstrap=None if not bootstrap else Bootstrap(**{k: bootstrap[k] for k in ("resamples", "seed", "unit", "level") if k in bootstrap}),
        )


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a run (or a fold ensemble) on one split of one data folder: what ``evaluate`` returns.

    ``run``, ``data``: absolute paths as text; ``external``: the data are not the run's own;
    ``left_out_sources``: sources of the data not scored, because the split is the run's own train
    or val and the run was trained without them (``--exclude-source``);
    ``out``: the evaluation folder (not part of metrics.json, which lies in it). The sections
    other functions compute are described in the module's docstring.
    """
    run: str
    model: str
    requested_model: str | None
    scenario: str
    data: str
    split: str
    external: bool
    tta: int
    metrics: Metrics
    skipped_images: list[dict] = field(default_factory=list)
    operating_point: dict | None = None  # every class at the run's stored thresholds, or why there are none
    shift: dict | None = None
    shortcut: dict | None = None
    guard: dict | None = None
    per_view: dict | None = None
    trained_views: list[str] = field(default_factory=list)
    folds: dict | None = None            # a fold ensemble: each fold's headline beside the ensemble's
    lung_attention: dict | None = None   # evaluate --lung-model: Grad-CAM inside the lung fields
    left_out_sources: list[str] = field(default_factory=list)
    out: str | None = None

    def to_dict(self) -> dict:
        """metrics.json's content (``out`` is where it lies, not part of it)."""
        document = {"run": self.run, "model": self.model, "requested_model": self.requested_model, "scenario": self.scenario, "data": self.data,
                    "split": self.split, "left_out_sources": self.left_out_sources, "external": self.external, "tta": self.tta}
        document |= self.metrics.to_dict() | {"skipped_images": self.skipped_images, "operating_point": self.operating_point, "shift": self.shift}
        if self.folds is not None:
            document["folds"] = self.folds
        document |= {"shortcut": self.shortcut, "guard": self.guard, "per_view": self.per_view, "trained_views": self.trained_views}
        if self.lung_attention is not None:
            document["lung_attention"] = self.lung_attention
        return document

    @classmethod
    def from_dict(cls, document: dict, source: Path | None = None) -> "Evaluation":
        """An evaluation from metrics.json's content (``source``: the file, named in errors); ``out`` is the folder holding it."""
        missing = [key for key in ("data", "split") if key not in document]
        if missing:
            raise CxrclfError(f"not an evaluation's metrics.json (it lacks {', '.join(missing)}); run `cxrclf evaluate` again", source)
        return cls(
            run=document.get("run", ""), model=document.get("model", ""), requested_model=document.get("requested_model"),
            scenario=document.get("scenario", ""), data=document["data"], split=document["split"], external=bool(document.get("external")),
            tta=document.get("tta", 1), metrics=Metrics.from_dict(document, source), skipped_images=document.get("skipped_images") or [],
            operating_point=document.get("operating_point"), shift=document.get("shift"), shortcut=document.get("shortcut"),
            guard=document.get("guard"), per_view=document.get("per_view"), trained_views=list(document.get("trained_views") or []),
            folds=document.get("folds"), lung_attention=document.get("lung_attention"),
            left_out_sources=list(document.get("left_out_sources") or []), out=None if source is None else str(Path(source).parent),
        )

    @classmethod
    def read(cls, folder: Path) -> "Evaluation":
        """The evaluation in ``folder`` (its metrics.json)."""
        from cxrclf import io

        path = Path(folder) / "metrics.json"
        return cls.from_dict(io.read_json(path, "metrics.json"), path)
