"""Human output at 80 columns and in pipes: file names whole, tables folded instead of cut,
NO_COLOR honoured, and progress where a step takes long (LIME's perturbed images)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cxrclf import console as display
from cxrclf.data import synthetic

COLOUR = re.compile(r"\x1b\[[0-9;]*(3[0-7]|9[0-7]|38;[25];[0-9;]+)m")  # a foreground colour, in any SGR sequence
LONG = Path("cxrclf-demo/sources/rsna/stage_2_train_images/05aaf938-0010-4e2a-9c3b-12160b050af9-with-a-much-longer-name.dcm")


@pytest.fixture
def narrow(monkeypatch):
    """The library's consoles writing into buffers, 80 columns wide, as in a pipe."""
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(display, "console", Console(file=out, width=80))
    monkeypatch.setattr(display, "errors", Console(file=err, width=80))
    return out, err


def _lines(buffer: io.StringIO) -> list[str]:
    return buffer.getvalue().splitlines()


def test_paths_are_printed_whole_on_lines_of_their_own(narrow):
    out, err = narrow
    assert len(str(LONG)) > 80
    display.wrote([LONG, "runs/[bracketed]/x.png"])
    display.announce("predict", "other_pneumonia (0.99) " + "and a long sentence that has to wrap " * 3, LONG)
    display.warn(LONG, "out of distribution: score 41.39 above the run's threshold 36.59")
    lines = _lines(out)
    assert lines[:3] == ["wrote:", f"  {LONG}", "  runs/[bracketed]/x.png"]  # never cut, never read as markup
    assert f"{' ' * 12}{LONG}" in lines
    wrapped = [line for line in lines[3:] if line.strip() and str(LONG) not in line]
    assert len(wrapped) >= 2 and all(len(line) <= 80 and line == line.rstrip() for line in wrapped)
    assert wrapped[0].startswith("   predict  ") and all(line.startswith(" " * 12) for line in wrapped[1:])
    assert _lines(err) == [f"cxrclf: warning: {LONG}: out of distribution: score 41.39 above the run's threshold 36.59"]


def test_a_table_that_does_not_fit_is_folded_not_cut(narrow):
    out, _ = narrow
    headers = ["predicted", "normal", "covid19", "other_pneumonia", "tuberculosis", "OOD score"]
    rows = [(str(LONG), ["other_pneumonia", "0.002", "0.001", "0.997", "0.000", "20.8"]),
            ("d1/photographs/astronaut.png", ["other_pneumonia (flagged)", "0.106", "0.308", "0.523", "0.062", "114.5 !"])]
    display.prediction_rows("file", headers, rows)
    lines = _lines(out)
    assert lines[0] == str(LONG) and lines[3] == "d1/photographs/astronaut.png"
    assert lines[1:3] == ["    predicted other_pneumonia,  normal 0.002,  covid19 0.001,",
                          "    other_pneumonia 0.997,  tuberculosis 0.000,  OOD score 20.8"]
    assert all(len(line) <= 80 for line in lines if str(LONG) not in line) and "…" not in out.getvalue()


def test_a_table_that_fits_stays_a_table(narrow):
    out, _ = narrow
    display.prediction_rows("file", ["predicted", "normal"], [("a/b.png", ["covid19", "0.125"])])
    text = out.getvalue()
    assert "┃ file    ┃ predicted ┃ normal ┃" in text and "│ a/b.png │ covid19   │  0.125 │" in text  # numbers right, labels left


def test_predictions_summary_renders_typed_predictions(narrow):
    from cxrclf.predict import Prediction, Predictions

    classes = ("normal", "covid19")
    records = (Prediction(file="a.png", predicted="covid19", probabilities={"normal": 0.25, "covid19": 0.75}, ood_score=3.0, in_distribution=True,
                          operating_point={"normal": 0.5, "covid19": 0.6}, positive=["covid19"]),
               Prediction(file="b.png", predicted=None, probabilities={"normal": 0.5, "covid19": 0.5}, ood_score=41.0, in_distribution=False,
                          warnings=["out of distribution: score 41.00 above the run's threshold 36.59"], operating_point={"normal": 0.5, "covid19": 0.6},
                          positive=None, withheld=True),
               Prediction(file="c.png", error="not a decodable image"))
    results = Predictions(records, {"tested": False, "images": 2, "reason": "fewer than 20 images"}, classes, has_guard=True, has_operating_point=True)
    assert [r.file for r in results.failed] == ["c.png"] and len(results) == 3 and results[1].withheld
    assert results.to_list()[1]["withheld"] is True and "withheld" not in results.to_list()[0] and results.to_list()[2] == {"file": "c.png", "error": "not a decodable image"}
    out, err = narrow
    display.predictions_summary(results, "runs/latest")
    text = out.getvalue()
    assert "│ a.png │ covid19            │ covid19      │  0.250 │   0.750 │       3.0 │" in text
    assert "│ b.png │ withheld (flagged) │ withheld     │  0.500 │   0.500 │    41.0 ! │" in text
    assert "note" not in text  # a guard, an operating point, and too few images for a shift test: nothing to add
    assert _lines(err) == ["cxrclf: warning: b.png: out of distribution: score 41.00 above the run's threshold 36.59",
                           "cxrclf: error: c.png: not a decodable image"]


def test_predict_at_80_columns_keeps_every_file_name(run_cli, trained_run, tmp_path, narrow):
    out, err = narrow
    folder = tmp_path / "a-folder-with-a-rather-long-name" / "and-another-level-below-it-to-pass-eighty"
    rng = np.random.default_rng(0)
    files = []
    for index, finding in enumerate(("normal", "covid19")):
        files.append(folder / f"patient-{index:04d}-{finding}-posteroanterior.png")
        synthetic._png(files[-1], synthetic.to_uint8(synthetic.phantom(finding, rng, 96).image))
    assert all(len(str(f)) > 80 for f in files)
    result = run_cli("predict", *files, "--model", trained_run, "--workers", "1")
    assert result.exit_code == 0, err.getvalue()
    lines = _lines(out)
    assert lines[0] == f"Predictions of {trained_run}"
    for path in files:
        assert str(path) in lines, f"{path} is not on a line of its own"
    assert "…" not in out.getvalue() and all(len(line) <= 80 for line in lines if not line.startswith(("/", "Predictions")))


def test_explain_reports_lime_progress_and_its_output_whole(run_cli, trained_run, tmp_path, narrow):
    out, err = narrow
    image = tmp_path / "x.png"
    synthetic._png(image, synthetic.to_uint8(synthetic.phantom("covid19", np.random.default_rng(1), 96).image))
    target = tmp_path / ("explanations-in-a-folder-whose-name-alone-is-longer-than-the-terminal-is-wide" * 2) / "x.lime.png"
    result = run_cli("explain", image, "--model", trained_run, "--num-samples", "20", "--out", target)
    assert result.exit_code == 0, err.getvalue()
    assert re.search(r"LIME samples .* 20/20", err.getvalue()), err.getvalue()  # the bar's last state (a pipe shows no live bar)
    assert _lines(out)[-2:] == ["wrote:", f"  {target}"] and target.is_file()


def test_lime_reports_every_batch_it_scores(trained_run):
    from cxrclf.explain.lime import explain_lime
    from cxrclf.inference import RunPredictor

    predictor = RunPredictor(trained_run, "cpu")
    plane = np.full((predictor.input_size, predictor.input_size), 128, np.uint8)
    plane[8:24, 8:24] = 220
    calls: list[tuple[int, int]] = []
    explain_lime(predictor, plane, target=0, num_samples=40, seed=0, batch_size=16, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 40), (16, 40), (32, 40), (40, 40)]


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "TERM")}
    return subprocess.run([sys.executable, "-m", "cxrclf", *args], capture_output=True, text=True, timeout=300, env=environment | env)


@pytest.mark.slow
def test_no_color_is_honoured_and_paths_stay_whole_in_a_narrow_terminal(synthetic_sources, tmp_path):
    deep = tmp_path / ("a-fused-dataset-in-a-folder-whose-name-is-long-" * 2) / "fused"
    args = ("fuse", "--cohen", str(synthetic_sources["cohen"]), "--nlm", str(synthetic_sources["nlm"]), "--workers", "1")
    coloured = _cli(*args, "--out", str(tmp_path / "plain"), FORCE_COLOR="1", COLUMNS="80")
    assert coloured.returncode == 0, coloured.stderr
    assert COLOUR.search(coloured.stdout), "the control run should be coloured (rich's FORCE_COLOR acts as a terminal)"
    quiet = _cli(*args, "--out", str(deep), FORCE_COLOR="1", NO_COLOR="1", COLUMNS="80")
    assert quiet.returncode == 0, quiet.stderr
    assert not COLOUR.search(quiet.stdout + quiet.stderr)
    lines = [COLOUR.sub("", re.sub(r"\x1b\[[0-9;]*m", "", line)) for line in quiet.stdout.splitlines()]
    assert f"  {deep / 'manifest.csv'}" in lines and f"  {deep / 'fuse_report.json'}" in lines
    assert all(len(line) <= 80 for line in lines if str(deep) not in line)
