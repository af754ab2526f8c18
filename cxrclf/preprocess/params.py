"""The preprocessing parameters: one dataclass, saved with every output and read back by runs.

``preprocess.json`` in a preprocessed folder and ``config.json`` in a run folder hold these
fields, so ``predict`` and ``explain`` treat a new image exactly as the training images.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cxrclf.choices import Denoise, Fit, Inpaint
from cxrclf.errors import CxrclfError
from cxrclf.preprocess.artifacts import INPAINT_RADIUS, TEXT_THRESHOLD
from cxrclf.preprocess.tv import TV_ITERATIONS, TV_K, TV_SIGMA, TV_WEIGHT

__all__ = ["PreprocessParams", "read_params"]

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
        """Self, or a one-line error naming every parameter that is out of range."""
        def number(value, integer=False) -> bool:
            return not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and math.isfinite(value)

        problems = []
        for name in ("size", "channels", "work_size", "tv_iterations"):
            if not number(getattr(self, name), integer=True):
                problems.append(f"{name} must be an integer, not {getattr(self, name)!r}")
        for name in ("text_threshold", "inpaint_radius", "tv_weight", "tv_k", "tv_sigma"):
            if not number(getattr(self, name)):
                problems.append(f"{name} must be a number, not {getattr(self, name)!r}")
        if not isinstance(self.remove_text, bool):
            problems.append(f"remove_text must be true or false, not {self.remove_text!r}")
        for name, kind in (("fit", Fit), ("inpaint", Inpaint), ("denoise", Denoise)):
            if getattr(self, name) not in {member.value for member in kind}:
                problems.append(f"{name} must be one of {', '.join(m.value for m in kind)}, not {getattr(self, name)!r}")
        if problems:
            raise CxrclfError("preprocessing parameters: " + "; ".join(problems))
        if not 16 <= self.size <= 2048:
            problems.append(f"size must be between 16 and 2048, not {self.size}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, not {self.channels}")
        if not 0.0 < self.text_threshold <= 1.0:
            problems.append(f"text_threshold must be in (0, 1], not {self.text_threshold}")
        if self.inpaint_radius <= 0 or not 1 <= self.tv_iterations <= 10_000 or not self.size <= self.work_size <= 8192:
            problems.append("inpaint_radius must be positive, tv_iterations from 1 to 10000, and work_size from size to 8192")
        if self.tv_weight < 0 or self.tv_k < 0 or self.tv_sigma < 0:
            problems.append("tv_weight, tv_k and tv_sigma must be >= 0")
        if problems:
            raise CxrclfError("preprocessing parameters: " + "; ".join(problems))
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
        except CxrclfError as exc:
            raise CxrclfError(exc.reason, source) from None


def read_params(path: Path) -> PreprocessParams:
    """Parameters from ``preprocess.json`` (its ``params`` entry)."""
    from cxrclf import io

    document = io.read_json(Path(path), "preprocessing parameters")
    values = document.get("params")
    if not isinstance(values, dict):
        raise CxrclfError("no 'params' entry (not written by `cxrclf preprocess`)", path)
    return PreprocessParams.from_dict(values, path)
