from __future__ import annotations

import pathlib
import resource
import struct
import time
import warnings
import zlib

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


# --- pixel limit (decompression bombs) -------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory) -> pathlib.Path:
    """A valid 30000 x 30000 8-bit grey PNG of zeros: 900 Mpx in under 1 MB, built row by row."""
    side = 30_000
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then a row of black pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey, deflate, no interlace
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


@pytest.fixture
def pillow_limit_restored(monkeypatch):
    """decode() may raise Pillow's global limit up to ours; put it back after the test."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def test_max_pixels_default_environment_and_invalid_values(monkeypatch, tmp_path, gradient):
    monkeypatch.delenv("CXRCLF_MAX_PIXELS", raising=False)
    assert imageio.MAX_PIXELS == 80_000_000 and imageio.max_pixels() == 80_000_000
    monkeypatch.setenv("CXRCLF_MAX_PIXELS", "1234")
    assert imageio.max_pixels() == 1234
    monkeypatch.setenv("CXRCLF_MAX_PIXELS", "200_000_000")
    assert imageio.max_pixels() == 200_000_000
    Image.fromarray(gradient).save(tmp_path / "a.png")
    for bad in ("lots", "0", "-5", "1e9"):
        monkeypatch.setenv("CXRCLF_MAX_PIXELS", bad)
        with pytest.raises(CxrclfError, match="CXRCLF_MAX_PIXELS") as info:
            imageio.max_pixels()
        assert repr(bad) in str(info.value)
        with pytest.raises(CxrclfError, match="CXRCLF_MAX_PIXELS"):
            imageio.read_image(tmp_path / "a.png")  # read at call time, so workers see it too


@pytest.mark.slow  # building the 900-megapixel bomb compresses 900 MB
def test_png_bomb_is_refused_from_its_header(monkeypatch, bomb_png, pillow_limit_restored):
    monkeypatch.delenv("CXRCLF_MAX_PIXELS", raising=False)
    assert bomb_png.stat().st_size < 1_000_000
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    with pytest.raises(CxrclfError) as info:
        imageio.read_image(bomb_png)
    assert time.perf_counter() - start < 1.0
    assert _peak_rss_mb() - rss_before < 100  # the 900 MB image was never allocated
    message = str(info.value)
    assert message == (
        f"{bomb_png}: image has 900,000,000 pixels, more than the limit of 80,000,000 "
        "(a decompression bomb?); raise the limit with CXRCLF_MAX_PIXELS if the image is real"
    )


@pytest.mark.slow  # the bomb above
def test_png_bomb_under_a_raised_limit_names_that_limit_and_no_pillow_warning_escapes(
    monkeypatch, bomb_png, pillow_limit_restored
):
    # 500 M lies between Pillow's own limits: Pillow would warn, decode() must refuse with its own message
    monkeypatch.setenv("CXRCLF_MAX_PIXELS", "500000000")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would surface as an exception
        with pytest.raises(CxrclfError, match=r"900,000,000 pixels, more than the limit of 500,000,000"):
            imageio.read_image(bomb_png)
    assert time.perf_counter() - start < 1.0


def test_small_png_against_tiny_limits(monkeypatch, tmp_path, pillow_limit_restored):
    image = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "small.png")
    monkeypatch.setenv("CXRCLF_MAX_PIXELS", "100")
    with pytest.raises(CxrclfError, match=r"image has 1,024 pixels, more than the limit of 100 "):
        imageio.read_image(tmp_path / "small.png")
    monkeypatch.setenv("CXRCLF_MAX_PIXELS", "1024")  # the limit is inclusive
    assert np.array_equal(imageio.read_image(tmp_path / "small.png"), image)
    # Pillow's own, lower limit must not refuse what CXRCLF_MAX_PIXELS allows
    monkeypatch.delenv("CXRCLF_MAX_PIXELS")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert np.array_equal(imageio.read_image(tmp_path / "small.png"), image)


def _write_dicom(path: pathlib.Path, pixels: np.ndarray | None = None, *, pixel_bytes: bytes | None = None,
                 rows: int | None = None, columns: int | None = None, **fields: str) -> pathlib.Path:
    """An uncompressed 8-bit MONOCHROME2 DICOM; rows/columns/pixel_bytes may contradict the pixels."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    for keyword, value in fields.items():
        setattr(dataset, keyword, value)
    dataset.Rows = rows if rows is not None else pixels.shape[0]
    dataset.Columns = columns if columns is not None else pixels.shape[1]
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.PixelRepresentation = 0
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    dataset.PixelData = pixel_bytes if pixel_bytes is not None else pixels.tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_dicom_over_the_limit_is_refused_before_pixel_decoding(monkeypatch, tmp_path):
    monkeypatch.delenv("CXRCLF_MAX_PIXELS", raising=False)
    # The header claims 30000 x 30000 but only 16 bytes follow: decoding would fail on the byte count.
    path = _write_dicom(tmp_path / "bomb.dcm", rows=30_000, columns=30_000, pixel_bytes=bytes(16))
    start = time.perf_counter()
    with pytest.raises(CxrclfError) as info:
        imageio.read_image(path)
    assert time.perf_counter() - start < 1.0
    assert str(info.value) == (
        f"{path}: image has 900,000,000 pixels, more than the limit of 80,000,000 "
        "(a decompression bomb?); raise the limit with CXRCLF_MAX_PIXELS if the image is real"
    )


def test_dicom_limit_counts_every_frame(monkeypatch):
    import pydicom.data

    path = pydicom.data.get_testdata_file("SC_rgb_rle_2frame.dcm")  # 2 frames of 100 x 100
    monkeypatch.setenv("CXRCLF_MAX_PIXELS", "15000")
    with pytest.raises(CxrclfError, match=r"image has 20,000 pixels in 2 frames, more than the limit of 15,000 "):
        imageio.read_image(path)
    monkeypatch.setenv("CXRCLF_MAX_PIXELS", "20000")
    assert imageio.read_image(path).shape == (100, 100)


# --- every failure is a CxrclfError ---------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [MemoryError(), NotImplementedError("no codec"), struct.error("unpack requires 4 bytes"),
     RuntimeError("plugin a failed:\n  plugin b failed"), KeyError("x"), RecursionError()],
    ids=lambda error: error.__class__.__name__,
)
def test_any_decoder_exception_becomes_one_line_cxrclf_error(monkeypatch, tmp_path, gradient, error):
    import pydicom.pixels

    def fail(*args, **kwargs):
        raise error

    Image.fromarray(gradient).save(tmp_path / "a.png")
    synthetic.write_dicom(tmp_path / "a.dcm", gradient, patient_id="p", compression="none")
    monkeypatch.setattr(Image.Image, "load", fail)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", fail)
    for path in (tmp_path / "a.png", tmp_path / "a.dcm"):
        with pytest.raises(CxrclfError) as info:
            imageio.read_image(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and error.__class__.__name__ in message
        assert "\n" not in message and len(message) < len(str(path)) + 260


@pytest.mark.parametrize(
    "name, content",
    [
        ("soi_only.jpg", b"\xff\xd8"),
        ("garbage.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4),
        ("ihdr_only.png", b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))),
        ("zero_size.png", b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0))),
        ("bad_depth.png", b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 7, 9, 0, 0, 0))),
    ],
)
def test_malformed_png_and_jpeg_raise_cxrclf_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CxrclfError) as info:
        imageio.read_image(path)
    assert (info.value.reason, info.value.path) == ("not a decodable image", str(path))


# --- decode(): pixels plus what the file says about itself ---------------------------


def test_public_surface():
    assert {"read_image", "decode", "Decoded", "ImageInfo", "max_pixels", "MAX_PIXELS", "read_dicom_fields",
            "IMAGE_SUFFIXES", "to_uint8", "encode_png", "pixel_sha256", "perceptual_hash"} <= set(imageio.__all__)
    assert all(hasattr(imageio, name) for name in imageio.__all__)


def test_decode_reports_dicom_header_fields(tmp_path, gradient):
    path = _write_dicom(tmp_path / "ct.dcm", gradient, Modality="CT", ViewPosition="LL", BodyPartExamined="CHEST")
    decoded = imageio.decode(path)
    assert np.array_equal(decoded.pixels, gradient) and np.array_equal(imageio.read_image(path), gradient)
    assert decoded.info == imageio.ImageInfo(
        format="dicom", width=128, height=64, frames=1, modality="CT", view_position="LL", body_part="CHEST",
        photometric="MONOCHROME2", colourfulness=0.0,
    )
    bare = imageio.decode(_write_dicom(tmp_path / "bare.dcm", gradient)).info
    assert (bare.modality, bare.view_position, bare.body_part) == ("", "", "")


def test_decode_reports_png_and_jpeg_formats(tmp_path, gradient):
    Image.fromarray(gradient).save(tmp_path / "grey.png")
    Image.fromarray(gradient.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(np.stack([gradient] * 3, axis=-1)).save(tmp_path / "grey_rgb.jpg", quality=75)
    infos = {name: imageio.decode(tmp_path / name).info for name in ("grey.png", "deep.png", "grey_rgb.jpg")}
    summary = {name: (i.format, i.width, i.height, i.frames, i.photometric, i.modality, i.view_position, i.body_part)
               for name, i in infos.items()}
    assert summary == {
        "grey.png": ("png", 128, 64, 1, "L", "", "", ""),
        "deep.png": ("png", 128, 64, 1, "I;16", "", "", ""),
        "grey_rgb.jpg": ("jpeg", 128, 64, 1, "RGB", "", "", ""),
    }
    assert infos["grey.png"].colourfulness == 0.0 and infos["deep.png"].colourfulness == 0.0
    assert infos["grey_rgb.jpg"].colourfulness < 0.005  # measured 0.0: Pillow's chroma planes stay flat


def test_decoded_is_frozen(tmp_path, gradient):
    import dataclasses

    Image.fromarray(gradient).save(tmp_path / "grey.png")
    decoded = imageio.decode(tmp_path / "grey.png")
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.info.width = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.pixels = gradient


def test_colourfulness_matches_the_formula():
    red = np.zeros((8, 8, 3))
    red[..., 0] = 1.0  # rg = 1, yb = 0.5 everywhere: no spread, mean sqrt(1.25)
    assert imageio.colourfulness(red) == pytest.approx(0.3 * np.sqrt(1.25))
    halves = np.zeros((8, 8, 3))
    halves[:, :4, 0] = 1.0  # half red, half green: rg = +-1 (std 1, mean 0), yb = 0.5 (std 0)
    halves[:, 4:, 1] = 1.0
    assert imageio.colourfulness(halves) == pytest.approx(1.0 + 0.3 * 0.5)
    grey = np.repeat(np.random.default_rng(0).random((8, 8, 1)), 3, axis=2)
    assert imageio.colourfulness(grey) == 0.0


def test_colour_photographs_are_colourful_and_grey_xrays_are_not(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skimage_data, name)()).save(tmp_path / f"{name}.png")
    astronaut = imageio.decode(tmp_path / "astronaut.png")
    assert astronaut.pixels.shape == (512, 512) and astronaut.pixels.dtype == np.uint8
    assert 0.25 < astronaut.info.colourfulness < 0.32  # measured 0.285
    assert 0.27 < imageio.decode(tmp_path / "coffee.png").info.colourfulness < 0.33  # measured 0.302
    rng = np.random.default_rng(0)
    xray = synthetic.to_uint8(synthetic.phantom(synthetic.FINDINGS[0], rng, 512).image)
    Image.fromarray(np.stack([xray] * 3, axis=-1)).save(tmp_path / "xray_rgb.jpg", quality=50)
    assert imageio.decode(tmp_path / "xray_rgb.jpg").info.colourfulness < 0.02  # measured 0.0


# --- pydicom's own test files ---------------------------------------------------------


PYDICOM_MULTIFRAME_COLOUR = {  # name: (frames, height, width, dtype)
    "SC_rgb_rle_2frame.dcm": (2, 100, 100, np.uint8),
    "SC_rgb_rle_16bit_2frame.dcm": (2, 100, 100, np.uint16),
    "SC_rgb_rle_32bit_2frame.dcm": (2, 100, 100, np.uint16),
    "examples_ybr_color.dcm": (30, 240, 320, np.uint8),
}


def _pydicom_test_files() -> list[pathlib.Path]:
    import pydicom.data

    folder = pathlib.Path(pydicom.data.__file__).parent / "test_files"
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_every_pydicom_test_file_decodes_or_raises_cxrclf_error():
    files = _pydicom_test_files()
    assert len(files) >= 78
    decoded, refused = [], []
    for path in files:
        try:
            image = imageio.read_image(path)
        except CxrclfError as exc:
            assert exc.path == str(path) and "\n" not in str(exc)
            refused.append(path.name)
        else:
            assert image.ndim == 2 and image.dtype in (np.uint8, np.uint16) and image.size > 0, path.name
            decoded.append(path.name)
    # pydicom 3.0.2 with pylibjpeg: 89 of 176 decode; the rest hold no image or are broken on purpose
    assert len(decoded) >= 80
    assert {"CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "examples_palette.dcm"} <= set(decoded)
    assert {"README.txt", "rtplan.dcm", "MR_truncated.dcm", "badVR.dcm"} <= set(refused)


@pytest.mark.parametrize("name", sorted(PYDICOM_MULTIFRAME_COLOUR))
def test_multiframe_colour_dicoms_give_their_first_frame_in_grey(name):
    import pydicom
    import pydicom.data

    frames, height, width, dtype = PYDICOM_MULTIFRAME_COLOUR[name]
    path = pydicom.data.get_testdata_file(name)
    decoded = imageio.decode(path)
    assert decoded.pixels.shape == (height, width) and decoded.pixels.dtype == dtype
    assert (decoded.info.frames, decoded.info.width, decoded.info.height) == (frames, width, height)
    # Oracle: pydicom's own decoding (RGB, YBR converted) of frame 0, averaged and stretched
    everything = pydicom.dcmread(path).pixel_array
    assert everything.shape == (frames, height, width, 3)
    scale = np.iinfo(dtype).max
    for frame, matches in ((0, True), (1, False)):
        grey = everything[frame].astype(np.float64).mean(axis=2)
        expected = np.rint((grey - grey.min()) * (scale / (grey.max() - grey.min())))
        assert (np.abs(decoded.pixels - expected).max() <= 1) == matches


def test_rgb_bars_decode_alike_at_8_16_and_32_bits():
    import pydicom.data

    bars = {bits: imageio.decode(pydicom.data.get_testdata_file(f"SC_rgb_rle{suffix}_2frame.dcm"))
            for bits, suffix in ((8, ""), (16, "_16bit"), (32, "_32bit"))}
    eight = bars[8].pixels / 255.0
    assert np.abs(bars[16].pixels / 65535.0 - eight).max() < 1 / 255
    assert np.abs(bars[32].pixels / 65535.0 - eight).max() < 1 / 255
    assert [round(bars[bits].info.colourfulness, 3) for bits in (8, 16, 32)] == [0.661] * 3


@pytest.mark.parametrize(
    "name", ["examples_ybr_color.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
)
def test_ybr_dicoms_are_converted_to_rgb_before_grey(name):
    import pydicom
    import pydicom.data

    pixels_module = pytest.importorskip("pydicom.pixels")
    if not hasattr(pixels_module, "pixel_array"):
        pytest.skip("pydicom < 3")
    path = pydicom.data.get_testdata_file(name)
    dataset = pydicom.dcmread(path)
    assert dataset.PhotometricInterpretation.startswith("YBR_FULL")
    ybr = pixels_module.pixel_array(dataset, index=0, raw=True)  # no colour conversion
    rgb = pixels_module.convert_color_space(ybr, "YBR_FULL", "RGB").astype(np.float64)
    decoded = imageio.decode(path)
    grey = rgb.mean(axis=2)
    expected = (grey - grey.min()) * (255.0 / (grey.max() - grey.min()))
    assert np.abs(decoded.pixels - expected).mean() < 1.0
    unconverted = ybr.astype(np.float64).mean(axis=2)
    unconverted = (unconverted - unconverted.min()) * (255.0 / (unconverted.max() - unconverted.min()))
    assert np.abs(decoded.pixels - unconverted).mean() > 5.0
    assert decoded.info.photometric == dataset.PhotometricInterpretation
