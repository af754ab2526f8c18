"""The README's demo command, run as a new user would: a fresh process, a temporary folder."""

from __future__ import annotations

import pytest

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from cxrclf.demo import DemoSettings

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_demo_command_works(tmp_path):
    text = README.read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    demo_line = next(c for c in commands if "cxrclf demo" in c)
    demo_args = demo_line.split("cxrclf demo", 1)[1].split()
    assert demo_args == ["--out", "cxrclf-demo"]  # the README's exact invocation
    done = subprocess.run([sys.executable, "-m", "cxrclf", "demo", *demo_args], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "cxrclf-demo"
    run = out / "runs" / "resnet-baseline-RM4"
    evaluation = run / "evaluation-own-test"
    lines = done.stdout.splitlines()
    pictures = sorted((out / "explanations").glob("*.png"))
    for path in (evaluation.resolve() / "report.md", evaluation.resolve() / "report.html", (run / "MODEL_CARD.md").relative_to(tmp_path),
                 *(p.relative_to(tmp_path) for p in pictures)):
        assert f"  {path}" in lines, f"{path} is not printed whole on a line of its own"
    # the colour photograph is predicted with the X-rays, and flagged
    photograph = next(i for i, line in enumerate(lines) if line.strip() == str(Path("cxrclf-demo") / "photographs" / "astronaut.png"))
    block = lines[max(i for i, line in enumerate(lines[:photograph]) if line.lstrip().startswith("predict ")):photograph]  # its verdict, however wrapped
    assert "FLAGGED: real colour" in " ".join(block) and "no pair of lung fields" in " ".join(block)
    assert sum(line.lstrip().startswith("predict ") for line in lines) == 5  # one X-ray per finding, then the photograph
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert metrics["point"]["macro_auc"] > 0.9, metrics["point"]  # the model learned
    assert metrics["intervals"]["macro_auc"][0] > 0.5
    for name in ("report.md", "predictions.csv", "roc.png", "confusion_matrix.png", "reliability.png", "training_curves.png"):
        assert (evaluation / name).is_file(), name
    assert len(pd.read_csv(run / "metrics.csv")) >= 1
    assert sorted(p.name.split(".")[1] for p in pictures) == ["gradcam", "lime"]
    report = (evaluation / "report.md").read_text()
    assert report.index("Why the scores here are perfect") < report.index("## Headline")
    page = (evaluation / "report.html").read_text()  # the same report, note included, figures inside
    assert page.index("Why the scores here are perfect") < page.index("<h2>Headline") and page.count('src="data:image/png;base64,') == 4
    card = (run / "MODEL_CARD.md").read_text()
    assert "**not a medical device**" in card and f"`{evaluation.resolve()}/metrics.json`" in card
    assert (out / "runs" / "latest").resolve() == run.resolve()
    manifest = pd.read_csv(out / "data" / "fused" / "manifest.csv")
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert len(manifest) == 4 * DemoSettings().per_class and metrics["n_images"] >= 8

