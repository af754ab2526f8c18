"""The lung segmenter on real data: held-out Dice and IoU, time per image, and masks on every source.

    python benchmarks/segment.py [--data ../shared/data/cxr-mini] [--seeds 0 1 2] [--epochs 40] [--scratch]
                                 [--figure docs/figures/lung_masks.png] [--keep DIR] [--json]

1. Dice and IoU on Montgomery patients held out from training: ``cxrclf segment train`` on
   the shared set's Montgomery folder (67 X-rays with both lung masks, 128 px), one run per
   seed; each seed draws another patient split (20% test, 15% validation). Scores are those
   the run folder records: the best epoch by validation Dice, measured on the test patients
   at each image's own size. ``--scratch`` adds the same runs without ImageNet weights.
2. Time per image at the network's input size (128 px), one CPU thread, batch of one:
   the network alone, and :meth:`Segmenter.mask` (input plane, network, mask at the image's
   size) on a 128 px and a 1024 px image; median of 50 after a warm-up.
3. Masks on every source of the shared set (Cohen PA and lateral, RSNA, Montgomery test
   patients, Shenzhen), by the first seed's run: a figure (per source the first accepted
   masks and up to two rejected ones), and per source how many masks
   :func:`cxrclf.preprocess.lung.lung_problem` rejects, and which.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-mini"


def train_runs(data: Path, seeds: list[int], epochs: int, pretrained: bool, root: Path) -> list[dict]:
    from cxrclf.segment.train import SegmentTrainOptions, train_segmenter

    rows = []
    for seed in seeds:
        out = root / f"lung-{'imagenet' if pretrained else 'scratch'}-{seed}"
        started = time.perf_counter()
        summary = train_segmenter(SegmentTrainOptions(nlm=data / "montgomery", out=out, seed=seed, epochs=epochs, pretrained=pretrained, threads=1))
        outcome = summary["outcome"]
        rows.append({"seed": seed, "pretrained": pretrained, "run": str(out), "best_epoch": outcome["best_epoch"], "epochs_run": outcome["epochs_run"],
                     "train_minutes": round((time.perf_counter() - started) / 60, 2), **{f"test_{k}": v for k, v in outcome["test"].items()},
                     "val_dice": outcome["val"]["dice"]})
    return rows


def timing(run: Path, repeat: int = 50) -> dict:
    import cv2
    import torch

    from cxrclf.segment.infer import Segmenter

    torch.set_num_threads(1)
    segmenter = Segmenter(run)
    size = segmenter.input_size
    x = torch.rand(1, 1, size, size)

    def median_ms(call) -> float:
        for _ in range(5):
            call()
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return round(1000 * statistics.median(times), 2)

    with torch.inference_mode():
        network = median_ms(lambda: segmenter.model(x))
    rng = np.random.default_rng(0)
    small = (rng.random((size, size)) * 255).astype(np.uint8)
    large = cv2.resize(small, (1024, 1024))
    return {"input_size": size, "threads": 1, "network_ms": network, "mask_ms_at_input_size": median_ms(lambda: segmenter.mask(small)),
            "mask_ms_1024px": median_ms(lambda: segmenter.mask(large))}


def source_images(data: Path) -> dict[str, list[Path]]:
    """A few images per source: Cohen PA and laterals from its metadata, RSNA, Montgomery, Shenzhen."""
    import csv

    cohen = {"PA": [], "L": []}
    with open(data / "cohen" / "metadata.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            view = (row.get("view") or "").strip()
            if view in cohen and row.get("modality", "X-ray") == "X-ray":
                path = data / "cohen" / row.get("folder", "images") / row["filename"]
                if path.is_file():
                    cohen[view].append(path)
    return {"cohen PA": cohen["PA"], "cohen lateral": cohen["L"],
            "rsna": sorted((data / "rsna" / "stage_2_train_images").glob("*.dcm")),
            "montgomery": sorted((data / "montgomery").rglob("CXR_png/*.png")),
            "shenzhen": sorted((data / "shenzhen").rglob("CXR_png/*.png"))}


def masks_on_sources(run: Path, data: Path, figure: Path | None, per_source_shown: int = 6) -> dict:
    from cxrclf.data.imageio import read_image
    from cxrclf.preprocess.lung import lung_problem
    from cxrclf.segment.infer import Segmenter
    from cxrclf.segment.masks import overlay

    segmenter = Segmenter(run)
    test_images = {row.split(",")[0] for row in (run / "split.csv").read_text().splitlines()[1:] if row.endswith(",test")}
    found = source_images(data)
    found["montgomery"] = [p for p in found["montgomery"] if str(p) in test_images]  # only patients the segmenter never saw
    result, shown = {}, {}
    for source, files in found.items():
        problems, areas = [], []
        for file in files:
            pixels = read_image(file)
            mask = segmenter.mask(pixels)
            areas.append(float(mask.mean()))
            problem = lung_problem(mask)
            if problem:
                problems.append({"file": file.name, "problem": problem})
            shown.setdefault(source, {"accepted": [], "rejected": []})
            kind = "rejected" if problem else "accepted"
            if len(shown[source][kind]) < per_source_shown:
                shown[source][kind].append((file.name, overlay(pixels, mask), problem))
        result[source] = {"images": len(files), "rejected": len(problems), "mean_lung_area": round(float(np.mean(areas)), 3) if areas else None,
                          "rejected_files": problems}
    if figure is not None:  # per source the first accepted masks, and up to two rejected ones
        _figure({source: (v["accepted"][:per_source_shown - min(2, len(v["rejected"]))] + v["rejected"][:2]) for source, v in shown.items()}, figure)
    return result


def _figure(shown: dict, path: Path) -> None:
    import io as stdio

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxrclf import io

    rows, columns = len(shown), max(len(v) for v in shown.values())
    fig, axes = plt.subplots(rows, columns, figsize=(2.0 * columns, 2.15 * rows))
    for r, (source, items) in enumerate(shown.items()):
        for c in range(columns):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(items):
                name, picture, problem = items[c]
                ax.imshow(picture)
                ax.set_title(("REJECTED " if problem else "") + name[:18], fontsize=6, color="red" if problem else "black")
        axes[r, 0].text(-0.08, 0.5, source, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right", fontsize=9)
    fig.suptitle("Lung masks of the segmenter trained on Montgomery (green, outlined); REJECTED: not a pair of lung fields (lung_problem)", fontsize=9)
    fig.tight_layout()
    buffer = stdio.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    from PIL import Image

    buffer.seek(0)
    small = stdio.BytesIO()  # a 256-colour palette: a third of the bytes, no visible loss
    Image.open(buffer).convert("RGB").quantize(256).save(small, format="PNG", optimize=True)
    io.write_bytes(path, small.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--scratch", action="store_true", help="also train without ImageNet weights (same seeds)")
    parser.add_argument("--figure", type=Path, default=None, help="write the masks-on-every-source figure here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not (args.data / "montgomery").is_dir():
        raise SystemExit(f"benchmarks/segment.py: {args.data}: the shared data folder not found (pass --data)")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        runs = train_runs(args.data, args.seeds, args.epochs, True, root)
        if args.scratch:
            runs += train_runs(args.data, args.seeds, args.epochs, False, root)
        first = Path(runs[0]["run"])
        result = {"machine": platform.processor() or platform.machine(), "runs": runs, "timing": timing(first),
                  "sources": masks_on_sources(first, args.data, args.figure)}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'seed':>4} {'weights':>9} {'test Dice':>9} {'min':>6} {'test IoU':>8} {'val Dice':>8} {'best/run':>9} {'minutes':>7}")
    for r in runs:
        print(f"{r['seed']:>4} {'ImageNet' if r['pretrained'] else 'scratch':>9} {r['test_dice']:>9.4f} {r['test_dice_min']:>6.3f} {r['test_iou']:>8.4f} "
              f"{r['val_dice']:>8.4f} {r['best_epoch']:>4}/{r['epochs_run']:<4} {r['train_minutes']:>7}")
    for pretrained in (True, False):
        chosen = [r for r in runs if r["pretrained"] is pretrained]
        if chosen:
            print(f"mean over seeds ({'ImageNet' if pretrained else 'scratch'}): test Dice {np.mean([r['test_dice'] for r in chosen]):.4f}, "
                  f"IoU {np.mean([r['test_iou'] for r in chosen]):.4f}")
    t = result["timing"]
    print(f"\ntime per image, 1 thread: network {t['network_ms']} ms at {t['input_size']} px; mask of a {t['input_size']} px image "
          f"{t['mask_ms_at_input_size']} ms; of a 1024 px image {t['mask_ms_1024px']} ms")
    print(f"\n{'source':<14} {'images':>6} {'rejected':>8} {'mean lung area':>14}")
    for source, s in result["sources"].items():
        print(f"{source:<14} {s['images']:>6} {s['rejected']:>8} {s['mean_lung_area']!s:>14}")


if __name__ == "__main__":
    main()
