"""Synthetic chest X-ray phantoms, written in the real sources' layouts.

The phantoms are deliberately simple (body, lungs, ribs, spine, heart, diaphragm) with a
class-dependent finding, Poisson noise and burned-in text and arrow markers, so that every
stage can be tested on known truth: the text-free image, the text mask, the noiseless image
and the finding's region are all available.

Findings: ``normal`` (clear lungs), ``covid19`` (bilateral peripheral lower-zone ground
glass), ``other_pneumonia`` (dense one-sided lobar consolidation), ``tuberculosis`` (upper
zone nodules and a cavity).
"""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrclf.labels import COVID19, FINDINGS, NORMAL, OTHER_PNEUMONIA, TUBERCULOSIS


@dataclass
class Phantom:
    noiseless: np.ndarray   # float32 in [0, 1], no noise, no text
    clean: np.ndarray       # float32, noisy, no text
    image: np.ndarray       # float32, noisy, with burned-in text and markers
    text_mask: np.ndarray   # bool, where text or markers were burned in
    lung_mask: np.ndarray   # bool, both lung fields
    finding_mask: np.ndarray  # bool, where the finding was drawn (empty for normal)


def _ellipse(shape, center, axes, angle=0.0) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = center
    ay, ax = axes
    t = np.deg2rad(angle)
    x, y = xx - cx, yy - cy
    xr, yr = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
    return (xr / ax) ** 2 + (yr / ay) ** 2 <= 1.0


def _smooth(mask: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    k = int(2 * round(3 * sigma) + 1)
    return cv2.GaussianBlur(mask.astype(np.float32), (k, k), sigma)


def anatomy(finding: str, rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noiseless phantom in [0, 1], its lung mask and the finding's mask."""
    if finding not in FINDINGS:
        raise ValueError(f"unknown finding {finding!r}")
    image, lungs = _chest(rng, size)
    draw = {COVID19: _covid19, OTHER_PNEUMONIA: _lobar_consolidation, TUBERCULOSIS: _tuberculosis}.get(finding)
    finding_mask = draw(image, lungs, rng) if draw else np.zeros((size, size), bool)
    return np.clip(image, 0.0, 1.0), lungs, finding_mask


def _chest(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A normal chest (body, lungs, ribs, spine, heart, diaphragm), not clipped, and its lung mask."""
    h = w = size
    s = size / 256.0
    jitter = lambda a: a * (1 + rng.uniform(-0.06, 0.06))  # noqa: E731
    image = np.full((h, w), 0.06, np.float32)
    body = _ellipse((h, w), (h * 0.58, w * 0.5), (jitter(h * 0.52), jitter(w * 0.44)))
    image += 0.42 * _smooth(body, 4 * s)
    left = _ellipse((h, w), (h * 0.47, w * 0.32), (jitter(h * 0.27), jitter(w * 0.13)), rng.uniform(-6, 6))
    right = _ellipse((h, w), (h * 0.47, w * 0.68), (jitter(h * 0.27), jitter(w * 0.13)), rng.uniform(-6, 6))
    lungs = left | right
    image -= 0.26 * _smooth(lungs, 3 * s)
    image += 0.12 * _smooth(_ribs(size) > 0, 1.0 * s) * body
    spine = np.zeros((h, w), bool)
    spine[int(h * 0.1):, int(w * 0.47):int(w * 0.53)] = True
    image += 0.22 * _smooth(spine, 2 * s)
    heart = _ellipse((h, w), (h * 0.62, w * 0.55), (jitter(h * 0.14), jitter(w * 0.15)))
    image += 0.2 * _smooth(heart, 3 * s)
    diaphragm = np.zeros((h, w), bool)
    diaphragm[int(h * 0.76):, int(w * 0.12):int(w * 0.88)] = True
    image += 0.15 * _smooth(diaphragm & body, 5 * s)
    return image, lungs


def _ribs(size: int) -> np.ndarray:
    """Seven pairs of rib arcs (uint8, 1 on a rib)."""
    import cv2

    h = w = size
    s = size / 256.0
    ribs = np.zeros((h, w), np.uint8)
    for k in range(7):
        y = int(h * (0.25 + 0.075 * k))
        for side in (-1, 1):
            cx = int(w * (0.5 + side * 0.16))
            cv2.ellipse(ribs, (cx, y), (int(w * 0.2), int(h * 0.06)), 0, 180 if side < 0 else 270, 270 if side < 0 else 360, 1, max(1, int(3 * s)))
    return ribs


def _covid19(image: np.ndarray, lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bilateral peripheral lower-zone ground glass, added to ``image`` in place; returns its mask."""
    h, w = image.shape
    s = h / 256.0
    finding_mask = np.zeros((h, w), bool)
    for cx in (0.22, 0.78):
        blob = _ellipse((h, w), (h * rng.uniform(0.55, 0.62), w * cx), (h * 0.12, w * 0.07)) & lungs
        finding_mask |= blob
    texture = _smooth(rng.random((h, w)) > 0.5, 2 * s)
    image += (0.16 + 0.10 * texture) * _smooth(finding_mask, 4 * s)
    return finding_mask


def _lobar_consolidation(image: np.ndarray, lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dense one-sided consolidation (other pneumonia), added to ``image`` in place; returns its mask."""
    h, w = image.shape
    s = h / 256.0
    cx = 0.32 if rng.random() < 0.5 else 0.68
    finding_mask = _ellipse((h, w), (h * rng.uniform(0.5, 0.6), w * cx), (h * 0.12, w * 0.09)) & lungs
    image += 0.26 * _smooth(finding_mask, 2 * s)
    return finding_mask


def _tuberculosis(image: np.ndarray, lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upper-zone nodules and a cavity, added to ``image`` in place; returns their mask."""
    h, w = image.shape
    s = h / 256.0
    finding_mask = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(4, 8))):
        cx = rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05)
        cy = rng.uniform(0.27, 0.38)
        nodule = _ellipse((h, w), (h * cy, w * cx), (h * 0.018 * rng.uniform(1, 2), w * 0.018 * rng.uniform(1, 2)))
        finding_mask |= nodule & lungs
    cavity_x = rng.choice([0.3, 0.7])
    ring = _ellipse((h, w), (h * 0.3, w * cavity_x), (h * 0.05, w * 0.05)) & ~_ellipse((h, w), (h * 0.3, w * cavity_x), (h * 0.03, w * 0.03))
    finding_mask |= ring & lungs
    image += 0.25 * _smooth(finding_mask, 1.0 * s)
    return finding_mask


def add_poisson_noise(image: np.ndarray, peak: float, rng: np.random.Generator) -> np.ndarray:
    """Photon-counting noise: ``peak`` photons at intensity 1."""
    return (rng.poisson(np.clip(image, 0, 1) * peak) / peak).astype(np.float32).clip(0, 1)


def burn_text(image: np.ndarray, rng: np.random.Generator, value: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Burn bright letters, a date and an arrow into ``image``; returns (image, mask)."""
    import cv2

    h, w = image.shape
    canvas = np.zeros((h, w), np.uint8)
    scale = h / 256.0
    thickness = max(1, int(round(1.5 * scale)))
    side = "L" if rng.random() < 0.5 else "R"
    cv2.putText(canvas, side, (int(w * 0.05), int(h * 0.1)), cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, 255, thickness, cv2.LINE_AA)
    stamp = f"{int(rng.integers(1, 28)):02d}/0{int(rng.integers(1, 9))}/2020"
    cv2.putText(canvas, stamp, (int(w * 0.55), int(h * 0.95)), cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale, 255, thickness, cv2.LINE_AA)
    tip = (int(w * rng.uniform(0.25, 0.75)), int(h * rng.uniform(0.35, 0.6)))
    tail = (tip[0] + int(w * 0.12), tip[1] - int(h * 0.1))
    cv2.arrowedLine(canvas, tail, tip, 255, thickness, cv2.LINE_AA, tipLength=0.3)
    alpha = canvas.astype(np.float32) / 255.0
    return image * (1 - alpha) + value * alpha, alpha > 0.25


def phantom(finding: str, rng: np.random.Generator, size: int = 256, peak: float = 400.0, text: bool = True) -> Phantom:
    noiseless, lungs, finding_mask = anatomy(finding, rng, size)
    clean = add_poisson_noise(noiseless, peak, rng)
    image, text_mask = burn_text(clean, rng) if text else (clean.copy(), np.zeros_like(lungs))
    return Phantom(noiseless, clean, image.astype(np.float32), text_mask, lungs, finding_mask)


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- layouts


# Grey levels by which one phantom's exposure may vary across the film (the standard deviation of a smooth field).
# Phantoms are alike: 1,500 of them put 1,265 pairs within fuse's near-duplicate distance of 24 bits, so that the
# near-duplicate search's output grows with the square of their number; with this exposure, 2 pairs (real radiographs
# lie at least 50 bits apart, docs/validity.md). Measured on 2026-12-07 (no script kept).
EXPOSURE_SPREAD = 30.0

# How far a patient stands from the phantoms' one pose: up to 6% of the side off centre, 8% larger or smaller, 5 degrees
# turned. Under their own exposure alone, 1,500 phantoms' perceptual hashes carry 147 bits of entropy of 256 and lie a
# median 68 bits apart; positioned too, 234 bits and 118 apart, as the shared set's 262 real radiographs (240 bits, 118
# apart; docs/performance.md, "Scale").
POSE_SHIFT, POSE_SCALE, POSE_DEGREES = 0.06, 0.08, 5.0


def exposed(image: np.ndarray, rng: np.random.Generator, spread: float = EXPOSURE_SPREAD) -> np.ndarray:
    """A uint8 grey ``image`` under its own exposure: a smooth random field (6 x 6 normal values, bicubic) of ``spread`` grey levels added."""
    import cv2

    field = cv2.resize(rng.normal(0.0, 1.0, (6, 6)).astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip(image.astype(np.float32) + np.float32(spread) * field, 0, 255).astype(np.uint8)


def positioned(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uint8 grey ``image`` with the patient posed anew: shifted, scaled and turned within :data:`POSE_SHIFT`,
    :data:`POSE_SCALE` and :data:`POSE_DEGREES`; the uncovered border takes the corner's grey."""
    import cv2

    h, w = image.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-POSE_DEGREES, POSE_DEGREES), 1 + rng.uniform(-POSE_SCALE, POSE_SCALE))
    matrix[:, 2] += rng.uniform(-POSE_SHIFT, POSE_SHIFT, 2) * (w, h)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=int(image[0, 0]))


def _distinct(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` as one of thousands of films: posed anew and under its own exposure."""
    return exposed(positioned(image, rng), rng)


def _png(path: Path, image: np.ndarray) -> None:
    from cxrclf.data.imageio import encode_png

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image))


def _jpeg(path: Path, image: np.ndarray, rgb: bool = False) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image)
    if rgb:
        picture = picture.convert("RGB")
    picture.save(path, format="JPEG", quality=92)


def write_dicom(path: Path, image: np.ndarray, *, patient_id: str, view: str = "PA", sex: str = "M", age: str = "58",
                compression: str = "jpeg", monochrome1: bool = False, modality: str = "CR") -> None:
    """A DICOM file as RSNA ships them: 8-bit JPEG-baseline pixel data (or raw / JPEG 2000 16-bit)."""
    import pydicom

    dataset = _dicom_header(path, patient_id=patient_id, view=view, sex=sex, age=age, modality=modality)
    dataset.Rows, dataset.Columns = image.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    dataset.PixelRepresentation = 0
    pixels = image
    if monochrome1:
        pixels = (np.iinfo(image.dtype).max - image).astype(image.dtype)
    _store_pixels(dataset, pixels, compression)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True) if "enforce_file_format" in pydicom.dcmwrite.__code__.co_varnames else dataset.save_as(path, write_like_original=False)


def _dicom_header(path: Path, *, patient_id: str, view: str, sex: str, age: str, modality: str):
    """A secondary-capture dataset with the patient and acquisition fields the readers look at, no pixels yet."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientID = patient_id
    dataset.PatientSex = sex
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset.PatientAge = age  # RSNA stores a bare number, which pydicom warns about
    dataset.Modality = modality
    dataset.ViewPosition = view
    dataset.BodyPartExamined = "CHEST"
    return dataset


def _store_pixels(dataset, pixels: np.ndarray, compression: str) -> None:
    """Pixel data and its transfer syntax: ``jpeg`` (8-bit baseline, as RSNA), ``j2k`` (lossless) or raw."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit
    from PIL import Image

    bits = 16 if pixels.dtype == np.uint16 else 8
    dataset.BitsAllocated = bits
    dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    if compression == "jpeg":
        if bits != 8:
            raise ValueError("JPEG baseline needs 8-bit pixels")
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        dataset.PixelData = encapsulate([buffer.getvalue()])
        dataset["PixelData"].is_undefined_length = True
        dataset["PixelData"].VR = "OB"
        dataset.LossyImageCompression = "01"
    elif compression == "j2k":
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.PixelData = pixels.tobytes()
        dataset.compress(JPEG2000Lossless, pixels)
    else:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.PixelData = pixels.tobytes()


COHEN_SCHEMAS = ("early", "mid2020", "current")
_COHEN_FINDINGS = {
    "mid2020": {COVID19: ["COVID-19", "COVID-19, ARDS"], OTHER_PNEUMONIA: ["SARS", "Klebsiella", "Streptococcus", "Pneumocystis"], NORMAL: ["No Finding"], TUBERCULOSIS: ["Tuberculosis"]},
    "current": {COVID19: ["Pneumonia/Viral/COVID-19"], OTHER_PNEUMONIA: ["Pneumonia/Viral/SARS", "Pneumonia/Bacterial/Streptococcus", "Pneumonia/Fungal/Pneumocystis", "Pneumonia/Lipoid"], NORMAL: ["No Finding"], TUBERCULOSIS: ["Pneumonia/Bacterial/Mycobacterium/Tuberculosis"]},
}
_COHEN_FINDINGS["early"] = _COHEN_FINDINGS["mid2020"]


def write_cohen(folder: Path, counts: dict[str, int], rng: np.random.Generator, schema: str = "mid2020", size: int = 256,
                images_per_patient: int = 2, extras: bool = True, distinct: bool = False) -> list[dict]:
    """Cohen layout: ``metadata.csv`` + ``images/``. ``counts`` are PA X-rays per finding.

    With ``extras``, also writes what the real file has: lateral and AP views, a CT row, a
    ``todo`` row, an RGB JPEG. ``distinct``: every X-ray gets its own pose and exposure
    (:func:`positioned`, :func:`exposed`), so that thousands of phantoms are as far apart as real
    films. Returns the metadata rows written.
    """
    folder = Path(folder)
    rows: list[dict] = []
    patient = 100
    for finding in FINDINGS:
        left = counts.get(finding, 0)
        while left > 0:
            patient += 1
            for shot in range(min(images_per_patient, left)):
                name = f"{patient}-{shot}.{'jpg' if shot % 2 else 'png'}"
                sample = phantom(finding, rng, size)
                pixels = _distinct(to_uint8(sample.image), rng) if distinct else to_uint8(sample.image)
                if name.endswith("jpg"):
                    _jpeg(folder / "images" / name, pixels, rgb=shot == 1)
                else:
                    _png(folder / "images" / name, pixels)
                text = rng.choice(_COHEN_FINDINGS[schema][finding])
                rows.append({"patientid": str(patient), "finding": text, "view": "PA", "modality": "X-ray", "filename": name, "sex": rng.choice(["M", "F"]), "age": str(int(rng.integers(20, 90)))})
                left -= 1
    if extras:
        for view, modality, finding_text in (("L", "X-ray", "COVID-19"), ("AP Supine", "X-ray", "COVID-19"), ("Axial", "CT", "COVID-19"), ("PA", "X-ray", "todo")):
            patient += 1
            name = f"{patient}-extra.png"
            _png(folder / "images" / name, to_uint8(phantom(NORMAL, rng, size).image))
            rows.append({"patientid": str(patient), "finding": finding_text if schema != "current" or finding_text == "todo" else "Pneumonia/Viral/COVID-19", "view": view, "modality": modality, "filename": name, "sex": "F", "age": "50"})
    _write_cohen_csv(folder / "metadata.csv", rows, schema)
    return rows


def _write_cohen_csv(path: Path, rows: list[dict], schema: str) -> None:
    if schema == "early":
        header = ["Patientid", "offset", "sex", "age", "finding", "survival", "view", "date", "location", "filename", "doi", "url", "license", "clinical notes", "other notes"]
        keyed = [{"Patientid": r["patientid"], **{k: v for k, v in r.items() if k != "patientid" and k != "modality"}} for r in rows if r["modality"] == "X-ray"]
    elif schema == "mid2020":
        header = ["patientid", "offset", "sex", "age", "finding", "survival", "intubated", "view", "modality", "date", "location", "folder", "filename", "doi", "url", "license", "clinical_notes", "other_notes"]
        keyed = [{**r, "folder": "images"} for r in rows]
    elif schema == "current":
        header = ["patientid", "offset", "sex", "age", "finding", "RT_PCR_positive", "survival", "intubated", "view", "modality", "date", "location", "folder", "filename", "doi", "url", "license", "clinical_notes", "other_notes"]
        keyed = [{**r, "folder": "images", "RT_PCR_positive": "Y" if "COVID" in r["finding"] else ""} for r in rows]
    else:
        raise ValueError(f"unknown Cohen schema {schema!r}; expected one of {COHEN_SCHEMAS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(keyed)


def write_rsna(folder: Path, counts: dict[str, int], rng: np.random.Generator, size: int = 256, ap: int = 2, not_normal: int = 2) -> list[str]:
    """RSNA layout. ``counts``: PA images for ``normal`` and ``other_pneumonia`` (Lung Opacity).

    Opacity images get two or three box rows each, as upstream; ``ap`` AP images and
    ``not_normal`` "No Lung Opacity / Not Normal" images are added. Returns the image ids.
    """
    folder = Path(folder)
    labels, classes, ids = [], [], []
    plan = [(NORMAL, "PA")] * counts.get(NORMAL, 0) + [(OTHER_PNEUMONIA, "PA")] * counts.get(OTHER_PNEUMONIA, 0)
    plan += [(OTHER_PNEUMONIA, "AP")] * ap + [("not_normal", "PA")] * not_normal
    for index, (finding, view) in enumerate(plan):
        image_id = f"{int(rng.integers(0, 16**8)):08x}-{index:04d}-4e2a-9c3b-{int(rng.integers(0, 16**12)):012x}"
        sample = phantom(finding if finding in FINDINGS else NORMAL, rng, size)
        write_dicom(folder / "stage_2_train_images" / f"{image_id}.dcm", to_uint8(sample.image), patient_id=image_id, view=view, sex=str(rng.choice(["M", "F"])), age=str(int(rng.integers(20, 90))))
        ids.append(image_id)
        if finding == OTHER_PNEUMONIA:
            for _ in range(int(rng.integers(2, 4))):
                labels.append([image_id, "264.0", "152.0", "213.0", "379.0", "1"])
                classes.append([image_id, "Lung Opacity"])
        else:
            labels.append([image_id, "", "", "", "", "0"])
            classes.append([image_id, "Normal" if finding == NORMAL else "No Lung Opacity / Not Normal"])
    for name, header, table in (("stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], labels),
                                ("stage_2_detailed_class_info.csv", ["patientId", "class"], classes)):
        with open(folder / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(table)
    return ids


def write_nlm(folder: Path, counts: dict[str, int], rng: np.random.Generator, size: int = 128, set_name: str = "montgomery",
              masks: bool = True) -> list[Path]:
    """NLM layout: Montgomery ``MontgomerySet/CXR_png/MCUCXR_dddd_L.png`` (+ ClinicalReadings)
    or Shenzhen ``ChinaSet_AllFiles/CXR_png/CHNCXR_dddd_L.png`` (+ shenzhen_metadata.csv).

    With ``masks``, also the lung masks of the official downloads (0/255 PNGs, same size):
    Montgomery ``ManualMask/leftMask/`` and ``rightMask/`` under the X-ray's name (named from
    the patient's side: the patient's left lung is on the image's right), Shenzhen
    ``mask/CHNCXR_dddd_L_mask.png`` with both lungs."""
    folder = Path(folder)
    prefix, top = ("MCUCXR", "MontgomerySet") if set_name == "montgomery" else ("CHNCXR", "ChinaSet_AllFiles")
    written, table = [], []
    number = 0
    for finding, digit in ((NORMAL, 0), (TUBERCULOSIS, 1)):
        for _ in range(counts.get(finding, 0)):
            number += 1
            name = f"{prefix}_{number:04d}_{digit}.png"
            path = folder / top / "CXR_png" / name
            sample = phantom(finding, rng, size)
            _png(path, to_uint8(sample.image))
            written.append(path)
            if masks:
                _write_lung_masks(folder / top, name, sample.lung_mask, set_name)
            sex, age = str(rng.choice(["Male", "Female"])), int(rng.integers(18, 80))
            if set_name == "montgomery":
                reading = folder / top / "ClinicalReadings" / f"{Path(name).stem}.txt"
                reading.parent.mkdir(parents=True, exist_ok=True)
                reading.write_text(f"Patient's Sex: {sex[0]}\nPatient's Age: {age:03d}Y\n{'normal' if digit == 0 else 'TB'}\n")
            else:
                table.append([name, sex, str(age), "normal" if digit == 0 else "STB"])
    if set_name != "montgomery":
        with open(folder / "shenzhen_metadata.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["study_id", "sex", "age", "findings"])
            writer.writerows(table)
    return written


NIH_HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender", "View Position",
              "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]  # NIH's own header, split at its commas
_NIH_OTHER = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Nodule", "Pleural_Thickening")


def write_nih(folder: Path, counts: dict[str, int], rng: np.random.Generator, size: int = 256, other: int = 0, ap: int = 0,
              images_per_patient: int = 3, archives: int = 0, distinct: bool = False) -> list[dict[str, str]]:
    """NIH ChestX-ray14 layout: ``Data_Entry_2017.csv`` + ``images/*.png`` (with ``archives``,
    ``images_001/images/`` ... as the official archives unpack). Returns the CSV rows.

    ``counts`` are PA images for ``normal`` ("No Finding") and ``other_pneumonia``
    ("Pneumonia", alone or joined with other findings as NIH does); ``other`` images list
    findings without pneumonia and ``ap`` images are AP. Patients have one to
    ``images_per_patient`` follow-ups, numbered as NIH numbers them. ``distinct``: as
    :func:`write_cohen`'s.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan = [(NORMAL, "PA")] * counts.get(NORMAL, 0) + [(OTHER_PNEUMONIA, "PA")] * counts.get(OTHER_PNEUMONIA, 0)
    plan += [("other", "PA")] * other + [(NORMAL, "AP")] * ap
    rows: list[dict[str, str]] = []
    patient, follow_up, remaining = 0, 0, 0
    for index, (finding, view) in enumerate(plan):
        if remaining == 0:
            patient, follow_up, remaining = patient + 1, 0, int(rng.integers(1, images_per_patient + 1))
        extra = list(rng.choice(_NIH_OTHER, size=int(rng.integers(0, 3)), replace=False))
        labels = {NORMAL: ["No Finding"], OTHER_PNEUMONIA: sorted(extra + ["Pneumonia"]), "other": sorted(extra or ["Effusion"])}[finding]
        name = f"{patient:08d}_{follow_up:03d}.png"
        archive = f"images_{index * archives // len(plan) + 1:03d}/images" if archives else "images"
        pixels = to_uint8(phantom(OTHER_PNEUMONIA if finding == "other" else finding, rng, size).image)
        _png(folder / archive / name, _distinct(pixels, rng) if distinct else pixels)
        rows.append(dict(zip(NIH_HEADER, [name, "|".join(labels), str(follow_up), str(patient), str(int(rng.integers(20, 90))),
                                          str(rng.choice(["M", "F"])), view, "2500", "2048", "0.168", "0.168"])))
        follow_up, remaining = follow_up + 1, remaining - 1
    with open(folder / "Data_Entry_2017.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(NIH_HEADER)
        writer.writerows([row[key] for key in NIH_HEADER] for row in rows)
    return rows


def _write_lung_masks(set_folder: Path, name: str, lungs: np.ndarray, set_name: str) -> None:
    if set_name == "montgomery":
        image_right = np.zeros_like(lungs)
        image_right[:, lungs.shape[1] // 2:] = True
        for side, keep in (("leftMask", image_right), ("rightMask", ~image_right)):
            _png(set_folder / "ManualMask" / side / name, (lungs & keep).astype(np.uint8) * 255)
    else:
        _png(set_folder / "mask" / f"{Path(name).stem}_mask.png", lungs.astype(np.uint8) * 255)


def write_sources(root: Path, seed: int = 0, per_class: int = 30, size: int = 256, cohen_schema: str = "mid2020") -> dict[str, Path]:
    """All three sources under ``root`` (cohen/, rsna/, nlm/), like a user's downloads.

    Class sources mirror the real fusion: COVID-19 only from Cohen, pneumonia from Cohen and
    RSNA, tuberculosis from NLM, normal from all three.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    third = max(1, per_class // 3)
    write_cohen(root / "cohen", {COVID19: per_class, OTHER_PNEUMONIA: third, NORMAL: third}, rng, schema=cohen_schema, size=size)
    write_rsna(root / "rsna", {NORMAL: third, OTHER_PNEUMONIA: per_class - third}, rng, size=size)
    write_nlm(root / "nlm", {NORMAL: per_class - 2 * third, TUBERCULOSIS: per_class}, rng, size=size, set_name="montgomery")
    return {"cohen": root / "cohen", "rsna": root / "rsna", "nlm": root / "nlm"}
