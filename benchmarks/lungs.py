"""The lung-based input checks (:mod:`cxrclf.guard.lungs`) on real images: what they flag, what they let through, what they cost.

    python benchmarks/lungs.py [--data ../shared/data/cxr-mini] [--json] [--limit N]
    python benchmarks/lungs.py --features      # the measures the thresholds were set on
    python benchmarks/lungs.py --cost          # the time per image alone (quick: repeat it when the machine is quiet)

No classifier is trained: every row is :func:`cxrclf.guard.lungs.lung_warnings` with the
built-in segmenter on images decoded by ``decode``, as ``predict`` decodes them. Nothing is
random (no seed, so one run is the measurement).

- False alarms: the real frontal radiographs of every source (Cohen PA, RSNA, the
  Montgomery patients the built-in segmenter never trained on, Shenzhen, NIH), per source
  and per class, and separately how often the reason "one lung field not found" is given
  on the diseased images alone (pneumonia, COVID-19, tuberculosis).
- Images that must be flagged: Cohen's laterals and CT slices (PNG/JPEG, chosen by the
  ``view`` and ``modality`` columns of its metadata); every frontal radiograph above turned
  by 90, 180 and 270 degrees and inverted (and whether the reason names the turn or the
  inversion); the four corner quarters of each; scikit-image's photographs (those shipped
  in the wheel), noise and constant images; pydicom's CT and MR test files, and an MR and a
  CT slice saved as PNG.
- Cost: milliseconds per image of ``lung_warnings`` on the decoded image, one PyTorch
  thread (``torch.set_num_threads(1)``), median over the real radiographs (an image that
  passes with a sure mask: one pass of the network) and over the flagged ones (five passes),
  with the load average: on a shared machine the network's own time varies twofold.
  ``--cost`` measures only that, with the network alone and the steps around it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-mini"
DISEASED = ("covid19", "other_pneumonia", "tuberculosis")
PHOTOGRAPHS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "camera", "moon", "page", "text", "coins", "brick", "grass",
               "gravel", "cat", "horse", "hubble_deep_field", "retina", "clock", "logo", "microaneurysms", "cell", "colorwheel", "checkerboard")


# ----------------------------------------------------------------------------- the images

def frontal_images(data: Path) -> list[dict]:
    """Every real frontal radiograph: ``{"source", "finding", "file"}`` (finding: a cxrclf finding, ``other`` or ``unlabelled``)."""
    from cxrclf.data.sources.cohen import map_finding
    from cxrclf.io import read_json
    from cxrclf.segment.run import PROVENANCE, builtin_folder

    rows = []
    with open(data / "cohen" / "metadata.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["view"] == "PA" and row["modality"] == "X-ray":
                rows.append({"source": "Cohen PA", "finding": map_finding(row["finding"]) or "unlabelled",
                             "file": data / "cohen" / (row.get("folder") or "images") / row["filename"]})
    rsna = {"Normal": "normal", "Lung Opacity": "other_pneumonia", "No Lung Opacity / Not Normal": "other"}
    with open(data / "rsna" / "stage_2_detailed_class_info.csv", newline="") as handle:
        classes = {row["patientId"]: rsna[row["class"]] for row in csv.DictReader(handle)}
    rows += [{"source": "RSNA", "finding": classes[p.stem], "file": p} for p in sorted((data / "rsna" / "stage_2_train_images").glob("*.dcm"))]
    splits = read_json(builtin_folder() / PROVENANCE, PROVENANCE)["splits"]
    montgomery = data / "montgomery"
    rows += [{"source": "Montgomery (held out)", "finding": "tuberculosis" if name.endswith("_1.png") else "normal", "file": montgomery / name}
             for name in sorted(splits["val"] + splits["test"])]
    rows += [{"source": "Shenzhen", "finding": "tuberculosis" if p.stem.endswith("_1") else "normal", "file": p}
             for p in sorted((data / "shenzhen").rglob("CXR_png/CHNCXR_*.png"))]
    with open(data / "nih" / "Data_Entry_2017.csv", newline="") as handle:
        labels = {row["Image Index"]: row["Finding Labels"] for row in csv.DictReader(handle)}
    for path in sorted((data / "nih" / "images").glob("*.png")):
        label = labels.get(path.name, "")
        rows.append({"source": "NIH", "file": path,
                     "finding": "normal" if label == "No Finding" else "other_pneumonia" if "Pneumonia" in label else "other"})
    return rows


def cohen_non_frontal(data: Path) -> dict[str, list[Path]]:
    laterals, slices = [], []
    with open(data / "cohen" / "metadata.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            path = data / "cohen" / (row.get("folder") or "images") / row["filename"]
            if row["modality"].upper() == "CT":
                slices.append(path)
            elif row["view"].upper() in ("L", "LATERAL"):
                laterals.append(path)
    return {"Cohen laterals (PNG/JPEG)": laterals, "Cohen CT slices (PNG/JPEG)": slices}


def other_images() -> dict[str, list[tuple[str, np.ndarray]]]:
    """Photographs, noise, constant images, pydicom's CT and MR files, and an MR and a CT slice as PNG: (name, decoded pixels)."""
    import pydicom
    from skimage import data as samples

    from cxrclf.data.imageio import decode, encode_png, to_uint8

    photos = []
    for name in PHOTOGRAPHS:
        try:
            image = getattr(samples, name)()
        except Exception:  # a sample that needs a download (pooch): not in this installation
            continue
        if image.ndim == 3:
            image = image[..., :3].mean(axis=2)
        photos.append((name, to_uint8(np.asarray(image, np.float32) / max(float(np.max(image)), 1e-6))))
    rng = np.random.default_rng(0)
    noise = ([(f"uniform noise {i}", rng.integers(0, 256, (512, 512), dtype=np.uint8)) for i in range(4)]
             + [(f"Gaussian noise {i}", np.clip(rng.normal(128, 40, (512, 512)), 0, 255).astype(np.uint8)) for i in range(2)]
             + [(f"constant {v}", np.full((512, 512), v, np.uint8)) for v in (0, 128, 255)])
    dicoms, as_png = [], []
    for path in sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm")):  # local files only, no download
        try:
            decoded = decode(path)
        except Exception:
            continue
        if decoded.info.modality in ("CT", "MR"):
            dicoms.append((f"{path.name} ({decoded.info.modality})", decoded.pixels))
            if path.name in ("CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm"):
                import cv2

                png = cv2.imdecode(np.frombuffer(encode_png(to_uint8(decoded.pixels)), np.uint8), cv2.IMREAD_UNCHANGED)
                as_png.append((f"{path.stem}.png", png))
    return {"photographs (scikit-image)": photos, "noise and constant images": noise, "CT and MR DICOM (pydicom test files)": dicoms,
            "CT and MR slices saved as PNG": as_png}


# ----------------------------------------------------------------------------- measuring

def checked(pixels: np.ndarray, timings: list[float] | None = None) -> list[str]:
    from cxrclf.guard.lungs import lung_warnings

    started = time.perf_counter()
    reasons = lung_warnings(pixels)
    if timings is not None:
        timings.append(1000 * (time.perf_counter() - started))
    return reasons


def measure(data: Path, limit: int | None = None) -> dict:
    import torch

    from cxrclf.data.imageio import decode
    from cxrclf.guard.lungs import INVERTED, ONE_FIELD, TURNS, lung_warnings
    from cxrclf.segment.infer import builtin_segmenter

    torch.set_num_threads(1)
    segmenter = builtin_segmenter()
    lung_warnings(np.zeros((64, 64), np.uint8))  # warm-up
    frontal = frontal_images(data)[:limit]
    real_ms, passing_ms, flagged_ms, rows, transformed = [], [], [], [], {}
    names = {1: "turned 90 degrees counter-clockwise", 2: "turned 180 degrees", 3: "turned 90 degrees clockwise"}
    for index, item in enumerate(frontal):
        pixels = decode(item["file"]).pixels
        timings: list[float] = []
        reasons = checked(pixels, timings)
        real_ms.extend(timings)
        (flagged_ms if reasons else passing_ms).extend(timings)
        rows.append({**item, "file": str(item["file"]), "reasons": reasons})
        for turns, name in names.items():  # np.rot90 turns counter-clockwise: back is the rest of a full turn
            found = checked(np.ascontiguousarray(np.rot90(pixels, turns)), flagged_ms)
            transformed.setdefault(name, []).append({"reasons": found, "named": TURNS[4 - turns] in found})
        found = checked(np.iinfo(pixels.dtype).max - pixels if pixels.dtype.kind == "u" else 1 - pixels, flagged_ms)
        transformed.setdefault("inverted", []).append({"reasons": found, "named": INVERTED in found})
        height, width = pixels.shape[:2]
        for corner in ((slice(0, height // 2), slice(0, width // 2)), (slice(0, height // 2), slice(width // 2, None)),
                       (slice(height // 2, None), slice(0, width // 2)), (slice(height // 2, None), slice(width // 2, None))):
            found = checked(np.ascontiguousarray(pixels[corner]))
            transformed.setdefault("corner quarters (4 per image)", []).append({"reasons": found, "named": True})
        if (index + 1) % 50 == 0:
            print(f"    {index + 1} of {len(frontal)} radiographs", file=sys.stderr)

    def summary(results: list[dict]) -> dict:
        return {"images": len(results), "flagged": float(np.mean([bool(r["reasons"]) for r in results])) if results else None}

    false_alarms = {}
    for source in dict.fromkeys(r["source"] for r in rows):
        mine = [r for r in rows if r["source"] == source]
        false_alarms[source] = summary(mine) | {"per_finding": {f: summary([r for r in mine if r["finding"] == f]) for f in sorted({r["finding"] for r in mine})},
                                                 "flagged_files": [(Path(r["file"]).name, r["reasons"]) for r in mine if r["reasons"]]}
    diseased = [r for r in rows if r["finding"] in DISEASED]
    one_field = {"diseased": {"images": len(diseased), "one lung field": float(np.mean([ONE_FIELD in r["reasons"] for r in diseased])),
                              "any reason": float(np.mean([bool(r["reasons"]) for r in diseased]))},
                 "per_finding": {f: float(np.mean([ONE_FIELD in r["reasons"] for r in rows if r["finding"] == f]))
                                 for f in DISEASED if any(r["finding"] == f for r in rows)}}
    must = {name: summary(results) | {"reason named": float(np.mean([r["named"] for r in results]))} for name, results in transformed.items()}
    for name, files in cohen_non_frontal(data).items():
        results = [{"reasons": checked(decode(f).pixels)} for f in files]
        must[name] = summary(results) | {"files": [(f.name, r["reasons"]) for f, r in zip(files, results)]}
    for name, images in other_images().items():
        results = [{"reasons": checked(pixels)} for _, pixels in images]
        must[name] = summary(results) | {"missed": [n for (n, _), r in zip(images, results) if not r["reasons"]]}

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 1) if values else None

    timing = {"threads": torch.get_num_threads(), "input_size": segmenter.input_size, "load_average": [round(x, 1) for x in os.getloadavg()],
              "median_ms_real_radiographs": median(real_ms), "median_ms_passing": median(passing_ms), "median_ms_flagged": median(flagged_ms)}
    return {"false_alarms": false_alarms, "one_lung_field_on_diseased": one_field, "must_flag": must, "cost": timing}


def cost(data: Path, count: int = 100, repeat: int = 3) -> dict:
    """Milliseconds per image, one thread: ``lung_warnings`` on the first ``count`` real radiographs (each the best of
    ``repeat``: another process's burst is not the check's cost), the network alone, and the load average around it."""
    import torch

    from cxrclf.data.imageio import decode
    from cxrclf.guard.lungs import _shrunk, describe_pair, lung_warnings
    from cxrclf.segment.infer import builtin_segmenter
    from cxrclf.segment.model import segmenter_plane

    torch.set_num_threads(1)
    segmenter = builtin_segmenter()
    images = [decode(item["file"]).pixels for item in frontal_images(data)[:count]]
    before = os.getloadavg()[0]
    lung_warnings(images[0])
    per_image, flagged = [], 0
    for pixels in images:
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            reasons = lung_warnings(pixels)
            timings.append(1000 * (time.perf_counter() - started))
        flagged += bool(reasons)
        per_image.append(min(timings))
    preparing, measuring = [], []  # the parts that are not the network: the input plane, and the mask's measures
    for pixels in images:
        started = time.perf_counter()
        plane = segmenter_plane(_shrunk(pixels, segmenter.input_size), segmenter.input_size)
        preparing.append(1000 * (time.perf_counter() - started))
        probabilities = segmenter.plane_probabilities(plane)
        started = time.perf_counter()
        describe_pair(probabilities, plane, segmenter.threshold)
        measuring.append(1000 * (time.perf_counter() - started))
    noise = torch.rand(1, 1, segmenter.input_size, segmenter.input_size)
    network = []
    with torch.inference_mode():
        for _ in range(50):
            started = time.perf_counter()
            segmenter.model(noise)
            network.append(1000 * (time.perf_counter() - started))
    return {"images": len(images), "median_ms": round(statistics.median(per_image), 1), "p90_ms": round(float(np.percentile(per_image, 90)), 1),
            "network_ms": round(statistics.median(network), 1), "plane_ms": round(statistics.median(preparing), 2),
            "measures_ms": round(statistics.median(measuring), 2), "load_average": [round(before, 1), round(os.getloadavg()[0], 1)], "flagged": flagged}


def feature_quantiles(data: Path, limit: int | None = None) -> dict:
    """What the thresholds of :mod:`cxrclf.guard.lungs` were set on: each :class:`LungPair` field on the real radiographs.

    Upright (every field of a two-field mask: minimum, 1st and 5th percentile, median, 99th
    percentile, maximum), and turned by 90, 180, 270 degrees and inverted (how many are still a
    pair; with what confidence), and how much surer each upright pair is than its half turn.
    """
    import torch

    from cxrclf.data.imageio import decode
    from cxrclf.guard.lungs import SURE_CONFIDENCE, describe_pair
    from cxrclf.segment.infer import builtin_segmenter
    from cxrclf.segment.model import segmenter_plane

    torch.set_num_threads(1)
    segmenter = builtin_segmenter()
    found: dict[str, list] = {"upright": [], "turned 90": [], "turned 180": [], "turned 270": [], "inverted": []}
    for item in frontal_images(data)[:limit]:
        plane = segmenter_plane(decode(item["file"]).pixels, segmenter.input_size)
        variants = [plane, *(np.ascontiguousarray(np.rot90(plane, k)) for k in (1, 2, 3)), 1.0 - plane]
        for name, variant, probabilities in zip(found, variants, segmenter.plane_probabilities(np.stack(variants))):
            found[name].append(describe_pair(probabilities, variant, segmenter.threshold))
    upright = [p for p in found["upright"] if p.fields == 2]
    quantiles = {}
    for field in ("area", "balance", "side_by_side", "width", "aspect", "top", "contrast", "confidence"):
        values = np.array([getattr(p, field) for p in upright], float)
        values = values[~np.isnan(values)]
        quantiles[field] = dict(zip(("min", "p1", "p5", "median", "p99", "max"),
                                    np.round([values.min(), *np.percentile(values, [1, 5, 50, 99]), values.max()], 3).tolist()))
    both = [(a.confidence - b.confidence) for a, b in zip(found["upright"], found["turned 180"]) if a.is_pair and b.is_pair]
    others = {name: [decode(f).pixels for f in files] for name, files in cohen_non_frontal(data).items()}
    others |= {name: [pixels for _, pixels in images] for name, images in other_images().items()}
    not_chests = {}
    for name, images in others.items():  # each image as it is: what the upright rules see
        planes = [segmenter_plane(pixels, segmenter.input_size) for pixels in images]
        pairs = [describe_pair(p, plane, segmenter.threshold) for p, plane in zip(segmenter.plane_probabilities(np.stack(planes)), planes)]
        not_chests[name] = {field: [round(float(getattr(p, field)), 2) for p in pairs]
                            for field in ("fields", "area", "balance", "side_by_side", "width", "aspect", "contrast", "confidence", "centre")}
    return {"radiographs": len(found["upright"]), "two fields": len(upright), "upright": quantiles, "not chests, as they are": not_chests,
            "sure upright (one pass)": float(np.mean([p.is_pair and p.confidence >= SURE_CONFIDENCE for p in found["upright"]])),
            "still a pair": {name: float(np.mean([p.is_pair for p in pairs])) for name, pairs in found.items()},
            "turned 180 and sure": float(np.mean([p.is_pair and p.confidence >= SURE_CONFIDENCE for p in found["turned 180"]])),
            "upright surer than its half turn by at least": round(min(both), 3) if both else None, "pairs both ways": len(both)}


def markdown(result: dict) -> str:
    lines = ["| real frontal radiographs | images | flagged (false alarms) | per finding |", "|---|---|---|---|"]
    for source, s in result["false_alarms"].items():
        per = ", ".join(f"{f} {v['flagged']:.1%} of {v['images']}" for f, v in s["per_finding"].items())
        lines.append(f"| {source} | {s['images']} | {s['flagged']:.1%} | {per} |")
    d = result["one_lung_field_on_diseased"]
    lines += ["", f"'one lung field not found' on the diseased images alone: {d['diseased']['one lung field']:.1%} of {d['diseased']['images']} "
              f"(any reason {d['diseased']['any reason']:.1%}); " + ", ".join(f"{f} {v:.1%}" for f, v in d["per_finding"].items()), "",
              "| must be flagged | images | flagged | reason names the turn / inversion |", "|---|---|---|---|"]
    for name, s in result["must_flag"].items():
        named = f"{s['reason named']:.1%}" if "reason named" in s and name != "corner quarters (4 per image)" else ""
        lines.append(f"| {name} | {s['images']} | {s['flagged']:.1%} | {named} |")
    c = result["cost"]
    lines += ["", f"cost, one thread, {c['input_size']} px plane: median {c['median_ms_real_radiographs']} ms per real radiograph; "
              f"{c['median_ms_passing']} ms on those that pass, {c['median_ms_flagged']} ms on flagged images (five passes); "
              f"load average at the end {c['load_average']}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="only the first N frontal radiographs (a quick look)")
    parser.add_argument("--features", action="store_true", help="print what the thresholds were set on (the masks' measures) instead")
    parser.add_argument("--cost", action="store_true", help="only the time per image: 100 radiographs, best of 3 each, and the network alone")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not (args.data / "cohen" / "metadata.csv").is_file():
        raise SystemExit(f"benchmarks/lungs.py: {args.data}: the shared data folder not found (pass --data)")
    if args.features or args.cost:
        print(json.dumps(feature_quantiles(args.data, args.limit) if args.features else cost(args.data), indent=2))
        return
    result = measure(args.data, args.limit)
    print(json.dumps(result, indent=2, default=str) if args.json else markdown(result))


if __name__ == "__main__":
    main()
