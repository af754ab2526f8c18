"""A lung segmentation run as a function from images to lung masks, and ``cxrclf segment IMAGE...``.

:class:`Segmenter` is the one path from an image to its mask: the preprocessing pipeline's
lung step, ``cxrclf segment``, explain's and evaluate's in-lung share all use it. It always
runs on one CPU thread, batch of one, so a mask (and hence a crop) is the same in the main
process and in worker processes, in ``preprocess`` and in ``predict``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from cxrclf import io
from cxrclf.data import imageio
from cxrclf.errors import CxrclfError
from cxrclf.preprocess.lung import lung_problem
from cxrclf.segment.masks import encode_mask, encode_overlay, mask_from_probabilities, overlay
from cxrclf.segment.model import inference_copy
from cxrclf.segment.plane import segmenter_plane
from cxrclf.segment.run import SegmentRun
from cxrclf.threads import torch_threads

__all__ = ["DEFAULT_OUT", "Segmenter", "builtin_segmenter", "segment_files"]

DEFAULT_OUT = Path("segmentations")
OVERLAY_MAX_SIDE = 1024


def _one_thread() -> contextlib.AbstractContextManager:
    """Torch on one thread for the duration (worker processes stay on one: no oversubscription, fork-safe)."""
    return torch_threads(1, restore=multiprocessing.parent_process() is None)


class Segmenter:
    """A finished segmentation run's network with its input size and normalisation.

    ``expected_sha256``: refuse the run unless its ``model.safetensors`` has this hash (the
    identity a preprocessing parameter set recorded).
    """

    def __init__(self, run: Path | SegmentRun, expected_sha256: str | None = None):
        self.folder = run if isinstance(run, SegmentRun) else SegmentRun(Path(run))
        if not self.folder.path.exists():
            raise CxrclfError("lung segmentation run not found (moved or deleted since these preprocessing parameters were recorded?)", self.folder.path)
        config = self.folder.read_config()
        self.folder.require_finished(config)
        self.sha256 = self.folder.weights_sha256()
        if expected_sha256 and self.sha256 != expected_sha256:
            remedy = ("this cxrclf ships another built-in segmenter than the one the data was preprocessed with: install that cxrclf version"
                      if self.folder.is_builtin else "restore that segmenter")
            raise CxrclfError(f"lung segmenter's weights changed since the preprocessing parameters were recorded (sha256 {self.sha256[:12]}..., "
                              f"recorded {expected_sha256[:12]}...); images would not be cropped as in training: {remedy} "
                              "or preprocess and train again", self.folder.file(SegmentRun.WEIGHTS))
        self.config = config
        self.input_size = config.model.input_size
        self.threshold = config.model.threshold
        with _one_thread():
            self.model = self.folder.build_model(config, "cpu")
        self._folded = None  # inference_copy(self.model), built on first use

    @property
    def path(self) -> Path:
        return self.folder.path

    def planes(self, images: list[np.ndarray]) -> np.ndarray:
        return np.stack([segmenter_plane(image, self.input_size) for image in images])

    @torch.inference_mode()
    def plane_probabilities(self, planes: np.ndarray, folded: bool = False) -> np.ndarray:
        """P(lung) per pixel of input planes, (S, S) or (N, S, S) float32 in [0, 1] as :func:`segmenter_plane` makes them.

        ``folded``: from :func:`~cxrclf.segment.model.inference_copy` of the network, about 30%
        cheaper, equal up to float rounding (under 4e-6 on real films). For the lung checks, which read
        the mask's shape and mean confidence; masks that crop or grey out images come from the
        network as trained, so that preprocessing stays byte-identical to what runs recorded.
        """
        planes = np.asarray(planes, np.float32)
        x = torch.from_numpy(np.ascontiguousarray(planes.reshape(-1, 1, *planes.shape[-2:])))
        with _one_thread():
            model = self.model
            if folded:
                self._folded = self._folded or inference_copy(self.model, self.input_size)
                model, x = self._folded, x.contiguous(memory_format=torch.channels_last)
            out = torch.sigmoid(model((x - self.config.model.mean) / self.config.model.std))[:, 0].numpy()
        return out.reshape(planes.shape)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """P(lung) per pixel at the network's input size, float32."""
        return self.plane_probabilities(segmenter_plane(image, self.input_size))

    def mask(self, image: np.ndarray) -> np.ndarray:
        """The lung mask of ``image`` (2-D, any size and dtype the pipeline accepts) at its own size, bool."""
        image = np.asarray(image)
        return mask_from_probabilities(self.probabilities(image), image.shape[:2], self.threshold)


_BUILTIN: list[Segmenter] = []


def builtin_segmenter() -> Segmenter:
    """The built-in segmenter (``cxrclf/builtin/lung/``), loaded on first use and kept for the process."""
    if not _BUILTIN:
        from cxrclf.segment.run import BUILTIN, resolve_segment_run

        _BUILTIN.append(Segmenter(resolve_segment_run(BUILTIN)))
    return _BUILTIN[0]


def _unique_stems(files: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for file in files:
        stem = file.stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def segment_files(segmenter: Segmenter, files: list[Path], out: Path = DEFAULT_OUT, overwrite: bool = False,
                  progress: Callable[[int, int], None] | None = None, reads: Sequence[Path] = ()) -> list[dict]:
    """For every file, ``OUT/<stem>.mask.png`` (0/255, the image's size) and ``OUT/<stem>.overlay.png``.

    One result per file: ``{"file", "mask", "overlay", "lung_area", "warning"}`` (``warning``:
    why the mask is no pair of lung fields, else None) or ``{"file", "error"}``; a file that
    cannot be read does not stop the others.
    """
    out = Path(out)
    # the folders named on the command line too: masks written among the X-rays would be segmented next time
    inputs = [*files, *reads, segmenter.path]
    io.refuse_overlap(out, inputs)
    targets = []
    for stem in _unique_stems(files):
        pair = (out / f"{stem}.mask.png", out / f"{stem}.overlay.png")
        for target in pair:
            io.check_output_file(target, inputs, suffix=".png", overwrite=overwrite)
        targets.append(pair)
    results = []
    for index, (file, (mask_file, overlay_file)) in enumerate(zip(files, targets)):
        try:
            pixels = imageio.read_image(file)
        except CxrclfError as exc:
            results.append({"file": str(file), "error": exc.reason})
        else:
            mask = segmenter.mask(pixels)
            picture = overlay(pixels, mask)
            scale = OVERLAY_MAX_SIDE / max(picture.shape[:2])
            if scale < 1:
                import cv2

                picture = cv2.resize(picture, (round(picture.shape[1] * scale), round(picture.shape[0] * scale)), interpolation=cv2.INTER_AREA)
            io.write_bytes(mask_file, encode_mask(mask))
            io.write_bytes(overlay_file, encode_overlay(picture))
            results.append({"file": str(file), "mask": str(mask_file), "overlay": str(overlay_file), "lung_area": float(mask.mean()),
                            "warning": lung_problem(mask)})
        if progress:
            progress(index + 1, len(files))
    return results
