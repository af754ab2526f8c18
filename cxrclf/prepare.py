"""``cxrclf preprocess``, the preprocessing stage: a fused folder -> a preprocessed folder, in parallel, resumable.

The stage around the pure transforms of :mod:`cxrclf.preprocess`: it reads and writes the
files, resumes, runs the workers, refuses images that are no chest radiograph before a lung
step (:mod:`cxrclf.guard.lungs`) and hands the transforms the segmenter the parameters name
(:func:`cxrclf.segment.run.segmenter_for`).

Output: ``images/<image_id>.png``, ``manifest.csv`` (the fused rows; ``path`` now points to
the processed image and ``fused_path`` to the input), ``skipped.csv`` (rows that could not
be processed, with the reason), ``preprocess.json`` (parameters, versions, counts) and,
with ``figures``, ``figures/<image_id>.png`` panels of every stage with its histogram.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import pandas as pd

from cxrclf import __version__, io
from cxrclf.data import imageio
from cxrclf.data.manifest import FUSED_COLUMNS, manifest_path, read_manifest, to_csv_bytes, write_manifest
from cxrclf.errors import CxrclfError
from cxrclf.parallel import map_images
from cxrclf.preprocess.params import PreprocessParams
from cxrclf.segment.run import segment_run_named, segmenter_for

__all__ = ["ImageOutcome", "ImageTask", "preprocess_folder", "preview", "write_figures"]

PARAMS_NAME = "preprocess.json"
SKIPPED_NAME = "skipped.csv"
IMAGES = "images"
FIGURES = "figures"


def _versions() -> dict[str, str]:
    import cv2
    import numpy

    return {"cxrclf": __version__, "numpy": numpy.__version__, "opencv": cv2.__version__, "python": platform.python_version()}


@dataclass(frozen=True)
class ImageTask:
    """One image for a worker: ``source`` preprocessed with ``params`` into ``target`` (PNG). An output already
    there is kept when it decodes to the expected shape and, where an earlier run recorded one, has ``recorded_sha256``."""
    source: Path
    target: Path
    params: PreprocessParams
    recorded_sha256: str | None = None


@dataclass(frozen=True)
class ImageOutcome:
    """What a worker did with one image: ``reused`` an intact output, ``made`` it or ``repaired`` a damaged one
    (``sha256``: the PNG's), or ``failed`` (``reason``: why, for skipped.csv)."""
    status: Literal["reused", "made", "repaired", "failed"]
    sha256: str = ""
    reason: str = ""


def _intact(target: Path, size: int, channels: int, recorded_sha256: str | None) -> str | None:
    """The sha256 of an earlier output that decodes to the expected shape (and hash, where one was recorded); None when damaged."""
    try:
        data = target.read_bytes()
    except OSError:
        return None
    digest = hashlib.sha256(data).hexdigest()
    if recorded_sha256 and digest != recorded_sha256:
        return None
    import cv2
    import numpy as np

    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    expected = (size, size) if channels == 1 else (size, size, 3)
    return digest if pixels is not None and pixels.shape == expected else None


def _refuse_unless_a_chest(image) -> None:
    """:class:`~cxrclf.preprocess.lung.NoLungsFound` with the lung checks' reasons (the built-in segmenter's) when they object."""
    from cxrclf.guard.lungs import lung_warnings
    from cxrclf.preprocess.lung import NoLungsFound

    reasons = lung_warnings(image)
    if reasons:
        raise NoLungsFound("; ".join(reasons))


def _process_one(task: ImageTask) -> ImageOutcome:
    """Worker: keep an intact earlier output, else read, preprocess and write atomically."""
    from cxrclf.preprocess.pipeline import preprocess_image

    params = task.params
    existed = task.target.exists()
    if existed:
        digest = _intact(task.target, params.size, params.channels, task.recorded_sha256)
        if digest is not None:
            return ImageOutcome("reused", digest)
    try:
        image = imageio.read_image(task.source)
        if params.uses_lungs:  # a lateral, a photograph or a turned film never reaches a lung-cropped training folder
            _refuse_unless_a_chest(image)
        result = preprocess_image(image, params, segmenter_for(params))
    except CxrclfError as exc:  # e.g. no lung fields found: the image is listed as skipped, with the reason
        task.target.unlink(missing_ok=True)
        return ImageOutcome("failed", reason=exc.reason)
    except Exception as exc:  # a pathological image must not stop the batch
        task.target.unlink(missing_ok=True)
        return ImageOutcome("failed", reason=f"preprocessing failed ({exc.__class__.__name__}: {exc})")
    data = imageio.encode_png(result[..., 0] if result.shape[2] == 1 else result)
    io.write_bytes(task.target, data)
    return ImageOutcome("repaired" if existed else "made", hashlib.sha256(data).hexdigest())


def _check_existing(out: Path, params: PreprocessParams, fused_sha: str, overwrite: bool, fused: Path) -> str:
    """``new``, ``resume`` (an unfinished or finished output with the same parameters) or ``replace``."""
    inputs = [fused, segment_run_named(params.lung_model).path] if params.lung_model else [fused]
    if io.check_output_path(out, overwrite, inputs, kinds=("preprocessed",), resumable=True):
        return "replace"
    if not out.is_dir() or not any(p.name != io.MARKER for p in out.iterdir()):
        return "new"
    existing = out / PARAMS_NAME
    if not existing.is_file():
        raise CxrclfError("output folder exists and is not a preprocessed folder; choose another output folder", out)
    document = io.read_json(existing, PARAMS_NAME)
    stored = document.get("params")
    try:  # as loaded, so that a folder written before a parameter existed compares by what it meant
        stored = PreprocessParams.from_dict(stored, existing).to_dict()
    except CxrclfError:
        pass
    wanted = params.to_dict()
    if stored != wanted:
        stored = stored if isinstance(stored, dict) else {}
        def value(values: dict, name: str):  # a missing key means its default: harmonisation's keys are written only when it is on
            return values.get(name, getattr(PreprocessParams, name, None))

        changed = sorted(name for name in set(wanted) | set(stored) if value(stored, name) != value(wanted, name))
        raise CxrclfError(f"was made with other parameters ({', '.join(changed)} differ); pass --overwrite to redo it or choose another output", out)
    if document.get("fused_manifest_sha256") != fused_sha:
        raise CxrclfError("was made from another fused manifest; pass --overwrite to redo it", out)
    return "resume"


def preprocess_folder(
    fused: Path,
    out: Path,
    params: PreprocessParams,
    workers: int = 1,
    figures: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Preprocess every image of a fused folder into ``out``; returns the summary written to preprocess.json.

    Resumable: images already written with the same parameters are kept. ``overwrite``
    replaces an earlier preprocessed folder only when the new one is complete.
    """
    params.validate()
    segmenter_for(params)  # a missing or changed segmenter is one error now, not one per image
    fused = Path(fused)
    out = Path(out)
    frame = read_manifest(fused)
    fused_file = manifest_path(fused)
    fused_sha = io.sha256_file(fused_file)
    _check_existing(out, params, fused_sha, overwrite, fused_file.parent)  # before the lock: a bad output folder is not created
    with io.folder_lock(out):
        io.remove_stale_partials(out)
        mode = _check_existing(out, params, fused_sha, overwrite, fused_file.parent)
        with io.writing_place(out, "preprocessed", replace=mode == "replace") as target_folder:
            (target_folder / IMAGES).mkdir(exist_ok=True)
            for stale in (target_folder / IMAGES).glob(".*.tmp"):  # half-written by a killed worker: the image is redone
                stale.unlink(missing_ok=True)
            return _process(frame, fused, fused_file.parent, fused_sha, target_folder, params, workers, figures, resuming=mode == "resume", progress=progress)


def _process(frame: pd.DataFrame, fused: Path, root: Path, fused_sha: str, out: Path, params: PreprocessParams, workers: int, figures: int,
             resuming: bool, progress) -> dict:
    summary = {"params": params.to_dict(), "fused": str(fused.resolve()), "fused_manifest_sha256": fused_sha, "versions": _versions(), "complete": False}
    recorded = _recorded_hashes(out) if resuming else {}
    if not resuming:
        io.write_json(out / PARAMS_NAME, summary)
    targets = [out / IMAGES / f"{image_id}.png" for image_id in frame["image_id"]]
    # every earlier output is verified (decoded, its shape and recorded hash checked), never trusted for existing
    tasks = [ImageTask(root / path, target, params, recorded.get(image_id)) for path, target, image_id in zip(frame["path"], targets, frame["image_id"])]
    outcomes = map_images(_process_one, tasks, workers, progress)
    failed = {i: outcome.reason for i, outcome in enumerate(outcomes) if outcome.status == "failed"}
    counts = {status: sum(outcome.status == status for outcome in outcomes) for status in ("made", "reused", "repaired")}

    skipped = [{"image_id": frame["image_id"].iloc[i], "fused_path": frame["path"].iloc[i], "reason": reason} for i, reason in sorted(failed.items())]
    done = frame.drop(index=list(failed)).copy()
    done["fused_path"] = done["path"]
    done["path"] = [f"{IMAGES}/{image_id}.png" for image_id in done["image_id"]]
    done = done[list(FUSED_COLUMNS) + ["fused_path"] + [c for c in frame.columns if c not in FUSED_COLUMNS]]
    write_manifest(done.reset_index(drop=True), out)
    io.write_bytes(out / SKIPPED_NAME, to_csv_bytes(pd.DataFrame(skipped, columns=["image_id", "fused_path", "reason"])))
    if figures:
        write_figures(root, frame.drop(index=list(failed)), params, out / FIGURES, figures)
    summary.update(
        complete=True,
        images=int(len(done)),
        processed_now=counts["made"] + counts["repaired"],
        reused=counts["reused"],
        repaired=counts["repaired"],
        skipped=len(skipped),
        skipped_rows=skipped,
        split_x_finding={s: {f: int(n) for f, n in sub["finding"].value_counts().sort_index().items()} for s, sub in done.groupby("split")},
    )
    summary["image_sha256"] = {image_id: outcome.sha256 for image_id, outcome in zip(frame["image_id"], outcomes) if outcome.status != "failed"}
    io.write_json(out / PARAMS_NAME, summary)
    return summary


def _recorded_hashes(out: Path) -> dict[str, str]:
    """The sha256 of each image as an earlier run of this folder recorded it (empty for folders made before hashes were kept)."""
    try:
        hashes = io.read_json(out / PARAMS_NAME, PARAMS_NAME).get("image_sha256")
    except CxrclfError:
        return {}
    return {str(k): v for k, v in hashes.items() if isinstance(v, str)} if isinstance(hashes, dict) else {}


def preview(image_path: Path, out_file: Path, params: PreprocessParams) -> tuple[int, int]:
    """Preprocess one image file into ``out_file`` (PNG); returns the output (height, width)."""
    from cxrclf.preprocess.pipeline import preprocess_image

    params.validate()
    io.check_output_file(out_file, [image_path], suffix=".png")
    result = preprocess_image(imageio.read_image(image_path), params, segmenter_for(params))
    io.write_bytes(out_file, imageio.encode_png(result[..., 0] if result.shape[2] == 1 else result))
    return result.shape[0], result.shape[1]


def write_figures(root: Path, frame: pd.DataFrame, params: PreprocessParams, folder: Path, count: int) -> list[Path]:
    """The paper's Fig. 3: per image, each stage and its pixel histogram. One per finding first."""
    import io as stdio

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from cxrclf.preprocess.pipeline import preprocess_stages

    order = list(frame.drop_duplicates("finding").index) + [i for i in frame.index if i not in set(frame.drop_duplicates("finding").index)]
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    for index in order[:count]:
        row = frame.loc[index]
        try:
            stages = preprocess_stages(imageio.read_image(root / row["path"]), params, segmenter_for(params))
        except CxrclfError:
            continue  # listed in skipped.csv
        names = ["input", "text removed"] + (["lungs"] if "lungs" in stages else []) + ["resized", "denoised"]
        fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 6.0))
        for column, name in enumerate(names):
            axes[0, column].imshow(stages[name], cmap="gray", vmin=0, vmax=1)
            if name == "text removed" and "lung mask" in stages:
                axes[0, column].contour(stages["lung mask"], levels=[0.5], colors="yellow", linewidths=0.8)
            axes[0, column].set_title(name)
            axes[0, column].axis("off")
            axes[1, column].hist(np.asarray(stages[name]).ravel(), bins=64, range=(0, 1), color="0.3")
            axes[1, column].set_yticks([])
        fig.suptitle(f"{row['image_id']} ({row['finding']}, {row['source']})")
        fig.tight_layout()
        target = folder / f"{row['image_id']}.png"
        buffer = stdio.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        io.write_bytes(target, buffer.getvalue())
        written.append(target)
    return written
