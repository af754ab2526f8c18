"""How the commands describe themselves in ``--help``.

Help is click's plain layout (the app sets typer's ``rich_markup_mode`` to None): it wraps
to the terminal at any width and in pipes, never cuts an option name (rich's panels cut
``--trainable-blocks`` to ``--trainable-blo…`` at 80 columns) and never reads help text as
markup (rich turned "needs cxrclf[tensorboard]" into "needs cxrclf"). This module adds the
usual notation for positional arguments, which typer writes as ``{IMAGE...}...`` and
``IMAGE... <list[Path]>``: ``IMAGE...`` for a required, repeatable argument, ``[SOURCE]``
for an optional one. Defaults are shown from the parameter itself; options whose default
lives in a parameters dataclass take it from there (see ``cli.py``).
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand

__all__ = ["Command", "Typer", "argument_usage"]


def argument_usage(param: Any) -> str:
    """``IMAGE...`` (required, repeatable), ``IMAGE`` (required), ``[SOURCE]`` (optional), ``[RUN]...``."""
    name = (param.metavar or param.name or "").rstrip(".").upper()
    repeated = "..." if param.nargs != 1 else ""
    return f"{name}{repeated}" if param.required else f"[{name}]{repeated}"


class Command(TyperCommand):
    """A typer command whose usage line and argument list use the usual notation."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [argument_usage(p) for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            name, text = record
            if isinstance(param.show_default, str):  # typer writes a described default as "(all cores)"
                text = text.replace(f"default: ({param.show_default})", f"default: {param.show_default}", 1)
            if param.param_type_name == "argument":
                arguments.append((argument_usage(param).strip("[]."), text))
            else:
                options.append((name, text))
        for title, records in (("Arguments", arguments), ("Options", options)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


class Typer(typer.Typer):
    """A typer app whose commands are :class:`Command` unless they ask for another class."""

    def command(self, *args, cls: type[TyperCommand] | None = None, **kwargs):
        return super().command(*args, cls=cls or Command, **kwargs)
