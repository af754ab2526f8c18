"""report.html: report.md as one self-contained page, checked in a real browser where one is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cxrclf.evaluate.html import render


@pytest.fixture(scope="module")
def evaluation(trained_run, tmp_path_factory) -> Path:
    from cxrclf.evaluate.evaluation import EvaluateOptions, evaluate

    out = tmp_path_factory.mktemp("html") / "evaluation"
    evaluate(EvaluateOptions(run=trained_run, bootstrap=50, workers=1, out=out))
    return out


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    import cv2

    cv2.imwrite(str(path), np.full((40, 60, 3), colour[::-1], np.uint8))


def test_figures_are_embedded_and_nothing_is_fetched(tmp_path):
    _png(tmp_path / "roc.png", (200, 30, 30))
    (tmp_path / "notes").mkdir()
    text = ("# Title <script>alert(1)</script>\n\n| a | b |\n|---|---:|\n| 1 | `x` |\n\n![ROC](roc.png)\n\n![gone](missing.png)\n\n"
            "![outside](../elsewhere.png)\n\n![remote](https://example.org/a.png)\n\n> a note\n")
    page = render(text, tmp_path)
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == 1 and sources[0].startswith("data:image/png;base64,")
    import base64

    assert base64.b64decode(sources[0].split(",", 1)[1]) == (tmp_path / "roc.png").read_bytes()
    assert "<script>" not in page and "&lt;script&gt;" in page  # the Markdown's HTML is text
    assert page.count("figure not found beside the report") == 3 and "example.org/a.png" in page and 'src="https' not in page
    assert '<td style="text-align:right" data-label="b"><code>x</code></td>' in page and "<blockquote>" in page
    assert "<title>Title &lt;script&gt;alert(1)&lt;/script&gt;</title>" in page
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)


def test_evaluate_writes_the_same_report_as_one_page(evaluation):
    markdown = (evaluation / "report.md").read_text()
    page = (evaluation / "report.html").read_text()
    assert page == render(markdown, evaluation)
    headings = re.findall(r"^## (.+)$", markdown, re.M)
    assert len(headings) >= 8
    assert [h.replace("&", "&amp;") for h in headings] == re.findall(r"<h2>(.+)</h2>", page)
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(figures) == ["confusion_matrix.png", "reliability.png", "roc.png", "training_curves.png"]
    assert page.count('<img src="data:image/png;base64,') == len(figures)
    assert "<script" not in page and "http://" not in page and "https://" not in page


def _browser() -> str | None:
    return next((found for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable") if (found := shutil.which(name))), None)


@pytest.mark.slow
@pytest.mark.parametrize("width", [390, 1366])
def test_the_page_reads_at_a_phones_and_a_laptops_width(evaluation, tmp_path, width):
    browser = _browser()
    if browser is None:
        pytest.skip("no headless Chromium here (apt-get install chromium): the page is not checked in a browser")
    from PIL import Image

    shot = tmp_path / f"report-{width}.png"
    height = 16000  # taller than the page: the screenshot holds all of it
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                           f"--window-size={width},{height}", f"--screenshot={shot}", (evaluation / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (height, width)
    ink = (pixels < 235).any(axis=2)
    rows = np.flatnonzero(ink.any(axis=1))
    assert rows.max() < height - 200  # the whole page is in the screenshot
    assert not ink[:, -4:].any()      # nothing runs past the right edge: no text, table or figure is cut
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 60  # only the figures are in colour
    coloured_rows = np.flatnonzero(colourful.any(axis=1))
    runs = np.split(coloured_rows, np.flatnonzero(np.diff(coloured_rows) > 20) + 1)
    tall = [run for run in runs if len(run) and run[-1] - run[0] > 0.25 * min(width, 600)]
    assert len(tall) >= 4, [(int(run[0]), int(run[-1])) for run in runs if len(run)]  # four figures, each shown at a readable size
