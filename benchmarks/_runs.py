"""A run folder with an untrained model, for benchmarks that time inference only."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from cxrclf.labels import SCHEMES
from cxrclf.models.zoo import create_model
from cxrclf.preprocess.params import PreprocessParams


def make_run(folder: Path, model: str, image_size: int | None = None, classes: int = 3, params: PreprocessParams | None = None) -> Path:
    bundle = create_model(model, classes, pretrained=False, image_size=image_size)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in bundle.model.state_dict().items()}, str(folder / "model.safetensors"))
    config = {
        "model": model, "scenario": "RM3", "classes": classes, "class_names": list(SCHEMES[classes].classes),
        "input_size": bundle.input_size, "in_chans": bundle.in_chans, "mean": list(bundle.mean), "std": list(bundle.std),
        "dropout": 0.5, "preprocess": (params or PreprocessParams()).to_dict(), "data": {"folder": "", "fold": None},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
