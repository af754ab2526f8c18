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

from cxrclf import folders
from cxrclf.errors import CxrclfError

app = typer.Typer(
    name="cxrclf",
    help="Leakage-free classification of posteroanterior chest X-rays: normal, COVID-19, other pneumonia, tuberculosis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": os.environ.get("CXRCLF_DEBUG", "") not in ("", "0")}


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of errors.")] = False,
) -> None:
    if debug:
        _state["debug"] = True


def _views(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip().upper() for value in values for v in value.split(",") if v.strip())


@app.command()
def fuse(
    cohen: Annotated[Optional[Path], typer.Option(help="Cohen covid-chestxray-dataset folder (metadata.csv + images/).")] = None,
    rsna: Annotated[Optional[Path], typer.Option(help="RSNA pneumonia folder (stage_2_*.csv + stage_2_train_images/).")] = None,
    nlm: Annotated[Optional[Path], typer.Option(help="NLM tuberculosis folder: Montgomery, Shenzhen, or a parent of both.")] = None,
    shenzhen: Annotated[Optional[Path], typer.Option(help="A separate Shenzhen folder (ChinaSet_AllFiles or its parent).")] = None,
    table: Annotated[Optional[list[Path]], typer.Option("--table", help="Your own images: a CSV of path,finding[,patient_id,view,sex,age]. Repeatable.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = folders.FUSED,
    views: Annotated[list[str], typer.Option("--views", help="Radiographic views to keep (repeatable or comma-separated).")] = ["PA"],
    rsna_not_normal: Annotated[str, typer.Option(help="RSNA 'No Lung Opacity / Not Normal': exclude (default) or normal (the paper's choice).")] = "exclude",
    test_frac: Annotated[float, typer.Option(help="Fraction of images for the test split.")] = 0.1,
    val_frac: Annotated[float, typer.Option(help="Fraction of images for the validation split.")] = 0.1,
    folds: Annotated[int, typer.Option(help="Cross-validation folds over train+val.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the patient-level split.")] = 0,
    near_duplicate_bits: Annotated[int, typer.Option(help="Images whose perceptual hashes differ in at most this many of 256 bits are kept in one split.")] = 24,
    workers: Annotated[int, typer.Option(help="Parallel decoding processes (default: all cores).")] = os.cpu_count() or 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of tables.")] = False,
) -> None:
    """Merge Cohen, RSNA and NLM (and your own tables) into one patient-level split dataset."""
    from cxrclf.console import console, count_table, progress_bar, key_value_table
    from cxrclf.data.fuse import FuseOptions, fuse as run_fuse

    options = FuseOptions(
        cohen=cohen, rsna=rsna, nlm=nlm, shenzhen=shenzhen, tables=tuple(table or ()), views=_views(views),
        rsna_not_normal=rsna_not_normal, test_frac=test_frac, val_frac=val_frac, folds=folds, seed=seed,
        near_duplicate_bits=near_duplicate_bits, workers=max(1, workers),
    )
    with progress_bar("decoding", quiet=as_json) as update:
        report = run_fuse(options, out, overwrite=overwrite, progress=update)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console.print(count_table("Images per source and finding (paper's Table 1)", report["source_x_finding"], "source"))
    console.print(count_table("Images per split and finding (paper's Table 2)", report["split_x_finding"], "split"))
    if report["excluded"]["by_source"]:
        console.print(count_table("Excluded rows by reason", report["excluded"]["by_source"], "source"))
    console.print(key_value_table("Leakage guards", {
        "patients": report["patients"], "patient groups (split units)": report["groups"],
        "exact duplicates collapsed": sum(len(d["dropped"]) for d in report["exact_duplicates"] if d["kept"]),
        "near-duplicate links across patients": len(report["near_duplicates_across_patients"]),
    }))
    for finding, source in report["single_source_findings"].items():
        console.print(f"[yellow]warning:[/yellow] every {finding} image comes from {source}: a model can learn the source instead of the finding")
    console.print(f"wrote {out}/manifest.csv, {out}/images/ and {out}/fuse_report.json")


@app.command()
def audit(
    manifest: Annotated[Path, typer.Argument(help="A manifest.csv or the folder holding it.")] = folders.FUSED,
    near_duplicate_bits: Annotated[int, typer.Option(help="Perceptual-hash distance (of 256 bits) counted as near-identical.")] = 24,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check a manifest for leakage between splits. Exit 1 when any is found."""
    from cxrclf.console import console, count_table, key_value_table
    from cxrclf.data.audit import audit as run_audit

    result = run_audit(manifest, near_duplicate_bits)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        console.print(key_value_table(f"Leakage audit of {manifest}", {
            "rows": result["rows"],
            "patients in several splits": len(result["patients_in_several_splits"]),
            "identical images across splits": len(result["identical_images_across_splits"]),
            "near-identical images across splits": len(result["near_identical_images_across_splits"]),
            "identical images repeated within a split": result["identical_images_repeated_within_a_split"],
        }))
        if result["finding_x_source"]:
            console.print(count_table("Findings by source", result["finding_x_source"], "finding"))
        for finding, source in result["single_source_findings"].items():
            console.print(f"[yellow]warning:[/yellow] every {finding} image comes from {source} (source confounding)")
        console.print("[red]leakage found[/red]" if result["leakage"] else "[green]no leakage found[/green]")
    raise typer.Exit(1 if result["leakage"] else 0)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's sources, data and outputs.")] = Path("cxrclf-demo"),
    seed: Annotated[int, typer.Option(help="Seed of the phantoms and the split.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing demo folder.")] = False,
) -> None:
    """Run the whole pipeline on built-in synthetic phantoms (nothing is downloaded)."""
    from cxrclf.console import console, count_table
    from cxrclf.demo import run_demo

    def announce(stage: str, detail: str) -> None:
        console.print(f"[bold green]{stage:>8}[/bold green]  {detail}")

    result = run_demo(out, seed=seed, overwrite=overwrite, announce=announce)
    console.print(count_table("Demo images per split and finding", result.stages["fuse"]["split_x_finding"], "split"))
    console.print(f"demo finished: everything is in {out}/")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="cxrclf")
    except CxrclfError as exc:
        if _state["debug"]:
            raise
        print(f"cxrclf: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("cxrclf: interrupted", file=sys.stderr)
        sys.exit(130)
