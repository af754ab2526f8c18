"""Default stage folders, relative to the working directory.

Commands chain through these so that the intended usage works verbatim from one folder:
fuse -> data/fused, preprocess -> data/preprocessed, train -> runs/<name> (+ runs/latest).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUILTIN", "BUILTIN_LUNG", "FUSED", "LATEST", "PREPROCESSED", "RUNS"]

FUSED = Path("data/fused")
PREPROCESSED = Path("data/preprocessed")
RUNS = Path("runs")
LATEST = "latest"

# what ships inside the package: the built-in lung segmenter (named "builtin" wherever a segmenter is)
BUILTIN = "builtin"
BUILTIN_LUNG = Path(__file__).resolve().parent / "builtin" / "lung"
