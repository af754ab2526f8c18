"""Preprocessed images and labels for training, mapped read-only from an on-disk cache as uint8.

Preprocessed images are grey (3 identical channels or 1); they are stored here as one
``uint8`` plane per image at the model's input size (:func:`cxrclf.models.inputs.to_model_plane`,
the resize that evaluation, predict and explain use too), and expanded to the model's
channels and normalised per batch.

The planes of every image of a preprocessed folder are decoded once per input size into an
on-disk array in the user's cache folder (``$CXRCLF_CACHE``, else ``$XDG_CACHE_HOME/cxrclf``,
else ``~/.cache/cxrclf``; a header ``.json`` beside it says what it holds) and mapped read-only
(``np.memmap``) by every fold, resume and DDP rank: the operating system keeps one copy of its
pages for all of them, so four ranks do not hold four copies, and a dataset larger than memory
pages in and out instead of being refused. The cache is named by what it holds (the folder,
its manifest's and ``preprocess.json``'s sha256, the input size), so a folder preprocessed
again gets a new one and its stale one is removed. It lives outside the preprocessed folder
because no command writes into a folder it reads. Where the cache folder cannot be written,
the images are decoded into memory instead.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrclf import io
from cxrclf.data.manifest import manifest_path, read_manifest
from cxrclf.errors import CxrclfError
from cxrclf.labels import LabelScheme
from cxrclf.models.inputs import to_model_plane

__all__ = ["CACHE_VARIABLE", "ImageSet", "cache_folder", "load_images", "plane_cache", "read_preprocessed"]

CACHE_VARIABLE = "CXRCLF_CACHE"
CACHE_FORMAT = 2


@dataclass
class ImageSet:
    """A set of images: ``planes[positions[i]]`` is image ``i`` (``positions`` None: ``planes[i]``).

    ``planes`` may be a whole folder's read-only cache; :meth:`take` copies out only the
    planes asked for, so a batch is the only image data a process holds in its own memory.
    """

    planes: np.ndarray          # (M, S, S) uint8, M >= N: a read-only np.memmap, or an array
    labels: np.ndarray          # (N,) int64, -1 where the finding is outside the scheme
    frame: pd.DataFrame         # the manifest rows, in the same order
    positions: np.ndarray | None = None  # (N,) int64 rows of ``planes``

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """The planes of images ``indices`` as one writable in-memory ``(k, S, S)`` array."""
        indices = np.asarray(indices, dtype=np.int64)
        return np.asarray(self.planes[indices if self.positions is None else self.positions[indices]])


def read_preprocessed(folder: Path) -> tuple[pd.DataFrame, Path]:
    frame = read_manifest(folder)
    if "fused_path" not in frame.columns:
        raise CxrclfError("not a preprocessed folder (no fused_path column); run `cxrclf preprocess` first", manifest_path(folder))
    return frame, manifest_path(folder).parent


def plane_cache(root: Path, input_size: int) -> tuple[np.ndarray, pd.Series]:
    """Every image of the preprocessed folder ``root`` at ``input_size``, in manifest order, and their image ids.

    Mapped read-only from the folder's cache, which the first caller builds (under a lock
    that later callers, such as the other DDP ranks, wait on) and everyone else reuses.
    """
    root = Path(root)
    frame = read_manifest(root)
    settings = root / "preprocess.json"
    expected = {"format": CACHE_FORMAT, "folder": str(root.resolve()), "manifest_sha256": io.sha256_file(manifest_path(root)),
                "preprocess_sha256": io.sha256_file(settings) if settings.is_file() else "", "size": int(input_size), "images": int(len(frame))}
    key = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()
    data = cache_folder() / f"{input_size}px-{key[:24]}.u8"
    planes = _open_cache(data, expected)
    if planes is not None:
        return planes, frame["image_id"]
    if not _writable(data.parent):  # read-only media: decode into memory, as before there was a cache
        planes = np.empty((len(frame), input_size, input_size), dtype=np.uint8)
        _decode_into(planes, frame, root, input_size)
        return planes, frame["image_id"]
    with io.folder_lock(data, wait=True):
        planes = _open_cache(data, expected)  # built by the process we waited for
        if planes is None:
            _build_cache(data, expected, frame, root)
            planes = _open_cache(data, expected)
    return planes, frame["image_id"]


def cache_folder() -> Path:
    """Where plane caches live: ``$CXRCLF_CACHE``, else ``$XDG_CACHE_HOME/cxrclf``, else ``~/.cache/cxrclf``."""
    given = os.environ.get(CACHE_VARIABLE, "").strip()
    if given:
        return Path(given).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "cxrclf"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _header(data: Path) -> Path:
    return data.with_suffix(".json")


def _open_cache(data: Path, expected: dict) -> np.ndarray | None:
    """The cache mapped read-only if its header matches ``expected`` and its size is right, else None."""
    header = _header(data)
    try:
        if not header.is_file() or io.read_json(header, "cache header") != expected:
            return None
        size, count = expected["size"], expected["images"]
        if data.stat().st_size != count * size * size:
            return None
    except (OSError, CxrclfError):
        return None
    if count == 0:
        return np.empty((0, size, size), dtype=np.uint8)
    return np.memmap(data, dtype=np.uint8, mode="r", shape=(count, size, size))


def _build_cache(data: Path, expected: dict, frame: pd.DataFrame, root: Path) -> None:
    """Decode every image into a temporary file, rename it into place, then write the header (the caller holds the lock).

    The header comes last: a cache without one, however its build ended, is never read.
    """
    size, count = expected["size"], expected["images"]
    for header in data.parent.glob(f"{size}px-*.json"):  # this folder's earlier caches (preprocessed again since)
        try:
            stale = header != _header(data) and io.read_json(header, "cache header").get("folder") == expected["folder"]
        except CxrclfError:
            stale = False
        if stale:
            header.unlink(missing_ok=True)
            header.with_suffix(".u8").unlink(missing_ok=True)
    _header(data).unlink(missing_ok=True)
    with io.atomic_file(data) as tmp:
        try:  # the space reserved before it is written through a map: a full disk is an error here, not a SIGBUS later
            with open(tmp, "r+b") as handle:
                try:
                    os.posix_fallocate(handle.fileno(), 0, max(1, count * size * size))
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # a file system without it: written as before
                        raise
            os.truncate(tmp, count * size * size)
        except OSError as exc:
            raise CxrclfError(f"cannot make training's image cache of {count * size * size / 2**20:.0f} MiB here ({exc.strerror}); "
                              f"free space, or point {CACHE_VARIABLE} at another folder", data.parent) from exc
        if count:
            planes = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(count, size, size))
            _decode_into(planes, frame, root, size)
            planes.flush()
            del planes
    io.write_json(_header(data), expected)


def _decode_into(planes: np.ndarray, frame: pd.DataFrame, root: Path, input_size: int) -> None:
    import cv2

    for index, relative in enumerate(frame["path"]):
        image = cv2.imread(str(root / relative), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise CxrclfError("cannot read preprocessed image (re-run `cxrclf preprocess`)", root / relative)
        planes[index] = to_model_plane(image, input_size)


def load_images(frame: pd.DataFrame, root: Path, scheme: LabelScheme, input_size: int) -> ImageSet:
    """The rows of ``frame`` (rows of ``root``'s manifest) at the model's input size, from the folder's plane cache."""
    planes, image_ids = plane_cache(root, input_size)
    positions = pd.Index(image_ids).get_indexer(frame["image_id"])
    if (positions < 0).any():
        missing = frame["image_id"].iloc[int(np.flatnonzero(positions < 0)[0])]
        raise CxrclfError(f"image {missing} is not in this folder's manifest", manifest_path(root))
    labels = np.array([scheme.classes.index(scheme.finding_to_class[f]) if f in scheme.finding_to_class else -1 for f in frame["finding"]], dtype=np.int64)
    return ImageSet(planes, labels, frame.reset_index(drop=True), positions.astype(np.int64))
