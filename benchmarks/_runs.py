"""A run folder with an untrained model, for benchmarks that time inference only."""

from __future__ import annotations

from pathlib import Path

from cxrclf import io
from cxrclf.labels import SCHEMES
from cxrclf.models.zoo import create_model
from cxrclf.preprocess.params import PreprocessParams
from cxrclf.runs import DataSpec, ModelSpec, RunConfig, RunFolder, Status, TrainingSpec


def make_run(folder: Path, model: str, image_size: int | None = None, classes: int = 3, params: PreprocessParams | None = None) -> Path:
    bundle = create_model(model, classes, pretrained=False, image_size=image_size)
    run = RunFolder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    io.mark(folder, "run")
    run.save_weights(bundle.model.state_dict())
    run.write_config(RunConfig(
        model=ModelSpec(name=model, class_names=tuple(SCHEMES[classes].classes), input_size=bundle.input_size, in_chans=bundle.in_chans,
                        mean=tuple(bundle.mean), std=tuple(bundle.std), dropout=0.5, pretrained_source=bundle.pretrained_source),
        preprocess=params or PreprocessParams(), data=DataSpec(folder=""), training=TrainingSpec(), status=Status.finished,
    ))
    return folder
