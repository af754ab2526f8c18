from __future__ import annotations

import contextlib
import csv
import json
import zlib
from pathlib import Path

import pytest

from tests.reliability.harness import Env


@pytest.fixture(scope="session")
def fused_synthetic(preprocessed_synthetic) -> Path:
    """The fused folder the session's preprocessed data was made from (read-only)."""
    fused = Path(json.loads((preprocessed_synthetic / "preprocess.json").read_text())["fused"])
    assert (fused / "manifest.csv").is_file(), fused
    return fused


@pytest.fixture(scope="session")
def synthetic_source_folders(fused_synthetic) -> dict[str, Path]:
    """The synthetic source folders the session's fused data came from (read-only)."""
    options = json.loads((fused_synthetic / "fuse_report.json").read_text())["options"]
    return {name: Path(options[name]) for name in ("cohen", "rsna", "nlm")}


@pytest.fixture(scope="session")
def fused_rows(fused_synthetic) -> list[dict]:
    with open(fused_synthetic / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def good_pngs(fused_synthetic, fused_rows) -> list[Path]:
    return [fused_synthetic / row["path"] for row in fused_rows]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="session")
def bomb_png_bytes() -> bytes:
    """A valid 30000 x 30000 8-bit grey PNG of zeros (900 Mpx) in under 1 MB.

    Every row is 30001 zero bytes (filter 0, black pixels), so the zlib stream is one
    compressed run of zeros repeated: a block ended by a full flush compresses alike every
    time, and the Adler-32 of n zeros is (n mod 65521) << 16 | 1.
    """
    import struct

    side, rows_per_block = 30_000, 1_000
    total = side * (side + 1)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes((side + 1) * rows_per_block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    raw = block * (side // rows_per_block) + compressor.flush()
    idat = b"\x78\xda" + raw + struct.pack(">I", (total % 65521) << 16 | 1)
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey, deflate, no interlace
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    assert len(data) < 1_000_000
    return data


@pytest.fixture
def catalogue_env(tmp_path, request, monkeypatch):
    """An :class:`Env` whose ``tmp`` is also the working directory (default outputs land there and are watched)."""
    for name in ("CXRCLF_MAX_PIXELS", "CXRCLF_MODEL", "CXRCLF_DEBUG", "CXRCLF_LUNG_NETWORK"):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with contextlib.ExitStack() as stack:
        yield Env(work, request, stack)
