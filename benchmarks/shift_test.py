"""The batch shift test: which statistic, how calibrated, how powerful, how fast.

    python benchmarks/shift_test.py [--run RUN] [--shared ../shared/data/cxr-mini] [--json]

Compares the two tests the literature recommends on a model's features (Rabanser et al.
2019, "Failing loudly"), both as permutation tests with 1000 (here 200) relabellings:

- ``classifier``: what cxrclf ships (:func:`cxrclf.guard.shift.classifier_permutation_test`),
  a ridge domain classifier's leave-one-out AUC (Lopez-Paz and Oquab 2017);
- ``mmd``: the unbiased kernel MMD^2 (Gretton et al. 2012), Gaussian kernel on the same
  standardised features, its width the median pairwise distance (implemented below).

Rows: synthetic Gaussians (false-positive rate over 200 null draws, power for a mean shift);
with ``--run`` (a run trained on the shared set without Shenzhen, e.g. one of
``benchmarks/ood.py``'s), real features: the run's validation images as the reference, and
batches of Shenzhen, Cohen AP films and NIH films (archives and views the run never saw) at
5 and 10 images (30 draws each), and an exchangeable null: the validation and test images
pooled and split at random into a reference of the validation split's size and a batch of 20
(100 draws). Last, the cost of :func:`cxrclf.guard.shift.shift_test` for 500 images of 1280
features (the forward pass excluded) against references of 27 and 1000 images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PERMUTATIONS = 200


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """(unbiased MMD^2, permutation p-value): Gaussian kernel, median-distance width, on jointly standardised features."""
    pooled = np.vstack([x, y]).astype(np.float64)
    n, m = len(x), len(y)
    spread = pooled.std(axis=0)
    pooled = (pooled - pooled.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    squared = np.einsum("nd,nd->n", pooled, pooled)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * pooled @ pooled.T, 0)
    kernel = np.exp(-distances / max(float(np.median(distances[np.triu_indices(n + m, 1)])), 1e-12))
    rows, grand = kernel.sum(axis=1), kernel.sum()
    members = np.zeros((n + m, permutations + 1))
    members[:n, 0] = 1
    chosen = np.random.default_rng(seed).random((permutations, n + m)).argsort(axis=1)[:, :n]
    members[chosen.T, np.arange(1, permutations + 1)[None, :]] = 1
    within_x = np.einsum("np,np->p", members, kernel @ members)
    to_all = rows @ members
    statistic = (within_x - n) / (n * (n - 1)) + (grand - 2 * to_all + within_x - m) / (m * (m - 1)) - 2 * (to_all - within_x) / (n * m)
    return float(statistic[0]), (1 + float(np.sum(statistic[1:] >= statistic[0] - 1e-12))) / (permutations + 1)


def tests() -> dict:
    from cxrclf.guard.shift import classifier_permutation_test

    return {"classifier": lambda x, y, seed: classifier_permutation_test(x, y, PERMUTATIONS, seed)[1],
            "mmd": lambda x, y, seed: mmd_permutation_test(x, y, PERMUTATIONS, seed)[1]}


def synthetic_rows() -> list[dict]:
    rows = []
    for name, test in tests().items():
        rng = np.random.default_rng(0)
        null = np.array([test(rng.normal(size=(50, 10)), rng.normal(size=(50, 10)), seed) for seed in range(200)])
        one = np.array([test(rng.normal(size=(50, 10)) + np.r_[1.0, np.zeros(9)], rng.normal(size=(50, 10)), seed) for seed in range(50)])
        small = np.array([test(rng.normal(size=(50, 10)) + 0.3, rng.normal(size=(50, 10)), seed) for seed in range(50)])
        rows.append({"test": name, "false positives at 0.05 (200 null draws, 50 vs 50, 10 dims)": float(np.mean(null < 0.05)),
                     "at 0.01": float(np.mean(null < 0.01)), "power at 0.05, 1 sd in 1 of 10 dims": float(np.mean(one < 0.05)),
                     "power at 0.05, 0.3 sd in all 10 dims": float(np.mean(small < 0.05))})
    return rows


def features_of(predictor, files: list[Path], preprocessed: bool) -> np.ndarray:
    from cxrclf.inference import plane_from_file
    from cxrclf.planes import PlaneTask
    from cxrclf.parallel import map_images

    params = None if preprocessed else predictor.params.to_dict()
    decoded = map_images(plane_from_file, [PlaneTask(str(f), params, predictor.input_size) for f in files], 2)
    return predictor.assess(np.stack([d.plane for d in decoded if d.ok]))[1]


def real_rows(run: Path, shared: Path) -> list[dict]:
    import pandas as pd

    from cxrclf.data.manifest import read_manifest
    from cxrclf.inference import RunPredictor

    predictor = RunPredictor(run, "cpu")
    prepared = Path(predictor.config.data.folder)
    manifest = read_manifest(prepared)
    reference = features_of(predictor, [prepared / p for p in manifest[manifest.split == "val"].path], preprocessed=True)
    test = features_of(predictor, [prepared / p for p in manifest[manifest.split == "test"].path], preprocessed=True)
    metadata = pd.read_csv(shared / "cohen" / "metadata.csv", dtype=str, keep_default_na=False)
    ap = metadata[metadata["view"].str.upper().isin(["AP", "AP SUPINE"]) & (metadata["modality"].str.upper() == "X-RAY")]
    batches = {"Shenzhen": features_of(predictor, sorted((shared / "shenzhen").rglob("CXR_png/CHNCXR_*.png")), False),
               "Cohen AP films": features_of(predictor, [shared / "cohen" / "images" / f for f in ap["filename"]], False),
               "NIH films": features_of(predictor, sorted((shared / "nih" / "images").glob("*.png"))[:60], False)}
    rows = []
    for name, test_function in tests().items():
        rng = np.random.default_rng(0)
        row = {"test": name, "reference images": len(reference)}
        for batch_name, batch in batches.items():
            for size in (5, 10):
                draws = [test_function(batch[rng.choice(len(batch), size, replace=False)], reference, seed) for seed in range(30)]
                row[f"{batch_name}, {size} images (of {len(batch)})"] = float(np.mean(np.array(draws) < 0.01))
        pooled = np.vstack([reference, test])
        null = []
        for seed in range(100):
            order = rng.permutation(len(pooled))
            null.append(test_function(pooled[order[:20]], pooled[order[20:20 + len(reference)]], seed))
        row["exchangeable null, 20 images: false positives at 0.01"] = float(np.mean(np.array(null) < 0.01))
        row["at 0.05"] = float(np.mean(np.array(null) < 0.05))
        rows.append(row)
    return rows


def timing_rows() -> list[dict]:
    from cxrclf.guard.shift import Reference, shift_test

    rng = np.random.default_rng(0)
    rows = []
    for size in (27, 1000):
        reference = Reference(rng.normal(size=(size, 1280)).astype(np.float32), ["a"] * size)
        batch = rng.normal(size=(500, 1280)).astype(np.float32)
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            shift_test(batch, reference)
            seconds.append(time.perf_counter() - started)
        rows.append({"batch": 500, "reference": size, "features": 1280, "permutations": 1000, "median seconds": round(float(np.median(seconds)), 2)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run trained without Shenzhen (benchmarks/ood.py makes them)")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data" / "cxr-mini")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {"synthetic": synthetic_rows(), "timing": timing_rows()}
    if args.run:
        report["real"] = real_rows(args.run, args.shared)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name, rows in report.items():
        print(f"{name}\n")
        print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
        for row in rows:
            print("| " + " | ".join(f"{v:.0%}" if isinstance(v, float) and k != "median seconds" and v <= 1 else str(v) for k, v in row.items()) + " |")
        print(file=sys.stdout)


if __name__ == "__main__":
    main()
