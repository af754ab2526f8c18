"""Rendering for humans (rich tables, progress) in one place; machines get JSON from the commands.

Rules that hold at any terminal width and in pipes (where rich assumes 80 columns):

- A file or folder name is never cut or broken: it is printed on a line of its own (or at the
  end of one) without wrapping (``soft_wrap``), so the terminal may fold it visually but a copy
  pastes whole, and a pipe gets it in one piece; it is never parsed as markup.
- A table that would not fit the width with every cell whole is not squeezed (rich would cut
  or fold its cells): it is folded into one block per row instead, its key on a line of its own.
- Colour follows rich's rules: none in pipes, none with ``NO_COLOR`` set.
- Nothing runs silently for more than a moment: slow, quiet steps (imports, loading a model)
  show a spinner with the elapsed time on stderr (:func:`status`), long loops a progress bar.
"""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from cxrclf.evaluate.result import Evaluation
    from cxrclf.explain.explain import Explanation
    from cxrclf.predict import Prediction, Predictions
    from cxrclf.runs import RunConfig

__all__ = [
    "announce", "batch_shift_warning", "confounding_table", "console", "count_table", "errors", "evaluation_summary", "evaluation_table", "explanation_summary", "fits", "heading", "indented", "key_value_table", "path_line", "prediction_rows",
    "predictions_summary", "progress_bar", "segment_results_table", "segment_train_display", "status", "train_display", "train_summary", "warn", "wrote",
]

console = Console()
errors = Console(stderr=True)


# ----------------------------------------------------------------------------- lines with paths

def path_line(text: str | Path, target: Console | None = None, style: str | None = None) -> None:
    """One line that holds a path: never wrapped or cut by rich, never read as markup."""
    (target or console).print(Text(str(text), style=style or ""), soft_wrap=True, highlight=False)


def heading(text: str, path: str | Path | None = None, target: Console | None = None) -> None:
    """A bold heading, with a path at its end (``Predictions of runs/latest``) kept whole."""
    line = Text(text, style="bold")
    if path is not None:
        line.append(f" {path}")
    (target or console).print(line, soft_wrap=True, highlight=False)


def wrote(paths: Iterable[str | Path], label: str = "wrote") -> None:
    """``wrote`` and then each path on a line of its own, indented: pasteable at any width."""
    console.print(f"{label}:", highlight=False, markup=False)
    for path in paths:
        path_line(f"  {path}")


def warn(path: str | Path, message: str, kind: str = "warning") -> None:
    """``cxrclf: warning: FILE: MESSAGE`` on stderr, in one unbroken line (a file name inside must paste whole)."""
    errors.print(Text(f"cxrclf: {kind}: {path}: {message}"), soft_wrap=True, highlight=False)


def indented(text: str, indent: int, first: str = "", target: Console | None = None, first_style: str = "") -> None:
    """``text`` wrapped at spaces to the width with a hanging ``indent`` (``first`` in the indent of
    the first line); words, paths among them, are never broken, and lines carry no trailing blanks."""
    target = target or console
    lines = textwrap.wrap(text, width=max(20, target.width - indent), break_long_words=False, break_on_hyphens=False) or [""]
    for number, line in enumerate(lines):
        lead = Text(f"{first:>{indent - 2}}  " if number == 0 and first else " " * indent, style=first_style if number == 0 else "")
        target.print(lead + Text(line), soft_wrap=True, highlight=False)


def announce(stage: str, detail: str, path: str | Path | None = None) -> None:
    """A stage of a multi-step command: the stage name in a column of its own, the detail wrapped
    beside it, then the file or folder the stage wrote on its own line."""
    indented(detail, 12, first=stage, first_style="bold green")
    if path is not None:
        path_line(f"{'':12}{path}")


# ----------------------------------------------------------------------------- tables

def fits(table: Table, target: Console | None = None) -> bool:
    """Whether ``table`` renders within the width with no cell cut, folded or wrapped."""
    target = target or console
    natural = Measurement.get(target, target.options.update(max_width=1_000_000), table)  # unclamped: the width it wants
    return natural.maximum <= target.width


def count_table(title: str | None, counts: dict[str, dict[str, int]], row_name: str) -> Table:
    """A rows x columns table of integer counts, with a total row."""
    columns: list[str] = []
    for values in counts.values():
        for key in values:
            if key not in columns:
                columns.append(key)
    table = Table(title=title, title_justify="left")
    table.add_column(row_name)
    for column in columns:
        table.add_column(column, justify="right")
    totals = dict.fromkeys(columns, 0)
    for row, values in counts.items():
        table.add_row(row, *(str(values.get(c, 0)) for c in columns))
        for c in columns:
            totals[c] += values.get(c, 0)
    if len(counts) > 1:
        table.add_row("[bold]all[/bold]", *(f"[bold]{totals[c]}[/bold]" for c in columns))
    return table


def confounding_table(confounding: dict | None) -> None:
    """The class x source table of :class:`cxrclf.data.confounding.Confounding` (its ``to_dict()``), then one warning line per
    finding that comes from a single source; nothing for a manifest without findings or sources."""
    if not confounding:
        return
    console.print(count_table("Images per finding and source", confounding["finding_x_source"], "finding"))
    for line in confounding["warnings"]:
        console.print(Text("warning: ", style="yellow") + Text(line), highlight=False)  # wrapped at spaces in a narrow terminal


def key_value_table(title: str | None, values: dict[str, object]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in values.items():
        table.add_row(str(key), str(value))
    return table


def prediction_rows(key_header: str, headers: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], target: Console | None = None) -> None:
    """Rows keyed by a file name: a table where every cell fits whole, else one block per row.

    The folded form puts the key (a path) on a line of its own and the values, ``header value``,
    wrapped beneath it, so neither a file name nor a column header is ever cut.
    """
    target = target or console
    table = Table()
    table.add_column(key_header, no_wrap=True)
    for column, header in enumerate(headers):
        numbers = all(_numeric(values[column]) for _, values in rows)
        table.add_column(header, justify="right" if numbers else "left", no_wrap=True)
    for key, values in rows:
        table.add_row(Text(key), *values)
    if fits(table, target):
        target.print(table)
        return
    for key, values in rows:
        path_line(key, target)
        for line in _pack([f"{h} {v}" for h, v in zip(headers, values)], target.width - 4):
            target.print(Text("    " + line), soft_wrap=True, highlight=False)


def evaluation_table(result: Evaluation) -> Table:
    """The headline of an evaluation: macro and COVID-19-vs-rest metrics with 95% intervals."""
    import math

    def cell(value, interval=None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if interval and interval[0] is not None and not (isinstance(interval[0], float) and math.isnan(interval[0])):
            return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
        return f"{value:.3f}"

    measured = result.metrics
    focus = measured.focus.at_argmax
    from cxrclf.models.names import model_label

    table = Table(title=f"{model_label(result.model, result.requested_model)} {result.scenario} on {result.split} ({measured.n_images} images, {measured.n_patients} patients)",
                  title_justify="left")
    table.add_column("metric")
    table.add_column("macro [95% CI]", justify="right")
    table.add_column("COVID-19 vs rest [95% CI]", justify="right")
    for key, label in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("specificity", "specificity"), ("f1", "F1"), ("auc", "AUC")):
        if key == "accuracy":
            table.add_row(label, cell(measured.point["accuracy"], measured.interval("accuracy")), "")
        else:
            table.add_row(label, cell(measured.point[f"macro_{key}"], measured.interval(f"macro_{key}")), cell(focus[key], measured.interval(f"covid19_{key}")))
    table.add_row("ECE / Brier", f"{measured.calibration.ece:.3f} / {measured.calibration.brier:.3f}", "")
    return table


def evaluation_summary(result: Evaluation) -> None:
    """``cxrclf evaluate`` for a person: the headline table, a warning per source the shift test finds shifted, the share of
    Grad-CAM inside the lungs (``--lung-model``), and where the report was written."""
    console.print(evaluation_table(result))
    for source, found in (result.shift or {}).get("per_source", {}).items():
        if found["tested"] and found["shifted"]:
            console.print(f"[yellow]warning:[/yellow] batch shift test: the {found['images']} images of {source} differ from the run's "
                          f"validation images (p = {found['p_value']:.4f}, domain classifier AUC {found['effect']:.2f})", highlight=False)
    attention = result.lung_attention
    if attention:
        share = attention["overall"]["in_lung_share"]
        console.print("Grad-CAM inside the lung fields: " + ("n/a" if share is None else f"{share:.0%} on average"))
        for warning in attention["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {warning}")
    wrote([f"{result.out}/report.md", f"{result.out}/report.html"],
          label="wrote (metrics.json, predictions.csv and figures beside them; report.html is one self-contained page)")


def train_summary(config: RunConfig, run: Path) -> None:
    """``cxrclf train``'s last words: the kept epoch and its validation scores (the run's ``config``), and the folder ``run`` written."""
    outcome = config.outcome
    best = outcome.best
    scores = "n/a, val AUC n/a" if best is None else f"{best.val_loss}, val AUC {'n/a' if best.val_auc is None else best.val_auc}"
    console.print(f"best epoch {outcome.best_epoch} of {outcome.epochs_run}: val loss {scores}")
    wrote([run], label="wrote the run (config.json, model.safetensors, metrics.csv, train.log)")


def predictions_summary(results: Predictions, run: str | Path, written: Path | None = None) -> None:
    """``cxrclf predict`` for a person: each file's error or warnings on stderr, a row per classified image (label, classes
    positive at the run's thresholds, probabilities, out-of-distribution score), notes on what the run lacks, the batch shift
    test's verdict, and the CSV ``written``."""
    from cxrclf.guard.shift import MIN_IMAGES, describe

    rows = []
    for r in results:
        if r.error is not None:
            warn(r.file, r.error, kind="error")
            continue
        for warning in r.warnings:
            warn(r.file, warning)
        rows.append((r.file, _prediction_cells(r, results)))
    if rows:
        heading("Predictions of", run)
        prediction_rows("file", ["predicted", *(["at threshold"] if results.has_operating_point else []), *results.class_names, "OOD score"], rows)
    if not results.has_guard:
        console.print("note: this run carries no out-of-distribution guard (trained before cxrclf had one); only the input checks ran")
    if not results.has_operating_point:
        console.print("note: " + ("a fold ensemble has no operating point (each fold's thresholds fit its own probabilities, not their average)"
                                  if results.ensemble else "this run stores no operating point (trained before cxrclf stored one)")
                      + "; only the most probable class is given", highlight=False, markup=False)
    shift = results.shift
    if shift["tested"] and not shift["shifted"]:
        console.print(f"batch shift test: no shift from the run's validation images detected ({describe(shift)})", highlight=False, markup=False)
    elif not shift["tested"] and shift["images"] >= MIN_IMAGES:  # fewer images are not tested, silently
        console.print(f"note: no batch shift test: {shift['reason']}", highlight=False, markup=False)
    if written:
        wrote([written])


def _prediction_cells(answer: Prediction, results: Predictions) -> list[str]:
    """One row of predict's table: the label (flagged or withheld), the positive classes, each probability, the OOD score."""
    label = answer.predicted or "withheld"
    score = "n/a" if answer.ood_score is None else f"{answer.ood_score:.1f}" + (" !" if answer.in_distribution is False else "")
    positive = [] if not results.has_operating_point else ["+".join(answer.positive) or "none" if answer.positive is not None else "withheld"]
    return [label if answer.in_distribution is not False else f"{label} (flagged)", *positive,
            *(f"{answer.probabilities[c]:.3f}" for c in results.class_names), score]


def explanation_summary(result: Explanation) -> None:
    """``cxrclf explain`` for a person: the warnings on stderr, the image, its answer and the class explained, the share of the
    positive attribution inside the lungs, and the picture written."""
    for warning in result.warnings:
        warn(result.file, warning)
    path_line(result.file)
    indented(f"predicted {result.predicted} (" + ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities.items())
             + f"); explained {result.target} with {result.method.value}", 2)
    share = result.in_lung_share
    console.print("no positive attribution to place" if share is None else f"{share:.0%} of the positive attribution lies inside the lung fields")
    wrote([result.out])


def batch_shift_warning(run: str | Path, shift: dict) -> None:
    """On stderr, where the batch shift test found these images to differ from the run's validation images."""
    if shift["tested"] and shift["shifted"]:
        from cxrclf.guard.shift import describe

        warn(run, f"these {shift['images']} images, as a batch, differ from the run's validation images ({describe(shift)}): "
                  "its validation metrics may not hold for them")


# ----------------------------------------------------------------------------- progress

def _bar_columns() -> tuple:
    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())


@contextlib.contextmanager
def status(message: str, quiet: bool = False) -> Iterator[None]:
    """A spinner with the elapsed time on stderr while a slow step that prints nothing runs
    (importing PyTorch, loading a model, scoring a test set); gone when it ends."""
    if quiet:
        yield
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=errors, transient=True) as progress:
        progress.add_task(message, total=None)
        yield


@contextlib.contextmanager
def progress_bar(description: str, quiet: bool = False, unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """Yields ``update(done, total)``: a rich bar with rate (``unit``/s) and ETA on stderr.

    The bar appears at the first update, so a command that fails while checking its
    inputs prints only its one-line error.
    """
    state: dict = {}

    def update(done: int, total: int) -> None:
        if quiet:
            return
        if "progress" not in state:
            state["progress"] = Progress(*_bar_columns(), console=errors, transient=False)
            state["progress"].start()
            state["task"] = state["progress"].add_task(description, total=total, rate="")
        progress = state["progress"]
        elapsed = progress.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:.1f} {unit}/s" if elapsed > 0 else ""
        progress.update(state["task"], completed=done, total=total, rate=rate)

    try:
        yield update
    finally:
        if "progress" in state:
            state["progress"].stop()


@contextlib.contextmanager
def train_display(epochs: int, quiet: bool = False, starting: str = "starting: reading the images, building the model") -> Iterator[dict]:
    """Callbacks for :func:`cxrclf.train.loop.train`: a spinner until the first step, then a step bar
    with images/s and ETA, and two lines per epoch (losses and AUC; recall per class)."""
    if quiet:
        yield {}
        return
    columns = (SpinnerColumn(), *_bar_columns())
    progress = Progress(*columns, console=errors, transient=True)
    state: dict = {"task": progress.add_task(starting, total=None, rate="")}

    def on_step(epoch: int, done: int, total: int, rate: float) -> None:
        if state.get("epoch") != epoch:
            progress.remove_task(state["task"])
            state["task"] = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=total, rate="")
            state["epoch"] = epoch
        progress.update(state["task"], completed=done, rate=f"{rate:.1f} img/s")

    def on_epoch(row: dict) -> None:
        recalls = ", ".join(f"{k[len('val_recall_'):]} {_short(v)}" for k, v in row.items() if k.startswith("val_recall_"))
        progress.console.print(
            f"epoch {row['epoch']:>3}  loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  acc {row['val_accuracy']:.3f}  "
            f"AUC {_short(row['val_auc'])}  {float(row['images_per_s']):.0f} img/s" + ("  [green]best[/green]" if row["best"] else ""), highlight=False)
        if recalls:
            indented(f"val recall {recalls}", 11, target=progress.console)
        if "source_accuracy" in row:  # --unlearn-source: near chance, the adversary is fooled
            indented(f"source adversary: loss {_short(row['source_loss'])}, balanced accuracy {_short(row['source_accuracy'])}, "
                     f"lambda {_short(row['source_lambda'])}", 11, target=progress.console)

    def on_info(message: str) -> None:
        progress.console.print(Text(message), soft_wrap=True, highlight=False)

    with progress:
        yield {"on_step": on_step, "on_epoch": on_epoch, "on_info": on_info}


@contextlib.contextmanager
def segment_train_display(epochs: int, quiet: bool = False) -> Iterator[dict]:
    """Callbacks for :func:`cxrclf.segment.train.train_segmenter`: a bar while the masks are read, a step bar
    per epoch with images/s and ETA, and a line per epoch (loss, validation Dice and IoU)."""
    if quiet:
        yield {}
        return
    progress = Progress(*_bar_columns(), console=errors, transient=True)
    state: dict = {}

    def switch(key, description: str, total: int) -> None:
        if state.get("key") != key:
            if "task" in state:
                progress.remove_task(state["task"])
            state["task"] = progress.add_task(description, total=total, rate="")
            state["key"] = key

    def on_load(done: int, total: int) -> None:
        switch("load", "reading masks", total)
        progress.update(state["task"], completed=done)

    def on_step(epoch: int, done: int, total: int, rate: float) -> None:
        switch(epoch, f"epoch {epoch + 1}/{epochs}", total)
        progress.update(state["task"], completed=done, rate=f"{rate:.1f} img/s")

    def on_epoch(row: dict) -> None:
        progress.console.print(f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  val Dice {row['val_dice']:.4f}  val IoU {row['val_iou']:.4f}  "
                               f"{row['images_per_s']} img/s" + ("  [green]best[/green]" if row["best"] else ""))

    def on_info(message: str) -> None:
        progress.console.print(message, highlight=False)

    with progress:
        yield {"on_step": on_step, "on_epoch": on_epoch, "on_info": on_info, "on_load": on_load}


def segment_results_table(results: list[dict], title: str) -> Table:
    """``cxrclf segment apply``: per file its lung area and mask, or its error, and why a mask is no pair of lungs."""
    table = Table(title=title, title_justify="left")
    for name, justify in (("file", "left"), ("lung area", "right"), ("mask", "left"), ("note", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for r in results:
        if "error" in r:
            table.add_row(r["file"], "", "", f"[red]{r['error']}[/red]")
        else:
            table.add_row(r["file"], f"{r['lung_area']:.1%}", r["mask"], f"[yellow]{r['warning']}[/yellow]" if r["warning"] else "")
    return table


def _pack(items: list[str], width: int, separator: str = ",  ") -> list[str]:
    """``items`` joined by ``separator`` into lines of at most ``width`` characters, never splitting an item."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(separator) + len(item) <= width:
            lines[-1] += separator + item
        else:
            if lines:
                lines[-1] += separator.rstrip()
            lines.append(item)
    return lines


def _numeric(cell: str) -> bool:
    try:
        float(cell.rstrip(" !"))
    except ValueError:
        return cell == "n/a"
    return True


def _short(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
