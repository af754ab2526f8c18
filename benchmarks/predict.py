"""`cxrclf predict` speed: batched inference against a bare timm forward, end to end, cold start; PyTorch against onnxruntime.

    python benchmarks/predict.py [--model tf_efficientnet_lite0] [--batch-size 16] [--images 64] [--runtime-python PATH] [--json]

1. model only: :meth:`RunPredictor.probabilities` on uint8 planes held in memory against a
   bare ``model(x)`` on a pre-normalised float batch of the same model and batch size, and
   :meth:`cxrclf.runtime.OnnxPredictor.assess` on the run exported with ``cxrclf export``
   (onnxruntime with as many threads as PyTorch);
2. end to end: ``predict_files`` on PNG phantoms (decode, preprocess as in training, batch),
   with each backend;
3. cold start: the wall time of one ``cxrclf predict IMAGE --json`` process, with each backend;
   with ``--runtime-python``, also in an environment without PyTorch (that environment's
   python, e.g. ``runtime/bin/python``), and the size on disk of both environments.
The run is built from an untrained model (weights do not change the speed).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import make_run  # noqa: E402

from cxrclf.data import synthetic  # noqa: E402
from cxrclf.inference import RunPredictor  # noqa: E402
from cxrclf.predict import predict_files  # noqa: E402


def _best(function, repeat: int = 5) -> float:
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _cold(python: str, *args: str) -> float:
    """Wall time of one ``python -m cxrclf predict ...`` process."""
    start = time.perf_counter()
    done = subprocess.run([python, "-m", "cxrclf", "predict", *args, "--json", "--workers", "1"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return elapsed


def _environment_size(python: str) -> str:
    """``du -sh`` of the environment (its ``sys.prefix``) that ``python`` runs in."""
    prefix = subprocess.run([python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True).stdout.strip()
    return subprocess.run(["du", "-sh", prefix], capture_output=True, text=True, check=True).stdout.split()[0]


def bench(model: str, batch_size: int, images: int, runtime_python: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp) / "run", model)
        predictor = RunPredictor(run, "cpu")
        size = predictor.input_size
        rng = np.random.default_rng(0)
        planes = rng.integers(0, 256, size=(images, size, size), dtype=np.uint8)
        x = predictor.tensor(planes[:batch_size]).clone()
        model_module = predictor.model

        def bare() -> None:
            with torch.inference_mode():
                for _ in range(0, images, batch_size):
                    model_module(x)

        def ours() -> None:
            predictor.probabilities(planes, batch_size)

        from cxrclf.export import export_onnx
        from cxrclf.runtime import OnnxPredictor

        exported = Path(tmp) / "export" / "model.onnx"
        export_onnx(run, exported)
        onnx = OnnxPredictor(exported, threads=torch.get_num_threads())

        def onnxruntime() -> None:
            onnx.assess(planes, batch_size)

        bare_s, ours_s, onnx_s = _best(bare), _best(ours), _best(onnxruntime)
        files = []
        for index in range(images):
            path = Path(tmp) / "in" / f"{index}.png"
            synthetic._png(path, synthetic.to_uint8(synthetic.phantom(synthetic.FINDINGS[index % 4], rng, 512).image))
            files.append(path)
        end_to_end = {w: _best(lambda w=w: predict_files(predictor, files, batch_size, workers=w), repeat=1) for w in (1, 2)}
        onnx_end_to_end = _best(lambda: predict_files(onnx, files, batch_size, workers=1), repeat=1)
        cold = _cold(sys.executable, str(files[0]), "--model", str(run))
        onnx_args = (str(files[0]), "--backend", "onnxruntime", "--model", str(exported))
        cold_onnx = _cold(sys.executable, *onnx_args)
        runtime_only = None if runtime_python is None else {"cold_start_s": round(_cold(runtime_python, *onnx_args), 2),
                                                            "environment": _environment_size(runtime_python)}
    return {
        "model": model, "input_size": size, "batch_size": batch_size, "images": images,
        "bare_forward_images_per_s": round(images / bare_s, 1), "predictor_images_per_s": round(images / ours_s, 1),
        "overhead_percent": round(100 * (ours_s - bare_s) / bare_s, 1),
        "end_to_end_images_per_s": {str(w): round(images / s, 1) for w, s in end_to_end.items()},
        "cold_start_s": round(cold, 2), "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "onnxruntime": {"images_per_s": round(images / onnx_s, 1), "end_to_end_images_per_s": round(images / onnx_end_to_end, 1),
                        "cold_start_s": round(cold_onnx, 2), "environment": _environment_size(sys.executable)},
        "runtime_only": runtime_only,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--runtime-python", help="python of an environment without PyTorch (cxrclf installed with --no-deps, then its runtime list)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = bench(args.model, args.batch_size, args.images, args.runtime_python)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']} at {result['input_size']} px, batch {result['batch_size']}, {result['images']} images ({result['machine']}, {result['threads']} threads)")
    print(f"bare timm forward            : {result['bare_forward_images_per_s']:>7} img/s")
    print(f"cxrclf Predictor (in memory) : {result['predictor_images_per_s']:>7} img/s  ({result['overhead_percent']:+}%)")
    for workers, rate in result["end_to_end_images_per_s"].items():
        print(f"end to end from PNG, {workers} worker(s): {rate:>7} img/s (decode + preprocess 512 px + forward)")
    print(f"cold start of one `cxrclf predict`: {result['cold_start_s']} s")
    onnx = result["onnxruntime"]
    print(f"onnxruntime (in memory)      : {onnx['images_per_s']:>7} img/s; end to end, 1 worker: {onnx['end_to_end_images_per_s']} img/s")
    print(f"cold start of one `cxrclf predict --backend onnxruntime`: {onnx['cold_start_s']} s (this environment: {onnx['environment']})")
    if result["runtime_only"]:
        print(f"the same without PyTorch installed: {result['runtime_only']['cold_start_s']} s (that environment: {result['runtime_only']['environment']})")


if __name__ == "__main__":
    main()
