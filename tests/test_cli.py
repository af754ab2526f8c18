from __future__ import annotations

import subprocess
import sys

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


@pytest.mark.parametrize("args", [["--help"], ["fuse", "--help"]])
def test_fast_start_imports_no_heavy_library(args):
    modules = _imported_modules(*args)
    assert "cxrclf.cli" in modules
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


def test_fuse_run_imports_no_heavy_library(synthetic_sources, tmp_path):
    modules = _imported_modules("fuse", "--nlm", str(synthetic_sources["nlm"]), "--out", str(tmp_path / "f"), "--workers", "1")
    assert "cxrclf.data.fuse" in modules and (tmp_path / "f" / "manifest.csv").exists()
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


def test_python_m_and_debug_traceback(tmp_path):
    plain = subprocess.run([sys.executable, "-m", "cxrclf", "fuse", "--nlm", str(tmp_path / "x")], capture_output=True, text=True)
    assert plain.returncode == 2 and plain.stderr.strip().endswith("NLM folder does not exist") and "Traceback" not in plain.stderr
    debug = subprocess.run([sys.executable, "-m", "cxrclf", "--debug", "fuse", "--nlm", str(tmp_path / "x")], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CxrclfError" in debug.stderr
