from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "timm", "lime", "skimage")


def _imported_modules(*args: str) -> set[str]:
    code = (
        "import sys\n"
        "from cxrclf import cli\n"
        "try:\n"
        f"    cli.main({list(args)!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\n'.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return set(done.stderr.split())


def test_help_lists_only_working_commands(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0
    for command in ("fuse", "audit"):
        assert command in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["fuse", "--help"]])
def test_fast_start_imports_no_heavy_library(args):
    modules = _imported_modules(*args)
    assert "cxrclf.cli" in modules
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


@pytest.mark.slow
def test_fuse_run_imports_no_heavy_library(synthetic_sources, tmp_path):
    modules = _imported_modules("fuse", "--nlm", str(synthetic_sources["nlm"]), "--out", str(tmp_path / "f"), "--workers", "1")
    assert "cxrclf.data.fuse" in modules and (tmp_path / "f" / "manifest.csv").exists()
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


@pytest.mark.slow
def test_python_m_and_debug_traceback(tmp_path):
    plain = subprocess.run([sys.executable, "-m", "cxrclf", "fuse", "--nlm", str(tmp_path / "x")], capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stderr.strip().endswith("NLM folder does not exist") and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "cxrclf", "--debug", "fuse", "--nlm", str(tmp_path / "x")], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CxrclfError" in debug.stderr


# ----------------------------------------------------------------------------- one overwrite rule

def _existing_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("mine")
    return path


def _existing_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"mine")
    return path


@pytest.mark.parametrize("command", ["fuse", "train", "evaluate", "demo", "explain", "predict --csv", "evaluate --table"])
def test_every_command_refuses_an_existing_output_without_overwrite(command, run_cli, synthetic_sources, preprocessed_synthetic, trained_run, tmp_path):
    """The rule of every command that writes: an existing output is never replaced without --overwrite."""
    image = next((synthetic_sources["cohen"] / "images").iterdir())
    if command in ("fuse", "train", "evaluate", "demo"):
        existing = _existing_folder(tmp_path / "out")
        args = {
            "fuse": ["fuse", "--nlm", synthetic_sources["nlm"], "--out", existing, "--workers", "1"],
            "train": ["train", "--model", "resnet-baseline", "--strategy", "oversample", "--classes", "3", "--data", preprocessed_synthetic,
                      "--out", existing, "--epochs", "1", "--image-size", "48"],
            "evaluate": ["evaluate", trained_run, "--out", existing, "--bootstrap", "0", "--workers", "1"],
            "demo": ["demo", "--out", existing],
        }[command]
    else:
        existing = _existing_file(tmp_path / {"explain": "why.png", "predict --csv": "p.csv", "evaluate --table": "tables/scenario_table.md"}[command])
        args = {
            "explain": ["explain", image, "--model", trained_run, "--method", "gradcam", "--out", existing],
            "predict --csv": ["predict", image, "--model", trained_run, "--csv", existing, "--workers", "1"],
            "evaluate --table": ["evaluate", trained_run, "--table", "--bootstrap", "0", "--out", existing.parent, "--workers", "1"],
        }[command]
    result = run_cli(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "--overwrite" in result.stderr and str(existing) in result.stderr, result.stderr
    if existing.is_dir():
        assert [p.name for p in existing.iterdir()] == ["keep.txt"]
    else:
        assert existing.read_bytes() == b"mine"


def test_overwrite_replaces_only_what_cxrclf_made(run_cli, synthetic_sources, trained_run, tmp_path):
    image = next((synthetic_sources["cohen"] / "images").iterdir())
    fuse = ["fuse", "--nlm", synthetic_sources["nlm"], "--workers", "1", "--overwrite", "--out"]
    foreign = _existing_folder(tmp_path / "foreign")
    refused = run_cli(*fuse, foreign)
    assert refused.exit_code == 2 and "not made by cxrclf" in refused.stderr and (foreign / "keep.txt").is_file()
    assert run_cli(*fuse, tmp_path / "fused").exit_code == 0
    assert run_cli(*fuse, tmp_path / "fused").exit_code == 0  # cxrclf's own folder is replaced
    assert (tmp_path / "fused" / "manifest.csv").is_file()
    picture, table = _existing_file(tmp_path / "why.png"), _existing_file(tmp_path / "p.csv")
    for target, args in ((picture, ["explain", image, "--method", "gradcam", "--out", picture]),
                         (table, ["predict", image, "--csv", table, "--workers", "1"])):
        result = run_cli(*args, "--model", trained_run, "--overwrite")
        assert result.exit_code == 0, result.stderr
        assert target.read_bytes() != b"mine"
