from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxrclf.data import imageio, synthetic
from cxrclf.data.split import hamming_pairs
from cxrclf.errors import CxrclfError


@pytest.fixture
def gradient() -> np.ndarray:
    return np.tile(np.arange(0, 256, 2, dtype=np.uint8), (64, 1))


def test_png_8_and_16_bit(tmp_path, gradient):
    Image.fromarray(gradient).save(tmp_path / "a.png")
    assert np.array_equal(imageio.read_image(tmp_path / "a.png"), gradient)
    deep = gradient.astype(np.uint16) * 257
    (tmp_path / "b.png").write_bytes(imageio.encode_png(deep))
    out = imageio.read_image(tmp_path / "b.png")
    assert out.dtype == np.uint16 and (out.min(), out.max()) == (0, 65535)
    assert np.array_equal(np.argsort(out.ravel(), kind="stable"), np.argsort(deep.ravel(), kind="stable"))
    twelve_bit = (gradient.astype(np.uint16) * 16)  # 12-bit data stored in a 16-bit PNG
    (tmp_path / "c.png").write_bytes(imageio.encode_png(twelve_bit))
    stretched = imageio.read_image(tmp_path / "c.png")
    assert stretched.max() == 65535 and len(np.unique(stretched)) == len(np.unique(twelve_bit))


def test_rgb_and_rgba_become_gray(tmp_path, gradient):
    rgb = np.stack([gradient] * 3, axis=-1)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=100)
    out = imageio.read_image(tmp_path / "rgb.jpg")
    assert out.shape == gradient.shape and np.abs(out.astype(int) - gradient).max() <= 3
    rgba = np.concatenate([rgb, np.full(gradient.shape + (1,), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(imageio.read_image(tmp_path / "rgba.png"), gradient)


def test_dicom_jpeg_baseline(tmp_path, gradient):
    synthetic.write_dicom(tmp_path / "a.dcm", gradient, patient_id="p", compression="jpeg")
    out = imageio.read_image(tmp_path / "a.dcm")
    assert out.dtype == np.uint8 and out.shape == gradient.shape
    assert np.abs(out.astype(int) - gradient).mean() < 2


def test_dicom_monochrome1_16_bit_j2k_is_inverted(tmp_path):
    image = np.zeros((64, 64), np.uint16)
    image[:, 32:] = 40000  # bright (dense) on the right
    synthetic.write_dicom(tmp_path / "m1.dcm", image, patient_id="p", compression="j2k", monochrome1=True)
    out = imageio.read_image(tmp_path / "m1.dcm")
    assert out.dtype == np.uint16
    assert out[:, 40:].mean() > out[:, :24].mean() + 30000  # dense stays bright after inversion


def test_dicom_uncompressed_keeps_header_fields(tmp_path, gradient):
    synthetic.write_dicom(tmp_path / "u.dcm", gradient, patient_id="p", view="AP", age="68", compression="none")
    assert np.array_equal(imageio.read_image(tmp_path / "u.dcm"), gradient)
    fields = imageio.read_dicom_fields(tmp_path / "u.dcm", ("ViewPosition", "PatientAge", "Missing"))
    assert fields == {"ViewPosition": "AP", "PatientAge": "68", "Missing": ""}


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.png", b"", "empty file"),
        ("notes.png", b"this is not an image at all", "not a PNG, JPEG or DICOM"),
        ("trunc.png", None, "corrupt or truncated"),
        ("bad.dcm", b"\0" * 128 + b"DICM" + b"\x02\x00garbage", "DICOM"),
    ],
)
def test_bad_files_raise_one_reason(tmp_path, gradient, name, content, reason):
    path = tmp_path / name
    if content is None:
        Image.fromarray(gradient).save(path)
        path.write_bytes(path.read_bytes()[:60])
    else:
        path.write_bytes(content)
    with pytest.raises(CxrclfError) as info:
        imageio.read_image(path)
    assert reason in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(CxrclfError, match="file not found"):
        imageio.read_image(tmp_path / "nope.png")


def test_pixel_hash_depends_on_pixels_and_dtype(gradient):
    assert imageio.pixel_sha256(gradient) == imageio.pixel_sha256(gradient.copy())
    assert imageio.pixel_sha256(gradient) != imageio.pixel_sha256(gradient.astype(np.uint16))
    changed = gradient.copy()
    changed[0, 0] += 1
    assert imageio.pixel_sha256(gradient) != imageio.pixel_sha256(changed)


def test_perceptual_hash_separates_distinct_phantoms_and_joins_copies():
    import cv2

    rng = np.random.default_rng(1)
    images = [synthetic.to_uint8(synthetic.phantom(f, rng, 256).image) for f in synthetic.FINDINGS for _ in range(3)]
    copies = []
    for image in images:
        small = cv2.resize(image, (180, 180), interpolation=cv2.INTER_AREA)
        ok, buffer = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 60])
        copies.append(np.clip(cv2.imdecode(buffer, 0).astype(int) + 8, 0, 255).astype(np.uint8))
    hashes = [imageio.perceptual_hash(i) for i in images + copies]
    assert all(len(h) == 64 for h in hashes)
    pairs = set(hamming_pairs(hashes, 24))
    n = len(images)
    assert {(i, i + n) for i in range(n)} <= pairs  # every re-encoded copy found
    assert not [p for p in pairs if p[1] - p[0] != n]  # and nothing else linked
