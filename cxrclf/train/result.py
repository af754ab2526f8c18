"""What :func:`cxrclf.train.loop.train` returns: the run folder it wrote and that run's typed config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrclf.runs import RunConfig

__all__ = ["TrainResult"]


@dataclass(frozen=True)
class TrainResult:
    """One trained run: ``run``, its folder, and ``config``, what its config.json holds (the outcome, the guard, the
    operating point...). Nothing new is written from it: config.json is the file."""
    run: Path
    config: RunConfig
