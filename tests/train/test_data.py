"""The preprocessed folder's plane cache: built once, mapped read-only, rebuilt when stale, waited for while another process builds it."""

from __future__ import annotations

import shutil
import threading
import time

import cv2
import numpy as np
import pandas as pd
import pytest

from cxrclf import io
from cxrclf.labels import SCHEMES
from cxrclf.models.inputs import to_model_plane
from cxrclf.train import data
from cxrclf.train.data import CACHE_VARIABLE, load_images, plane_cache, read_preprocessed


@pytest.fixture
def prep(preprocessed_synthetic, tmp_path, monkeypatch):
    copy = tmp_path / "prep"
    shutil.copytree(preprocessed_synthetic, copy)
    monkeypatch.setenv(CACHE_VARIABLE, str(tmp_path / "cache"))
    return copy


def _expected(root, frame, size) -> dict:
    return {"format": 2, "folder": str(root.resolve()), "manifest_sha256": io.sha256_file(root / "manifest.csv"),
            "preprocess_sha256": io.sha256_file(root / "preprocess.json"), "size": size, "images": len(frame)}


def _decoded(root, frame, size):
    """The oracle: every row decoded as training decoded it before the cache existed."""
    return np.stack([to_model_plane(cv2.imread(str(root / p), cv2.IMREAD_GRAYSCALE), size) for p in frame["path"]])


def test_cache_holds_every_image_once_and_is_mapped_read_only(prep):
    frame, root = read_preprocessed(prep)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    planes, ids = plane_cache(root, 40)
    assert isinstance(planes, np.memmap) and not planes.flags.writeable and planes.shape == (len(frame), 40, 40)
    assert np.array_equal(planes, _decoded(root, frame, 40)) and list(ids) == list(frame["image_id"])
    cache = data.cache_folder()
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].startswith("40px-") and files[0].endswith(".json") and files[1] == files[0][:-5] + ".u8"
    assert io.read_json(cache / files[0]) == _expected(root, frame, 40)
    built = (cache / files[1]).stat().st_mtime_ns
    plane_cache(root, 40)  # mapped again, not rebuilt
    assert (cache / files[1]).stat().st_mtime_ns == built
    plane_cache(root, 32)  # another input size is another file
    assert len(list(cache.glob("*.u8"))) == 2
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # nothing written into the folder it reads


def test_a_subset_takes_its_own_rows(prep):
    frame, root = read_preprocessed(prep)
    rows = frame[frame["split"] == "val"].iloc[::-1]
    images = load_images(rows, root, SCHEMES[3], 40)
    assert len(images) == len(rows) and list(images.frame["image_id"]) == list(rows["image_id"])
    assert np.array_equal(images.take(np.arange(len(rows))), _decoded(root, rows, 40))
    assert np.array_equal(images.take([2, 0]), _decoded(root, rows.iloc[[2, 0]], 40))
    assert images.take([0]).flags.writeable  # a copy, safe to hand to torch.from_numpy
    expected = [SCHEMES[3].classes.index(SCHEMES[3].finding_to_class[f]) if f in SCHEMES[3].finding_to_class else -1 for f in rows["finding"]]
    assert images.labels.tolist() == expected


def test_a_changed_manifest_or_a_broken_cache_is_rebuilt(prep):
    frame, root = read_preprocessed(prep)
    plane_cache(root, 40)
    (old,) = data.cache_folder().glob("*.u8")
    kept = frame.iloc[:-5]
    kept.to_csv(root / "manifest.csv", index=False)  # preprocessed again, with fewer images
    planes, ids = plane_cache(root, 40)
    (new,) = data.cache_folder().glob("*.u8")
    assert new != old and not old.exists() and len(planes) == len(kept) and np.array_equal(planes, _decoded(root, kept, 40))
    with open(new, "r+b") as handle:  # truncated by a full disk, say
        handle.truncate(100)
    assert np.array_equal(plane_cache(root, 40)[0], _decoded(root, kept, 40))
    new.with_suffix(".json").write_text("{not json")
    assert np.array_equal(plane_cache(root, 40)[0], _decoded(root, kept, 40))


def test_a_row_from_another_folder_is_refused(prep):
    from cxrclf.errors import CxrclfError

    frame, root = read_preprocessed(prep)
    stranger = frame.head(2).copy()
    stranger.loc[stranger.index[1], "image_id"] = "elsewhere-1"
    with pytest.raises(CxrclfError, match="elsewhere-1 is not in this folder's manifest"):
        load_images(stranger, root, SCHEMES[3], 40)


def test_a_second_process_waits_for_the_build_and_reuses_it(prep):
    frame, root = read_preprocessed(prep)
    plane_cache(root, 40)
    (target,) = data.cache_folder().glob("40px-*.u8")  # where this folder's cache lives
    expected = io.read_json(target.with_suffix(".json"))
    target.unlink()
    target.with_suffix(".json").unlink()
    results = {}
    with io.folder_lock(target, wait=True):  # another rank is building
        waiter = threading.Thread(target=lambda: results.update(planes=plane_cache(root, 40)[0]))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not target.exists()
        data._build_cache(target, expected, frame, root)
        built = target.stat().st_mtime_ns
    waiter.join(30)
    assert np.array_equal(results["planes"], _decoded(root, frame, 40)) and target.stat().st_mtime_ns == built


def test_a_cache_folder_that_cannot_be_written_means_decoding_into_memory(prep, monkeypatch):
    monkeypatch.setattr(data, "_writable", lambda folder: False)
    frame, root = read_preprocessed(prep)
    planes, _ = plane_cache(root, 40)
    assert not isinstance(planes, np.memmap) and np.array_equal(planes, _decoded(root, frame, 40))
    assert not data.cache_folder().exists() or not any(data.cache_folder().iterdir())
