"""The preprocessing parameters: one dataclass, saved with every output and read back by runs.

``preprocess.json`` in a preprocessed folder and ``config.json`` in a run folder hold these
fields, so ``predict`` and ``explain`` treat a new image exactly as the training images.

Fields added after the first release have defaults that mean what a folder without them
meant: :data:`ADDED_FIELDS` may be missing from a stored dictionary (no lung step), every
other field must be present. ``tv_weight`` is a number (a fixed lambda, as always) or
``"auto"`` (chosen per image from its estimated noise level; the default since then).

The lung step names its segmenter twice: ``lung_model`` is the segmentation run's folder
(or ``builtin``, the segmenter shipped in the package) and ``lung_model_sha256`` the hash of
its ``model.safetensors``, so a run that crops to the
lungs can only ever be fed through the very segmenter it was trained with.

The harmonisation fields (:data:`HARMONIZATION_FIELDS`, ``preprocess --harmonize``) are
written only when one of them is on: a folder or run made without harmonisation stores
exactly the dictionary it stored before they existed, and a dictionary without them means
harmonisation off.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from cxrclf.choices import Choice, Denoise, Fit, Inpaint, Intensity, Lung
from cxrclf.errors import CxrclfError
from cxrclf.preprocess.artifacts import INPAINT_RADIUS, TEXT_THRESHOLD
from cxrclf.preprocess.harmonize import CLAHE_CLIP, CLAHE_GRID
from cxrclf.preprocess.tv import AUTO, TV_ITERATIONS, TV_K, TV_SIGMA, TV_WEIGHT

__all__ = ["ADDED_FIELDS", "HARMONIZATION_FIELDS", "LUNG_MARGIN", "PreprocessParams", "parse_tv_weight", "read_params", "required_fields"]

LUNG_MARGIN = 0.05  # of the lungs' box mean side, on each side: keeps the costophrenic angles a tight mask may clip


@dataclass(frozen=True)
class PreprocessParams:
    size: int = 331                 # output side in pixels (the paper: 331x331x3)
    channels: int = 3               # 3 (grey replicated, as ImageNet models expect) or 1
    fit: Fit = Fit.stretch          # stretch (the paper) or pad (keep the aspect ratio)
    work_size: int = 1024           # text removal runs at most at this side: strokes stay strokes
    remove_text: bool = True
    text_threshold: float = TEXT_THRESHOLD  # Eq. 4: fraction of the image's intensity range
    inpaint: Inpaint = Inpaint.telea  # OpenCV inpainting: telea or ns (Navier-Stokes)
    inpaint_radius: float = INPAINT_RADIUS
    denoise: Denoise = Denoise.adaptive_tv  # Eq. 5 adaptive total variation, or none
    tv_weight: float | str = TV_WEIGHT  # lambda, or "auto": from each image's estimated noise level
    tv_k: float = TV_K              # edge contrast parameter k
    tv_sigma: float = TV_SIGMA      # Gaussian sigma of the edge detector
    tv_iterations: int = TV_ITERATIONS
    lung: Lung = Lung.none          # none (the paper), crop to the lungs' box, or mask: grey out the rest
    lung_model: str = ""            # the lung segmentation run's folder (absolute) or "builtin", when lung is not none
    lung_model_sha256: str = ""     # sha256 of its model.safetensors: the segmenter's identity
    lung_margin: float = LUNG_MARGIN
    # harmonised inputs (cxrclf.preprocess.harmonize), all off by default: the paper's pipeline
    detail_size: int = 0            # short side brought down to this many pixels before the model size (0: off)
    intensity: Intensity = Intensity.none  # none, clahe, or match (a fixed reference histogram)
    clahe_clip: float = CLAHE_CLIP  # CLAHE's clip limit, when intensity is clahe
    clahe_grid: int = CLAHE_GRID    # CLAHE's tiles per side
    deblock: bool = False           # a light bilateral filter against JPEG's 8x8 blocks

    def __post_init__(self) -> None:
        """Each choice field as its :mod:`cxrclf.choices` member (stored files and callers give strings); a value outside
        the choices is kept as given, for :meth:`validate` to name among every other problem."""
        for name, kind in _choice_fields().items():
            value = getattr(self, name)
            if not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, kind(value))
                except (TypeError, ValueError):
                    pass

    def validate(self) -> "PreprocessParams":
        """Self, or a one-line error naming every parameter that is out of range."""
        def number(value, integer=False) -> bool:
            return not isinstance(value, bool) and isinstance(value, int if integer else (int, float)) and math.isfinite(value)

        problems = []
        for name in ("size", "channels", "work_size", "tv_iterations", "detail_size", "clahe_grid"):
            if not number(getattr(self, name), integer=True):
                problems.append(f"{name} must be an integer, not {getattr(self, name)!r}")
        for name in ("text_threshold", "inpaint_radius", "tv_k", "tv_sigma", "lung_margin", "clahe_clip"):
            if not number(getattr(self, name)):
                problems.append(f"{name} must be a number, not {getattr(self, name)!r}")
        if self.tv_weight != AUTO and not number(self.tv_weight):
            problems.append(f"tv_weight must be a number or {AUTO!r}, not {self.tv_weight!r}")
        for name in ("remove_text", "deblock"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, not {getattr(self, name)!r}")
        for name in ("lung_model", "lung_model_sha256"):
            if not isinstance(getattr(self, name), str):
                problems.append(f"{name} must be a string, not {getattr(self, name)!r}")
        for name, kind in _choice_fields().items():
            if not isinstance(getattr(self, name), kind):
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
        if (self.tv_weight != AUTO and self.tv_weight < 0) or self.tv_k < 0 or self.tv_sigma < 0:
            problems.append("tv_weight, tv_k and tv_sigma must be >= 0")
        if not 0.0 <= self.lung_margin <= 1.0:
            problems.append(f"lung_margin must be from 0 to 1 (a fraction of the lungs' box), not {self.lung_margin}")
        if self.lung is Lung.none and (self.lung_model or self.lung_model_sha256):
            problems.append("lung_model is set but lung is none (a segmenter with nothing to do: choose lung crop or mask)")
        if self.lung is not Lung.none and not (self.lung_model and len(self.lung_model_sha256) == 64):
            problems.append(f"lung {self.lung} needs lung_model (a lung segmentation run) and its weights' sha256")
        if self.detail_size and not 16 <= self.detail_size <= 8192:
            problems.append(f"detail_size must be 0 (off) or from 16 to 8192 pixels, not {self.detail_size}")
        if not 0.0 < self.clahe_clip <= 100.0 or not 1 <= self.clahe_grid <= 64:
            problems.append(f"clahe_clip must be in (0, 100] and clahe_grid from 1 to 64, not {self.clahe_clip} and {self.clahe_grid}")
        if problems:
            raise CxrclfError("preprocessing parameters: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict:
        """Every field; the harmonisation fields only when one of them is on, so the paper's pipeline is written as it always was."""
        values = {name: value.value if isinstance(value, Choice) else value for name, value in asdict(self).items()}
        if not self.harmonizes:
            for name in HARMONIZATION_FIELDS:
                del values[name]
        return values

    @property
    def harmonizes(self) -> bool:
        """True when any harmonisation parameter differs from its default (off)."""
        return any(getattr(self, name) != getattr(PreprocessParams, name) for name in HARMONIZATION_FIELDS)

    @property
    def uses_lungs(self) -> bool:
        return self.lung is not Lung.none

    @classmethod
    def from_dict(cls, values: dict, source: Path | None = None) -> "PreprocessParams":
        """Validated parameters; a dictionary written before :data:`ADDED_FIELDS` existed means what it meant then."""
        if not isinstance(values, dict):
            raise CxrclfError(f"preprocessing parameters must be a JSON object, not {type(values).__name__}", source)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CxrclfError(f"unknown preprocessing parameter(s) {', '.join(unknown)} (written by a newer cxrclf?)", source)
        missing = sorted(required_fields() - set(values))
        if missing:
            raise CxrclfError(f"preprocessing parameters lack {', '.join(missing)} (an incomplete or foreign file)", source)
        try:
            return cls(**values).validate()
        except TypeError as exc:
            raise CxrclfError(f"bad preprocessing parameters ({exc})", source) from exc
        except CxrclfError as exc:
            raise CxrclfError(exc.reason, source) from None


# Fields that stored parameters may lack, each with the default that reproduces what such
# folders meant (no lung step): every other field has been written since the first release.
ADDED_FIELDS = ("lung", "lung_model", "lung_model_sha256", "lung_margin")
# Fields that stored parameters lack whenever harmonisation is off: written only when one of them is on.
HARMONIZATION_FIELDS = ("detail_size", "intensity", "clahe_clip", "clahe_grid", "deblock")


def _choice_fields() -> dict[str, type[Choice]]:
    """The fields whose default is a :class:`~cxrclf.choices.Choice` member, with their enum: ``fit``, ``inpaint``, ``denoise``, ..."""
    return {f.name: type(f.default) for f in fields(PreprocessParams) if isinstance(f.default, Choice)}


def required_fields() -> set[str]:
    """The fields every stored parameter dictionary must hold (all but :data:`ADDED_FIELDS` and :data:`HARMONIZATION_FIELDS`)."""
    return {f.name for f in fields(PreprocessParams)} - set(ADDED_FIELDS) - set(HARMONIZATION_FIELDS)


def parse_tv_weight(value: str | float | None) -> float | str | None:
    """``"auto"``, a number, or None (not given) from a command-line value; a one-line error otherwise."""
    if value is None or value == AUTO or isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    try:
        number = float(text)
    except ValueError:
        raise CxrclfError(f"the TV weight must be a number >= 0 or {AUTO!r}, not {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise CxrclfError(f"the TV weight must be a number >= 0 or {AUTO!r}, not {value!r}")
    return number


def read_params(path: Path) -> PreprocessParams:
    """Parameters from ``preprocess.json`` (its ``params`` entry)."""
    from cxrclf import io

    document = io.read_json(Path(path), "preprocessing parameters")
    values = document.get("params")
    if not isinstance(values, dict):
        raise CxrclfError("no 'params' entry (not written by `cxrclf preprocess`)", path)
    return PreprocessParams.from_dict(values, path)
