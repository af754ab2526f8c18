"""The lung segmenter on real data: held-out Dice and IoU, time per image, and masks on every source.

    python benchmarks/segment.py [--data ../shared/data/cxr-mini] [--seeds 0 1 2] [--epochs 40] [--scratch]
                                 [--figure docs/figures/lung_masks.png] [--keep DIR] [--json]
    python benchmarks/segment.py --builtin [--data ../shared/data/cxr-mini] [--json]
    python benchmarks/segment.py --ship RUN --command "cxrclf segment train ..." [--data ...]
    python benchmarks/segment.py --ship-onnx      # only cxrclf/builtin/lung/model.onnx, from the shipped weights

``--builtin`` measures the segmenter shipped in ``cxrclf/builtin/lung/`` on the held-out
patients its ``provenance.json`` lists (Dice and IoU at each image's own size, as training
measures them), checks that the shared data still hashes as it did for training, and prints
the figures recorded there beside the ones measured now. ``--ship RUN`` makes that folder
from a finished ``cxrclf segment train`` run: its config.json, its weights in half precision
and ``provenance.json`` (the command, the cxrclf version and commit, the training data's hash,
the patients of every split, held-out Dice and IoU in single and half precision) and the
network as an ONNX graph, ``model.onnx``, which the input checks run in onnxruntime
(:mod:`cxrclf.segment.ort`; ``--ship-onnx`` writes only that, from the shipped weights).

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
from _provenance import commit  # noqa: E402  (benchmarks/ is the script's folder)

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


# ----------------------------------------------------------------------------- the built-in segmenter

def data_sha256(root: Path, files: list[Path]) -> str:
    """One sha256 over the sorted lines ``<path relative to root> <sha256 of the file>``: the training data's identity."""
    import hashlib

    from cxrclf import io

    lines = sorted(f"{Path(f).resolve().relative_to(root.resolve()).as_posix()} {io.sha256_file(f)}" for f in files)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def heldout_scores(segmenter, pairs) -> dict:
    """Mean and lowest Dice and IoU of ``segmenter``'s masks against the pairs' masks, each at the image's own size."""
    from cxrclf.segment.data import read_pair
    from cxrclf.segment.masks import dice, iou

    scores = []
    for pair in pairs:
        image, truth = read_pair(pair)
        mask = segmenter.mask(image)
        scores.append((dice(mask, truth), iou(mask, truth)))
    values = np.asarray(scores)
    return {"images": len(pairs), "dice": round(float(values[:, 0].mean()), 4), "dice_min": round(float(values[:, 0].min()), 4),
            "iou": round(float(values[:, 1].mean()), 4), "iou_min": round(float(values[:, 1].min()), 4)}


def _split_pairs(run: Path) -> dict[str, list]:
    """split -> the run's (X-ray, masks) pairs, from its split.csv."""
    from cxrclf.io import read_csv_rows
    from cxrclf.segment.data import MaskPair

    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for row in read_csv_rows(run / "split.csv", ("image", "masks", "patient_id", "source", "split"), "split.csv"):
        out[row["split"]].append(MaskPair(Path(row["image"]), tuple(Path(m) for m in row["masks"].split(";")), row["patient_id"], row["source"]))
    return out


def ship(run: Path, command: str, data: Path) -> dict:
    """Make ``cxrclf/builtin/lung/`` from a finished run: config.json, float16 weights, provenance.json."""
    import dataclasses
    import tempfile

    import torch
    from safetensors.torch import load, save

    from cxrclf import __version__, io
    from cxrclf.segment.infer import Segmenter
    from cxrclf.segment.run import PROVENANCE, SegmentRun, builtin_folder

    source = SegmentRun(run)
    config = source.read_config()
    source.require_finished(config)
    nlm = data / "montgomery"
    pairs = _split_pairs(run)
    files = [f for split in pairs.values() for pair in split for f in (pair.image, *pair.masks)]
    state = load(source.file(SegmentRun.WEIGHTS).read_bytes())
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    relative = {split: [Path(p.image).resolve().relative_to(nlm.resolve()).as_posix() for p in members] for split, members in pairs.items()}
    shipped_config = config.with_(data=dataclasses.replace(config.data, nlm="../shared/data/cxr-mini/montgomery"))  # not this machine's path
    with tempfile.TemporaryDirectory() as tmp:  # measure both precisions through the Segmenter the package uses
        for name, weights in (("float32", state), ("float16", half)):
            folder = Path(tmp) / name
            folder.mkdir()
            SegmentRun(folder).write_config(shipped_config)
            io.write_bytes(folder / SegmentRun.WEIGHTS, save(weights))
        scores = {name: {split: heldout_scores(Segmenter(Path(tmp) / name), pairs[split]) for split in ("val", "test")} for name in ("float32", "float16")}
    out = builtin_folder()
    out.mkdir(parents=True, exist_ok=True)
    SegmentRun(out).write_config(shipped_config)
    io.write_bytes(out / SegmentRun.WEIGHTS, save(half))
    seconds = sum(float(row["seconds"]) for row in io.read_csv_rows(run / "metrics.csv", ("seconds",), "metrics.csv"))
    provenance = {
        "name": "builtin", "made_by": "python benchmarks/segment.py --ship RUN", "command": command, "cxrclf_version": __version__,
        "commit": commit(), "versions": dict(config.execution.versions), "threads": config.execution.threads,
        "training": {"epochs_run": config.outcome.epochs_run, "best_epoch": config.outcome.best_epoch, "seconds": round(seconds, 1)},
        "data": {"folder": "../shared/data/cxr-mini/montgomery", "files": len(files), "images": sum(len(v) for v in pairs.values()),
                 "sha256": data_sha256(nlm, files), "hash_of": "sha256 of the sorted lines '<path relative to the folder> <file sha256>', "
                 "images and lung masks of every pair"},
        "splits": relative,
        "heldout": {"recorded_by_training": {"val": config.outcome.val, "test": config.outcome.test}, **scores},
        "weights": {"file": SegmentRun.WEIGHTS, "dtype": "float16", "bytes": (out / SegmentRun.WEIGHTS).stat().st_size,
                    "sha256": io.sha256_file(out / SegmentRun.WEIGHTS)},
        "torch_dtype_at_inference": str(torch.float32),
    }
    io.write_json(out / PROVENANCE, provenance)
    return ship_onnx()


def ship_onnx() -> dict:
    """Write ``cxrclf/builtin/lung/model.onnx`` from the shipped weights (what the input checks run in onnxruntime)
    and record it in ``provenance.json`` under ``"onnx"``."""
    from cxrclf import io
    from cxrclf.export import export_lung_network
    from cxrclf.segment.infer import Segmenter
    from cxrclf.segment.ort import ONNX_FILE
    from cxrclf.segment.run import PROVENANCE, builtin_folder

    folder = builtin_folder()
    segmenter = Segmenter(folder)
    provenance = io.read_json(folder / PROVENANCE, PROVENANCE)
    if segmenter.sha256 != provenance["weights"]["sha256"]:
        raise SystemExit(f"benchmarks/segment.py: {folder}: the weights are not the ones provenance.json records")
    made = export_lung_network(segmenter, folder / ONNX_FILE)
    provenance["onnx"] = {**made, "file": ONNX_FILE, "made_by": "python benchmarks/segment.py --ship-onnx (cxrclf.export.export_lung_network)"}
    io.write_json(folder / PROVENANCE, provenance)
    return provenance


def builtin_figures(data: Path) -> dict:
    """The shipped segmenter on the held-out patients its provenance lists, and whether the data is the one it was trained on."""
    from cxrclf import io
    from cxrclf.segment.data import pairs_from_nlm
    from cxrclf.segment.infer import builtin_segmenter
    from cxrclf.segment.run import PROVENANCE, builtin_folder

    provenance = io.read_json(builtin_folder() / PROVENANCE, PROVENANCE)
    nlm = data / "montgomery"
    found = {p.image.resolve().relative_to(nlm.resolve()).as_posix(): p for p in pairs_from_nlm(nlm)[0]}
    missing = sorted(set(sum(provenance["splits"].values(), [])) - set(found))
    if missing:
        raise SystemExit(f"benchmarks/segment.py: {nlm}: {len(missing)} training image(s) not found, first {missing[0]}")
    files = [f for name in sum(provenance["splits"].values(), []) for f in (found[name].image, *found[name].masks)]
    segmenter = builtin_segmenter()
    measured = {split: heldout_scores(segmenter, [found[name] for name in provenance["splits"][split]]) for split in ("val", "test")}
    return {"weights_sha256": segmenter.sha256, "recorded_weights_sha256": provenance["weights"]["sha256"],
            "data_sha256": data_sha256(nlm, files), "recorded_data_sha256": provenance["data"]["sha256"],
            "measured": measured, "recorded": provenance["heldout"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--scratch", action="store_true", help="also train without ImageNet weights (same seeds)")
    parser.add_argument("--figure", type=Path, default=None, help="write the masks-on-every-source figure here")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--builtin", action="store_true", help="held-out Dice and IoU of the shipped segmenter (no training)")
    parser.add_argument("--ship", type=Path, default=None, help="make cxrclf/builtin/lung/ from this finished segmentation run")
    parser.add_argument("--command", default="", help="with --ship: the command that trained RUN, for provenance.json")
    parser.add_argument("--ship-onnx", action="store_true", help="write cxrclf/builtin/lung/model.onnx from the shipped weights (--ship does it too)")
    args = parser.parse_args(argv)
    if not (args.data / "montgomery").is_dir():
        raise SystemExit(f"benchmarks/segment.py: {args.data}: the shared data folder not found (pass --data)")
    if args.ship_onnx:
        print(json.dumps(ship_onnx()["onnx"], indent=2))
        return
    if args.ship or args.builtin:
        result = ship(args.ship, args.command, args.data) if args.ship else builtin_figures(args.data)
        if args.json or args.ship:
            print(json.dumps(result, indent=2))
            return
        same = result["weights_sha256"] == result["recorded_weights_sha256"]
        print(f"weights sha256 {result['weights_sha256'][:16]}... ({'as recorded' if same else 'NOT the recorded weights'}); training data "
              f"{'as recorded' if result['data_sha256'] == result['recorded_data_sha256'] else 'DIFFERS from the recorded data'}")
        print(f"{'split':<5} {'images':>6} {'Dice':>7} {'lowest':>7} {'IoU':>7} {'lowest':>7}   recorded (float16 / float32 Dice)")
        for split, m in result["measured"].items():
            print(f"{split:<5} {m['images']:>6} {m['dice']:>7.4f} {m['dice_min']:>7.4f} {m['iou']:>7.4f} {m['iou_min']:>7.4f}   "
                  f"{result['recorded']['float16'][split]['dice']:.4f} / {result['recorded']['float32'][split]['dice']:.4f}")
        return
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
