"""The preprocessing parameters: one dataclass, saved with every output and read back by runs.

``preprocess.json`` in a preprocessed folder and ``config.json`` in a run folder hold these
fields, so ``predict`` and ``explain`` treat a new image exactly as the training images.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cxrclf.errors import CxrclfError
from cxrclf.preprocess.artifacts import INPAINT_RADIUS, TEXT_THRESHOLD
from cxrclf.preprocess.tv import TV_ITERATIONS, TV_K, TV_SIGMA, TV_WEIGHT

FITS = ("stretch", "pad")
INPAINT_METHODS = ("telea", "ns")
DENOISERS = ("adaptive-tv", "none")


@dataclass(frozen=True)
class PreprocessParams:
    size: int = 331                 # output side in pixels (the paper: 331x331x3)
    channels: int = 3               # 3 (grey replicated, as ImageNet models expect) or 1
    fit: str = "stretch"            # stretch (the paper) or pad (keep the aspect ratio)
    work_size: int = 1024           # text removal runs at most at this side: strokes stay strokes
    remove_text: bool = True
    text_threshold: float = TEXT_THRESHOLD  # Eq. 4: fraction of the image's intensity range
    inpaint: str = "telea"          # OpenCV inpainting: telea or ns (Navier-Stokes)
    inpaint_radius: float = INPAINT_RADIUS
    denoise: str = "adaptive-tv"    # Eq. 5 adaptive total variation, or none
    tv_weight: float = TV_WEIGHT    # lambda
    tv_k: float = TV_K              # edge contrast parameter k
    tv_sigma: float = TV_SIGMA      # Gaussian sigma of the edge detector
    tv_iterations: int = TV_ITERATIONS

    def validate(self) -> "PreprocessParams":
        problems = []
        if not 16 <= self.size <= 2048:
            problems.append(f"--size must be between 16 and 2048, not {self.size}")
        if self.channels not in (1, 3):
            problems.append(f"--channels must be 1 or 3, not {self.channels}")
        if self.fit not in FITS:
            problems.append(f"--fit must be one of {', '.join(FITS)}, not {self.fit!r}")
        if self.inpaint not in INPAINT_METHODS:
            problems.append(f"--inpaint must be one of {', '.join(INPAINT_METHODS)}, not {self.inpaint!r}")
        if self.denoise not in DENOISERS:
            problems.append(f"--denoise must be one of {', '.join(DENOISERS)}, not {self.denoise!r}")
        if not 0.0 < self.text_threshold <= 1.0:
            problems.append(f"--text-threshold must be in (0, 1], not {self.text_threshold}")
        if self.inpaint_radius <= 0 or self.tv_iterations < 1 or self.work_size < self.size:
            problems.append("--inpaint-radius must be positive, --tv-iterations at least 1, and the work size at least --size")
        if self.tv_weight < 0 or self.tv_k < 0 or self.tv_sigma < 0:
            problems.append("--tv-weight, --tv-k and --tv-sigma must be >= 0")
        if problems:
            raise CxrclfError("; ".join(problems))
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: Path | None = None) -> "PreprocessParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CxrclfError(f"unknown preprocessing parameter(s) {', '.join(unknown)} (written by a newer cxrclf?)", source)
        try:
            return cls(**values).validate()
        except TypeError as exc:
            raise CxrclfError(f"bad preprocessing parameters ({exc})", source) from exc


def read_params(path: Path) -> PreprocessParams:
    """Parameters from ``preprocess.json`` (its ``params`` entry) or a run's ``config.json`` (``preprocess``)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CxrclfError("preprocessing parameters not found", path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CxrclfError(f"not valid JSON ({exc})", path) from exc
    values = document.get("params", document.get("preprocess"))
    if not isinstance(values, dict):
        raise CxrclfError("no 'params' or 'preprocess' entry", path)
    return PreprocessParams.from_dict(values, path)
