"""The README's demo command, run as a new user would: a fresh process, a temporary folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_demo_command_works(tmp_path):
    text = README.read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    demo_line = next(c for c in commands if "cxrclf demo" in c)
    demo_args = demo_line.split("cxrclf demo", 1)[1].split()
    assert demo_args == ["--out", "cxrclf-demo"]  # the README's exact invocation
    done = subprocess.run([sys.executable, "-m", "cxrclf", "demo", *demo_args], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "cxrclf-demo"
    assert "report:" in done.stdout and "explanations:" in done.stdout
    run = out / "runs" / "resnet-baseline-RM4"
    evaluation = run / "evaluation-own-test"
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["point"]["macro_auc"] > 0.9, metrics["point"]  # the model learned
    assert metrics["intervals"]["macro_auc"][0] > 0.5
    for name in ("report.md", "predictions.csv", "roc.png", "confusion_matrix.png", "reliability.png", "training_curves.png"):
        assert (evaluation / name).is_file(), name
    assert len(pd.read_csv(run / "metrics.csv")) >= 1
    assert sorted(p.name.split(".")[1] for p in (out / "explanations").glob("*.png")) == ["gradcam", "lime"]
    assert (out / "runs" / "latest").resolve() == run.resolve()
    manifest = pd.read_csv(out / "data" / "fused" / "manifest.csv")
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
