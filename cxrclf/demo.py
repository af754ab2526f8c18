"""The built-in demo: synthetic phantoms in the three source layouts, run through every stage.

Nothing is downloaded. Each stage writes the folders a real run writes, under one output
folder (``sources/``, ``data/fused``, ``data/preprocessed``, ``runs/``, ``explanations/``),
by calling the same library functions as the commands, so the demo doubles as an example.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cxrclf import io
from cxrclf.errors import CxrclfError

MODEL = "resnet-baseline"   # trained from scratch: needs no pretrained weights
SIZE = 128                  # small images keep the demo within minutes on 2 cores


@dataclass
class DemoResult:
    out: Path
    stages: dict[str, object] = field(default_factory=dict)


def run_demo(out: Path, seed: int = 0, per_class: int = 40, epochs: int = 15, overwrite: bool = False,
             announce: Callable[[str, str], None] = lambda stage, detail: None, train_callbacks: dict | None = None) -> DemoResult:
    """Every stage on synthetic phantoms under ``out``; an existing demo folder is replaced only when the new one is complete."""
    out = Path(out)
    with io.rebuilt_in_place(out, overwrite, kind="demo"):
        return _stages(out, seed, per_class, epochs, announce, train_callbacks)


def _stages(out: Path, seed: int, per_class: int, epochs: int, announce, train_callbacks) -> DemoResult:
    from cxrclf.data import audit, synthetic
    from cxrclf.data.fuse import FuseOptions, fuse
    from cxrclf.preprocess.batch import preprocess_folder
    from cxrclf.preprocess.params import PreprocessParams

    workers = os.cpu_count() or 1
    result = DemoResult(out)
    # each stage writes its own folder atomically, as the commands do
    sources = synthetic.write_sources(out / "sources", seed=seed, per_class=per_class, size=256)
    announce("sources", f"synthetic Cohen (CSV + PNG/JPEG), RSNA (CSV + DICOM) and NLM (PNG) phantoms in {out / 'sources'}")

    fused = out / "data" / "fused"
    report = fuse(FuseOptions(cohen=sources["cohen"], rsna=sources["rsna"], nlm=sources["nlm"], seed=seed, workers=workers), fused)
    result.stages["fuse"] = report
    announce("fuse", f"{report['images']} images of {report['patients']} patients, split by patient -> {fused}")
    for finding, source in report["single_source_findings"].items():
        announce("warning", f"every {finding} image comes from {source}: a model can learn the source instead of the finding")
    found = audit.audit(fused)
    result.stages["audit"] = found
    if found["leakage"]:
        raise CxrclfError("the demo's fused dataset failed its own leakage audit", fused)
    announce("audit", "no patient and no identical or near-identical image shared between splits")

    prepared = out / "data" / "preprocessed"
    summary = preprocess_folder(fused, prepared, PreprocessParams(size=SIZE), workers=workers, figures=2)
    result.stages["preprocess"] = summary
    announce("preprocess", f"text removed, adaptive-TV denoised, resized to {SIZE} px -> {prepared}")

    from cxrclf.train.loop import TrainOptions, train

    run_dir = out / "runs" / f"{MODEL}-RM4"
    trained = train(TrainOptions(model=MODEL, strategy="oversample", classes=4, data=prepared, out=run_dir, epochs=epochs,
                                 patience=epochs, batch_size=16, lr=2e-3, seed=seed, image_size=SIZE), **(train_callbacks or {}))
    result.stages["train"] = trained
    announce("train", f"{MODEL} (4 classes, oversampling), best epoch {trained['outcome']['best_epoch']} of {trained['outcome']['epochs_run']} -> {run_dir}")

    from cxrclf.evaluate.evaluation import EvaluateOptions, evaluate

    evaluated = evaluate(EvaluateOptions(run=run_dir, bootstrap=1000, seed=seed, workers=workers))
    result.stages["evaluate"] = evaluated
    announce("evaluate", f"test macro AUC {evaluated['point']['macro_auc']:.3f} (95% CI {evaluated['intervals']['macro_auc'][0]:.3f}-{evaluated['intervals']['macro_auc'][1]:.3f}) -> {evaluated['out']}/report.md")

    from cxrclf.explain.explain import explain_image
    from cxrclf.inference import Predictor
    from cxrclf.predict import predict_files

    predictor = Predictor(run_dir, "cpu")
    test_rows = __import__("pandas").read_csv(prepared / "manifest.csv").query("split == 'test'")
    folder_of = {"cohen": sources["cohen"], "rsna": sources["rsna"], "montgomery": sources["nlm"]}
    originals = [folder_of[row.source] / row.source_file for row in test_rows.drop_duplicates("finding").itertuples()]
    predictions = predict_files(predictor, originals, workers=1)
    result.stages["predict"] = predictions
    announce("predict", "; ".join(f"{Path(p['file']).name}: {p['predicted']} ({max(p['probabilities'].values()):.2f})" for p in predictions))

    explanations = out / "explanations"
    covid = next((f for f, p in zip(originals, predictions) if "cohen" in str(f) and p.get("predicted") == "covid19"), originals[0])
    pictures = []
    for method in ("lime", "gradcam"):
        explained = explain_image(predictor, covid, method=method, num_samples=500, seed=seed, out=explanations / f"{covid.stem}.{method}.png")
        pictures.append(explained["out"])
    result.stages["explain"] = pictures
    announce("explain", f"LIME and Grad-CAM of {covid.name} -> {explanations}")
    return result
