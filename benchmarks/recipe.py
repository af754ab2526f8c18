"""The paper's recipe against the small-data recipe, by cross-validation on the real shared set.

    python benchmarks/recipe.py [--shared ../shared/data/cxr-mini] [--work /tmp/cxrclf-recipe] [--seeds 0 1]
                                [--models tf_efficientnet_lite0] [--size 160] [--epochs 10] [--json]

The shared set (Cohen, RSNA, Montgomery, Shenzhen; PA) is fused and preprocessed once (at
``--size``). For every backbone, recipe and seed, ``train --cv`` trains the four folds (4
classes, class-weighted loss) and every fold predicts its own validation fold, so each
train+val image gets exactly one out-of-fold probability from a model that never saw it.
From those, per seed:

- macro AUC and COVID-19-vs-rest AUC (pooled over sources, so partly the archive);
- the three within-source AUCs the issue names: COVID-19 against the rest inside Cohen,
  pneumonia against normal inside RSNA, tuberculosis against normal inside each NLM set
  (their mean is reported as NLM);
- CPU minutes of the whole cross-validation (process time, all threads);
- on the test split: the 4-fold ensemble's macro AUC and ECE beside the mean single fold.

Then the mean and spread (sd over seeds) of each, and the small-data minus paper
difference. Runs are reused from ``--work`` when they exist, so a second call only reports.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WITHIN = (("cohen", "covid19", "Cohen COVID-19"), ("rsna", "other_pneumonia", "RSNA pneumonia"),
          ("montgomery", "tuberculosis", "Montgomery TB"), ("shenzhen", "tuberculosis", "Shenzhen TB"))


def prepare(work: Path, shared: Path, size: int) -> Path:
    from cxrclf.data.fuse import FuseOptions, fuse
    from cxrclf.prepare import preprocess_folder
    from cxrclf.preprocess.params import PreprocessParams

    fused, prepared = work / "fused", work / f"prep-{size}"
    if not (fused / "manifest.csv").is_file():
        fuse(FuseOptions(cohen=shared / "cohen", rsna=shared / "rsna", nlm=shared / "montgomery", shenzhen=shared / "shenzhen", workers=2), fused)
    if not (prepared / "manifest.csv").is_file():
        preprocess_folder(fused, prepared, PreprocessParams(size=size), workers=2)
    return prepared


def cross_validation(prepared: Path, out: Path, model: str, recipe: str, seed: int, epochs: int) -> float:
    """Train the folds (or reuse them); CPU minutes spent (0 when reused)."""
    from cxrclf.train.loop import TrainOptions, cross_validate

    if (out / "cv_summary.json").is_file():
        return json.loads((out / "cv_summary.json").read_text()).get("cpu_minutes", float("nan"))
    started = time.process_time()
    cross_validate(TrainOptions(model=model, strategy="weighted", classes=4, data=prepared, out=out, epochs=epochs, patience=4, batch_size=16,
                                seed=seed, recipe=recipe, overwrite=out.exists(), update_latest=False),
                   on_info=lambda message: None)
    minutes = (time.process_time() - started) / 60
    summary = json.loads((out / "cv_summary.json").read_text()) | {"cpu_minutes": minutes}
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2))
    return minutes


def out_of_fold(prepared: Path, parent: Path):
    """Every train+val image's probabilities from the fold that held it out."""
    import pandas as pd

    from cxrclf.evaluate.evaluation import load_rows, predict_rows
    from cxrclf.inference import RunPredictor
    from cxrclf.runs import RunFolder

    frames = []
    for fold in RunFolder(parent).fold_runs():
        predictor = RunPredictor(fold, "cpu")
        rows, root, needs = load_rows(prepared, "val", predictor.params, predictor.config.data.fold)
        frames.append(predict_rows(predictor, rows, root, needs, 1)[0])
    return pd.concat(frames, ignore_index=True)


def measure(prepared: Path, parent: Path, class_names: list[str]) -> dict:
    from cxrclf.evaluate import shortcut
    from cxrclf.evaluate.evaluation import compute_metrics, fold_spread, load_rows, predict_rows
    from cxrclf.inference import FoldEnsemble
    from cxrclf.runs import RunFolder

    oof = out_of_fold(prepared, parent)
    pooled = compute_metrics(oof, class_names, None, 0, 0)
    within = {(r["source"], r["class"]): r["auc"] for r in shortcut.within_source_aucs(oof, class_names, 0, 0)}
    row = {"macro AUC": pooled["point"]["macro_auc"], "COVID-19 vs rest AUC": pooled["point"]["covid19_auc"]}
    for source, name, label in WITHIN:
        row[label] = within.get((source, name), float("nan"))
    row["NLM TB"] = float(np.nanmean([row["Montgomery TB"], row["Shenzhen TB"]]))
    ensemble = FoldEnsemble(RunFolder(parent), "cpu")
    rows, root, needs = load_rows(prepared, "test", ensemble.params)
    predictions, _, members = predict_rows(ensemble, rows, root, needs, 1)
    measured = compute_metrics(predictions, class_names, None, 0, 0)
    spread = fold_spread(predictions, members, class_names)
    row |= {"test ensemble macro AUC": measured["point"]["macro_auc"], "test mean fold macro AUC": spread["mean"]["macro_auc"],
            "test ensemble ECE": measured["calibration"]["ece"], "test mean fold ECE": spread["mean"]["ece"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "cxr-mini")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cxrclf-recipe"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0"])
    parser.add_argument("--recipes", nargs="+", default=["paper", "small-data"])
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cxrclf.labels import SCHEMES

    class_names = list(SCHEMES[4].classes)
    args.work.mkdir(parents=True, exist_ok=True)
    prepared = prepare(args.work, args.shared, args.size)
    results: dict = {}
    for model in args.models:
        for recipe in args.recipes:
            for seed in args.seeds:
                parent = args.work / f"{model}-{recipe}-seed{seed}"
                print(f"{model} {recipe} seed {seed}", file=sys.stderr)
                minutes = cross_validation(prepared, parent, model, recipe, seed, args.epochs)
                results.setdefault(model, {}).setdefault(recipe, []).append(measure(prepared, parent, class_names) | {"CPU minutes": minutes, "seed": seed})
    summary = {model: {recipe: {key: {"mean": float(np.nanmean([r[key] for r in rows])), "sd": float(np.nanstd([r[key] for r in rows], ddof=1)) if len(rows) > 1 else 0.0}
                                for key in rows[0] if key != "seed"} for recipe, rows in recipes.items()} for model, recipes in results.items()}
    if args.json:
        print(json.dumps({"runs": results, "summary": summary}, indent=2))
        return
    for model, recipes in summary.items():
        keys = list(next(iter(recipes.values())))
        print(f"\n{model}, {args.size} px, {len(args.seeds)} seeds, 4-fold cross-validation (out-of-fold), mean ± sd over seeds\n")
        print("| metric | " + " | ".join(recipes) + (" | small-data minus paper |" if {"paper", "small-data"} <= set(recipes) else " |"))
        print("|---" * (len(recipes) + 2) + "|")
        for key in keys:
            cells = [f"{recipes[r][key]['mean']:.3f} ± {recipes[r][key]['sd']:.3f}" for r in recipes]
            if {"paper", "small-data"} <= set(recipes):
                cells.append(f"{recipes['small-data'][key]['mean'] - recipes['paper'][key]['mean']:+.3f}")
            print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
