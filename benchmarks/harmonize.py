"""How each archive looks after preprocessing, with and without harmonisation, and what it costs.

    python benchmarks/harmonize.py [--data ../shared/data/cxr-mini] [--images 8] [--size 331] [--json]

For each arm (the paper's pipeline; one detail only; one intensity normalisation only;
``--harmonize``; the same at a detail of 96 px, below every source's; ``--intensity clahe``;
``--deblock``) and each source
of the shared set (the first ``--images`` files of RSNA, NIH, Cohen's JPEGs and Montgomery's
128 px copies), the mean over images of what a network can read off the archive without
looking at the anatomy:

- ``detail``: the standard deviation of the output minus its Gaussian blur (sigma 2 px), as a
  percentage of the output's standard deviation: the fine structure an image carries for its
  contrast (high for sharp sources, low for upscaled small copies);
- ``mean`` and ``sd``: the output's mean grey level and its standard deviation (window and
  contrast of the archive);

and the milliseconds per image of the whole ``preprocess_image``. The spread across sources
(largest minus smallest source mean) of each number is the archive's signature: harmonisation
should shrink it. One thread.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from cxrclf.data.imageio import read_image
from cxrclf.preprocess import PreprocessParams, preprocess_image
from cxrclf.preprocess.harmonize import harmonization

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-mini"
SOURCES = {
    "rsna": "rsna/stage_2_train_images/*.dcm",
    "nih": "nih/images/*.png",
    "cohen": "cohen/images/*.jp*g",
    "montgomery": "montgomery/MontgomerySet/CXR_png/*.png",
}


def arms(size: int) -> dict[str, PreprocessParams]:
    paper = PreprocessParams(size=size)
    return {
        "paper": paper,
        "detail 128 only": replace(paper, detail_size=128),
        "match only": replace(paper, intensity="match"),
        "--harmonize": replace(paper, **harmonization(True)),
        "--harmonize --detail-size 96": replace(paper, **harmonization(True, detail_size=96)),
        "--harmonize --intensity clahe": replace(paper, **harmonization(True, intensity="clahe")),
        "--harmonize --deblock": replace(paper, **harmonization(True, deblock=True)),
    }


def look(images: list[np.ndarray], params: PreprocessParams) -> dict[str, float]:
    detail, mean, sd, seconds = [], [], [], []
    for image in images:
        start = time.perf_counter()
        out = preprocess_image(image, params)[..., 0].astype(np.float32)
        seconds.append(time.perf_counter() - start)
        detail.append(100 * float((out - cv2.GaussianBlur(out, (0, 0), 2)).std() / max(out.std(), 1e-6)))
        mean.append(float(out.mean()))
        sd.append(float(out.std()))
    return {"detail": float(np.mean(detail)), "mean": float(np.mean(mean)), "sd": float(np.mean(sd)), "ms": 1000 * float(np.median(seconds))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--images", type=int, default=8, help="images per source")
    parser.add_argument("--size", type=int, default=331)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        raise SystemExit(f"benchmarks/harmonize.py: {args.data}: data folder not found (pass --data)")
    cv2.setNumThreads(1)
    images = {source: [read_image(f) for f in sorted(args.data.glob(pattern))[:args.images]] for source, pattern in SOURCES.items()}
    results = {name: {source: look(found, params) for source, found in images.items()} for name, params in arms(args.size).items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"| arm | {' | '.join(images)} | spread: detail / mean / sd | ms per image |")
    print("|---|" + "---|" * len(images) + "---|---|")
    for name, per_source in results.items():
        cells = [f"{v['detail']:.1f} / {v['mean']:.0f} / {v['sd']:.0f}" for v in per_source.values()]
        spread = [max(v[k] for v in per_source.values()) - min(v[k] for v in per_source.values()) for k in ("detail", "mean", "sd")]
        ms = np.mean([v["ms"] for v in per_source.values()])
        print(f"| {name} | {' | '.join(cells)} | {spread[0]:.1f} / {spread[1]:.0f} / {spread[2]:.0f} | {ms:.0f} |")


if __name__ == "__main__":
    main()
