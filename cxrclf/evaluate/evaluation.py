"""``cxrclf evaluate``: predictions, metrics with intervals, calibration, plots and a report.

Flow: a run + a data folder (its own preprocessed data by default, or any fused or
preprocessed folder as an external test set) -> predictions.csv -> metrics.json, report.md
and figures in ``RUN/evaluation-<data>-<split>/``. The operating point is the one ``train``
chose on the run's validation split and stored in the run (per class), never one chosen on
the data being evaluated; for runs made before runs stored one it is recomputed on their
validation split. The batch shift test compares the evaluated images, all and per source,
with the run's validation images.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from cxrclf import io, metrics, threshold as operating
from cxrclf.choices import Device, Split, parse
from cxrclf.data.manifest import manifest_path, read_manifest, select_split, to_csv_bytes
from cxrclf.errors import CxrclfError
from cxrclf.evaluate import calibration, intervals
from cxrclf.evaluate.result import FOCUS, Bootstrap, Calibration, Evaluation, FocusMetrics, Metrics
from cxrclf.labels import SCHEMES
from cxrclf.inference import plane_from_file
from cxrclf.planes import PlaneTask
from cxrclf.parallel import map_images
from cxrclf.preprocess.params import PreprocessParams, read_params
from cxrclf.runs import RunConfig, RunFolder, resolve_run

__all__ = ["EvaluateOptions", "LungAttention", "compute_metrics", "evaluate", "load_rows", "predict_rows", "view_metrics"]

if TYPE_CHECKING:
    from cxrclf.inference import Predictor

# (predictor, rows, root, needs preprocessing, predictions, lung model, workers) -> (summary, per-image share): what
# ``--lung-model`` measures, :func:`cxrclf.explain.in_lung.lung_attention`. Explain is evaluate's sibling, not below
# it: the command hands it in (EvaluateOptions.lung_attention).
LungAttention = Callable[[object, pd.DataFrame, Path, bool, pd.DataFrame, Path, int], tuple[dict, np.ndarray]]


@dataclass
class EvaluateOptions:
    run: Path | None
    data: Path | None = None
    split: Split | str = Split.test
    bootstrap: int = 1000
    seed: int = 0
    sensitivity: float | None = None
    out: Path | None = None
    overwrite: bool = False
    allow_unfinished: bool = False
    tta: int = 1
    device: Device | str = Device.auto
    workers: int = os.cpu_count() or 1
    lung_model: Path | None = None  # a lung segmentation run: report how much of Grad-CAM falls inside the lungs
    lung_attention: LungAttention | None = None  # what measures it: cxrclf.explain.in_lung.lung_attention, handed in by the command

    def validate(self) -> "EvaluateOptions":
        self.split = parse(Split, self.split, "split")
        self.device = parse(Device, self.device, "device")
        if self.bootstrap < 0:
            raise CxrclfError("bootstrap resamples must be 0 (off) or more")
        if self.sensitivity is not None and not 0 < self.sensitivity <= 1:
            raise CxrclfError(f"sensitivity must be in (0, 1], not {self.sensitivity}")
        from cxrclf.inference import MAX_TTA

        if not 1 <= self.tta <= MAX_TTA:
            raise CxrclfError(f"test-time augmentation takes 1 to {MAX_TTA} views, not {self.tta}")
        if self.lung_model is not None and self.lung_attention is None:
            raise ValueError("a lung model needs lung_attention=cxrclf.explain.in_lung.lung_attention (explain is not below evaluate)")
        return self


def load_rows(data: Path, split: Split | str, params: PreprocessParams, fold: int | None = None, exclude_sources: tuple[str, ...] = ()) -> tuple[pd.DataFrame, Path, bool]:
    """Rows of ``split`` from a fused or preprocessed folder; True when they still need preprocessing."""
    split = parse(Split, split, "split").value
    frame = read_manifest(data)
    root = manifest_path(data).parent
    preprocessed = "fused_path" in frame.columns
    if preprocessed:
        theirs = read_params(root / "preprocess.json")
        if theirs != params:
            changed = sorted(name for name in vars(params) if getattr(theirs, name) != getattr(params, name))  # to_dict() leaves out harmonisation when off
            raise CxrclfError(f"was preprocessed with other parameters than the run ({', '.join(changed)}); pass its fused folder instead", root)
    rows = frame if split == "all" else select_split(frame, split, fold)
    rows = rows[~rows["source"].isin(exclude_sources)]
    if rows.empty:
        raise CxrclfError(f"the {split} split is empty", root)
    return rows.reset_index(drop=True), root, not preprocessed


def predict_rows(predictor: Predictor, rows: pd.DataFrame, root: Path, needs_preprocessing: bool, workers: int) -> tuple[pd.DataFrame, np.ndarray, list | None]:
    """(predictions.csv rows, pooled features, each fold's probabilities for an ensemble else None).

    The rows: ids, source, true label, one prob_<class> per class, predicted label, the
    guard's score, the input checks' warnings and whether either flagged the image.
    """
    scheme = SCHEMES[len(predictor.class_names)]
    params = predictor.params.to_dict() if needs_preprocessing else None
    tasks = [PlaneTask(str(root / p), params, predictor.input_size, predictor.trained_views) for p in rows["path"]]
    decoded = map_images(plane_from_file, tasks, workers if needs_preprocessing else 1)
    failed = [(rows["image_id"].iloc[i], d.error) for i, d in enumerate(decoded) if not d.ok]
    if len(failed) == len(rows):
        raise CxrclfError(f"none of the {len(rows)} image(s) could be used, first: {failed[0][1]}", root / rows["path"].iloc[0])
    if failed:  # skipped and reported (an image without lung fields, a damaged file), not a failed evaluation
        keep = [i for i, d in enumerate(decoded) if d.ok]
        rows, decoded = rows.iloc[keep].reset_index(drop=True), [decoded[i] for i in keep]
    planes = np.stack([d.plane for d in decoded])
    members = predictor.assess_members(planes)
    probabilities, features, scores = predictor.combine(members)
    flagged = predictor.flagged(scores)
    out = pd.DataFrame({
        "image_id": rows["image_id"], "patient_id": rows["patient_id"], "source": rows["source"],
        **({"view": rows["view"]} if "view" in rows.columns else {}), "finding": rows["finding"],
        "label": [scheme.finding_to_class[f] for f in rows["finding"]],
    })
    for index, name in enumerate(predictor.class_names):
        out[f"prob_{name}"] = probabilities[:, index]
    out["predicted"] = [predictor.class_names[i] for i in probabilities.argmax(axis=1)]
    out["ood_score"] = scores
    out["input_warnings"] = ["; ".join(d.warnings) for d in decoded]
    out["flagged"] = flagged | (out["input_warnings"] != "").to_numpy()
    out.attrs["skipped"] = [{"image_id": image_id, "reason": reason} for image_id, reason in failed]
    return out, features, [m.probabilities for m in members] if predictor.member_count > 1 else None


def _arrays(predictions: pd.DataFrame, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([class_names.index(c) for c in predictions["label"]])
    probabilities = predictions[[f"prob_{c}" for c in class_names]].to_numpy(dtype=float)
    return labels, probabilities


def compute_metrics(predictions: pd.DataFrame, class_names: list[str], threshold: dict | None, resamples: int, seed: int) -> Metrics:
    """Every number of the report, from predictions alone (pure); ``threshold``: the COVID-19 operating point to report at, or None."""
    labels, probabilities = _arrays(predictions, class_names)
    focus = class_names.index(FOCUS)
    positive, score = labels == focus, probabilities[:, focus]
    overall = metrics.classification_metrics(labels, probabilities)
    at_argmax = metrics.positive_metrics(positive, score, probabilities.argmax(axis=1) == focus)
    at_threshold = None if threshold is None else threshold | metrics.positive_metrics(positive, score, score >= threshold["threshold"])
    # exact intervals for sensitivity and specificity of the focus class (at argmax)
    tp, fn, tn, fp = at_argmax["tp"], at_argmax["fn"], at_argmax["tn"], at_argmax["fp"]
    exact = {"recall": intervals.clopper_pearson(tp, tp + fn), "specificity": intervals.clopper_pearson(tn, tn + fp)}

    def headline(rows: np.ndarray) -> dict[str, float]:
        m = metrics.classification_metrics(labels[rows], probabilities[rows])
        f = metrics.positive_metrics(positive[rows], score[rows], probabilities[rows].argmax(axis=1) == focus)
        return {"accuracy": m["accuracy"], **{f"macro_{k}": v for k, v in m["macro"].items()}, **{f"{FOCUS}_{k}": f[k] for k in ("precision", "recall", "specificity", "f1", "auc")}}

    point = headline(np.arange(len(labels)))
    spread = None
    if resamples:
        spread = {k: list(v) for k, v in intervals.bootstrap(headline, predictions["patient_id"].to_numpy(), resamples, seed).items()}
    return Metrics(
        n_images=int(len(labels)), n_patients=int(predictions["patient_id"].nunique()), classes=class_names, overall=overall,
        focus=FocusMetrics(at_argmax, exact, at_threshold), point=point, intervals=spread, bootstrap=Bootstrap(resamples, seed) if resamples else None,
        calibration=Calibration(calibration.expected_calibration_error(labels, probabilities), calibration.brier_score(labels, probabilities),
                                calibration.reliability_bins(labels, probabilities)),
        per_source=_per_source(predictions, labels, probabilities, class_names),
    )


def _per_source(predictions: pd.DataFrame, labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict[str, dict]:
    """Per source: its images, accuracy, and per class present its support and recall."""
    per_source = {}
    for source, members in predictions.groupby("source", sort=True).groups.items():
        rows = np.asarray([predictions.index.get_loc(i) for i in members])
        sub = metrics.classification_metrics(labels[rows], probabilities[rows])
        per_source[source] = {
            "n": int(len(rows)),
            "accuracy": sub["accuracy"],
            "classes": {class_names[c]: int(m["support"]) for c, m in enumerate(sub["per_class"]) if m["support"]},
            "recall": {class_names[c]: m["recall"] for c, m in enumerate(sub["per_class"]) if m["support"]},
        }
    return per_source


def _focus_rates(predictions: pd.DataFrame, class_names: list[str], threshold: float) -> dict:
    """COVID-19 against the rest when P(COVID-19) >= ``threshold`` decides."""
    labels, probabilities = _arrays(predictions, class_names)
    focus = class_names.index(FOCUS)
    return metrics.positive_metrics(labels == focus, probabilities[:, focus], probabilities[:, focus] >= threshold)


def _same_data_as_training(folder: Path, config: RunConfig) -> bool:
    """True when ``folder``'s manifest is byte for byte the one the run was trained on."""
    file = manifest_path(folder)
    return file.is_file() and io.sha256_file(file) == config.data.manifest_sha256


def _validation_threshold(predictor, config: RunConfig, sensitivity: float | None, workers: int) -> dict | None:
    """The operating point from the run's own validation split; None when that data is gone or changed."""
    folder = Path(config.data.folder)
    if not _same_data_as_training(folder, config):
        return None
    rows, root, needs = load_rows(folder, Split.val, predictor.params, config.data.fold, config.data.exclude_sources)
    predictions, _, _ = predict_rows(predictor, rows, root, needs, workers)
    labels, probabilities = _arrays(predictions, predictor.class_names)
    focus = predictor.class_names.index(FOCUS)
    return operating.choose_threshold(labels == focus, probabilities[:, focus], sensitivity) | {"chosen_on": f"{folder} (val)"}


def _operating_thresholds(predictor, config: RunConfig, ensemble: bool, sensitivity: float | None, workers: int) -> tuple[dict | None, dict | None]:
    """(the COVID-19 threshold evaluate reports at, one recomputed beside it or None).

    The run's stored operating point where it has one (with ``sensitivity``, a threshold
    recomputed on validation for that target is shown beside it, labelled); a run without one
    (trained before runs stored it) gets one recomputed on its validation split, labelled so.
    A fold ensemble has none: no validation split is its own, and each fold's thresholds fit
    its own probabilities, not their average.
    """
    if ensemble:
        return None, None
    point = predictor.operating_point
    if point is None:
        found = _validation_threshold(predictor, config, sensitivity, workers)
        return (None if found is None else found | {"source": "recomputed on validation by evaluate (the run stores no operating point)"}), None
    target = point.target_sensitivity
    stored = {"threshold": point.thresholds[FOCUS], "rule": "Youden's J on validation" if target is None else f"validation sensitivity >= {target:g}",
              "val_sensitivity": point.val_sensitivity.get(FOCUS), "val_specificity": point.val_specificity.get(FOCUS),
              "chosen_on": f"{config.data.folder} (val, {point.val_images} images, by train)", "source": "stored in the run"}
    recomputed = None
    if sensitivity is not None:
        found = _validation_threshold(predictor, config, sensitivity, workers)
        recomputed = None if found is None else found | {"source": "recomputed on validation by evaluate for --sensitivity, beside the stored one"}
    return stored, recomputed


def operating_point_metrics(predictions: pd.DataFrame, class_names: list[str], point, ensemble: bool = False) -> dict:
    """Each class against the rest at the run's stored threshold (pure): ``{"stored": true, "rule", "thresholds",
    "val_images", "per_class": {class: threshold and rates}}``, or ``{"stored": false, "reason"}``."""
    if point is None:
        reason = ("a fold ensemble has no operating point: each fold's thresholds fit its own probabilities, not their average" if ensemble
                  else "the run stores no operating point (trained before cxrclf stored one)")
        return {"stored": False, "reason": reason}
    labels, probabilities = _arrays(predictions, class_names)
    per_class = {name: {"threshold": point.thresholds[name]} | metrics.positive_metrics(labels == index, probabilities[:, index],
                                                                                        probabilities[:, index] >= point.thresholds[name])
                 for index, name in enumerate(class_names)}
    return {"stored": True, "rule": point.rule, "thresholds": dict(point.thresholds), "val_images": point.val_images, "per_class": per_class}


def shift_metrics(predictions: pd.DataFrame, features: np.ndarray, reference, ensemble: bool = False, skip: str | None = None) -> dict:
    """The batch shift test (:mod:`cxrclf.guard.shift`) of the evaluated images against the run's reference:
    all of them, and each source alone (sources of fewer than ``MIN_IMAGES`` images are not tested)."""
    from cxrclf.guard.shift import MIN_IMAGES, check_batch

    if reference is None:
        return {"reference": None, "reason": "the run stores no shift reference (trained before cxrclf stored one)"}
    summary = {"reference": {"images": len(reference), "sources": reference.counts, "split": reference.split},
               "tested_with": "fold 0's network and reference (the other folds' features are other networks')" if ensemble else "the run's network",
               "min_images": MIN_IMAGES, "reason": skip, "all": None, "per_source": {}}
    if skip:
        return summary
    sources = predictions["source"].astype(str).to_numpy()
    summary["all"] = check_batch(features, reference)
    summary["per_source"] = {source: check_batch(features[sources == source], reference) for source in sorted(set(sources))}
    return summary


@dataclass(frozen=True)
class _Target:
    """What one evaluation reads and writes: the run (or fold parent) and its folds, the config, the data and the output folder."""
    folder: RunFolder
    folds: list[RunFolder]
    config: RunConfig
    data: Path
    own_data: bool
    out: Path


def evaluate(options: EvaluateOptions) -> Evaluation:
    """Evaluate one run; writes its evaluation folder (metrics.json is the result's ``to_dict()``) and returns the result."""
    from cxrclf.inference import load_predictor

    options.validate()
    target = _target(options)
    predictor = load_predictor(target.folder, options.device, options.allow_unfinished, options.tta)
    own = Path(target.config.data.folder)
    if target.own_data and not _same_data_as_training(own, target.config):
        raise CxrclfError("the run's data folder changed since training (another manifest: its splits may not be the run's); "
                          "pass the data explicitly with --data to evaluate on it as external data", manifest_path(own))
    # the run's own train and val splits are the rows it trained and selected on: without the sources it left out. The
    # test split (and "all") keeps them: a source left out of training is scored there as the unseen hospital it is.
    own_split = target.own_data and options.split in (Split.train, Split.val)  # _evaluation records them as left_out_sources
    rows, root, needs = load_rows(target.data, options.split, predictor.params, target.config.data.fold if target.own_data else None,
                                  target.config.data.exclude_sources if own_split else ())
    predictions, features, members = predict_rows(predictor, rows, root, needs, options.workers)
    result = _evaluation(options, target, predictor, predictions, features, members)
    if options.lung_model is not None:
        attention, predictions["in_lung_share"] = options.lung_attention(predictor, rows, root, needs, predictions, options.lung_model, options.workers)
        result = replace(result, lung_attention=attention)
    _write(target.out, options.overwrite, predictions, predictor.class_names, result, target.folder)
    return result


def _target(options: EvaluateOptions) -> _Target:
    """The run, the data and the output folder of ``options``, checked before any model loads."""
    folder = resolve_run(options.run)
    folds = [] if folder.is_run else folder.fold_runs()
    if folds:
        if options.split in (Split.val, Split.train, Split.all):
            raise CxrclfError(f"a fold ensemble cannot be evaluated on its {options.split.value} split: every fold trained on the others' "
                              "validation images; evaluate on test or external data", folder.path)
        config = folds[0].read_config()
    else:
        config = folder.read_config()
        folder.require_finished(config, options.allow_unfinished)
    own = Path(config.data.folder)
    data = Path(options.data) if options.data else own
    if not data.exists():
        raise CxrclfError("data folder not found (name the data to evaluate on)", data)
    own_data = data.resolve() == own.resolve()
    out = Path(options.out) if options.out else folder.path / _default_name(data, own_data, options.split)
    _check_output(folder, out, [data, options.lung_model], options.overwrite)
    return _Target(folder, folds, config, data, own_data, out)


def _check_output(folder: RunFolder, out: Path, inputs: list[Path | None], overwrite: bool) -> None:
    """An evaluation may live inside its run, beside the run's own files, never in place of one of them or of an input."""
    run = folder.path
    if _inside(run, out.resolve()):
        raise CxrclfError("output would replace the run folder it evaluates; choose an output folder inside or beside it", out)
    own_entries = [entry for entry in run.iterdir() if io.output_kind(entry) != "evaluation"]
    io.refuse_overlap(out, [*inputs, *own_entries, *(p for p in folder.reads() if p != run)])
    io.check_output_path(out, overwrite, kinds=("evaluation",))


def _evaluation(options: EvaluateOptions, target: _Target, predictor: Predictor, predictions: pd.DataFrame, features: np.ndarray,
                members: list[np.ndarray] | None) -> Evaluation:
    """Every section but the lungs', in the order metrics.json lists them (reads the run's validation and training data where they are unchanged)."""
    config, classes, ensemble = target.config, predictor.class_names, bool(target.folds)
    threshold, recomputed = _operating_thresholds(predictor, config, ensemble, options.sensitivity, options.workers)
    measured = compute_metrics(predictions, classes, threshold, options.bootstrap, options.seed)
    if recomputed is not None:
        measured = replace(measured, focus=replace(measured.focus, operating_point_recomputed=recomputed | _focus_rates(predictions, classes, recomputed["threshold"])))
    overlaps = target.own_data and options.split in (Split.val, Split.all)
    left_out = sorted(config.data.exclude_sources) if target.own_data and options.split in (Split.train, Split.val) else []
    return Evaluation(
        run=str(target.folder.path), model=config.model.name, requested_model=config.model.requested_name,
        scenario=config.scenario + (f" ensemble of {len(target.folds)} folds" if ensemble else ""), data=str(target.data.resolve()),
        split=options.split.value, external=not target.own_data, tta=options.tta, metrics=measured, skipped_images=predictions.attrs.get("skipped", []),
        operating_point=operating_point_metrics(predictions, classes, predictor.operating_point, ensemble=ensemble),
        shift=shift_metrics(predictions, features, predictor.shift_reference(), ensemble=ensemble,
                            skip="the evaluated images include the reference itself (the run's own validation images)" if overlaps else None),
        folds=fold_spread(predictions, members, classes) if ensemble else None,
        shortcut=shortcut_metrics(predictions, features, classes, _training_rows(config, ensemble=ensemble), options.bootstrap, options.seed),
        guard=guard_metrics(predictions, classes, _guard_settings(predictor, config, len(target.folds)), threshold),
        per_view=view_metrics(predictions, classes), trained_views=list(predictor.trained_views), left_out_sources=left_out, out=str(target.out),
    )


def _guard_settings(predictor: Predictor, config: RunConfig, folds: int) -> dict | None:
    """The guard as the report describes it: the run's settings, or for a fold ensemble the averaged score's; None without one."""
    if predictor.guard is None:
        return None
    if not folds:
        return config.guard.to_dict()
    return {"kind": f"{config.guard.kind}, averaged over {folds} folds", "threshold": 1.0, "quantile": config.guard.quantile,
            "score": "the mean over folds of each fold's score divided by its own threshold"}


def _training_rows(config: RunConfig, ensemble: bool = False) -> pd.DataFrame | None:
    """The run's own training rows (fold and excluded sources applied; for a fold ensemble every non-test row),
    or None when its data is gone or changed."""
    folder = Path(config.data.folder)
    if not _same_data_as_training(folder, config):
        return None
    frame = read_manifest(folder)
    rows = frame[frame["split"] != "test"] if ensemble else select_split(frame, "train", config.data.fold)
    return rows[~rows["source"].isin(config.data.exclude_sources)]


def shortcut_metrics(predictions: pd.DataFrame, features: np.ndarray, class_names: list[str], training: pd.DataFrame | None,
                     resamples: int, seed: int) -> dict:
    """How much of the performance the image's archive explains (pure): within-source AUCs, the source-only baseline, the source probe."""
    from cxrclf.evaluate import shortcut

    # the within-source intervals repeat the bootstrap per source: fewer resamples keep evaluate quick
    within = shortcut.within_source_aucs(predictions, class_names, min(resamples, 500), seed)
    result = {"within_source": within, "pooled": None, "probe": None}
    if training is not None:
        frequencies = shortcut.source_frequencies(training, class_names, SCHEMES[len(class_names)].finding_to_class)
        result["source_frequencies_train"] = frequencies
        result["pooled"] = shortcut.pooled_aucs_with_baseline(predictions, class_names, frequencies, min(resamples, 500), seed)
    result["probe"] = shortcut.source_probe(features, predictions["source"].to_numpy(), seed=seed)
    return result


def fold_spread(predictions: pd.DataFrame, members: list[np.ndarray], class_names: list[str]) -> dict:
    """Each fold's headline metrics on the same images, their mean and spread, beside the ensemble's (pure)."""
    keys = ("accuracy", "macro_auc", "covid19_auc", "ece")
    per_fold = []
    for probabilities in members:
        single = predictions.copy()
        for index, name in enumerate(class_names):
            single[f"prob_{name}"] = probabilities[:, index]
        measured = compute_metrics(single, class_names, None, 0, 0)
        per_fold.append({"accuracy": measured.point["accuracy"], "macro_auc": measured.point["macro_auc"],
                         "covid19_auc": measured.point["covid19_auc"], "ece": measured.calibration.ece})
    values = {k: np.array([f[k] for f in per_fold], dtype=float) for k in keys}
    return {"n": len(members), "per_fold": per_fold, "mean": {k: float(np.nanmean(v)) for k, v in values.items()},
            "std": {k: float(np.nanstd(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}}


def guard_metrics(predictions: pd.DataFrame, class_names: list[str], guard: dict | None, threshold: dict | None) -> dict:
    """Flag rate per source, and the headline metrics on the images that pass the guard beside all images (pure)."""
    flagged = predictions["flagged"].to_numpy(dtype=bool)
    per_source = {str(source): {"images": int(len(sub)), "flagged": int(sub["flagged"].sum()), "flag_rate": float(sub["flagged"].mean()),
                                "by_input_checks": int((sub["input_warnings"] != "").sum())}
                  for source, sub in predictions.groupby("source", sort=True)}
    passing = predictions[~flagged].reset_index(drop=True)
    summary = {"has_guard": guard is not None, "settings": guard, "images": int(len(predictions)), "flagged": int(flagged.sum()),
               "coverage": float(1 - flagged.mean()) if len(flagged) else math.nan, "per_source": per_source, "passing": None}
    if len(passing) and passing["label"].nunique() >= 1:
        measured = compute_metrics(passing, class_names, threshold, 0, 0)
        summary["passing"] = {"n_images": measured.n_images, "point": measured.point}
    return summary


def view_metrics(predictions: pd.DataFrame, class_names: list[str]) -> dict | None:
    """Per view the manifest names (PA, AP, AP SUPINE, ...): images, accuracy, recall and share predicted per class, and
    how many the guard flagged (pure). None when the data records no views.

    A model trained on PA films may read the portable machine, not the lungs, in an AP film:
    this table shows whether its answers, and the guard's flags, change with the view.
    """
    if "view" not in predictions.columns:
        return None
    views = predictions["view"].fillna("").astype(str).str.strip().str.upper().replace("", "(not recorded)")
    if (views == "(not recorded)").all():
        return None
    labels, probabilities = _arrays(predictions, class_names)
    predicted = probabilities.argmax(axis=1)
    out = {}
    for view in sorted(set(views)):
        rows = (views == view).to_numpy()
        sub = metrics.classification_metrics(labels[rows], probabilities[rows])
        out[view] = {
            "n": int(rows.sum()), "accuracy": sub["accuracy"],
            "classes": {class_names[c]: int(m["support"]) for c, m in enumerate(sub["per_class"]) if m["support"]},
            "recall": {class_names[c]: m["recall"] for c, m in enumerate(sub["per_class"]) if m["support"]},
            "predicted_share": {name: float((predicted[rows] == c).mean()) for c, name in enumerate(class_names)},
            "flagged": int(predictions["flagged"].to_numpy(dtype=bool)[rows].sum()),
            "flag_rate": float(predictions["flagged"].to_numpy(dtype=bool)[rows].mean()),
            "by_input_checks": int((predictions["input_warnings"].fillna("").to_numpy()[rows] != "").sum()),
        }
    return out


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _default_name(data: Path, own_data: bool, split: Split) -> str:
    if own_data:
        return f"evaluation-own-{split.value}"
    import hashlib

    tag = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:6]  # siteA/fused and siteB/fused differ
    return f"evaluation-{data.resolve().name}-{tag}-{split.value}"


def _write(out: Path, overwrite: bool, predictions: pd.DataFrame, class_names: list[str], result: Evaluation, run: RunFolder) -> None:
    from cxrclf.evaluate import html, plots, report

    with io.staged_folder(out, overwrite, kind="evaluation") as stage:
        io.write_bytes(stage / "predictions.csv", to_csv_bytes(predictions))
        io.write_json(stage / "metrics.json", result.to_dict())
        figures = plots.write_all(stage, predictions, class_names, result.metrics, run.file(RunFolder.METRICS))
        text = report.markdown(result, figures)
        io.write_text(stage / "report.md", text)
        io.write_text(stage / "report.html", html.render(text, stage))  # the same report, one self-contained page
