"""`cxrclf explain` speed: LIME at 1000 samples with cxrclf's batching against lime's default, and Grad-CAM.

    python benchmarks/explain.py [--model tf_efficientnet_lite0] [--samples 1000] [--json]

LIME evaluates the model on ``--samples`` perturbed images; lime's default classifier
batching is 10 images per call; cxrclf's is 16 on the CPU (measured fastest) and 128 on a GPU;
batches of 100 are timed too. Grad-CAM
is one forward and one backward pass. Untrained weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import make_run  # noqa: E402

from cxrclf.data import synthetic  # noqa: E402
from cxrclf.explain import cam, lime  # noqa: E402
from cxrclf.inference import RunPredictor  # noqa: E402


def bench(model: str, samples: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        predictor = RunPredictor(make_run(Path(tmp) / "run", model), "cpu")
        image = synthetic.to_uint8(synthetic.phantom("covid19", np.random.default_rng(0), 512).image)
        plane = predictor.plane_from_decoded(image)
        timings = {}
        ours = lime.default_batch(predictor)
        for label, batch in (("lime default batching (10)", 10), (f"cxrclf batching ({ours})", ours), ("batches of 100", 100)):
            start = time.perf_counter()
            lime.explain_lime(predictor, plane, 1, num_samples=samples, seed=0, batch_size=batch)
            timings[label] = round(time.perf_counter() - start, 2)
        cam.grad_cam(predictor, plane, 1)
        start = time.perf_counter()
        for _ in range(5):
            cam.grad_cam(predictor, plane, 1)
        gradcam = (time.perf_counter() - start) / 5
    return {"model": model, "input_size": predictor.input_size, "samples": samples, "lime_seconds": timings,
            "gradcam_seconds": round(gradcam, 3), "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = bench(args.model, args.samples)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']} at {result['input_size']} px ({result['machine']}, {result['threads']} threads)")
    for label, seconds in result["lime_seconds"].items():
        print(f"LIME, {result['samples']} samples, {label}: {seconds} s")
    print(f"Grad-CAM: {result['gradcam_seconds']} s per image")


if __name__ == "__main__":
    main()
