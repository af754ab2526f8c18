"""The out-of-distribution guard on real images: what it flags, what it lets through.

    python benchmarks/ood.py [--shared ../shared/data/cxr-mini] [--work /tmp/cxrclf-ood] [--seeds 0 1] [--epochs 12] [--test-frac 0.1] [--json]

For each seed, a ``tf_efficientnet_lite0`` run (real ImageNet weights, 224 px, oversampling,
4 classes, best epoch by validation AUC) is trained on the shared set *without Shenzhen*
(Cohen, RSNA, Montgomery), or reused from ``--work``. Then every image below goes through
:func:`cxrclf.predict.predict_files`, the path a user's ``cxrclf predict`` takes, from the
original files:

- the run's own test split (false alarms: the threshold is the split-conformal 95% threshold
  of the validation scores, :func:`cxrclf.guard.detector.threshold_from`);
- photographs shipped with scikit-image, noise, constant images;
- the Cohen collection's lateral and CT rows (PNG/JPEG: no header to read) and a real CT DICOM
  (pydicom's ``CT_small.dcm``);
- the own test split's X-rays rotated by 90 degrees, inverted, and cropped to a corner;
- Shenzhen, a hospital the run never saw (no COVID-19 there): how many are flagged, and how
  many of its COVID-19 calls.

Both learned scores are measured on the same features and logits: the class-conditional
Gaussian (Mahalanobis distance on the pooled backbone features, what ``train`` fits) and
the energy score (``-logsumexp`` of the logits), each with its threshold read off the run's
validation images by the same rule. A run reused from ``--work`` whose guard was calibrated
before the rule was recorded (``quantile`` in ``config.json``) is recalibrated first
(:func:`recalibrate`), from the validation features its ``reference.safetensors`` holds. "flagged" is what ``predict`` reports: an input check or the
Gaussian score.

The batch shift test (:mod:`cxrclf.guard.shift`) runs on every set of at least 20 images, as
``predict`` runs it (``predict_files(...).shift``); and on random batches of 20 and of 50
images of the own test split (unseen images of the training sources), each drawn anew
(without repeating an image inside a batch), 100 draws per size: the share called shifted
is the false-positive rate. A batch larger than the test split cannot be drawn: a larger
``--test-frac`` (with a fresh ``--work``) makes a larger test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def build_run(work: Path, shared: Path, seed: int, epochs: int, test_frac: float = 0.1) -> Path:
    from cxrclf.data.fuse import FuseOptions, fuse
    from cxrclf.prepare import preprocess_folder
    from cxrclf.preprocess.params import PreprocessParams
    from cxrclf.runs import RunFolder
    from cxrclf.train.loop import TrainOptions, train

    fused, prepared, run = work / "fused", work / "prep-224", work / f"lite0-RM4-seed{seed}"
    if not (fused / "manifest.csv").is_file():
        fuse(FuseOptions(cohen=shared / "cohen", rsna=shared / "rsna", nlm=shared / "montgomery", test_frac=test_frac, workers=2), fused)
    elif json.loads((fused / "fuse_report.json").read_text())["options"]["test_frac"] != test_frac:
        raise SystemExit(f"{fused} was split with another test fraction; use another --work for --test-frac {test_frac}")
    if not (prepared / "manifest.csv").is_file():
        preprocess_folder(fused, prepared, PreprocessParams(size=224), workers=2)
    folder = RunFolder(run)
    if folder.is_run and folder.read_config().finished and folder.read_config().guard and folder.read_config().reference \
            and folder.read_config().training.epochs == epochs:
        recalibrate(run)
        return run
    train(TrainOptions(model="tf_efficientnet_lite0", strategy="oversample", classes=4, data=prepared, out=run, epochs=epochs, patience=5,
                       seed=seed, select_by="auc", overwrite=folder.is_run, update_latest=False),
          on_info=lambda message: print("   ", message, file=sys.stderr))
    return run


def recalibrate(run: Path) -> None:
    """A run whose guard threshold was read off validation by an older rule gets today's
    (``DEFAULT_RULE``), as ``train`` would set it now: the same fitted detector scored on the
    validation features that ``reference.safetensors`` holds (stored as float16: the thresholds
    move by under 1e-5 relative from recomputing them on the images), then ``guard.safetensors``
    and ``config.json`` rewritten."""
    from cxrclf.guard.detector import DEFAULT_RULE, calibrate_guard, load_detector
    from cxrclf.guard.shift import Reference
    from cxrclf.runs import RunFolder

    folder = RunFolder(run)
    config = folder.read_config()
    if config.guard.rule == DEFAULT_RULE:
        return
    detector = load_detector(folder.file(RunFolder.GUARD))
    reference = Reference.load(folder.file(RunFolder.REFERENCE))
    if len(reference) != config.guard.val_images:
        raise SystemExit(f"{run}: the reference holds {len(reference)} images, the guard was calibrated on {config.guard.val_images}; retrain it")
    guard = calibrate_guard(detector, reference.features, config.guard.train_images, config.guard.quantile)
    detector.save(folder.file(RunFolder.GUARD))
    folder.write_config(config.with_(guard=guard))
    print(f"    recalibrated the guard ({config.guard.rule} -> {guard.rule}): threshold {config.guard.threshold:.3f} -> {guard.threshold:.3f}, "
          f"validation flag rate {config.guard.val_flag_rate:.3f} -> {guard.val_flag_rate:.3f}", file=sys.stderr)


def image_sets(work: Path, shared: Path, fused: Path) -> dict[str, list[Path]]:
    """Every input set as files on disk, made once under ``work/inputs``."""
    import cv2
    import pandas as pd
    import pydicom.data
    from skimage import data

    from cxrclf.data.imageio import read_image, to_uint8
    from cxrclf.data.manifest import read_manifest

    inputs = work / "inputs"
    folders = {"cohen": shared / "cohen", "rsna": shared / "rsna", "montgomery": shared / "montgomery"}
    manifest = read_manifest(fused)
    test = manifest[manifest.split == "test"]
    sets: dict[str, list[Path]] = {"own test split": [folders[r.source] / r.source_file for r in test.itertuples()]}
    # false alarms on sick patients alone: a dense opacity can hide a lung field from the lung checks
    sets["own test split, diseased images"] = [folders[r.source] / r.source_file for r in test.itertuples() if r.finding != "normal"]

    def write(name: str, stem: str, image: np.ndarray) -> Path:
        path = inputs / name / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            cv2.imwrite(str(path), image)
        return path

    photos = []
    for stem in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera", "moon", "page", "text", "coins", "brick", "grass", "gravel"):
        image = getattr(data, stem)()
        photos.append(write("photographs", stem, cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image))
    sets["photographs (scikit-image)"] = photos
    rng = np.random.default_rng(0)
    sets["noise and constant images"] = (
        [write("synthetic", f"noise-{i}", rng.integers(0, 256, (512, 512), dtype=np.uint8)) for i in range(4)]
        + [write("synthetic", f"gaussian-noise-{i}", np.clip(rng.normal(128, 40, (512, 512)), 0, 255).astype(np.uint8)) for i in range(2)]
        + [write("synthetic", f"constant-{v}", np.full((512, 512), v, np.uint8)) for v in (0, 128, 255)]
    )
    metadata = pd.read_csv(shared / "cohen" / "metadata.csv", dtype=str, keep_default_na=False)
    lateral = metadata[metadata["view"].str.upper().isin(["L", "LATERAL"])]
    ct = metadata[metadata["modality"].str.upper() == "CT"]
    sets["Cohen laterals"] = [shared / "cohen" / "images" / f for f in lateral["filename"]]
    sets["Cohen CT slices"] = [shared / "cohen" / "images" / f for f in ct["filename"]]
    sets["CT DICOM (pydicom CT_small)"] = [Path(pydicom.data.get_testdata_file("CT_small.dcm"))]
    for name, transform in (("rotated 90 degrees", lambda a: np.ascontiguousarray(np.rot90(a))), ("inverted", lambda a: 255 - a),
                            ("cropped to a corner", lambda a: a[: a.shape[0] // 2, : a.shape[1] // 2].copy())):
        sets[f"own test X-rays {name}"] = [write(name.replace(" ", "-"), Path(f).stem, transform(to_uint8(read_image(f)))) for f in sets["own test split"]]
    sets["Shenzhen (unseen hospital)"] = sorted((shared / "shenzhen").rglob("CXR_png/CHNCXR_*.png"))
    return sets


def logits(predictor, files: list[Path], preprocessed: bool = False) -> np.ndarray:
    """The run's logits for files (the same decoding and preprocessing as predict; none for preprocessed images)."""
    import torch

    from cxrclf.guard.features import logits_and_features
    from cxrclf.inference import plane_from_file
    from cxrclf.planes import PlaneTask
    from cxrclf.parallel import map_images

    params = None if preprocessed else predictor.params.to_dict()
    decoded = map_images(plane_from_file, [PlaneTask(str(f), params, predictor.input_size) for f in files], 2)
    planes = np.stack([d.plane for d in decoded if d.ok])
    out = []
    with torch.inference_mode():
        for start in range(0, len(planes), 32):
            out.append(logits_and_features(predictor.model, predictor.tensor(planes[start:start + 32]))[0].numpy())
    return np.concatenate(out)


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    from cxrclf.metrics import auc_score

    return auc_score(np.r_[np.zeros(len(inside)), np.ones(len(outside))].astype(bool), np.r_[inside, outside])


def measure(run: Path, sets: dict[str, list[Path]]) -> list[dict]:
    from cxrclf.data.manifest import read_manifest
    from cxrclf.guard.detector import DEFAULT_QUANTILE, DEFAULT_RULE, EnergyDetector
    from cxrclf.guard.lungs import REASONS as LUNG_REASONS
    from cxrclf.inference import RunPredictor
    from cxrclf.predict import predict_files

    predictor = RunPredictor(run, "cpu")
    config = predictor.config
    prepared = Path(config.data.folder)
    manifest = read_manifest(prepared)
    val_files = [prepared / p for p in manifest[manifest.split == "val"]["path"]]
    energy = EnergyDetector()
    energy.calibrate(energy.score(logits(predictor, val_files, preprocessed=True)), DEFAULT_QUANTILE, DEFAULT_RULE)  # as train sets the Gaussian's

    rows, own = [], {}
    for name, files in sets.items():
        results = predict_files(predictor, files, workers=2)
        good = [r for r in results if r.error is None]
        gaussian = np.array([r.ood_score for r in good])
        energies = energy.score(logits(predictor, [Path(r.file) for r in good]))
        checks = np.array([any(not w.startswith("out of distribution") for w in r.warnings) for r in good])
        lungs = np.array([any(w in LUNG_REASONS for w in r.warnings) for r in good])  # the part of the input checks that reads the lungs
        learned = predictor.flagged(gaussian)
        flagged = np.array([r.in_distribution is False for r in good])
        covid = np.array([r.predicted == "covid19" for r in good])
        row = {"set": name, "images": len(files), "decoded": len(good), "flagged": float(flagged.mean()), "by input checks": float(checks.mean()), "by lung checks": float(lungs.mean()),
               "by Gaussian score": float(learned.mean()), "by energy score": float(energy.flag(energies).mean()),
               "called COVID-19": int(covid.sum()), "COVID-19 calls flagged": float(flagged[covid].mean()) if covid.any() else None}
        if name == "own test split":
            own = {"gaussian": gaussian, "energy": energies}
        else:
            row["AUROC Gaussian"] = auroc(own["gaussian"], gaussian)
            row["AUROC energy"] = auroc(own["energy"], energies)
        row["batch shift"] = results.shift
        rows.append(row)
        print(f"    {name}: {len(good)} images, flagged {row['flagged']:.0%}", file=sys.stderr)
    return rows


def null_batches(run: Path, files: list[Path], sizes: tuple[int, ...] = (20, 50), draws: int = 100, seed: int = 0) -> list[dict]:
    """The shift test on random batches of unseen images of the training sources: how often is an unshifted batch called shifted?"""
    from cxrclf.guard.shift import ALPHA, shift_test
    from cxrclf.inference import RunPredictor, plane_from_file
    from cxrclf.planes import PlaneTask
    from cxrclf.parallel import map_images

    predictor = RunPredictor(run, "cpu")
    decoded = map_images(plane_from_file, [PlaneTask(str(f), predictor.params.to_dict(), predictor.input_size) for f in files], 2)
    _, features, _ = predictor.assess(np.stack([d.plane for d in decoded if d.ok]))
    reference, rng, rows = predictor.shift_reference(), np.random.default_rng(seed), []
    for size in sizes:
        if size > len(features):
            rows.append({"batch": size, "pool": len(features), "draws": 0, "shifted": None, "median p": None})
            continue
        p = np.array([shift_test(features[rng.choice(len(features), size, replace=False)], reference, seed=draw).p_value for draw in range(draws)])
        rows.append({"batch": size, "pool": len(features), "draws": draws, "shifted": float(np.mean(p < ALPHA)), "median p": float(np.median(p))})
    return rows


def shift_markdown(seed: int, rows: list[dict], nulls: list[dict]) -> str:
    lines = [f"seed {seed}: batch shift test (p < 0.01 is shifted)", "", "| batch | images | domain classifier AUC | p | shifted |", "|---|---|---|---|---|"]
    for row in rows:
        found = row["batch shift"]
        if found["tested"]:
            lines.append(f"| {row['set']} | {found['images']} | {found['effect']:.3f} | {found['p_value']:.4f} | {'yes' if found['shifted'] else 'no'} |")
    for null in nulls:
        called = "n/a: the pool is smaller than a batch" if null["shifted"] is None else f"{null['shifted']:.0%} of {null['draws']} draws (median p {null['median p']:.3f})"
        lines.append(f"| own test split, random batches of {null['batch']} (of {null['pool']}) | {null['batch']} | | | {called} |")
    return "\n".join(lines)


def markdown(seed: int, rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None:
            return "n/a"
        return f"{value:.0%}" if isinstance(value, float) and value <= 1.0 and not isinstance(value, bool) else str(value)

    header = ["set", "decoded", "flagged", "by input checks", "by lung checks", "by Gaussian score", "by energy score", "AUROC Gaussian", "AUROC energy",
              "called COVID-19", "COVID-19 calls flagged"]
    lines = [f"seed {seed}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["set"], str(row["decoded"])] + [cell(row.get(k)) for k in header[2:7]]
        cells += [f"{row[k]:.3f}" if k in row and row[k] is not None else "n/a" for k in ("AUROC Gaussian", "AUROC energy")]
        cells += [str(row["called COVID-19"]), cell(row["COVID-19 calls flagged"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "cxr-mini")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cxrclf-ood"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--test-frac", type=float, default=0.1, help="fraction of the shared set's patients in the own test split (a fresh --work)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    report = {}
    for seed in args.seeds:
        started = time.perf_counter()
        print(f"seed {seed}: training (or reusing) the run", file=sys.stderr)
        run = build_run(args.work, args.shared, seed, args.epochs, args.test_frac)
        sets = image_sets(args.work, args.shared, args.work / "fused")
        report[seed] = {"run": str(run), "rows": measure(run, sets), "shift_null": null_batches(run, sets["own test split"]),
                        "minutes": round((time.perf_counter() - started) / 60, 1)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for seed, found in report.items():
            print(markdown(seed, found["rows"]), "\n")
            print(shift_markdown(seed, found["rows"], found["shift_null"]), "\n")


if __name__ == "__main__":
    main()
