"""Decoding PNG, JPEG and DICOM into one grayscale array, and writing PNG.

Everything that reads an image file goes through :func:`read_image`, so fuse, preprocess
previews, predict and explain accept the same formats and fail the same way.
Arrays are 2-D, ``uint8`` or ``uint16``, bright = dense (bone is white).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np

from cxrclf.errors import CxrclfError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def _kind(head: bytes, path: Path) -> str:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if path.suffix.lower() in (".dcm", ".dicom"):
        return "dicom"  # DICOM without the preamble: pydicom decides
    return "other"


def read_image(path: str | Path) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file to a 2-D grayscale ``uint8``/``uint16`` array.

    Raises :class:`CxrclfError` naming the file and the reason for an empty, truncated,
    unsupported or corrupt file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except FileNotFoundError as exc:
        raise CxrclfError("file not found", path) from exc
    except IsADirectoryError as exc:
        raise CxrclfError("is a folder, not an image", path) from exc
    except OSError as exc:
        raise CxrclfError(f"cannot read ({exc.strerror})", path) from exc
    if not head:
        raise CxrclfError("empty file (0 bytes)", path)
    kind = _kind(head, path)
    if kind == "dicom":
        return _read_dicom(path)
    if kind == "other":
        raise CxrclfError("not a PNG, JPEG or DICOM image", path)
    return _read_pillow(path)


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                # 12-bit data in a 16-bit PNG would otherwise use 1/16 of the range: stretch as for DICOM
                array = _as_gray_16(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
                return _to_display_range(array, 16, invert=False)
            if mode in ("RGBA", "LA", "PA"):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image)
            if mode != "L":
                image = image.convert("L")
            return np.array(image, dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise CxrclfError("not a decodable image", path) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CxrclfError(f"corrupt or truncated image ({exc})", path) from exc


def _as_gray_16(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        array = array[..., :3].mean(axis=2).astype(np.uint16)
    return np.ascontiguousarray(array)


def read_dicom_fields(path: str | Path, names: tuple[str, ...]) -> dict[str, str]:
    """Header values as stripped strings ("" when absent), without reading pixel data."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RSNA's bare-number PatientAge is invalid for VR AS
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return {name: str(getattr(header, name, "") or "").strip() for name in names}
        except Exception as exc:  # pydicom raises many types for broken files
            raise CxrclfError(f"unreadable DICOM header ({exc.__class__.__name__})", path) from exc


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # RSNA's bare-number PatientAge and similar
            dataset = pydicom.dcmread(path, force=True)
            if "PixelData" not in dataset:
                raise CxrclfError("DICOM without pixel data", path)
            pixels = dataset.pixel_array
    except CxrclfError:
        raise
    except Exception as exc:
        raise CxrclfError(f"cannot decode DICOM pixels ({exc.__class__.__name__}: {exc})", path) from exc
    if pixels.ndim == 3:
        if getattr(dataset, "SamplesPerPixel", 1) == 3:
            pixels = pixels.astype(np.float32).mean(axis=2)
        else:
            pixels = pixels[0]  # multi-frame: the first frame
    bits = int(getattr(dataset, "BitsStored", 8) or 8)
    pixels = _apply_lut(pixels, dataset)
    photometric = str(getattr(dataset, "PhotometricInterpretation", "MONOCHROME2")).upper()
    return _to_display_range(pixels, bits, invert=photometric == "MONOCHROME1")


def _apply_lut(pixels: np.ndarray, dataset) -> np.ndarray:
    """Modality and VOI LUT / window, where the file has them."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    try:
        out = apply_modality_lut(pixels, dataset)
        if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
            out = apply_voi_lut(out, dataset)
        return out
    except Exception:
        return pixels  # a malformed LUT should not lose an otherwise good image


def _to_display_range(pixels: np.ndarray, bits: int, invert: bool) -> np.ndarray:
    if bits <= 8 and pixels.dtype == np.uint8 and not invert:
        return np.ascontiguousarray(pixels)
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scale = 255.0 if bits <= 8 else 65535.0
    if high > low:
        values = (values - low) * (scale / (high - low))
    else:
        values = np.zeros_like(values)
    if invert:
        values = scale - values
    dtype = np.uint8 if bits <= 8 else np.uint16
    return np.ascontiguousarray(np.rint(values).astype(dtype))


def to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    import cv2

    ok, buffer = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def pixel_sha256(image: np.ndarray) -> str:
    digest = hashlib.sha256(f"{image.dtype.str}{image.shape}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()



def perceptual_hash(image: np.ndarray) -> str:
    """256-bit DCT perceptual hash as 64 hex digits; robust to resizing, re-encoding and gain.

    The 16x16 lowest frequencies of a 64x64 thumbnail, thresholded at their median. On real
    chest X-rays, distinct images differ in 50 or more bits; the same image resized,
    JPEG-compressed and brightened differs in at most about 14 (docs/validity.md).
    """
    import cv2

    small = cv2.resize(image.astype(np.float32), (64, 64), interpolation=cv2.INTER_AREA)
    coefficients = cv2.dct(small)[:16, :16].flatten()
    bits = coefficients > np.median(coefficients[1:])
    return np.packbits(bits).tobytes().hex()
