"""The built-in demo: synthetic phantoms in the three source layouts, run through every stage.

Nothing is downloaded. Each stage writes the folders a real run writes, under one output
folder (``sources/``, ``data/fused``, ``data/preprocessed``, ``runs/``, ``explanations/``),
by calling the same library functions as the commands, so the demo doubles as an example.
The predict stage also classifies a colour photograph (``photographs/astronaut.png``), to
show an image the input checks flag.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

from cxrclf import io
from cxrclf.errors import CxrclfError
from cxrclf.threads import torch_threads

__all__ = ["MODEL", "DemoResult", "DemoSettings", "PERFECT_SCORES_NOTE", "run_demo"]

MODEL = "resnet-baseline"   # trained from scratch: needs no pretrained weights

PERFECT_SCORES_NOTE = (
    "> **Why the scores here are perfect.** These are the demo's synthetic phantoms, not X-rays: each finding is drawn "
    "as its own unmistakable pattern on the same simple anatomy, and every COVID-19 image comes from one archive (Cohen) "
    "and every tuberculosis image from another (Montgomery), so both the pattern and the source give the class away. "
    "A perfect score on phantoms shows that the pipeline runs end to end; it says nothing about real radiographs, where "
    "cxrclf's results are far from perfect (see docs/validity.md)."
)


@dataclass(frozen=True)
class DemoSettings:
    """How big the demo is. The defaults were chosen by measurement (docs/performance.md): the
    whole demo in well under a minute on 2 cores, with a test macro AUC of 1.0 on the phantoms."""

    per_class: int = 30         # phantoms per finding (written per source as in the real fusion)
    phantom_size: int = 128     # side of the written phantoms, in pixels
    size: int = 64              # preprocessed side, which is also the network's input side
    epochs: int = 12
    lime_samples: int = 300     # LIME perturbations (the command's default is 1000)
    bootstrap: int = 1000       # resamples for the evaluation's intervals
    # One PyTorch thread: the demo's model is small, and on cores that other processes also use,
    # two OpenMP threads spin-wait for each other (a training step: 133 img/s on one, 10 on two).
    threads: int = 1


@dataclass
class DemoResult:
    out: Path
    stages: dict[str, object] = field(default_factory=dict)


def run_demo(out: Path, seed: int = 0, settings: DemoSettings = DemoSettings(), overwrite: bool = False,
             announce: Callable[..., None] = lambda stage, detail, path=None: None,
             train_display: Callable[[int], ContextManager[dict]] | None = None) -> DemoResult:
    """Every stage on synthetic phantoms under ``out``; an existing demo folder is replaced only when the new one is complete.

    ``announce(stage, detail, path=None)`` is called as each stage ends (``path``: the file or folder it wrote);
    ``train_display(epochs)`` gives the training callbacks while training runs (see :func:`cxrclf.console.train_display`).
    """
    out = Path(out)
    with io.rebuilt_in_place(out, overwrite, kind="demo"):
        return _stages(out, seed, settings, announce, train_display or (lambda epochs: contextlib.nullcontext({})))


def _stages(out: Path, seed: int, settings: DemoSettings, announce, train_display) -> DemoResult:
    from cxrclf.data import audit, synthetic
    from cxrclf.data.fuse import FuseOptions, fuse
    from cxrclf.prepare import preprocess_folder
    from cxrclf.preprocess.params import PreprocessParams

    workers = os.cpu_count() or 1
    result = DemoResult(out)
    # each stage writes its own folder atomically, as the commands do
    sources = synthetic.write_sources(out / "sources", seed=seed, per_class=settings.per_class, size=settings.phantom_size)
    announce("sources", "synthetic Cohen (CSV + PNG/JPEG), RSNA (CSV + DICOM) and NLM (PNG) phantoms", out / "sources")

    fused = out / "data" / "fused"
    report = fuse(FuseOptions(cohen=sources["cohen"], rsna=sources["rsna"], nlm=sources["nlm"], seed=seed, workers=workers), fused)
    result.stages["fuse"] = report
    announce("fuse", f"{report['images']} images of {report['patients']} patients, split by patient", fused)
    for line in report["confounding"]["warnings"]:
        announce("warning", line)
    found = audit.audit(fused)
    result.stages["audit"] = found
    if found["leakage"]:
        raise CxrclfError("the demo's fused dataset failed its own leakage audit", fused)
    announce("audit", "no patient and no identical or near-identical image shared between splits")

    prepared = out / "data" / "preprocessed"
    summary = preprocess_folder(fused, prepared, PreprocessParams(size=settings.size), workers=workers, figures=2)
    result.stages["preprocess"] = summary
    announce("preprocess", f"text removed, adaptive-TV denoised, resized to {settings.size} px", prepared)

    announce("train", f"{MODEL} from scratch, 4 classes, oversampling, {settings.epochs} epochs at {settings.size} px")
    run_dir = out / "runs" / f"{MODEL}-RM4"
    with train_display(settings.epochs) as callbacks:
        from cxrclf.train.loop import TrainOptions, train  # imports PyTorch: inside the display, whose spinner shows meanwhile

        with torch_threads(settings.threads):
            trained = train(TrainOptions(model=MODEL, strategy="oversample", classes=4, data=prepared, out=run_dir, epochs=settings.epochs,
                                         patience=settings.epochs, batch_size=16, lr=2e-3, seed=seed, image_size=settings.size,
                                         threads=settings.threads), **{k: v for k, v in callbacks.items() if k != "on_info"})
    result.stages["train"] = trained
    announce("train", f"best epoch {trained.config.outcome.best_epoch} of {trained.config.outcome.epochs_run}", run_dir)
    with torch_threads(settings.threads):
        _use_the_run(out, seed, settings, announce, prepared, sources, run_dir, result)
    return result


def _use_the_run(out: Path, seed: int, settings: DemoSettings, announce, prepared: Path, sources: dict, run_dir: Path, result: DemoResult) -> None:
    """Evaluate, predict (the photograph included) and explain with the demo's run."""
    from cxrclf.evaluate.evaluation import EvaluateOptions, evaluate

    from cxrclf.card import write_card
    from cxrclf.evaluate.html import write_html

    evaluated = evaluate(EvaluateOptions(run=run_dir, bootstrap=settings.bootstrap, seed=seed, workers=os.cpu_count() or 1))
    _add_note(Path(evaluated.out) / "report.md", PERFECT_SCORES_NOTE)
    write_html(Path(evaluated.out) / "report.md")  # again, with the note
    result.stages["evaluate"] = evaluated
    interval, macro_auc = evaluated.metrics.interval("macro_auc"), evaluated.metrics.point["macro_auc"]
    perfect = " (perfect, as expected on phantoms: the report says why)" if macro_auc == 1.0 else ""
    announce("evaluate", f"test macro AUC {macro_auc:.3f}, 95% CI {interval[0]:.3f}-{interval[1]:.3f}{perfect}", Path(evaluated.out) / "report.html")
    result.stages["card"] = write_card(run_dir, [Path(evaluated.out)])
    announce("card", "the run's model card: intended use, data, metrics per source, shortcuts, guard, failure modes", result.stages["card"])

    from cxrclf.explain.explain import explain_image
    from cxrclf.inference import RunPredictor
    from cxrclf.predict import predict_files

    predictor = RunPredictor(run_dir, "cpu")
    test_rows = __import__("pandas").read_csv(prepared / "manifest.csv").query("split == 'test'")
    folder_of = {"cohen": sources["cohen"], "rsna": sources["rsna"], "montgomery": sources["nlm"]}
    originals = [folder_of[row.source] / row.source_file for row in test_rows.drop_duplicates("finding").itertuples()]
    photograph = _write_photograph(out / "photographs" / "astronaut.png")
    predictions = predict_files(predictor, [*originals, photograph], workers=1)
    result.stages["predict"] = predictions
    for p in predictions:
        if p.error is not None:
            raise CxrclfError(f"the demo could not classify its own image ({p.error})", p.file)
        flag = "  FLAGGED: " + "; ".join(p.warnings) if p.warnings else ""
        announce("predict", f"{p.predicted} ({max(p.probabilities.values()):.2f}){flag}", p.file)

    explanations = out / "explanations"
    covid = next((Path(p.file) for p in predictions if "cohen" in p.file and p.predicted == "covid19"), originals[0])
    pictures = []
    for method in ("lime", "gradcam"):
        explained = explain_image(predictor, covid, method=method, num_samples=settings.lime_samples, seed=seed,
                                  out=explanations / f"{covid.stem}.{method}.png")
        pictures.append(explained.out)
    result.stages["explain"] = pictures
    announce("explain", f"LIME ({settings.lime_samples} samples) and Grad-CAM of {covid.name}", explanations)


def _write_photograph(path: Path) -> Path:
    """scikit-image's astronaut (a colour photograph shipped with the library) as a PNG: an image that is no X-ray."""
    import cv2
    from skimage import data

    from cxrclf.data.imageio import encode_png

    io.write_bytes(path, encode_png(cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)))
    return path


def _add_note(report: Path, note: str) -> None:
    """Put ``note`` under the report's title, where a reader of the demo's perfect scores looks first."""
    title, _, rest = report.read_text(encoding="utf-8").partition("\n")
    io.write_text(report, f"{title}\n\n{note}\n{rest}")
