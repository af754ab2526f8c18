"""Decoding PNG, JPEG and DICOM into one grayscale array, and writing PNG.

Everything that reads an image file goes through :func:`decode` (or :func:`read_image`,
which returns only its pixels), so fuse, preprocess previews, predict and explain accept
the same formats and fail the same way: any problem with a file, whatever the decoder
raised, becomes a :class:`CxrclfError` naming the file and a short reason.
Arrays are 2-D, ``uint8`` or ``uint16``, bright = dense (bone is white).

Decompression bombs: a PNG of under 1 MB can claim 30000 x 30000 pixels and ask for
gigabytes when decoded. The largest real chest radiographs are about 4300 x 3500 = 15 Mpx,
so :data:`MAX_PIXELS` (80 million, over five times that) refuses only images no detector
makes. The limit counts every frame, is checked from the header before any pixel is
decoded, and can be raised with the environment variable ``CXRCLF_MAX_PIXELS``, read at
each call so that worker processes inherit it.
"""

from __future__ import annotations

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "Decoded",
    "ImageInfo",
    "colourfulness",
    "decode",
    "encode_png",
    "max_pixels",
    "perceptual_hash",
    "pixel_sha256",
    "read_dicom_fields",
    "read_image",
    "to_uint8",
]

import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cxrclf.errors import CxrclfError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")

MAX_PIXELS = 80_000_000
MAX_PIXELS_VARIABLE = "CXRCLF_MAX_PIXELS"
HASH_BITS = 256  # the perceptual hash: the 16 x 16 lowest DCT frequencies

ImageFormat = Literal["png", "jpeg", "dicom"]

_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG"}  # JPEG's opener also returns MPO files
_PILLOW_16_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
_PILLOW_GREY_MODES = ("1", "L", "LA", "La", "F") + _PILLOW_16_BIT_MODES
_COLOURFULNESS_SIDE = 256  # long side of the copy colourfulness is measured on


@dataclass(frozen=True)
class ImageInfo:
    """What a decoded file said about itself, for checks that an image is a chest X-ray.

    ``width`` and ``height`` are those of the decoded grey image; ``frames`` is 1 for a
    still image. ``modality``, ``view_position`` and ``body_part`` are the DICOM
    Modality, ViewPosition and BodyPartExamined, upper-case ("" when absent or not DICOM).
    ``photometric`` is the DICOM PhotometricInterpretation or the Pillow mode of the
    file. ``colourfulness`` is the Hasler-Suesstrunk metric of the original image before
    it was made grey (see :func:`colourfulness`): 0.0 for grey images.
    """

    format: ImageFormat
    width: int
    height: int
    frames: int
    modality: str
    view_position: str
    body_part: str
    photometric: str
    colourfulness: float


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value, so compare by identity
class Decoded:
    """The grey pixels :func:`read_image` returns, with what the file said about itself."""

    pixels: np.ndarray
    info: ImageInfo


def max_pixels() -> int:
    """The pixel limit in force: ``CXRCLF_MAX_PIXELS`` if set, else :data:`MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not value:
        return MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise CxrclfError(
            f"{MAX_PIXELS_VARIABLE}={value!r} is not a positive whole number of pixels; "
            f"set it to e.g. {MAX_PIXELS} or unset it for the default"
        )
    return limit


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
    unsupported, corrupt or oversized (see :func:`max_pixels`) file.
    """
    return decode(path).pixels


def decode(path: str | Path) -> Decoded:
    """Decode a PNG, JPEG or DICOM file to grey pixels plus :class:`ImageInfo`.

    Multi-frame files give their first frame; colour images (RGB, YBR, palette) are
    averaged to grey after their colourfulness is measured. Raises :class:`CxrclfError`,
    and no other exception type, for any file that cannot be decoded.
    """
    path = Path(path)
    limit = max_pixels()
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
    if kind == "other":
        raise CxrclfError("not a PNG, JPEG or DICOM image", path)
    try:
        if kind == "dicom":
            return _decode_dicom(path, limit)
        return _decode_pillow(path, kind, limit)
    except CxrclfError:
        raise
    except Exception as exc:  # decoders raise many types (MemoryError, struct.error, ...): one type leaves here
        raise CxrclfError(f"cannot decode image ({_describe(exc)})", path) from exc


def _describe(exc: BaseException) -> str:
    """Exception type and message on one line, short enough for a one-line error."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__


def _check_pixel_count(width: int, height: int, frames: int, limit: int, path: Path) -> None:
    pixels = width * height * frames
    if pixels > limit:
        raise CxrclfError(_too_many_pixels(pixels, limit, frames), path)


def _too_many_pixels(pixels: int | None, limit: int, frames: int = 1) -> str:
    count = f"{pixels:,} pixels" if pixels is not None else f"more than {2 * limit:,} pixels"
    if frames > 1:
        count += f" in {frames} frames"
    return (
        f"image has {count}, more than the limit of {limit:,} (a decompression bomb?); "
        f"raise the limit with {MAX_PIXELS_VARIABLE} if the image is real"
    )


def _decode_pillow(path: Path, kind: str, limit: int) -> Decoded:
    from PIL import Image, UnidentifiedImageError

    # Pillow refuses images over twice Image.MAX_IMAGE_PIXELS while opening; it must not
    # refuse what CXRCLF_MAX_PIXELS allows, and the refusal below speaks for both.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=[_PILLOW_FORMATS[kind]]) as image:
                frames = max(1, int(getattr(image, "n_frames", 1) or 1))
                _check_pixel_count(image.width, image.height, frames, limit, path)
                image.load()
                mode = image.mode
                pixels, colour = _pillow_to_grey(image)
    except CxrclfError:
        raise
    except Image.DecompressionBombError as exc:  # only above twice our limit, see above
        counted = re.search(r"\((\d+) pixels\)", str(exc))
        raise CxrclfError(_too_many_pixels(int(counted[1]) if counted else None, limit), path) from exc
    except UnidentifiedImageError as exc:
        raise CxrclfError("not a decodable image", path) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CxrclfError(f"corrupt or truncated image ({_describe(exc)})", path) from exc
    info = ImageInfo(
        format=kind,
        width=pixels.shape[1],
        height=pixels.shape[0],
        frames=frames,
        modality="",
        view_position="",
        body_part="",
        photometric=mode,
        colourfulness=colour,
    )
    return Decoded(pixels, info)


def _pillow_to_grey(image) -> tuple[np.ndarray, float]:
    """Grey pixels and the colourfulness of the (loaded) Pillow image."""
    from PIL import Image

    mode = image.mode
    if mode in _PILLOW_16_BIT_MODES:
        # 12-bit data in a 16-bit PNG would otherwise use 1/16 of the range: stretch as for DICOM
        array = _as_gray_16(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
        return _to_display_range(array, 16, invert=False), 0.0
    if mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    colour = 0.0
    if mode not in _PILLOW_GREY_MODES:
        step = _thumbnail_step(image.width, image.height)
        small = image.resize((-(-image.width // step), -(-image.height // step)), Image.Resampling.NEAREST)
        colour = colourfulness(np.asarray(small.convert("RGB"), dtype=np.float32) / 255.0)
    if image.mode != "L":
        image = image.convert("L")
    return np.array(image, dtype=np.uint8), colour


def _as_gray_16(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3:
        array = array[..., :3].mean(axis=2).astype(np.uint16)
    return np.ascontiguousarray(array)


def _thumbnail_step(width: int, height: int) -> int:
    return max(1, math.ceil(max(width, height) / _COLOURFULNESS_SIDE))


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk's (2003) colourfulness of an (H, W, 3) RGB array scaled to [0, 1].

    ``std(rg, yb) + 0.3 * mean(rg, yb)`` with ``rg = R - G`` and ``yb = (R + G) / 2 - B``
    (each the root of the sum of squares over the two opponent axes). 0 for grey pixels,
    also when saved as RGB (their chroma planes are constant). :func:`decode` applies it to
    a copy at most 256 px on the long side; the values of grey films, colour figures,
    photographs and colour DICOMs are in docs/performance.md, "Rule-based input checks".
    """
    values = np.asarray(rgb, dtype=np.float64)
    red, green, blue = values[..., 0], values[..., 1], values[..., 2]
    rg = red - green
    yb = 0.5 * (red + green) - blue
    spread = math.sqrt(float(rg.var()) + float(yb.var()))
    centre = math.sqrt(float(rg.mean()) ** 2 + float(yb.mean()) ** 2)
    return spread + 0.3 * centre


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


def _decode_dicom(path: Path, limit: int) -> Decoded:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RSNA's bare-number PatientAge and similar
        try:
            # Reads the pixel bytes as stored (as large as the file) but decodes nothing yet.
            dataset = pydicom.dcmread(path, force=True)
        except Exception as exc:
            raise CxrclfError(f"unreadable DICOM ({_describe(exc)})", path) from exc
        if "PixelData" not in dataset:
            raise CxrclfError("DICOM without pixel data", path)
        width, height, frames = _dicom_geometry(dataset, path)
        _check_pixel_count(width, height, frames, limit, path)
        photometric = _dicom_text(dataset, "PhotometricInterpretation")
        try:
            pixels = _dicom_first_frame(dataset, photometric)
            grey, colour = _dicom_to_grey(pixels, dataset, photometric)
        except Exception as exc:
            raise CxrclfError(f"cannot decode DICOM pixels ({_describe(exc)})", path) from exc
        info = ImageInfo(  # inside the warnings filter: pydicom converts header values on first access
            format="dicom",
            width=grey.shape[1],
            height=grey.shape[0],
            frames=frames,
            modality=_dicom_text(dataset, "Modality"),
            view_position=_dicom_text(dataset, "ViewPosition"),
            body_part=_dicom_text(dataset, "BodyPartExamined"),
            photometric=photometric,
            colourfulness=colour,
        )
    return Decoded(grey, info)


def _dicom_text(dataset, keyword: str) -> str:
    try:
        return str(dataset.get(keyword, "") or "").strip().upper()
    except Exception:  # a malformed optional field should not lose the image
        return ""


def _dicom_geometry(dataset, path: Path) -> tuple[int, int, int]:
    """Columns, Rows and NumberOfFrames from the header, before any pixel is decoded."""
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except Exception as exc:
        raise CxrclfError(f"DICOM pixel data without valid Rows/Columns ({_describe(exc)})", path) from exc
    if rows <= 0 or columns <= 0:
        raise CxrclfError(f"DICOM header says the image is {columns} x {rows} pixels", path)
    try:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except Exception:
        frames = 1  # an unreadable count: pydicom decodes the first frame or fails on its own
    return columns, rows, max(1, frames)


def _dicom_first_frame(dataset, photometric: str) -> np.ndarray:
    """The first frame as (H, W) or (H, W, 3) RGB, whatever layout pydicom returns."""
    try:
        from pydicom.pixels import pixel_array  # pydicom >= 3
    except ImportError:
        pixels = _dicom_pixels_pydicom2(dataset, photometric)
    else:
        pixels = pixel_array(dataset, index=0)  # decodes one frame; YBR_FULL(_422) -> RGB
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if pixels.ndim == 4 or (pixels.ndim == 3 and samples == 1):
        pixels = pixels[0]  # (frames, H, W[, 3]) -> the first frame
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)):
        raise ValueError(f"unexpected pixel array shape {pixels.shape}")
    return pixels


def _dicom_pixels_pydicom2(dataset, photometric: str) -> np.ndarray:
    from pydicom.pixel_data_handlers.util import convert_color_space

    pixels = dataset.pixel_array
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    # pydicom 2's JPEG decoders already return RGB; native and RLE data stay YBR.
    native = syntax is None or not syntax.is_compressed or syntax == "1.2.840.10008.1.2.5"
    if photometric in ("YBR_FULL", "YBR_FULL_422") and native and pixels.shape[-1] == 3:
        pixels = convert_color_space(pixels, photometric, "RGB")
    return pixels


def _dicom_to_grey(pixels: np.ndarray, dataset, photometric: str) -> tuple[np.ndarray, float]:
    """Grey display pixels and colourfulness from one decoded frame."""
    bits = int(dataset.get("BitsStored", 8) or 8)
    full_scale = float(2 ** min(max(bits, 1), 32) - 1)
    if photometric == "PALETTE COLOR" and pixels.ndim == 2:
        pixels = _apply_palette(pixels, dataset)
        if pixels.ndim == 3:  # palette entries are 8- or 16-bit whatever the indices are
            full_scale = float(np.iinfo(pixels.dtype).max) if pixels.dtype.kind == "u" else 65535.0
    colour = 0.0
    if pixels.ndim == 3:
        step = _thumbnail_step(pixels.shape[1], pixels.shape[0])
        colour = colourfulness(pixels[::step, ::step].astype(np.float64) / full_scale)
        pixels = pixels.astype(np.float32).mean(axis=2)
    pixels = _apply_lut(pixels, dataset)
    return _to_display_range(pixels, bits, invert=photometric == "MONOCHROME1"), colour


def _apply_palette(pixels: np.ndarray, dataset) -> np.ndarray:
    """Palette indices to RGB; the indices themselves if the palette is unusable."""
    try:
        from pydicom.pixels import apply_color_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_color_lut
    try:
        return apply_color_lut(pixels, dataset)
    except Exception:
        return pixels


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
    side = math.isqrt(HASH_BITS)
    coefficients = cv2.dct(small)[:side, :side].flatten()
    bits = coefficients > np.median(coefficients[1:])
    return np.packbits(bits).tobytes().hex()
