"""report.md (readable on its own) and the paper's Table 4 across runs."""

from __future__ import annotations

import math

from cxrclf.evaluate.result import Evaluation
from cxrclf.io import markdown_table
from cxrclf.labels import COVID19
from cxrclf.models.names import model_label

HEADLINE = (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall (sensitivity)"), ("specificity", "specificity"), ("f1", "F1"), ("auc", "AUC"))


def _number(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _with_interval(value, interval) -> str:
    if not interval or interval[0] is None or (isinstance(interval[0], float) and math.isnan(interval[0])):
        return _number(value)
    return f"{_number(value)} [{_number(interval[0])}, {_number(interval[1])}]"


def markdown(result: Evaluation, figures: dict[str, str]) -> str:
    """report.md: each section of ``result`` in the order a reader needs them, then the figures (``{title: file}``)."""
    sections = (_title_lines, _fold_lines, _shortcut_lines, _guard_lines, _shift_lines, _lung_lines, _headline_lines, _operating_point_lines,
                _stored_point_lines, _per_class_lines, _confusion_lines, _per_source_lines, _view_lines, _calibration_lines)
    lines = [line for section in sections for line in section(result)]
    lines += ["## Figures", ""] + [f"![{title}]({file})" for title, file in figures.items()] + [""]
    return "\n".join(lines)


def _title_lines(result: Evaluation) -> list[str]:
    """What was evaluated on what, how the intervals were made, and which images could not be used."""
    measured = result.metrics
    lines = [
        f"# Evaluation of {model_label(result.model, result.requested_model)} ({result.scenario})",
        "",
        f"- run: `{result.run}`",
        f"- data: `{result.data}`, split `{result.split}`" + (" (external data)" if result.external else "")
        + (f", without {', '.join(result.left_out_sources)} (left out of the run's training)" if result.left_out_sources else ""),
        f"- {measured.n_images} images of {measured.n_patients} patients; classes: {', '.join(measured.classes)}",
    ]
    if measured.bootstrap is not None:
        lines.append(f"- 95% intervals: bootstrap over patients ({measured.bootstrap.resamples} resamples, seed {measured.bootstrap.seed}); "
                     "exact Clopper-Pearson for COVID-19 sensitivity and specificity")
    skipped = result.skipped_images
    if skipped:
        lines += ["", f"{len(skipped)} image(s) could not be used and are left out of every figure below; first: "
                  f"{skipped[0]['image_id']} ({skipped[0]['reason']}). All of them are listed in metrics.json."]
    return lines


def _headline_lines(result: Evaluation) -> list[str]:
    """Macro averages and COVID-19 against the rest with their intervals, and COVID-19's sensitivity and specificity in words."""
    measured, at_argmax = result.metrics, result.metrics.focus.at_argmax
    rows = []
    for key, label in HEADLINE:
        name = "accuracy" if key == "accuracy" else f"macro_{key}"
        covid_ci = measured.interval(f"{COVID19}_{key}") if key != "accuracy" else None
        rows.append((label, _with_interval(measured.point[name], measured.interval(name)), _with_interval(at_argmax[key], covid_ci)))
    exact = result.metrics.focus.clopper_pearson
    return ["", "## Headline (all images, all sources pooled)", ""] + markdown_table(("metric", "macro average", "COVID-19 vs rest"), rows) + [
        "",
        f"COVID-19 sensitivity {_number(at_argmax['recall'])} (exact 95% interval {_number(exact['recall'][0])} to {_number(exact['recall'][1])}, "
        f"{at_argmax['tp']} of {at_argmax['tp'] + at_argmax['fn']} COVID-19 images); specificity {_number(at_argmax['specificity'])} "
        f"({_number(exact['specificity'][0])} to {_number(exact['specificity'][1])}).",
    ]


def _operating_point_lines(result: Evaluation) -> list[str]:
    """COVID-19 at the threshold chosen on validation (and one recomputed for --sensitivity beside it), or why there is none."""
    op, again = result.metrics.focus.operating_point, result.metrics.focus.operating_point_recomputed
    if op is None:
        return ["", "No operating point: " + ("the folds' thresholds fit their own probabilities, not their average." if result.folds
                                              else "the run stores none and its validation data could not be found.")]
    lines = ["", "## Operating point (chosen on validation, never on these data)", "",
             f"Threshold {op['threshold']:.4f} on P(COVID-19) by {op['rule']} ({op['chosen_on']}; {op.get('source', 'recomputed on validation')}): "
             f"validation sensitivity {_number(op['val_sensitivity'])}, specificity {_number(op['val_specificity'])}."]
    if again is None:
        return lines + [""] + markdown_table(("at this threshold", "value"), [(label, _number(op[key])) for key, label in HEADLINE])
    header = ("at this threshold", f"stored ({op['threshold']:.4f})", f"recomputed ({again['threshold']:.4f}, {again['rule']})")
    return lines + [""] + markdown_table(header, [(label, _number(op[key]), _number(again[key])) for key, label in HEADLINE])


def _per_class_lines(result: Evaluation) -> list[str]:
    rows = [(name, m["support"], *(_number(m[key]) for key in ("precision", "recall", "specificity", "f1", "auc")))
            for name, m in zip(result.metrics.classes, result.metrics.overall["per_class"])]
    return ["", "## Per class (one vs rest)", ""] + markdown_table(("class", "support", "precision", "recall", "specificity", "F1", "AUC"), rows)


def _confusion_lines(result: Evaluation) -> list[str]:
    classes = result.metrics.classes
    rows = [(name, *row) for name, row in zip(classes, result.metrics.overall["confusion_matrix"])]
    return ["", "## Confusion matrix (rows true, columns predicted)", ""] + markdown_table(("", *classes), rows)


def _per_source_lines(result: Evaluation) -> list[str]:
    return ["", "## Per source", "", "When one source carries a class, a high score may measure the source, not the disease.", ""] + markdown_table(
        ("source", "images", "accuracy", "classes present", "recall per class"), per_source_rows(result.metrics.per_source))


def per_source_rows(per_source: dict[str, dict]) -> list[tuple]:
    """The per-source table's rows (report.md and the model card): images, accuracy, the classes present and each one's recall."""
    return [(source, s["n"], _number(s["accuracy"]), ", ".join(f"{k} {v}" for k, v in s["classes"].items()),
             ", ".join(f"{k} {_number(v)}" for k, v in s["recall"].items())) for source, s in per_source.items()]


def _calibration_lines(result: Evaluation) -> list[str]:
    found = result.metrics.calibration
    return ["", "## Calibration", "", f"Expected calibration error {_number(found.ece)} (10 bins, top-label); Brier score {_number(found.brier)}.", ""]


TABLE_COLUMNS = ("accuracy", "precision", "recall", "auc", "specificity", "f1")


def scenario_rows(results: list[Evaluation]) -> list[dict]:
    """The paper's Table 4: per run, metrics with intervals (binary: COVID-19 class; else macro)."""
    rows = []
    for r in results:
        binary = len(r.metrics.classes) == 2
        row = {"model": r.model, "scenario": r.scenario, "run": r.run}
        for key in TABLE_COLUMNS:
            name = "accuracy" if key == "accuracy" else (f"{COVID19}_{key}" if binary else f"macro_{key}")
            row[key] = r.metrics.point[name]
            interval = r.metrics.interval(name)
            row[f"{key}_low"], row[f"{key}_high"] = (interval if interval else (None, None))
        rows.append(row)
    order = {code: i for i, code in enumerate(("CB", "CM3", "CM4", "RB", "RM3", "RM4"))}
    rows.sort(key=lambda row: (order.get(row["scenario"], 99), row["model"]))
    best: dict[str, tuple[float, int]] = {}
    for index, row in enumerate(rows):
        value = row["auc"] if row["auc"] is not None and not math.isnan(row["auc"]) else -1
        if value > best.get(row["scenario"], (-2, -1))[0]:
            best[row["scenario"]] = (value, index)
    for index, row in enumerate(rows):
        row["best"] = best[row["scenario"]][1] == index
    return rows


def scenario_markdown(rows: list[dict]) -> str:
    cells = [(f"**{row['model']}**" if row["best"] else row["model"], row["scenario"],
              *(_with_interval(row[k], (row[f"{k}_low"], row[f"{k}_high"])) for k in TABLE_COLUMNS)) for row in rows]
    lines = markdown_table(("model", "scenario", *TABLE_COLUMNS), cells)
    lines += ["", "Binary scenarios (CB, RB) report the COVID-19 class; multi-class scenarios report macro averages. "
              "95% bootstrap intervals over patients in brackets; bold marks the best AUC per scenario."]
    return "\n".join(lines) + "\n"


def _shortcut_lines(result: Evaluation) -> list[str]:
    """Within-source AUCs, the source-only baseline and the source probe: how much of the score is the archive."""
    from cxrclf.evaluate import shortcut

    found = result.shortcut
    if not found:
        return []
    lines = ["", "## Within each source (the honest figure)", "",
             "One-vs-rest AUC computed inside one source at a time, where the archive cannot tell the classes apart; "
             "95% intervals from a bootstrap over that source's patients.", "", shortcut.markdown_within_source(found["within_source"])]
    if found.get("pooled") is not None:
        lines += ["", "## Against a score that knows only the source", "",
                  "The source-only score gives every image its class's frequency in that image's source in the run's training split. "
                  "A pooled AUC that does not clearly beat it may be recognising the archive, not the disease.", "",
                  shortcut.markdown_pooled(found["pooled"])]
    else:
        lines += ["", "No source-only baseline: the run's training data could not be found unchanged."]
    lines += ["", "## Source probe", "", shortcut.markdown_probe(found["probe"])]
    return lines


def _lung_lines(result: Evaluation) -> list[str]:
    """Where the model looks: Grad-CAM inside the lung fields (evaluate --lung-model), as :func:`cxrclf.explain.in_lung.summarise`
    summed it up; its line is one half (:data:`~cxrclf.explain.in_lung.LOOKS_OUTSIDE`): more evidence outside the lungs than inside."""
    summary = result.lung_attention
    if not summary:
        return []

    lines = ["", "## Where the model looks (Grad-CAM inside the lung fields)", "",
             f"Share of the positive Grad-CAM evidence for the predicted class that falls inside the lung fields found by `{summary['segmenter']}` "
             "in the image the model saw; the lung area is what an evenly spread map would score. "
             "Below 50%, the model draws most of its evidence from outside the lungs (borders, labels, devices, the source's look).", ""]
    lines += [f"**Warning:** {w}." for w in summary["warnings"]] + ([""] if summary["warnings"] else [])
    groups = [("all", summary["overall"])] + [(f"{scope} {name}", values) for scope, key in (("class", "per_class"), ("source", "per_source"))
                                              for name, values in summary[key].items()]
    rows = [(group, v["images"], _number(v["in_lung_share"]), _number(v["lung_area"]), v["below_half"]) for group, v in groups]
    return lines + markdown_table(("group", "images", "mean in-lung share", "mean lung area", "images below 50%"), rows)


def _view_lines(result: Evaluation) -> list[str]:
    """Per view (PA, AP, ...): the answers and the guard's flags, where the data records views."""
    views = result.per_view
    if not views:
        return []
    trained = result.trained_views
    lines = ["", "## Per view", "", (f"This run was trained on {', '.join(trained)} films. " if trained else "")
             + "A model that learned from PA films may read the portable machine, not the lungs, in an AP film: "
             "compare how often each view is called COVID-19, and how often the guard flags it.", ""]
    rows = [(view, v["n"], _number(v["accuracy"]), _number(v["predicted_share"].get(COVID19)), ", ".join(f"{k} {_number(x)}" for k, x in v["recall"].items()),
             v["flagged"], _number(v["flag_rate"])) for view, v in views.items()]
    return lines + markdown_table(("view", "images", "accuracy", "called COVID-19", "recall per class", "flagged", "flag rate"), rows)


def _guard_lines(result: Evaluation) -> list[str]:
    """The guard's flags per source, and the headline on the images it lets through beside all images."""
    guard = result.guard
    if not guard:
        return []
    lines = ["", "## Out-of-distribution guard", ""]
    if not guard["has_guard"]:
        lines.append("This run carries no learned out-of-distribution guard (it was trained before cxrclf had one); only the input checks ran.")
    else:
        settings = guard["settings"] or {}
        lines.append(f"Learned score: {settings.get('kind', '?')} detector on the pooled backbone features, threshold "
                     f"{_number(settings.get('threshold'))} (the {settings.get('quantile', 0.95):.0%} quantile of the run's validation scores).")
    lines += ["", f"{guard['flagged']} of {guard['images']} images flagged (coverage {_number(guard['coverage'])}).", ""]
    lines += markdown_table(("source", "images", "flagged", "flag rate", "by input checks"), guard_source_rows(guard["per_source"]))
    passing = guard.get("passing")
    if passing:
        every, kept = result.metrics.point, passing["point"]
        rows = [("images", result.metrics.n_images, passing["n_images"])] + [
            (label, _number(every.get(key)), _number(kept.get(key)))
            for key, label in (("accuracy", "accuracy"), ("macro_auc", "macro AUC"), ("covid19_recall", "COVID-19 sensitivity"), ("covid19_specificity", "COVID-19 specificity"))]
        lines += [""] + markdown_table(("metric", "all images", "images passing the guard"), rows)
    return lines


def guard_source_rows(per_source: dict[str, dict]) -> list[tuple]:
    """The guard's table rows per source (report.md and the model card): images, flagged, flag rate, flagged by the input checks."""
    return [(source, v["images"], v["flagged"], _number(v["flag_rate"]), v["by_input_checks"]) for source, v in per_source.items()]


def _fold_lines(result: Evaluation) -> list[str]:
    """A fold ensemble beside its folds: what averaging buys over one fold."""
    folds = result.folds
    if not folds:
        return []
    lines = ["", f"## Fold ensemble ({folds['n']} folds, probabilities averaged)", "",
             "No operating point: every validation image of one fold was a training image of the others.", ""]
    point = result.metrics.point
    ensemble = {"accuracy": point["accuracy"], "macro_auc": point["macro_auc"], "covid19_auc": point["covid19_auc"], "ece": result.metrics.calibration.ece}
    rows = [(label, _number(ensemble[key]), _number(folds["mean"][key]), _number(folds["std"][key]))
            for key, label in (("macro_auc", "macro AUC"), ("covid19_auc", "COVID-19 vs rest AUC"), ("accuracy", "accuracy"), ("ece", "ECE (lower is better)"))]
    return lines + markdown_table(("metric", "ensemble", "mean of the folds", "spread (sd)"), rows)


def _stored_point_lines(result: Evaluation) -> list[str]:
    """Every class against the rest at the thresholds the run stores (what predict's ``positive`` uses)."""
    point = result.operating_point
    if not point:
        return []
    if not point["stored"]:
        return ["", f"Per-class thresholds: none ({point['reason']})."]
    lines = ["", f"## Per-class thresholds stored in the run ({point['rule']}, chosen on {point['val_images']} validation images)", "",
             "A class is called *positive* when its probability reaches its threshold (predict's `positive`); none, one or several may be.", ""]
    rows = [(name, f"{m['threshold']:.4f}", _number(m["recall"]), _number(m["specificity"]), _number(m["precision"]), m["tp"] + m["fp"])
            for name, m in point["per_class"].items()]
    return lines + markdown_table(("class", "threshold", "sensitivity", "specificity", "precision", "positive calls"), rows)


def _shift_lines(result: Evaluation) -> list[str]:
    """The batch shift test: are these images, all and per source, drawn from the run's validation data?"""
    shift = result.shift
    if not shift:
        return []
    lines = ["", "## Batch shift test", ""]
    if shift["reference"] is None or shift["reason"]:
        return lines + [f"Not run: {shift['reason']}."]
    held = ", ".join(f"{name} {count}" for name, count in shift["reference"]["sources"].items())
    lines += [f"A domain classifier on the pooled features ({shift['tested_with']}) tries to tell these images from the "
              f"{shift['reference']['images']} validation images the run keeps as its reference ({held}); its leave-one-out AUC is the effect "
              "(about 0.5: indistinguishable), and a permutation test gives the p-value. Shifted: p < 0.01. A source of its own that the "
              "reference does not hold, or holds in another mix, differs for real: the model's validation metrics may not hold for it. "
              f"Sources with fewer than {shift['min_images']} images are not tested.", ""]
    rows = [_shift_row(name, found) for name, found in [("all", shift["all"]), *shift["per_source"].items()]]
    return lines + markdown_table(("images", "count", "domain classifier AUC", "p-value", "shifted"), rows)


def _shift_row(name: str, found: dict) -> tuple:
    if not found["tested"]:
        return name, found["images"], "n/a", "n/a", f"not tested ({found['reason']})"
    return name, found["images"], _number(found["effect"]), f"{found['p_value']:.4f}", "**yes**" if found["shifted"] else "no"
