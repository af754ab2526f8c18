"""The ``cxrclf`` command line: each command parses, calls one library function, renders.

Heavy libraries (torch, timm, lime, scikit-image) are imported inside the commands that
need them, so ``cxrclf --help`` and ``cxrclf fuse`` start fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from cxrclf import folders
from cxrclf.choices import Augment, Backend, Denoise, Device, ExportFormat, ExplainMethod, Fit, Inpaint, Intensity, Lung, Recipe, RsnaNotNormal, SelectBy, Split, Strategy, TableFormat
from cxrclf.cli_help import Typer
from cxrclf.demo import DemoSettings
from cxrclf.errors import CxrclfError
from cxrclf.preprocess.params import PreprocessParams  # the defaults of `preprocess` (imports numpy and OpenCV: about 0.1 s)
from cxrclf.runs import ModelSpec, TrainingSpec  # the defaults of `train`
from cxrclf.segment.run import DEFAULT_ENCODER, DEFAULT_INPUT_SIZE, DEFAULT_RUN, SegmentData, SegmentTraining  # the defaults of `segment train`

app = Typer(
    name="cxrclf",
    help="Leakage-free classification of posteroanterior chest X-rays: normal, COVID-19, other pneumonia, tuberculosis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # click's plain help: wraps at any width, never cuts option names, never reads [brackets] as markup
)

_state = {"debug": os.environ.get("CXRCLF_DEBUG", "") not in ("", "0")}


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of errors.")] = False,
    max_pixels: Annotated[Optional[int], typer.Option(help="Refuse images with more pixels than this (decompression bombs); default 80,000,000, or $CXRCLF_MAX_PIXELS.")] = None,
) -> None:
    if debug:
        _state["debug"] = True
    if max_pixels is not None:
        if max_pixels < 1:
            raise CxrclfError(f"the pixel limit must be positive, not {max_pixels}")
        os.environ["CXRCLF_MAX_PIXELS"] = str(max_pixels)  # worker processes inherit it
    _check_environment()


def _check_environment() -> None:
    """Environment overrides, validated once at start: a bad value is one error naming the variable, not a failure per image."""
    from cxrclf.data.imageio import max_pixels
    from cxrclf.segment.ort import chosen_backend

    max_pixels()
    chosen_backend()
    cache = os.environ.get("CXRCLF_CACHE", "").strip()
    if cache and Path(cache).expanduser().exists() and not Path(cache).expanduser().is_dir():
        raise CxrclfError(f"CXRCLF_CACHE={cache!r} must name a folder for training's image caches, and it is a file; fix or unset it")
    for variable, what in (("CXRCLF_MODEL", "a run folder"), ("CXRCLF_LUNG_MODEL", "a lung segmentation run folder"), ("CXRCLF_WEIGHTS", "a folder of weights")):
        value = os.environ.get(variable, "").strip()
        if value and not (variable == "CXRCLF_LUNG_MODEL" and value == "builtin") and not Path(value).expanduser().is_dir():
            raise CxrclfError(f"{variable}={value!r} must name {what}, and {'nothing is there' if not Path(value).expanduser().exists() else 'it is not a folder'}; "
                              "fix or unset it")


_THREADS_HELP = "PyTorch CPU threads (default: $OMP_NUM_THREADS, else every CPU this process may run on)."


def _views(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip().upper() for value in values for v in value.split(",") if v.strip())


@app.command()
def fuse(
    cohen: Annotated[Optional[Path], typer.Option(help="Cohen covid-chestxray-dataset folder (metadata.csv + images/).")] = None,
    rsna: Annotated[Optional[Path], typer.Option(help="RSNA pneumonia folder (stage_2_*.csv + stage_2_train_images/).")] = None,
    nih: Annotated[Optional[Path], typer.Option(help="NIH ChestX-ray14 folder (Data_Entry_2017.csv + images/ or images_001/images/ ...).")] = None,
    nlm: Annotated[Optional[Path], typer.Option(help="NLM tuberculosis folder: Montgomery, Shenzhen, or a parent of both.")] = None,
    shenzhen: Annotated[Optional[Path], typer.Option(help="A separate Shenzhen folder (ChinaSet_AllFiles or its parent).")] = None,
    table: Annotated[Optional[list[Path]], typer.Option("--table", metavar="CSV", help="Your own images: a CSV of path,finding[,patient_id,view,sex,age]. Repeatable.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = folders.FUSED,
    views: Annotated[list[str], typer.Option("--views", metavar="VIEW[,VIEW]", help="Radiographic views to keep (repeatable or comma-separated).")] = ["PA"],
    rsna_not_normal: Annotated[RsnaNotNormal, typer.Option(help="RSNA 'No Lung Opacity / Not Normal': exclude, or normal (the paper's choice).")] = RsnaNotNormal.exclude,
    test_frac: Annotated[float, typer.Option(help="Fraction of images for the test split.")] = 0.1,
    val_frac: Annotated[float, typer.Option(help="Fraction of images for the validation split.")] = 0.1,
    folds: Annotated[int, typer.Option(help="Cross-validation folds over train+val.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the patient-level split.")] = 0,
    near_duplicate_bits: Annotated[int, typer.Option(help="Images whose perceptual hashes differ in at most this many of 256 bits are kept in one split.")] = 24,
    same_xray_bits: Annotated[int, typer.Option(help="Images of two sources whose perceptual hashes differ in at most this many bits are one X-ray, kept once.")] = 16,
    workers: Annotated[int, typer.Option(help="Parallel decoding processes.", show_default="all cores")] = os.cpu_count() or 1,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of tables.")] = False,
) -> None:
    """Merge Cohen, RSNA, NIH and NLM (and your own tables) into one patient-level split dataset."""
    from cxrclf.console import confounding_table, console, count_table, progress_bar, key_value_table, wrote
    from cxrclf.data.fuse import FuseOptions, fuse as run_fuse

    options = FuseOptions(
        cohen=cohen, rsna=rsna, nih=nih, nlm=nlm, shenzhen=shenzhen, tables=tuple(table or ()), views=_views(views),
        rsna_not_normal=rsna_not_normal, test_frac=test_frac, val_frac=val_frac, folds=folds, seed=seed,
        near_duplicate_bits=near_duplicate_bits, same_xray_bits=same_xray_bits, workers=max(1, workers),
    )
    with progress_bar("decoding", quiet=as_json) as update:
        report = run_fuse(options, out, overwrite=overwrite, progress=update)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    confounding_table(report["confounding"])  # the paper's Table 1, by finding, and a warning per finding from one source alone
    console.print(count_table("Images per split and finding (paper's Table 2)", report["split_x_finding"], "split"))
    if report["excluded"]["by_source"]:
        console.print(count_table("Excluded rows by reason", report["excluded"]["by_source"], "source"))
    console.print(key_value_table("Leakage guards", {
        "patients": report["patients"], "patient groups (split units)": report["groups"],
        "exact duplicates collapsed": sum(len(d["dropped"]) for d in report["exact_duplicates"] if d["kept"]),
        "near-duplicate links across patients": len(report["near_duplicates_across_patients"]),
    }))
    for pair, counts in report["same_xray_by_source_pair"].items():
        console.print(f"same X-ray in {pair.replace('+', ' and ')}: {counts['x_rays']} (kept once: {counts['kept once']}; "
                      f"excluded, findings disagree: {counts['excluded, findings disagree']})")
    wrote([out / "manifest.csv", f"{out / 'images'}/", out / "fuse_report.json"])


@app.command()
def audit(
    manifest: Annotated[Path, typer.Argument(help="A manifest.csv or the folder holding it.", metavar="MANIFEST")] = folders.FUSED,
    near_duplicate_bits: Annotated[int, typer.Option(help="Perceptual-hash distance (of 256 bits) counted as near-identical.")] = 24,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check a manifest for leakage between splits, and show its findings by source (confounding). Exit 1 when leakage is found."""
    from cxrclf.console import confounding_table, console, heading, key_value_table, status
    from cxrclf.data.audit import audit as run_audit

    with status(f"auditing {manifest}", quiet=as_json):
        result = run_audit(manifest, near_duplicate_bits)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        heading("Leakage audit of", manifest)
        console.print(key_value_table(None, {
            "rows": result["rows"],
            "patients in several splits": len(result["patients_in_several_splits"]),
            "identical images across splits": len(result["identical_images_across_splits"]),
            "near-identical images across splits": len(result["near_identical_images_across_splits"]),
            "identical images repeated within a split": result["identical_images_repeated_within_a_split"],
        }))
        confounding_table(result["confounding"])
        console.print("[red]leakage found[/red]" if result["leakage"] else "[green]no leakage found[/green]")
    raise typer.Exit(1 if result["leakage"] else 0)


@app.command()
def preprocess(
    source: Annotated[Path, typer.Argument(help="A fused folder, or one image file for a preview.", metavar="SOURCE")] = folders.FUSED,
    out: Annotated[Optional[Path], typer.Option(help="Output folder, or OUT.png for a one-image preview.", show_default=str(folders.PREPROCESSED))] = None,
    size: Annotated[int, typer.Option(help="Output side in pixels (the paper: 331).")] = PreprocessParams.size,
    channels: Annotated[int, typer.Option(help="3 (grey replicated) or 1.")] = PreprocessParams.channels,
    fit: Annotated[Fit, typer.Option(help="stretch (the paper) or pad (keep the aspect ratio).")] = PreprocessParams.fit,
    text_threshold: Annotated[float, typer.Option(help="Text mask threshold, a fraction of the intensity range (Eq. 4).")] = PreprocessParams.text_threshold,
    no_text_removal: Annotated[bool, typer.Option("--no-text-removal", help="Skip text and marker removal.")] = False,
    inpaint: Annotated[Inpaint, typer.Option(help="Inpainting method.")] = PreprocessParams.inpaint,
    inpaint_radius: Annotated[float, typer.Option(help="Inpainting radius in pixels.")] = PreprocessParams.inpaint_radius,
    denoise: Annotated[Denoise, typer.Option(help="adaptive-tv (Eq. 5) or none.")] = PreprocessParams.denoise,
    tv_weight: Annotated[Optional[str], typer.Option(help="TV strength lambda, or 'auto': chosen per image from its estimated noise.")] = str(PreprocessParams.tv_weight),
    tv_k: Annotated[float, typer.Option(help="Edge contrast parameter k of the adaptive weight.")] = PreprocessParams.tv_k,
    tv_sigma: Annotated[float, typer.Option(help="Gaussian sigma of the edge detector.")] = PreprocessParams.tv_sigma,
    tv_iterations: Annotated[int, typer.Option(help="Solver iterations.")] = PreprocessParams.tv_iterations,
    lung: Annotated[Lung, typer.Option(help="none (the paper), crop to the lungs' box (the mediastinum kept), or mask: grey out all but the lung fields.")] = PreprocessParams.lung,
    lung_model: Annotated[Optional[Path], typer.Option(help="Lung segmentation run for --lung crop|mask, or 'builtin' (default: $CXRCLF_LUNG_MODEL, else the built-in segmenter).")] = None,
    lung_margin: Annotated[float, typer.Option(help="Margin around the lungs, a fraction of their box's side.")] = PreprocessParams.lung_margin,
    harmonize: Annotated[bool, typer.Option("--harmonize", help="Give every source one look: the coarsest source's detail (--detail-size 128) and one intensity normalisation (--intensity match).")] = False,
    detail_size: Annotated[Optional[int], typer.Option(help="Bring the short side down to this many pixels before the output size, 0 for off.", show_default="128 with --harmonize, else 0")] = None,
    intensity: Annotated[Optional[Intensity], typer.Option(help="none, clahe, or match: a fixed reference histogram.", show_default="match with --harmonize, else none")] = None,
    clahe_clip: Annotated[float, typer.Option(help="CLAHE clip limit, for --intensity clahe.")] = PreprocessParams.clahe_clip,
    clahe_grid: Annotated[int, typer.Option(help="CLAHE tiles per side, for --intensity clahe.")] = PreprocessParams.clahe_grid,
    deblock: Annotated[bool, typer.Option("--deblock", help="A light bilateral filter against JPEG blocks.")] = False,
    workers: Annotated[int, typer.Option(help="Parallel processes.", show_default="all cores")] = os.cpu_count() or 1,
    figures: Annotated[int, typer.Option(help="Write stage-by-stage panels with histograms for this many images.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output made with other parameters.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Remove burned-in text, denoise (adaptive TV) and resize (--harmonize: one look for every source); resumable and parallel."""
    from dataclasses import replace

    from cxrclf.console import console, count_table, path_line, progress_bar, wrote
    from cxrclf.segment.run import lung_params
    from cxrclf.preprocess.harmonize import harmonization
    from cxrclf.preprocess.params import PreprocessParams, parse_tv_weight

    given = {
        "size": size, "channels": channels, "fit": fit, "remove_text": not no_text_removal, "text_threshold": text_threshold,
        "inpaint": inpaint, "inpaint_radius": inpaint_radius, "denoise": denoise, "tv_weight": parse_tv_weight(tv_weight), "tv_k": tv_k,
        "tv_sigma": tv_sigma, "tv_iterations": tv_iterations, "lung_margin": lung_margin, **lung_params(lung, lung_model),
        **harmonization(harmonize, detail_size, intensity, deblock), "clahe_clip": clahe_clip, "clahe_grid": clahe_grid,
    }
    params = replace(PreprocessParams(), **{k: v for k, v in given.items() if v is not None}).validate()
    if source.is_file():
        from cxrclf.prepare import preview

        if out is None:
            raise CxrclfError("a one-image preview needs --out OUT.png", source)
        height, width = preview(source, out, params)
        wrote([out], label=f"wrote a {width}x{height}x{params.channels} preview")
        return
    from cxrclf.prepare import preprocess_folder

    out = out or folders.PREPROCESSED
    if not source.exists():
        raise CxrclfError("no such folder or image (run `cxrclf fuse` first, or name a fused folder)", source)
    if not as_json:
        path_line(f"reading {source}, writing {out}")
    with progress_bar("preprocessing", quiet=as_json) as update:
        summary = preprocess_folder(source, out, params, workers=max(1, workers), figures=figures, overwrite=overwrite, progress=update)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console.print(count_table("Preprocessed images per split and finding", summary["split_x_finding"], "split"))
    repaired = f" ({summary['repaired']} of them damaged outputs redone)" if summary.get("repaired") else ""
    console.print(f"{summary['processed_now']} processed now{repaired}, {summary['reused']} already done and verified, {summary['skipped']} skipped (listed in skipped.csv)")
    wrote([out / "manifest.csv", f"{out / 'images'}/", out / "preprocess.json", out / "skipped.csv"] + ([f"{out / 'figures'}/"] if figures else []))


def _class_constants(values: list[str]) -> dict[str, float]:
    constants = {}
    for value in values:
        name, _, number = value.partition("=")
        try:
            constants[name.strip()] = float(number)
        except ValueError:
            raise CxrclfError(f"--class-constant wants CLASS=NUMBER (for example covid19=2), not {value!r}") from None
    return constants


@app.command()
def train(
    model: Annotated[str, typer.Option(help="resnet-baseline, inception_v3, inception_resnet_v2, densenet169, nasnetalarge (also as the paper spells them: ResNet, InceptionV3, InceptionResNetV2, DenseNet169, NASNetLarge), or any timm model name.")],
    strategy: Annotated[Strategy, typer.Option(help="oversample (scenarios R*) or weighted (class-weighted loss, scenarios C*).")],
    classes: Annotated[int, typer.Option(help="2 (COVID-19 vs rest), 3 (normal, COVID-19, other) or 4.")],
    data: Annotated[Path, typer.Option(help="Preprocessed folder.")] = folders.PREPROCESSED,
    out: Annotated[Optional[Path], typer.Option(help="Run folder.", show_default="runs/<model>-<scenario>")] = None,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = TrainingSpec.epochs,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size (the paper: 10).")] = TrainingSpec.batch_size,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.", show_default="the recipe's: 1e-4 paper, 3e-4 small-data")] = None,
    patience: Annotated[int, typer.Option(help="Early stopping: epochs without a better validation loss.")] = TrainingSpec.patience,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, order and augmentation.")] = TrainingSpec.seed,
    pretrained: Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights (found offline first).")] = TrainingSpec.pretrained,
    weights: Annotated[Optional[Path], typer.Option(help="Pretrained backbone weights (.safetensors or .pth).")] = None,
    trainable_blocks: Annotated[Optional[str], typer.Option(help="Fine-tune the last N backbone blocks, or 'all'.", show_default="the recipe's: 4 paper, all small-data")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Network input side.", show_default="the model's pretrained configuration")] = None,
    dropout: Annotated[float, typer.Option(help="Dropout of the 128-unit head.")] = ModelSpec.dropout,
    fold: Annotated[Optional[int], typer.Option(help="Validate on this cross-validation fold instead of the val split.")] = None,
    cv: Annotated[bool, typer.Option("--cv", help="Train every fold into RUN/fold-K/ and summarise mean and std.")] = False,
    class_constant: Annotated[Optional[list[str]], typer.Option("--class-constant", metavar="CLASS=NUMBER", help="Eq. 1 constant C_c, e.g. covid19=2 (repeatable).")] = None,
    select_by: Annotated[Optional[SelectBy], typer.Option(help="Keep the best epoch by validation loss or AUC.", show_default="the recipe's: loss paper, auc small-data")] = None,
    recipe: Annotated[Recipe, typer.Option(help="paper (Adam, last blocks, no augmentation but the oversampled copies) or small-data (AdamW, warm-up and cosine, all blocks with layer-wise decay, augmentation, label smoothing, weight averaging).")] = TrainingSpec.recipe,
    augment: Annotated[Optional[Augment], typer.Option(help="Override the recipe's augmentation: copies (the paper's), none, light or strong.", show_default="the recipe's: copies paper, light small-data")] = None,
    exclude_source: Annotated[Optional[list[str]], typer.Option("--exclude-source", metavar="SOURCE", help="Leave this source out of training and validation (repeatable): leave-one-source-out experiments.")] = None,
    device: Annotated[Device, typer.Option(help="Where to train.")] = Device.auto,
    threads: Annotated[Optional[int], typer.Option("--threads", "--workers", min=1, help=_THREADS_HELP, show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run folder.")] = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also log to RUN/tensorboard (needs cxrclf[tensorboard]).")] = False,
    operating_point: Annotated[str, typer.Option("--operating-point", metavar="RULE", help="How each class's decision threshold is chosen on validation and stored in the run: youden (Youden's J) or sensitivity=S (reach validation sensitivity S, e.g. sensitivity=0.9).")] = "youden",
    unlearn_source: Annotated[float, typer.Option("--unlearn-source", metavar="WEIGHT", help="Unlearn the source archive: a per-class source adversary behind gradient reversal on the pooled features, reversed at this strength (ramped up over training; e.g. 0.3). 0: off, the paper's training.")] = 0.0,
) -> None:
    """Fine-tune a model on the preprocessed data: the paper's six scenarios and more."""
    from cxrclf.console import console, path_line, status, train_display, train_summary

    quiet = int(os.environ.get("RANK", "0")) != 0
    with status("loading PyTorch", quiet=quiet):
        from cxrclf.train.loop import TrainOptions, cross_validate, train as run_train

    if cv and fold is not None:
        raise CxrclfError("--fold and --cv contradict each other; choose one")
    from cxrclf.runs import OperatingPoint

    operating_point = OperatingPoint.parse_rule(operating_point)  # a bad rule is refused before anything is read or trained
    if trainable_blocks is not None and trainable_blocks != "all" and not trainable_blocks.isdigit():
        raise CxrclfError(f"--trainable-blocks wants a number or 'all', not {trainable_blocks!r}")
    options = TrainOptions(
        model=model, strategy=strategy, classes=classes, data=data, out=out, epochs=epochs, batch_size=batch_size, lr=lr,
        patience=patience, seed=seed, pretrained=pretrained, weights=weights,
        trainable_blocks=None if trainable_blocks is None else "all" if trainable_blocks == "all" else int(trainable_blocks),
        image_size=image_size, dropout=dropout, recipe=recipe, augment=augment,
        fold=fold, class_constants=_class_constants(class_constant or []), select_by=select_by, exclude_sources=tuple(exclude_source or ()),
        device=device, threads=threads,
        resume=resume, overwrite=overwrite, tensorboard=tensorboard, operating_point=operating_point, unlearn_source=unlearn_source,
    )
    if not quiet:
        path_line(f"reading {data}")
    with train_display(epochs, quiet=quiet) as callbacks:
        if cv:
            summary = cross_validate(options, **callbacks)
            if not quiet:
                console.print("cross-validation: " + ", ".join(f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in summary.items() if isinstance(v, dict)))
            return
        summary = run_train(options, **callbacks)
    if not quiet:
        train_summary(summary.config, summary.run)


@app.command()
def evaluate(
    runs: Annotated[Optional[list[Path]], typer.Argument(help="Run folder(s), or a cross-validation parent (its folds averaged) (default: $CXRCLF_MODEL or runs/latest).", metavar="RUN...")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Fused or preprocessed folder to evaluate on (default: the run's own data).")] = None,
    split: Annotated[Split, typer.Option(help="Which split of the data to evaluate on.")] = Split.test,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples over patients for 95% intervals (0: none).")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    sensitivity: Annotated[Optional[float], typer.Option(help="Also show a COVID-19 threshold recomputed on validation to reach this sensitivity, beside the run's stored operating point (for a run without one: the threshold used; default Youden's J).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default RUN/evaluation-<data>-<split>; with --table, where the table files go).")] = None,
    table: Annotated[bool, typer.Option("--table", help="Compare runs in the shape of the paper's Table 4.")] = False,
    table_format: Annotated[TableFormat, typer.Option("--format", help="Table format.")] = TableFormat.md,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing evaluation folder.")] = False,
    tta: Annotated[int, typer.Option(help="Test-time augmentation: average over this many fixed small shifts and scales (1: none; at most 8).")] = 1,
    allow_unfinished: Annotated[bool, typer.Option("--allow-unfinished", help="Evaluate a run whose training did not finish (its best weights so far).")] = False,
    device: Annotated[Device, typer.Option(help="Where to run the model.")] = Device.auto,
    workers: Annotated[int, typer.Option(help="Parallel processes for preprocessing external images.", show_default="all cores")] = os.cpu_count() or 1,
    threads: Annotated[Optional[int], typer.Option(min=1, help=_THREADS_HELP, show_default=False)] = None,
    lung_model: Annotated[Optional[Path], typer.Option(help="Lung segmentation run, or 'builtin': report the mean share of Grad-CAM inside the lungs, per class and source.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics as JSON.")] = False,
) -> None:
    """Metrics with intervals, calibration, per-source breakdown, plots and a report; or a scenario table."""
    from cxrclf import io
    from cxrclf.console import evaluation_summary, status
    from cxrclf.evaluate.evaluation import EvaluateOptions, evaluate as run_evaluate
    from cxrclf.evaluate.report import scenario_markdown, scenario_rows
    from cxrclf.explain.in_lung import lung_attention
    from cxrclf.threads import use_threads

    use_threads(threads)
    targets = runs or [None]
    if len(targets) > 1 and not table:
        raise CxrclfError("several runs need --table (or evaluate them one at a time)")
    if table and out:  # before any evaluation runs: an existing table is refused at once
        for name in ("scenario_table.md", "scenario_table.csv"):
            io.check_output_file(out / name, overwrite=overwrite)
    results = []
    for run in targets:
        options = EvaluateOptions(run=run, data=data, split=split, bootstrap=bootstrap, seed=seed, sensitivity=sensitivity,
                                  out=None if table else out, overwrite=overwrite, allow_unfinished=allow_unfinished, tta=tta, device=device, workers=max(1, workers),
                                  lung_model=lung_model, lung_attention=lung_attention)
        with status(f"evaluating {run or 'the latest run'} on its {split.value} split" if data is None else f"evaluating {run or 'the latest run'} on {data}",
                    quiet=as_json):
            results.append(run_evaluate(options))
        if not as_json and not table:
            evaluation_summary(results[-1])
    if table:
        rows = scenario_rows(results)
        table_csv = io.csv_text(list(rows[0]), [list(r.values()) for r in rows])
        if out:
            io.write_text(out / "scenario_table.md", scenario_markdown(rows))
            io.write_text(out / "scenario_table.csv", table_csv)
        typer.echo((io.json_text(rows) if as_json else scenario_markdown(rows) if table_format is TableFormat.md else table_csv).rstrip("\n"))
        return
    if as_json:
        typer.echo(io.json_text(results[0].to_dict() | {"out": results[0].out}).rstrip("\n"))


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, DICOM) or folders (searched recursively).", metavar="IMAGE...")],
    model: Annotated[Optional[Path], typer.Option(help="Run folder, or a cross-validation parent (its folds averaged) (default: $CXRCLF_MODEL or runs/latest); with --backend onnxruntime, an exported MODEL.onnx.")] = None,
    backend: Annotated[Backend, typer.Option(help="pytorch (a run folder) or onnxruntime (a model from `cxrclf export`: no PyTorch needed).")] = Backend.pytorch,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as one JSON array, an object per input.")] = False,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Also write the results to this CSV file.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --csv file.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass (16 was fastest on a 2-core CPU).")] = 16,
    withhold_flagged: Annotated[bool, typer.Option("--withhold-flagged", help="Give no label to images the input checks or the out-of-distribution guard flag.")] = False,
    tta: Annotated[int, typer.Option(help="Test-time augmentation: average over this many fixed small shifts and scales (1: none; at most 8).")] = 1,
    allow_unfinished: Annotated[bool, typer.Option("--allow-unfinished", help="Use a run whose training did not finish (its best weights so far).")] = False,
    device: Annotated[Device, typer.Option(help="Where to run the model.")] = Device.auto,
    workers: Annotated[int, typer.Option(help="Parallel processes for decoding and preprocessing.", show_default="all cores")] = os.cpu_count() or 1,
    threads: Annotated[Optional[int], typer.Option(min=1, help=_THREADS_HELP + " With --backend onnxruntime, its threads.", show_default=False)] = None,
) -> None:
    """Classify X-ray images with a trained run, preprocessing them exactly as in training; flag images unlike its training images."""
    from cxrclf import io
    from cxrclf.predict import collect_inputs, predict_files, results_csv
    from cxrclf.runs import resolve_run

    files = collect_inputs(inputs)
    if backend is Backend.onnxruntime:  # an exported model: no run folder, and no PyTorch unless the lungs need it
        from cxrclf.runtime import load_exported

        predictor = load_exported(model, device=device.value, tta=tta, threads=threads)
        run, reads = predictor.path, predictor.files
        import importlib.util

        try:
            torch_missing = importlib.util.find_spec("torch") is None
        except (ImportError, ValueError):
            torch_missing = True
        if torch_missing:  # said once, on stderr: --json stays one array of records
            from cxrclf.console import warn

            warn(run, "the lung-based input checks need PyTorch, which is not installed here: they did not run, so laterals, CT "
                      "slices, rotated and negated films are flagged only where the other checks or the guard catch them")
    else:
        run = resolve_run(model)
        reads = run.reads()
    if csv_file is not None:
        io.check_output_file(csv_file, [*inputs, *reads], overwrite=overwrite)
    from cxrclf.console import status

    if backend is Backend.pytorch:
        with status(f"loading {run}", quiet=as_json):
            from cxrclf.inference import load_predictor
            from cxrclf.threads import use_threads

            use_threads(threads)
            predictor = load_predictor(run, device, allow_unfinished=allow_unfinished, tta=tta)
    if predictor.params.uses_lungs:  # a moved or changed lung segmenter: one error, not one per image
        from cxrclf.segment.run import segmenter_for

        segmenter_for(predictor.params)
    with status(f"classifying {len(files)} image{'s' if len(files) != 1 else ''}", quiet=as_json):
        results = predict_files(predictor, files, batch_size=max(1, batch_size), workers=max(1, workers), withhold_flagged=withhold_flagged)
    if csv_file:
        io.write_text(csv_file, results_csv(results))
    from cxrclf.console import batch_shift_warning, predictions_summary

    batch_shift_warning(run, results.shift)  # on stderr, so that --json stays one array of records
    if as_json:
        typer.echo(io.json_text(results.to_list()).rstrip("\n"))
    else:
        predictions_summary(results, run, csv_file)
    if results.failed:
        raise typer.Exit(1)


@app.command()
def shift(
    inputs: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, DICOM) or folders (searched recursively): the batch.", metavar="IMAGE...")],
    model: Annotated[Optional[Path], typer.Option(help="Run folder, or a cross-validation parent (fold 0 tests) (default: $CXRCLF_MODEL or runs/latest).")] = None,
    reference: Annotated[Optional[list[str]], typer.Option("--reference", metavar="SOURCE[,SOURCE]", help="Test against the reference images of these sources only (repeatable or comma-separated; default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    allow_unfinished: Annotated[bool, typer.Option("--allow-unfinished", help="Use a run whose training did not finish (its best weights so far).")] = False,
    device: Annotated[Device, typer.Option(help="Where to run the model.")] = Device.auto,
    workers: Annotated[int, typer.Option(help="Parallel processes for decoding and preprocessing.", show_default="all cores")] = os.cpu_count() or 1,
) -> None:
    """Test whether a batch of images, as a whole, is drawn from the data the run was validated on (a new hospital, scanner or population)."""
    from cxrclf import io
    from cxrclf.console import status
    from cxrclf.predict import collect_inputs, shift_files
    from cxrclf.runs import resolve_run

    files = collect_inputs(inputs)
    run = resolve_run(model)
    sources = [s.strip() for value in reference for s in value.split(",") if s.strip()] if reference else None
    with status(f"loading {run}", quiet=as_json):
        from cxrclf.inference import load_predictor

        predictor = load_predictor(run, device, allow_unfinished=allow_unfinished)
    if predictor.params.uses_lungs:  # a moved or changed lung segmenter: one error, not one per image
        from cxrclf.segment.run import segmenter_for

        segmenter_for(predictor.params)
    with status(f"testing {len(files)} image{'s' if len(files) != 1 else ''}", quiet=as_json):
        result = shift_files(predictor, files, sources, batch_size=max(1, batch_size), workers=max(1, workers))
    result = {"run": str(run)} | result
    if as_json:
        typer.echo(io.json_text(result).rstrip("\n"))
    else:
        from cxrclf.console import console, heading, warn
        from cxrclf.guard.shift import MIN_IMAGES, describe

        for bad in result["unreadable"]:
            warn(bad["file"], bad["error"], kind="error")
        heading("Batch shift test against", run)
        verdict = "shifted" if result["shifted"] else "no shift detected"
        console.print(f"{verdict}: {describe(result)}", highlight=False, markup=False)
        if result["images"] < MIN_IMAGES:
            console.print(f"note: fewer than {MIN_IMAGES} images show only large shifts", highlight=False, markup=False)
    if result["unreadable"]:
        raise typer.Exit(1)


@app.command()
def export(
    run: Annotated[Optional[Path], typer.Argument(help="Run folder, or a cross-validation parent (its folds in one graph) (default: $CXRCLF_MODEL or runs/latest).", metavar="RUN")] = None,
    export_format: Annotated[ExportFormat, typer.Option("--format", help="onnx: a graph that onnxruntime runs without PyTorch.")] = ExportFormat.onnx,
    out: Annotated[Optional[Path], typer.Option(help="MODEL.onnx; its sidecar MODEL.json and the guard's files are written beside it.", show_default="exports/<run name>.onnx")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing export files.")] = False,
    allow_unfinished: Annotated[bool, typer.Option("--allow-unfinished", help="Export a run whose training did not finish (its best weights so far).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the sidecar and the files written as JSON.")] = False,
) -> None:
    """Export a run for inference without PyTorch (predict --backend onnxruntime), checked against PyTorch on real images."""
    from cxrclf.console import status
    from cxrclf.runs import resolve_run

    folder = resolve_run(run)
    out = out or Path("exports") / f"{folder.path.name}.onnx"
    with status(f"exporting {folder} to {export_format.value} and checking it against PyTorch", quiet=as_json):
        from cxrclf.export import export_onnx

        result = export_onnx(folder, out, overwrite=overwrite, allow_unfinished=allow_unfinished)
    if as_json:
        from cxrclf import io

        typer.echo(io.json_text(result).rstrip("\n"))
        return
    from cxrclf.console import console, path_line, wrote

    check = result["verification"]
    console.print(f"onnxruntime agrees with PyTorch on {check['images']} inputs ({check['inputs']}): probabilities within "
                  f"{check['max_probability_difference']:.1e} (tolerance {check['tolerance']:g})", highlight=False, markup=False)
    wrote(result["files"])
    console.print("predict with:")
    path_line(f"  cxrclf predict IMAGE --backend onnxruntime --model {out}")


@app.command()
def card(
    run: Annotated[Optional[Path], typer.Argument(help="Run folder, or a cross-validation parent (default: $CXRCLF_MODEL or runs/latest).", metavar="RUN")] = None,
    evaluation: Annotated[Optional[list[Path]], typer.Option("--evaluation", metavar="DIR", help="An evaluation folder to report (repeatable; default: every RUN/evaluation-*/).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="The card's Markdown file.", show_default="RUN/MODEL_CARD.md")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing card.")] = False,
) -> None:
    """Write the run's model card: intended use, training data, recipe, metrics per source with intervals, shortcuts, guard, failure modes."""
    from cxrclf.card import write_card
    from cxrclf.console import wrote
    from cxrclf.runs import resolve_run

    wrote([write_card(resolve_run(run), evaluation, out, overwrite=overwrite)])


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(help="One image file (PNG, JPEG or DICOM).", metavar="IMAGE")],
    model: Annotated[Optional[Path], typer.Option(help="Run folder, or a cross-validation parent (its folds averaged) (default: $CXRCLF_MODEL or runs/latest).")] = None,
    method: Annotated[ExplainMethod, typer.Option(help="lime (superpixels) or gradcam (class activation map).")] = ExplainMethod.lime,
    target: Annotated[Optional[str], typer.Option(help="Class to explain (default: the predicted class).")] = None,
    num_samples: Annotated[int, typer.Option(help="LIME perturbation samples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of LIME's sampling.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output PNG (default explanations/<image>.<method>.png).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output PNG.")] = False,
    allow_unfinished: Annotated[bool, typer.Option("--allow-unfinished", help="Use a run whose training did not finish (its best weights so far).")] = False,
    device: Annotated[Device, typer.Option(help="Where to run the model.")] = Device.auto,
    lung_model: Annotated[Optional[Path], typer.Option(help="Lung segmentation run (or 'builtin') for the share of attribution inside the lungs (default: the run's own if it crops or masks, else the built-in).")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help=_THREADS_HELP, show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print probabilities, the top regions and the in-lung share as JSON.")] = False,
) -> None:
    """Show why the model classifies an image as it does: LIME superpixels or Grad-CAM, and how much of it lies in the lungs."""
    from cxrclf.console import progress_bar, status
    from cxrclf.runs import resolve_run

    run = resolve_run(model)
    with status(f"loading {run}", quiet=as_json):
        from cxrclf.explain.explain import explain_image
        from cxrclf.inference import load_predictor
        from cxrclf.threads import use_threads

        use_threads(threads)
        predictor = load_predictor(run, device, allow_unfinished=allow_unfinished)
    with progress_bar("LIME samples", quiet=as_json, unit="images") as update:
        result = explain_image(predictor, image, method=method, target=target, num_samples=num_samples, seed=seed, out=out,
                               overwrite=overwrite, lung_model=lung_model, progress=update)
    if as_json:
        from cxrclf import io

        typer.echo(io.json_text(result.to_dict()).rstrip("\n"))
        return
    from cxrclf.console import explanation_summary

    explanation_summary(result)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's sources, data, run and explanations.")] = Path("cxrclf-demo"),
    seed: Annotated[int, typer.Option(help="Seed of the phantoms, the split and training.")] = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = DemoSettings.epochs,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing demo folder.")] = False,
) -> None:
    """Run fuse, audit, preprocess, train, evaluate, predict and explain on built-in synthetic phantoms."""
    from dataclasses import replace

    from cxrclf.console import announce, console, evaluation_table, path_line, train_display, wrote
    from cxrclf.demo import run_demo

    console.print(f"cxrclf demo: every stage on synthetic phantoms (nothing is downloaded), into {out}", highlight=False, markup=False, soft_wrap=True)
    result = run_demo(out, seed=seed, settings=replace(DemoSettings(), epochs=epochs), overwrite=overwrite, announce=announce, train_display=train_display)
    evaluated = result.stages["evaluate"]
    console.print(evaluation_table(evaluated))
    wrote([f"{evaluated.out}/report.md", f"{evaluated.out}/report.html", result.stages["card"], *result.stages["explain"]],
          label="report (figures beside it; report.html is one self-contained page), model card and explanations")
    console.print("next:")
    path_line(f"  cxrclf predict IMAGE --model {result.stages['train'].run}")


class _SegmentGroup(TyperGroup):
    """``cxrclf segment IMAGE...`` means ``cxrclf segment apply IMAGE...``; ``cxrclf segment train`` trains."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["apply", *args]
        return super().parse_args(ctx, args)


segment_app = Typer(cls=_SegmentGroup, no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                    help="Lung fields: masks and overlays for images (cxrclf segment IMAGE...), or train the segmenter "
                         "(cxrclf segment train).")
app.add_typer(segment_app, name="segment")


@segment_app.command("train")
def segment_train(
    nlm: Annotated[Optional[Path], typer.Option(help="NLM folder with lung masks: Montgomery (ManualMask/leftMask, rightMask) and/or Shenzhen (mask/*_mask.png).")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="A CSV of image,mask[,patient_id] pairs (paths relative to the CSV).")] = None,
    out: Annotated[Path, typer.Option(help="Segmentation run folder.")] = DEFAULT_RUN,
    encoder: Annotated[str, typer.Option(help="timm encoder (features_only mode).")] = DEFAULT_ENCODER,
    image_size: Annotated[int, typer.Option(help="Network input side, a multiple of 32.")] = DEFAULT_INPUT_SIZE,
    epochs: Annotated[int, typer.Option(help="Maximum epochs.")] = SegmentTraining.epochs,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = SegmentTraining.batch_size,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine decay over the epochs).")] = SegmentTraining.lr,
    patience: Annotated[int, typer.Option(help="Early stopping: epochs without a better validation Dice.")] = SegmentTraining.patience,
    seed: Annotated[int, typer.Option(help="Seed of the patient split, initialisation, order and augmentation.")] = SegmentTraining.seed,
    pretrained: Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="Start the encoder from ImageNet weights (found offline first).")] = SegmentTraining.pretrained,
    weights: Annotated[Optional[Path], typer.Option(help="Encoder weights (.safetensors or .pth) instead of the search.")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random rotation, scale, shift, gamma, contrast and noise on training images.")] = SegmentTraining.augment,
    val_frac: Annotated[float, typer.Option(help="Fraction of patients for validation (choosing the best epoch).")] = SegmentData.val_frac,
    test_frac: Annotated[float, typer.Option(help="Fraction of patients held out for the Dice and IoU in the run folder.")] = SegmentData.test_frac,
    threads: Annotated[Optional[int], typer.Option("--threads", "--workers", min=1, help=_THREADS_HELP, show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing segmentation run folder.")] = False,
) -> None:
    """Train the lung segmenter on X-rays with lung masks; Dice and IoU on held-out patients."""
    from cxrclf.console import console, segment_train_display
    from cxrclf.segment.train import SegmentTrainOptions, train_segmenter

    options = SegmentTrainOptions(nlm=nlm, masks=masks, out=out, encoder=encoder, image_size=image_size, epochs=epochs, batch_size=batch_size, lr=lr,
                                  patience=patience, seed=seed, pretrained=pretrained, weights=weights, augment=augment, val_frac=val_frac,
                                  test_frac=test_frac, threads=threads, resume=resume, overwrite=overwrite)
    with segment_train_display(epochs) as callbacks:
        summary = train_segmenter(options, **callbacks)
    outcome = summary["outcome"]
    for split in ("val", "test"):
        scores = outcome[split]
        if scores:
            console.print(f"{split}: Dice {scores['dice']:.4f} (lowest {scores['dice_min']:.4f}), IoU {scores['iou']:.4f} on {scores['images']} images of "
                          f"{scores['patients']} held-out patients")
    console.print(f"best epoch {outcome['best_epoch']} of {outcome['epochs_run']}; wrote {summary['run']} (config.json, model.safetensors, "
                  "metrics.csv, split.csv, heldout.csv, train.log)")


@segment_app.command("apply")
def segment_apply(
    inputs: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, DICOM) or folders (searched recursively).", metavar="IMAGE...")],
    model: Annotated[Optional[Path], typer.Option(help="Segmentation run, or 'builtin' (default: $CXRCLF_LUNG_MODEL, else the built-in segmenter).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for <image>.mask.png and <image>.overlay.png.")] = Path("segmentations"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing mask and overlay files.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Lung masks (0/255 PNG, the image's size) and overlays for X-ray images; flags images without a pair of lung fields."""
    from cxrclf import io
    from cxrclf.console import console, errors, progress_bar, segment_results_table
    from cxrclf.predict import collect_inputs
    from cxrclf.segment.run import resolve_segment_run

    files = collect_inputs(inputs)
    run = resolve_segment_run(model)
    io.refuse_overlap(out, [*inputs, run.path])  # before the segmenter loads: masks among the X-rays would be segmented next time
    from cxrclf.segment.infer import Segmenter, segment_files

    segmenter = Segmenter(run)
    with progress_bar("segmenting", quiet=as_json) as update:
        results = segment_files(segmenter, files, out, overwrite=overwrite, progress=update, reads=inputs)
    if as_json:
        typer.echo(io.json_text(results).rstrip("\n"))
    else:
        for r in results:
            if r.get("warning"):
                errors.print(f"cxrclf: warning: {r['file']}: {r['warning']}", highlight=False, markup=False)
        console.print(segment_results_table(results, f"Lung fields by {run.path}"))
        console.print(f"wrote {out}/ (<image>.mask.png, <image>.overlay.png)")
    if any("error" in r for r in results):
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2; SIGTERM cleans up and exits 143."""
    from cxrclf import signals
    from cxrclf.threads import passive_wait

    passive_wait()  # before anything imports PyTorch: its OpenMP runtime reads the policy once (cxrclf/threads.py)
    signals.exit_on_sigterm()
    try:
        app(args=argv, prog_name="cxrclf")
    except CxrclfError as exc:
        if _state["debug"]:
            raise
        print(f"cxrclf: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ModuleNotFoundError as exc:
        if not _state["debug"] and exc.name in ("onnxruntime", "onnx"):
            print(f"cxrclf: error: this command needs {exc.name}, which is not installed; install it with "
                  f"pip install 'cxrclf[{'runtime' if exc.name == 'onnxruntime' else 'export'}]'", file=sys.stderr)
            sys.exit(2)
        if _state["debug"] or exc.name not in ("torch", "torchvision", "timm"):
            raise
        # a runtime-only install (docs/usage.md, "Predicting without PyTorch") has onnxruntime instead
        print(f"cxrclf: error: this command needs {exc.name}, which is not installed; without PyTorch, cxrclf predicts only with an exported "
              "model (predict --backend onnxruntime --model MODEL.onnx); install cxrclf with its dependencies for the rest", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cxrclf: interrupted", file=sys.stderr)
        sys.exit(130)
