"""What ``cxrclf segment`` shows people: a progress bar per epoch with images/s and ETA, a line per epoch, tables."""

from __future__ import annotations

import contextlib
from typing import Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cxrclf.console import errors

__all__ = ["results_table", "training_display"]


@contextlib.contextmanager
def training_display(epochs: int, quiet: bool = False) -> Iterator[dict]:
    """Callbacks for :func:`cxrclf.segment.train.train_segmenter`."""
    if quiet:
        yield {}
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
    progress = Progress(*columns, console=errors, transient=True)
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


def results_table(results: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in (("file", "left"), ("lung area", "right"), ("mask", "left"), ("note", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for r in results:
        if "error" in r:
            table.add_row(r["file"], "", "", f"[red]{r['error']}[/red]")
        else:
            table.add_row(r["file"], f"{r['lung_area']:.1%}", r["mask"], f"[yellow]{r['warning']}[/yellow]" if r["warning"] else "")
    return table
