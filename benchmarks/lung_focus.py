"""Whole image against lung-cropped: the same lite0 run on the shared set, side by side.

    python benchmarks/lung_focus.py [--data ../shared/data/cxr-mini] [--lung-model RUN] [--seed 0] [--epochs 15]
                                    [--split test] [--keep DIR] [--json]

Fuses the shared set (Cohen, RSNA, Montgomery, Shenzhen), preprocesses it twice with the
default parameters, once with ``lung none`` (the paper) and once with ``lung crop``, trains
``tf_efficientnet_lite0`` (ImageNet weights, 3 classes, oversampling, 15 epochs, best epoch by
validation AUC, the same seed) on each, and evaluates each on its own test split with
``--lung-model``: within-source one-vs-rest AUCs (where the archive cannot tell the classes
apart) and the mean share of Grad-CAM inside the lung fields, per source. Without
``--lung-model`` a segmenter is trained first on the Montgomery masks (about 3 minutes).
The lung-cropped folder lacks the few radiographs whose lungs the segmenter rejects, so its
test split can be a little smaller: the counts are printed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path


DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-mini"


def run_one(name: str, lung: str, fused: Path, segmenter: Path, root: Path, seed: int, epochs: int, split: str) -> dict:
    from cxrclf.evaluate.evaluation import EvaluateOptions, evaluate
    from cxrclf.prepare import preprocess_folder
    from cxrclf.segment.run import lung_params
    from cxrclf.preprocess.params import PreprocessParams
    from cxrclf.train.loop import TrainOptions, train

    params = replace(PreprocessParams(), **lung_params(lung, segmenter if lung != "none" else None))
    started = time.perf_counter()
    summary = preprocess_folder(fused, root / f"prep-{name}", params, workers=2)
    train(TrainOptions(model="tf_efficientnet_lite0", strategy="oversample", classes=3, data=root / f"prep-{name}", out=root / f"run-{name}",
                       epochs=epochs, patience=5, select_by="auc", seed=seed, update_latest=False))
    result = evaluate(EvaluateOptions(run=root / f"run-{name}", split=split, bootstrap=200, seed=seed, workers=2, lung_model=segmenter, device="cpu"))
    within = [r for r in result.shortcut["within_source"] if r["skipped"] is None]
    return {"name": name, "lung": lung, "images": summary["images"], "skipped": summary["skipped"],
            "skipped_reasons": sorted({r["reason"] for r in summary["skipped_rows"]}), "test_images": result.metrics.n_images,
            "macro_auc": result.metrics.point["macro_auc"], "within_source": within, "lung_attention": result.lung_attention,
            "minutes": round((time.perf_counter() - started) / 60, 1), "evaluation": result.out}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--lung-model", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--split", default="test")
    parser.add_argument("--keep", type=Path, default=None, help="keep the folders here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from cxrclf.data.fuse import FuseOptions, fuse

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        segmenter = args.lung_model
        if segmenter is None:
            from cxrclf.segment.train import SegmentTrainOptions, train_segmenter

            segmenter = root / "lung"
            train_segmenter(SegmentTrainOptions(nlm=args.data / "montgomery", out=segmenter, seed=args.seed))
        fused = root / "fused"
        fuse(FuseOptions(cohen=args.data / "cohen", rsna=args.data / "rsna", nlm=args.data / "montgomery", shenzhen=args.data / "shenzhen",
                         workers=2, seed=args.seed), fused)
        runs = [run_one(name, lung, fused, segmenter, root, args.seed, args.epochs, args.split) for name, lung in (("whole", "none"), ("lung-crop", "crop"))]
    if args.json:
        print(json.dumps({"seed": args.seed, "epochs": args.epochs, "segmenter": str(segmenter), "runs": runs}, indent=2, default=str))
        return
    print(f"{'':<26}" + "".join(f"{r['name']:>22}" for r in runs))
    print(f"{'images (skipped)':<26}" + "".join(f"{str(r['images']) + ' (' + str(r['skipped']) + ')':>22}" for r in runs))
    print(f"{'test images':<26}" + "".join(f"{r['test_images']:>22}" for r in runs))
    print(f"{'pooled macro AUC':<26}" + "".join(f"{r['macro_auc']:>22.3f}" for r in runs))
    keys = sorted({(w["source"], w["class"]) for r in runs for w in r["within_source"]})
    for source, name in keys:
        cells = []
        for r in runs:
            row = next((w for w in r["within_source"] if (w["source"], w["class"]) == (source, name)), None)
            cells.append("n/a" if row is None else f"{row['auc']:.3f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]")
        print(f"{'AUC ' + source + ' ' + name:<26}" + "".join(f"{c:>22}" for c in cells))
    print(f"{'Grad-CAM in lungs, all':<26}" + "".join(f"{r['lung_attention']['overall']['in_lung_share']:>22.3f}" for r in runs))
    for source in sorted({s for r in runs for s in r["lung_attention"]["per_source"]}):
        cells = [r["lung_attention"]["per_source"].get(source, {}).get("in_lung_share") for r in runs]
        print(f"{'  in lungs, ' + source:<26}" + "".join(f"{'n/a' if c is None else format(c, '.3f'):>22}" for c in cells))
    print(f"{'  lung area (uniform map)':<26}" + "".join(f"{r['lung_attention']['overall']['lung_area']:>22.3f}" for r in runs))
    print(f"{'minutes':<26}" + "".join(f"{r['minutes']:>22}" for r in runs))


if __name__ == "__main__":
    main()
