"""The lung-based input checks (:mod:`cxrclf.guard.lungs`) on real images: what they flag, what they let through, what they cost.

    python benchmarks/lungs.py [--data ../shared/data/cxr-mini] [--json] [--limit N]
    python benchmarks/lungs.py --features      # the measures the thresholds were set on
    python benchmarks/lungs.py --cost          # the time per image alone (quick: repeat it when the machine is quiet)
    python benchmarks/lungs.py --size 96       # the checks on a smaller plane than the segmenter's 128 px, beside 128 (every 4th radiograph)

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
  thread (``torch.set_num_threads(1)``; run it with ``OMP_NUM_THREADS=1``), median and 95th
  percentile over the real radiographs (an image that passes with a sure mask: one pass of
  the network), those that pass and the flagged ones (five passes). Both the CPU time of
  the process (``time.process_time``: what one core spends, whatever else the machine runs)
  and the wall time, with the load average: on a shared machine the wall time varies
  twofold. ``--cost`` measures only that, with the network alone (the shipped ONNX graph in
  onnxruntime, which the checks run; PyTorch's network as trained and folded,
  :func:`cxrclf.segment.model.inference_copy`, the fallback) and the steps around it.
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

def checked(pixels: np.ndarray, timings: list[tuple[float, float]] | None = None) -> list[str]:
    """The lung checks' reasons for ``pixels``; their (CPU, wall) milliseconds appended to ``timings``."""
    from cxrclf.guard.lungs import lung_warnings

    cpu, wall = time.process_time(), time.perf_counter()
    reasons = lung_warnings(pixels)
    if timings is not None:
        timings.append((1000 * (time.process_time() - cpu), 1000 * (time.perf_counter() - wall)))
    return reasons


def spread(milliseconds: list[float]) -> dict | None:
    """Median and 95th percentile, rounded to 0.1 ms (None for no values)."""
    if not milliseconds:
        return None
    return {"images": len(milliseconds), "median": round(statistics.median(milliseconds), 1), "p95": round(float(np.percentile(milliseconds, 95)), 1)}


def measure(data: Path, limit: int | None = None) -> dict:
    import torch

    from cxrclf.data.imageio import decode
    from cxrclf.guard.lungs import INVERTED, TURNS, lung_warnings
    from cxrclf.segment.infer import builtin_segmenter

    torch.set_num_threads(1)
    segmenter = builtin_segmenter()
    lung_warnings(np.zeros((64, 64), np.uint8))  # warm-up
    frontal = frontal_images(data)[:limit]
    real_ms, passing_ms, flagged_ms, rows, transformed = [], [], [], [], {}
    names = {1: "turned 90 degrees counter-clockwise", 2: "turned 180 degrees", 3: "turned 90 degrees clockwise"}
    for index, item in enumerate(frontal):
        pixels = decode(item["file"]).pixels
        timings: list[tuple[float, float]] = []
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

    false_alarms, one_field, must = _summarised(data, rows, transformed)
    sets = {"real radiographs": real_ms, "passing": passing_ms, "flagged": flagged_ms}
    timing = {"threads": torch.get_num_threads(), "input_size": segmenter.input_size, "load_average": [round(x, 1) for x in os.getloadavg()],
              "cpu_ms": {name: spread([cpu for cpu, _ in values]) for name, values in sets.items()},
              "wall_ms": {name: spread([wall for _, wall in values]) for name, values in sets.items()}}
    return {"false_alarms": false_alarms, "one_lung_field_on_diseased": one_field, "must_flag": must, "cost": timing}


def _summarised(data: Path, rows: list[dict], transformed: dict[str, list[dict]]) -> tuple[dict, dict, dict]:
    """:func:`measure`'s tables: false alarms per source and finding, "one lung field" on the diseased
    films, and the must-flag sets (the transformed radiographs, then Cohen's non-frontal images and the others, checked here)."""
    from cxrclf.data.imageio import decode
    from cxrclf.guard.lungs import ONE_FIELD

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
    return false_alarms, one_field, must


def cost(data: Path, count: int = 100, repeat: int = 3) -> dict:
    """Milliseconds per image on one thread: ``lung_warnings`` on the first ``count`` real radiographs
    (CPU time, and wall time as the best of ``repeat``: another process's burst is not the check's
    cost), the steps apart (:func:`steps`), and the load average around it."""
    import torch

    from cxrclf.data.imageio import decode
    from cxrclf.guard.lungs import lung_warnings

    torch.set_num_threads(1)
    images = [decode(item["file"]).pixels for item in frontal_images(data)[:count]]
    before = os.getloadavg()[0]
    lung_warnings(images[0])
    cpu, wall, flagged = [], [], 0
    for pixels in images:
        timings: list[tuple[float, float]] = []
        for _ in range(repeat):
            reasons = checked(pixels, timings)
        flagged += bool(reasons)
        cpu.append(statistics.median(t[0] for t in timings))
        wall.append(min(t[1] for t in timings))
    return {"images": len(images), "flagged": flagged, "cpu_ms": spread(cpu), "wall_ms": spread(wall), **steps(images),
            "load_average": [round(before, 1), round(os.getloadavg()[0], 1)]}


def steps(images: list[np.ndarray]) -> dict:
    """The check's steps apart, CPU milliseconds per image: the input plane, the network as trained,
    its folded copy (what the checks run without onnxruntime) and the shipped graph in onnxruntime
    (what they run), the mask's measures; and how far the folded copy's and onnxruntime's probabilities
    are from the network's, and in how many mask pixels."""
    from cxrclf.guard.lungs import describe_pair
    from cxrclf.segment.infer import builtin_segmenter
    from cxrclf.segment.ort import ONNX_FILE, OnnxLungNetwork
    from cxrclf.segment.plane import segmenter_plane, shrunk

    segmenter = builtin_segmenter()
    graph = segmenter.path / ONNX_FILE
    onnx = OnnxLungNetwork(graph) if graph.exists() else None
    found: dict[str, list[float]] = {}

    def timed(step: str, work):
        started = time.process_time()
        out = work()
        found.setdefault(step, []).append(1000 * (time.process_time() - started))
        return out

    differences = {"folded": [0.0, 0], "onnxruntime": [0.0, 0]}

    def compare(name: str, exact: np.ndarray, probabilities: np.ndarray) -> None:
        differences[name][0] = max(differences[name][0], float(np.abs(exact - probabilities).max()))
        differences[name][1] += int(((exact > segmenter.threshold) != (probabilities > segmenter.threshold)).sum())

    for pixels in images:
        plane = timed("plane", lambda: segmenter_plane(shrunk(pixels, segmenter.input_size), segmenter.input_size))
        exact = timed("network as trained", lambda: segmenter.plane_probabilities(plane))
        probabilities = timed("network folded (PyTorch)", lambda: segmenter.plane_probabilities(plane, folded=True))
        compare("folded", exact, probabilities)
        if onnx is not None:
            probabilities = timed("network in onnxruntime (shipped graph)", lambda: onnx.plane_probabilities(plane))
            compare("onnxruntime", exact, probabilities)
        timed("measures", lambda: describe_pair(probabilities, plane, segmenter.threshold))
    return {"steps_cpu_ms": {step: spread(values) for step, values in found.items()},
            **{f"{name}_against_trained": {"max_probability_difference": d, "mask_pixels_differing": n} for name, (d, n) in differences.items()}}


def at_size(data: Path, size: int, step: int = 4) -> dict:
    """The checks with the plane made at ``size`` px instead of the segmenter's input size (the
    network is fully convolutional), beside the input size, on every ``step``-th real radiograph
    (upright, turned by 90 and 180 degrees, inverted) and Cohen's laterals and CT slices: the
    share flagged, how often the reasons are the same, the masks' measures (1st and 5th
    percentile, median of two-field masks), the share of sure upright pairs (one pass) and the
    CPU time per check."""
    import torch

    from cxrclf.data.imageio import decode
    from cxrclf.guard.lungs import describe_pair, orientation_reasons
    from cxrclf.segment.infer import builtin_segmenter
    from cxrclf.segment.plane import segmenter_plane, shrunk

    torch.set_num_threads(1)
    segmenter = builtin_segmenter()
    sizes = (segmenter.input_size, size)
    reasons: dict[int, dict[str, list]] = {s: {} for s in sizes}
    upright: dict[int, list] = {s: [] for s in sizes}
    seconds: dict[int, list[float]] = {s: [] for s in sizes}

    def images():  # one decoded image at a time: a set of full-size variants would not fit in memory
        for name, files in cohen_non_frontal(data).items():
            yield from ((name, decode(f).pixels) for f in files)
        for item in frontal_images(data)[::step]:
            pixels = decode(item["file"]).pixels
            yield from (("upright", pixels), ("turned 90", np.ascontiguousarray(np.rot90(pixels))),
                        ("turned 180", np.ascontiguousarray(np.rot90(pixels, 2))),
                        ("inverted", np.iinfo(pixels.dtype).max - pixels if pixels.dtype.kind == "u" else 1 - pixels))

    for name, pixels in images():
        for s in sizes:
            started = time.process_time()
            plane = segmenter_plane(shrunk(pixels, s), s)
            reasons[s].setdefault(name, []).append(orientation_reasons(plane, segmenter))
            seconds[s].append(1000 * (time.process_time() - started))
            if name == "upright":
                upright[s].append(describe_pair(segmenter.plane_probabilities(plane, folded=True), plane, segmenter.threshold))
    return _compared(sizes, reasons, upright, seconds)


def _compared(sizes: tuple[int, int], reasons: dict, upright: dict, seconds: dict) -> dict:
    """:func:`at_size`'s summary: per set the share flagged at each size and the share given the same reasons, the measures, the cost."""
    from cxrclf.guard.lungs import SURE_CONFIDENCE

    first, size = sizes
    found = {"sizes": list(sizes), "radiographs": len(upright[size]), "cpu_ms": {s: spread(seconds[s]) for s in sizes}, "sets": {}, "measures": {}}
    for name in reasons[size]:
        a, b = reasons[first][name], reasons[size][name]
        found["sets"][name] = {"images": len(a), "flagged": [float(np.mean([bool(r) for r in rs])) for rs in (a, b)],
                               "same reasons": float(np.mean([x == y for x, y in zip(a, b)]))}
    for field in ("confidence", "area", "balance", "side_by_side", "width", "aspect", "top", "contrast"):
        found["measures"][field] = {}
        for s in sizes:
            values = np.array([getattr(p, field) for p in upright[s] if p.fields == 2], float)
            found["measures"][field][s] = np.round(np.percentile(values[~np.isnan(values)], [1, 5, 50]), 3).tolist()
    found["sure upright (one pass)"] = {s: float(np.mean([p.is_pair and p.confidence >= SURE_CONFIDENCE for p in upright[s]])) for s in sizes}
    return found


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
    from cxrclf.segment.plane import segmenter_plane, shrunk

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
    lines += ["", f"cost, one thread, {c['input_size']} px plane, load average at the end {c['load_average']}:", "",
              "| images | count | CPU ms median | CPU ms p95 | wall ms median | wall ms p95 |", "|---|---|---|---|---|---|"]
    for name, cpu in c["cpu_ms"].items():
        wall = c["wall_ms"][name]
        lines.append(f"| {name} | {cpu['images']} | {cpu['median']} | {cpu['p95']} | {wall['median']} | {wall['p95']} |" if cpu else f"| {name} | 0 | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="only the first N frontal radiographs (a quick look)")
    parser.add_argument("--features", action="store_true", help="print what the thresholds were set on (the masks' measures) instead")
    parser.add_argument("--cost", action="store_true", help="only the time per image: 100 radiographs, 3 times each, and the steps apart")
    parser.add_argument("--size", type=int, default=None, help="compare the checks on a plane of this side with the segmenter's own input size")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not (args.data / "cohen" / "metadata.csv").is_file():
        raise SystemExit(f"benchmarks/lungs.py: {args.data}: the shared data folder not found (pass --data)")
    if args.features or args.cost or args.size:
        found = feature_quantiles(args.data, args.limit) if args.features else cost(args.data) if args.cost else at_size(args.data, args.size)
        print(json.dumps(found, indent=2))
        return
    result = measure(args.data, args.limit)
    print(json.dumps(result, indent=2, default=str) if args.json else markdown(result))


if __name__ == "__main__":
    main()
