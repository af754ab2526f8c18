"""Every command's --help at 80 columns: whole option names, every default once and from its
single source, bracketed text kept (no markup), usage in the usual notation."""

from __future__ import annotations

import dataclasses
import enum
import re
from pathlib import Path

import pytest
import typer

from cxrclf import cli
from cxrclf.cli_help import argument_usage

WIDTH = 80


def _commands() -> dict[str, object]:
    """Every runnable command by its path (``segment train``), groups walked."""
    found: dict[str, object] = {}

    def walk(command, path: tuple[str, ...]) -> None:
        if getattr(command, "commands", None):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))
        else:
            found[" ".join(path)] = command

    walk(typer.main.get_command(cli.app), ())
    return found


COMMANDS = _commands()


@pytest.fixture
def help_of(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))  # click wraps help to the terminal; a pipe counts as 80

    def render(path: str) -> str:
        result = run_cli(*path.split(), "--help")
        assert result.exit_code == 0, result.stderr
        return result.stdout

    return render


def _flat(text: str) -> str:
    """Help text with wrapping undone: one space wherever the formatter broke a line."""
    return re.sub(r"\s+", " ", text)


def _shown(value) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return ", ".join(_shown(v) for v in value)
    return str(value)


def test_every_command_is_covered():
    assert {"fuse", "audit", "preprocess", "train", "evaluate", "predict", "explain", "demo"} <= set(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_help_at_80_columns(help_of, path):
    text = help_of(path)
    flat = _flat(text)
    command = COMMANDS[path]
    assert max(len(line) for line in text.splitlines()) <= WIDTH, text
    assert "<bool>" not in text and "list[" not in text and "{" not in text.splitlines()[0] and "…" not in text
    for param in command.params:
        if param.hidden:
            continue
        for name in (*param.opts, *param.secondary_opts) if param.param_type_name == "option" else ():
            assert re.search(rf"(^|[\s,/]){re.escape(name)}($|[\s,=])", text, re.M), f"{path}: {name} cut or missing"
        help_text = getattr(param, "help", None) or ""
        for bracketed in re.findall(r"\[[^\]]*\]", help_text):  # rich once read "cxrclf[tensorboard]" as markup and dropped it
            assert _flat(bracketed) in flat, f"{path}: {bracketed!r} vanished from the help of {param.name}"
        assert _flat(help_text).replace("- ", "-") in flat.replace("- ", "-"), f"{path}: the help of {param.name} is not shown whole"  # click may break after a hyphen
        defaults = re.findall(r"\[default: ", _flat(_option_block(text, param)))
        if param.param_type_name == "option" and param.is_flag and not param.default:
            assert not defaults, f"{path}: a flag off by default shows a default"
            assert not param.secondary_opts, f"{path}: {param.opts[0]} has a --no- twin although it is off by default"
        elif isinstance(param.show_default, str) or param.default is not None:
            expected = param.show_default if isinstance(param.show_default, str) else _shown(param.default)
            if param.param_type_name == "option" and param.is_flag:
                expected = param.opts[0].lstrip("-") if param.default else param.secondary_opts[0].lstrip("-")
            assert f"[default: {expected}]" in flat, f"{path}: {param.name} should show [default: {expected}]"
            assert len(defaults) == 1 and "(default" not in _flat(_option_block(text, param)), f"{path}: {param.name} shows two defaults"


def _option_block(text: str, param) -> str:
    """The lines of ``text`` that describe ``param`` (its entry up to the next entry)."""
    name = param.opts[0] if param.param_type_name == "option" else argument_usage(param).strip("[].")
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(name)}(\s|$|,|/)", line))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"\s{2}\S", lines[i]) or not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


@pytest.mark.parametrize(("path", "usage"), [
    ("predict", "Usage: cxrclf predict [OPTIONS] IMAGE..."),
    ("explain", "Usage: cxrclf explain [OPTIONS] IMAGE"),
    ("preprocess", "Usage: cxrclf preprocess [OPTIONS] [SOURCE]"),
    ("audit", "Usage: cxrclf audit [OPTIONS] [MANIFEST]"),
    ("evaluate", "Usage: cxrclf evaluate [OPTIONS] [RUN]..."),
    ("train", "Usage: cxrclf train [OPTIONS]"),
])
def test_usage_lines(help_of, path, usage):
    assert help_of(path).splitlines()[0] == usage


def test_markup_is_not_interpreted(help_of):
    assert "(needs cxrclf[tensorboard])" in _flat(help_of("train"))
    assert "path,finding[,patient_id,view,sex,age]" in _flat(help_of("fuse"))


def test_predict_json_help_describes_one_array(help_of):
    assert "one JSON array, an object per input" in _flat(help_of("predict"))


def _cli_defaults(path: str) -> dict[str, object]:
    return {p.name: p.default for p in COMMANDS[path].params if p.default is not None}


def _same(cli_value, field_value) -> bool:
    if isinstance(cli_value, enum.Enum):
        cli_value = cli_value.value
    if isinstance(field_value, enum.Enum):
        field_value = field_value.value
    if isinstance(cli_value, (list, tuple)):
        return tuple(cli_value) == tuple(field_value)
    if isinstance(field_value, Path) or isinstance(cli_value, Path):
        return str(cli_value) == str(field_value)
    return cli_value == field_value or str(cli_value) == str(field_value)


def test_preprocess_defaults_come_from_preprocess_params(help_of):
    from cxrclf.preprocess.params import PreprocessParams

    defaults = PreprocessParams()
    flat = _flat(help_of("preprocess"))
    cli_defaults = _cli_defaults("preprocess")
    for name in ("size", "channels", "fit", "text_threshold", "inpaint", "inpaint_radius", "denoise", "tv_weight", "tv_k", "tv_sigma",
                 "tv_iterations", "lung", "lung_margin", "clahe_clip", "clahe_grid"):
        value = getattr(defaults, name)
        assert _same(cli_defaults[name], value), f"--{name.replace('_', '-')}: the command says {cli_defaults[name]!r}, PreprocessParams {value!r}"
        block = _option_block(help_of("preprocess"), next(p for p in COMMANDS["preprocess"].params if p.name == name))
        assert f"[default: {value}]" in _flat(block), f"--{name.replace('_', '-')} does not show PreprocessParams' {value}"
    assert "[default: 0.85]" in flat  # the text threshold once showed no default at all


@pytest.mark.parametrize(("path", "options", "renamed"), [
    ("fuse", "cxrclf.data.fuse:FuseOptions", {"table": None, "views": "views", "workers": None}),
    ("evaluate", "cxrclf.evaluate.evaluation:EvaluateOptions", {"workers": None, "runs": None, "table": None, "table_format": None, "as_json": None}),
    ("demo", "cxrclf.demo:DemoSettings", {}),
])
def test_command_defaults_match_their_options_dataclass(path, options, renamed):
    """Each default that a command and its library options share is the same value (the dataclass is the source)."""
    import importlib

    module, name = options.split(":")
    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    compared = 0
    for param, value in _cli_defaults(path).items():
        field = renamed.get(param, param)
        if field not in fields or fields[field].default is dataclasses.MISSING:
            continue
        assert _same(value, fields[field].default), f"{path} --{param}: {value!r} here, {fields[field].default!r} in {name}"
        compared += 1
    assert compared >= (1 if path == "demo" else 4)
