"""The benchmark that decides issue 18: which arm stops a run from reading the archive instead of the disease?

    python benchmarks/shortcut.py [--shared ../shared/data/cxr-mini] [--work /tmp/cxrclf-shortcut] [--seeds 0 1]
                                  [--arms paper lung-crop harmonize unlearn lung-crop+harmonize+unlearn] [--unlearn-weight 0.3]
                                  [--model tf_efficientnet_lite0] [--size 224] [--epochs 12] [--patience 5]
                                  [--workers 2] [--threads 2] [--device cpu] [--json]

The shared set (Cohen, RSNA, Montgomery, Shenzhen; PA) is fused once; every run trains with
``--exclude-source shenzhen`` (4 classes, oversampling, best epoch by validation AUC, real
ImageNet weights found offline), so Shenzhen is a hospital no run has seen, and none of its
53 images has COVID-19. An arm is ``paper`` (the paper's pipeline) or a ``+``-joined set of
levers: ``lung-crop`` (``preprocess --lung crop`` with the built-in segmenter), ``harmonize``
(``preprocess --harmonize``), ``unlearn`` (``train --unlearn-source WEIGHT``). For each arm
and seed, through the commands a user runs (``cxrclf preprocess``, ``train``, ``evaluate
--json`` on the test split, ``predict --json`` on Shenzhen's original files):

- Shenzhen's images called COVID-19 (of 53): the number users feel;
- within-source AUCs on the test split (Cohen COVID-19 against the rest of Cohen, that is
  other pneumonia; RSNA pneumonia against normal; Montgomery TB against normal);
- the pooled COVID-19 AUC beside the AUC of a score that knows only the archive;
- the source probe's balanced accuracy on the test images' features (chance: 1 / sources);
- with ``--cv``, the within-source AUCs by cross-validation as well: ``train --cv`` (one run per
  fold of the fused folder's train and val, Shenzhen excluded), every fold's run evaluated on
  its own validation fold, and the out-of-fold predictions pooled, so that every training
  image is scored once by a run that did not fit it (more images than the test split holds);
- CPU minutes (user + system of the commands' processes) of preprocessing (once per
  preprocessing, shared by the seeds) and of training.

Then the issue's goal, per arm against ``paper``: at most 5 Shenzhen COVID-19 calls on every
seed, each within-source AUC (mean over seeds) at most 0.02 below the paper's, and a source
probe at least 0.2 lower. Folders under ``--work`` are reused when they hold what was asked
(a finished run with the same epochs), so a second call only measures. Small settings
(``--size 128 --epochs 3``) fit a busy two-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LEVERS = ("lung-crop", "harmonize", "unlearn")
DEFAULT_ARMS = ("paper", "lung-crop", "harmonize", "unlearn", "lung-crop+harmonize+unlearn")
EXCLUDED = "shenzhen"
WITHIN = (("cohen", "covid19", "Cohen COVID-19 AUC"), ("rsna", "other_pneumonia", "RSNA pneumonia AUC"),
          ("montgomery", "tuberculosis", "Montgomery TB AUC"))
GOAL_CALLS, GOAL_AUC_DROP, GOAL_PROBE_DROP = 5, 0.02, 0.2


@dataclass(frozen=True)
class Arm:
    name: str
    levers: frozenset

    @classmethod
    def parse(cls, name: str) -> "Arm":
        levers = frozenset() if name == "paper" else frozenset(name.split("+"))
        unknown = sorted(levers - set(LEVERS))
        if unknown or not name:
            raise SystemExit(f"unknown lever {', '.join(unknown) or name!r} in arm {name!r}: an arm is 'paper' or levers joined by '+' ({', '.join(LEVERS)})")
        return cls(name, levers)

    @property
    def slug(self) -> str:
        return "paper" if not self.levers else "+".join(lever for lever in LEVERS if lever in self.levers)

    def prep_folder(self, work: Path, size: int) -> Path:
        """Arms with the same preprocessing share one folder."""
        return work / ("-".join([f"prep-{size}"] + [lever for lever in ("lung-crop", "harmonize") if lever in self.levers]))


class Commands:
    """``cxrclf`` commands in child processes: their output, logs under ``work/logs`` and the CPU time they took."""

    def __init__(self, work: Path, threads: int, workers: int, device: str):
        self.logs, self.threads, self.workers, self.device = work / "logs", threads, workers, device
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))

    def run(self, name: str, *args) -> tuple[str, float]:
        """stdout of ``cxrclf ARGS`` and its CPU seconds (user + system of the child and its workers)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(self.logs / f"{name}.log", "w") as log:
            done = subprocess.run([sys.executable, "-m", "cxrclf", *map(str, args)], stdout=subprocess.PIPE, stderr=log, text=True, env=self.env, cwd=ROOT)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            tail = (self.logs / f"{name}.log").read_text().strip().splitlines()[-5:]
            raise SystemExit(f"cxrclf {' '.join(map(str, args[:2]))} failed ({done.returncode}); {self.logs / f'{name}.log'}:\n" + "\n".join(tail))
        return done.stdout, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def fused_folder(commands: Commands, work: Path, shared: Path, test_frac: float) -> Path:
    fused = work / "fused"
    if not (fused / "manifest.csv").is_file():
        commands.run("fuse", "fuse", "--cohen", shared / "cohen", "--rsna", shared / "rsna", "--nlm", shared / "montgomery", "--shenzhen", shared / "shenzhen",
                     "--out", fused, "--test-frac", test_frac, "--workers", commands.workers)
    return fused


def prepared_folder(commands: Commands, fused: Path, arm: Arm, work: Path, size: int) -> tuple[Path, float]:
    """The arm's preprocessed folder (made once) and the CPU seconds its preprocessing took (recorded beside it)."""
    prepared = arm.prep_folder(work, size)
    record = prepared.with_name(prepared.name + ".cpu.json")
    if (prepared / "manifest.csv").is_file() and record.is_file():
        return prepared, json.loads(record.read_text())["cpu_seconds"]
    options = ["--lung", "crop", "--lung-model", "builtin"] if "lung-crop" in arm.levers else []
    options += ["--harmonize"] if "harmonize" in arm.levers else []
    _, seconds = commands.run(prepared.name, "preprocess", fused, "--out", prepared, "--size", size, "--workers", commands.workers, "--overwrite", *options)
    record.write_text(json.dumps({"cpu_seconds": seconds}))
    return prepared, seconds


def arm_label(arm: Arm, unlearn_weight: float) -> str:
    """The arm's name, with the adversary's weight where it unlearns (runs of two weights are two arms)."""
    return f"{arm.slug}@{unlearn_weight:g}" if "unlearn" in arm.levers else arm.slug


def trained_run(commands: Commands, prepared: Path, arm: Arm, seed: int, args) -> tuple[Path, float]:
    """The arm's run for ``seed`` (reused when finished with the same epochs) and its training's CPU seconds."""
    run = args.work / "runs" / f"{arm_label(arm, args.unlearn_weight)}-{args.size}px-seed{seed}"
    record = run.with_name(run.name + ".cpu.json")
    config = run / "config.json"
    if config.is_file() and record.is_file():
        found = json.loads(config.read_text())
        if found.get("status") == "finished" and found["training"]["epochs"] == args.epochs:
            return run, json.loads(record.read_text())["cpu_seconds"]
    options = ["--unlearn-source", args.unlearn_weight] if "unlearn" in arm.levers else []
    _, seconds = commands.run(f"train-{run.name}", "train", "--data", prepared, "--out", run, "--model", args.model, "--strategy", "oversample",
                              "--classes", 4, "--epochs", args.epochs, "--patience", args.patience, "--seed", seed, "--select-by", "auc",
                              "--image-size", args.size, "--exclude-source", EXCLUDED, "--threads", commands.threads, "--device", commands.device,
                              *(["--overwrite"] if run.exists() else []), *options)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"cpu_seconds": seconds}))
    return run, seconds


def measure(commands: Commands, run: Path, shenzhen: list[Path], work: Path, bootstrap: int) -> dict:
    """Shenzhen's COVID-19 calls, the within-source and pooled AUCs and the source probe, from evaluate and predict."""
    evaluated, _ = commands.run(f"evaluate-{run.name}", "evaluate", run, "--split", "test", "--bootstrap", bootstrap, "--out", work / "evaluations" / run.name,
                                "--overwrite", "--json", "--workers", commands.workers, "--threads", commands.threads, "--device", commands.device)
    found = json.loads(evaluated)["shortcut"]
    within = {(row["source"], row["class"]): row["auc"] for row in found["within_source"]}
    intervals = {(row["source"], row["class"]): (row["ci_low"], row["ci_high"]) for row in found["within_source"]}
    pooled = {row["class"]: row for row in found["pooled"] or []}.get("covid19", {})
    predicted, _ = commands.run(f"predict-{run.name}", "predict", *shenzhen, "--model", run, "--json", "--workers", commands.workers,
                                "--threads", commands.threads, "--device", commands.device)
    answers = json.loads(predicted)
    row = {"Shenzhen images": len(answers), "Shenzhen called COVID-19": sum(answer.get("predicted") == "covid19" for answer in answers)}
    row |= {label: _number(within.get((source, name))) for source, name, label in WITHIN}
    row |= {f"{label} interval": [_number(v) for v in intervals.get((source, name), (None, None))] for source, name, label in WITHIN}
    row |= {"pooled COVID-19 AUC": _number(pooled.get("auc")), "source-only COVID-19 AUC": _number(pooled.get("source_only_auc")),
            "source probe": _number(found["probe"]["balanced_accuracy"]), "probe chance": _number(found["probe"]["chance"])}
    return row


def cv_run(commands: Commands, prepared: Path, arm: Arm, seed: int, args) -> tuple[Path, float]:
    """The arm's cross-validation parent for ``seed`` (``train --cv``: one run per fold of the fused folder's train and val,
    reused when every fold finished with the same epochs) and its training's CPU seconds."""
    parent = args.work / "runs" / f"{arm_label(arm, args.unlearn_weight)}-{args.size}px-seed{seed}-cv"
    record = parent.with_name(parent.name + ".cpu.json")
    folds = sorted(parent.glob("fold-*/config.json"))
    if record.is_file() and (parent / "cv_summary.json").is_file() and folds and all(
            json.loads(f.read_text()).get("status") == "finished" and json.loads(f.read_text())["training"]["epochs"] == args.epochs for f in folds):
        return parent, json.loads(record.read_text())["cpu_seconds"]
    options = ["--unlearn-source", args.unlearn_weight] if "unlearn" in arm.levers else []
    _, seconds = commands.run(f"train-{parent.name}", "train", "--data", prepared, "--out", parent, "--cv", "--model", args.model, "--strategy", "oversample",
                              "--classes", 4, "--epochs", args.epochs, "--patience", args.patience, "--seed", seed, "--select-by", "auc",
                              "--image-size", args.size, "--exclude-source", EXCLUDED, "--threads", commands.threads, "--device", commands.device,
                              *(["--overwrite"] if parent.exists() else []), *options)
    record.write_text(json.dumps({"cpu_seconds": seconds}))
    return parent, seconds


def measure_cv(commands: Commands, parent: Path, work: Path, bootstrap: int) -> dict:
    """Within-source AUCs by cross-validation: every fold's run evaluated on its own validation fold (``evaluate --split val``),
    the out-of-fold predictions pooled (each training image once, by a run that did not fit it), with patient-bootstrap intervals."""
    import pandas as pd

    from cxrclf.evaluate.shortcut import within_source_aucs

    frames, class_names = [], None
    for fold in sorted(parent.glob("fold-*"), key=lambda p: int(p.name.split("-")[1])):
        out = work / "evaluations" / f"{parent.name}-{fold.name}"
        evaluated, _ = commands.run(f"evaluate-{parent.name}-{fold.name}", "evaluate", fold, "--split", "val", "--bootstrap", 0, "--out", out,
                                    "--overwrite", "--json", "--workers", commands.workers, "--threads", commands.threads, "--device", commands.device)
        class_names = class_names or json.loads(evaluated)["classes"]
        frames.append(pd.read_csv(out / "predictions.csv"))
    pooled = pd.concat(frames, ignore_index=True)
    pooled = pooled[pooled["source"] != EXCLUDED]  # evaluate --split val leaves the run's excluded source out; kept as a check on older runs' output
    found = within_source_aucs(pooled, class_names, bootstrap, seed=0)
    within = {(row["source"], row["class"]): row for row in found}
    row = {"CV images": len(pooled), "CV folds": len(frames)}
    for source, name, label in WITHIN:
        got = within.get((source, name), {})
        row[f"{label} (CV)"] = _number(got.get("auc"))
        row[f"{label} (CV) interval"] = [_number(got.get("ci_low")), _number(got.get("ci_high"))]
    return row


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def goals(rows: list[dict]) -> dict[str, dict]:
    """Per arm: means over seeds, and the issue's goal judged against the paper arm (None where there is no paper arm)."""
    by_arm: dict[str, list[dict]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], []).append(row)
    means = {arm: {key: float(np.nanmean([r[key] for r in found])) for key in found[0] if isinstance(found[0][key], (int, float)) and key != "seed"}
             for arm, found in by_arm.items()}
    summary = {}
    for arm, mean in means.items():
        verdict = None
        if "paper" in means and arm != "paper":
            paper = means["paper"]
            calls = all(r["Shenzhen called COVID-19"] <= GOAL_CALLS for r in by_arm[arm])
            aucs = all(mean[key] >= paper[key] - GOAL_AUC_DROP for _, _, label in WITHIN for key in (label, f"{label} (CV)") if key in mean)
            probe = mean["source probe"] <= paper["source probe"] - GOAL_PROBE_DROP
            verdict = {"Shenzhen calls at most 5 on every seed": calls, "within-source AUCs within 0.02 of the paper's": aucs,
                       "source probe at least 0.2 lower": probe, "met": calls and aucs and probe}
        summary[arm] = {"seeds": len(by_arm[arm]), "mean": mean, "goal": verdict}
    return summary


COLUMNS = ("Shenzhen called COVID-19", *(label for _, _, label in WITHIN), "pooled COVID-19 AUC", "source-only COVID-19 AUC", "source probe",
           "preprocess CPU min", "train CPU min")
CV_COLUMNS = (*(f"{label} (CV)" for _, _, label in WITHIN), "CV images", "CV train CPU min")


def markdown(rows: list[dict], summary: dict, args) -> str:
    def cell(key: str, value) -> str:
        if key == "Shenzhen called COVID-19":
            return f"{value:g}" if value == value else "n/a"
        return "n/a" if value != value else f"{value:.1f}" if key.endswith("CPU min") else f"{value:.3f}"

    images = rows[0]["Shenzhen images"] if rows else 0
    lines = [f"{args.model}, {args.size} px, {args.epochs} epochs, trained without {EXCLUDED} ({images} of its images predicted); AUCs and probe on the "
             "test split (95% patient-bootstrap intervals); arm@W: unlearning weight W", "",
             "| arm | seed | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    def with_interval(row: dict, key: str) -> str:
        low, high = row.get(f"{key} interval", (float("nan"), float("nan")))
        return cell(key, row[key]) + (f" [{low:.2f}, {high:.2f}]" if low == low and high == high else "")

    lines += [f"| {r['arm']} | {r['seed']} | " + " | ".join(with_interval(r, k) for k in COLUMNS) + " |" for r in rows]
    cv_rows = [r for r in rows if "CV images" in r]
    if cv_rows:
        lines += ["", f"Within-source AUCs by cross-validation ({cv_rows[0]['CV folds']} folds of train and val, out-of-fold predictions pooled, "
                  "95% patient-bootstrap intervals):", "", "| arm | seed | " + " | ".join(CV_COLUMNS) + " |", "|---" * (len(CV_COLUMNS) + 2) + "|"]
        lines += [f"| {r['arm']} | {r['seed']} | " + " | ".join(f"{r[k]:g}" if k == "CV images" else with_interval(r, k) for k in CV_COLUMNS) + " |"
                  for r in cv_rows]
    lines += ["", "| arm (mean over seeds) | " + " | ".join(COLUMNS) + " | goal |", "|---" * (len(COLUMNS) + 2) + "|"]
    for arm, found in summary.items():
        goal = "n/a (the baseline)" if arm == "paper" else "n/a (no paper arm)" if found["goal"] is None else (
            "**met**" if found["goal"]["met"] else "not met: " + ", ".join(k for k, v in found["goal"].items() if k != "met" and not v))
        lines.append(f"| {arm} | " + " | ".join(cell(k, found["mean"][k]) for k in COLUMNS) + f" | {goal} |")
    if cv_rows:
        columns = [f"{label} (CV)" for _, _, label in WITHIN]
        lines += ["", "| arm (mean over seeds) | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {arm} | " + " | ".join(cell(k, found["mean"].get(k, float("nan"))) for k in columns) + " |" for arm, found in summary.items()]
    return "\n".join(lines)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "cxr-mini")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cxrclf-shortcut"))
    parser.add_argument("--test-frac", type=float, default=0.25, help="fuse's test fraction: enough test images per source for within-source AUCs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), help="paper, or levers joined by '+': " + ", ".join(LEVERS))
    parser.add_argument("--unlearn-weight", type=float, default=0.3, help="train --unlearn-source WEIGHT for the arms with 'unlearn'")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224, help="preprocessing size and the network's input side")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="processes for fusing, preprocessing and decoding")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of training, evaluation and prediction")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bootstrap", type=int, default=1000, help="evaluate's patient bootstrap draws: intervals for the within-source AUCs")
    parser.add_argument("--cv", action="store_true", help="also within-source AUCs by cross-validation: train --cv per arm and seed, "
                        "each fold evaluated on its validation fold")
    parser.add_argument("--merge", type=Path, nargs="+", help="print one table from earlier --json outputs (for example one per seed) and stop")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def merged(paths: list[Path]) -> None:
    """One table from earlier ``--json`` outputs (runs of different seeds or weights, measured by separate processes)."""
    found = [json.loads(path.read_text()) for path in paths]
    rows = sorted((row for document in found for row in document["runs"]), key=lambda row: (row["arm"] != "paper", row["arm"], row["seed"]))
    settings = argparse.Namespace(**found[0]["settings"])
    print(markdown(rows, goals(rows), settings))


def main() -> None:
    args = arguments()
    if args.merge:
        return merged(args.merge)
    arms = [Arm.parse(name) for name in args.arms]
    args.work.mkdir(parents=True, exist_ok=True)
    commands = Commands(args.work, args.threads, args.workers, args.device)
    shenzhen = sorted((args.shared / "shenzhen").rglob("CXR_png/CHNCXR_*.png"))
    fused = fused_folder(commands, args.work, args.shared, args.test_frac)
    rows = []
    for arm in arms:
        prepared, preprocess_seconds = prepared_folder(commands, fused, arm, args.work, args.size)
        for seed in args.seeds:
            print(f"{arm.name} seed {seed}", file=sys.stderr)
            run, train_seconds = trained_run(commands, prepared, arm, seed, args)
            row = {"arm": arm_label(arm, args.unlearn_weight), "seed": seed, **measure(commands, run, shenzhen, args.work, args.bootstrap),
                   "preprocess CPU min": preprocess_seconds / 60, "train CPU min": train_seconds / 60}
            if args.cv:
                parent, cv_seconds = cv_run(commands, prepared, arm, seed, args)
                row |= measure_cv(commands, parent, args.work, args.bootstrap) | {"CV train CPU min": cv_seconds / 60}
            rows.append(row)
    summary = goals(rows)
    if args.json:
        from cxrclf import io

        print(io.json_text({"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": rows, "arms": summary}), end="")
    else:
        print(markdown(rows, summary, args))


if __name__ == "__main__":
    main()
