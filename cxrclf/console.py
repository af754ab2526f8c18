"""Rendering for humans (rich tables, progress) in one place; machines get JSON from the commands."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()
errors = Console(stderr=True)


def count_table(title: str, counts: dict[str, dict[str, int]], row_name: str) -> Table:
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


def key_value_table(title: str, values: dict[str, object]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in values.items():
        table.add_row(str(key), str(value))
    return table


@contextlib.contextmanager
def progress_bar(description: str, quiet: bool = False) -> Iterator:
    """Yields ``update(done, total)``: a rich bar with rate and ETA on stderr.

    The bar appears at the first update, so a command that fails while checking its
    inputs prints only its one-line error.
    """
    state: dict = {}

    def update(done: int, total: int) -> None:
        if quiet:
            return
        if "progress" not in state:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
            state["progress"] = Progress(*columns, console=errors, transient=False)
            state["progress"].start()
            state["task"] = state["progress"].add_task(description, total=total, rate="")
        progress = state["progress"]
        elapsed = progress.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:.1f} img/s" if elapsed > 0 else ""
        progress.update(state["task"], completed=done, total=total, rate=rate)

    try:
        yield update
    finally:
        if "progress" in state:
            state["progress"].stop()


@contextlib.contextmanager
def train_display(epochs: int, quiet: bool = False) -> Iterator[dict]:
    """Callbacks for :func:`cxrclf.train.loop.train`: a step bar with images/s and ETA, a line per epoch."""
    if quiet:
        yield {}
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
    progress = Progress(*columns, console=errors, transient=True)
    state: dict = {}

    def on_step(epoch: int, done: int, total: int, rate: float) -> None:
        if state.get("epoch") != epoch:
            if "task" in state:
                progress.remove_task(state["task"])
            state["task"] = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=total, rate="")
            state["epoch"] = epoch
        progress.update(state["task"], completed=done, rate=f"{rate:.1f} img/s")

    def on_epoch(row: dict) -> None:
        recalls = " ".join(f"{k[len('val_recall_'):]}={v}" for k, v in row.items() if k.startswith("val_recall_"))
        progress.console.print(
            f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
            f"acc {row['val_accuracy']:.3f}  AUC {row['val_auc']}  recall {recalls}  {row['images_per_s']} img/s" + ("  [green]best[/green]" if row["best"] else "")
        )

    def on_info(message: str) -> None:
        progress.console.print(message)

    with progress:
        yield {"on_step": on_step, "on_epoch": on_epoch, "on_info": on_info}


def evaluation_table(result: dict) -> Table:
    """The headline of an evaluation: macro and COVID-19-vs-rest metrics with 95% intervals."""
    import math

    def cell(value, interval=None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        if interval and interval[0] is not None and not (isinstance(interval[0], float) and math.isnan(interval[0])):
            return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"
        return f"{value:.3f}"

    ci = result.get("intervals", {})
    focus = result["covid19_vs_rest"]["at_argmax"]
    table = Table(title=f"{result['model']} {result['scenario']} on {result['split']} ({result['n_images']} images, {result['n_patients']} patients)", title_justify="left")
    table.add_column("metric")
    table.add_column("macro [95% CI]", justify="right")
    table.add_column("COVID-19 vs rest [95% CI]", justify="right")
    for key, label in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "recall"), ("specificity", "specificity"), ("f1", "F1"), ("auc", "AUC")):
        if key == "accuracy":
            table.add_row(label, cell(result["point"]["accuracy"], ci.get("accuracy")), "")
        else:
            table.add_row(label, cell(result["point"][f"macro_{key}"], ci.get(f"macro_{key}")), cell(focus[key], ci.get(f"covid19_{key}")))
    calibration = result["calibration"]
    table.add_row("ECE / Brier", f"{calibration['ece']:.3f} / {calibration['brier']:.3f}", "")
    return table
