"""The run folder: everything needed to rebuild a trained model and treat new images alike.

``config.json``    model, label scheme, class names, input size, channels, normalisation,
                   preprocessing parameters, training arguments, seed, data hash, versions
``model.safetensors``  the best weights (no pickle)
``metrics.csv``    one row per epoch;  ``train.log``  the human log
``checkpoint.pt``  the resume state (tensors and plain values only; read with weights_only)

``runs/latest`` (a symbolic link beside the runs) names the last finished run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cxrclf import folders
from cxrclf.errors import CxrclfError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.csv"
LOG = "train.log"
CHECKPOINT = "checkpoint.pt"
FORMAT_VERSION = 1


def scenario_code(strategy: str, classes: int) -> str:
    """The paper's scenario names: C (class weights) or R (random oversampling) + B/M3/M4."""
    return ("C" if strategy == "weighted" else "R") + {2: "B", 3: "M3", 4: "M4"}[classes]


def read_config(run: Path) -> dict:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise CxrclfError("not a run folder (no config.json); train one with `cxrclf train`", run)
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CxrclfError(f"config.json is not valid JSON ({exc})", path) from exc
    for key in ("model", "classes", "class_names", "input_size", "in_chans", "mean", "std", "preprocess"):
        if key not in config:
            raise CxrclfError(f"config.json lacks {key!r} (an incomplete or foreign run folder)", path)
    return config


def resolve_run(run: Path | None) -> Path:
    """``run`` if given, else ``$CXRCLF_MODEL``, else ``runs/latest``; a one-line error when none exists."""
    if run is None:
        env = os.environ.get("CXRCLF_MODEL")
        run = Path(env) if env else folders.RUNS / folders.LATEST
        if not run.exists():
            raise CxrclfError("no trained run found: train one with `cxrclf train` or pass --model RUN_DIR", run)
    run = Path(run)
    if not run.is_dir():
        raise CxrclfError("run folder not found", run)
    return run.resolve()


def load_run(run: Path, device: str = "cpu"):
    """(model in eval mode, config) of a finished run."""
    from safetensors.torch import load_file

    from cxrclf.models.zoo import create_model

    config = read_config(run)
    weights = Path(run) / WEIGHTS
    if not weights.is_file():
        raise CxrclfError("run folder has no model.safetensors (training did not finish an epoch?)", run)
    bundle = create_model(
        config["model"], len(config["class_names"]), pretrained=False, trainable_blocks="all",
        dropout=config.get("dropout", 0.5), in_chans=config["in_chans"], image_size=config["input_size"],
    )
    try:
        state = load_file(str(weights), device=device)
        bundle.model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise CxrclfError(f"weights do not fit the run's model ({exc.__class__.__name__})", weights) from exc
    model = bundle.model.to(device).eval()
    return model, config


def update_latest(run: Path) -> Path:
    """Point ``<runs>/latest`` at ``run`` (a relative symbolic link, replaced atomically)."""
    run = Path(run).resolve()
    link = run.parent / folders.LATEST
    temporary = run.parent / f".{folders.LATEST}.{os.getpid()}"
    if temporary.is_symlink() or temporary.exists():
        temporary.unlink()
    os.symlink(run.name, temporary)
    os.replace(temporary, link)
    return link
