"""`cxrclf demo`: wall and CPU seconds of each stage, and the test scores, for given demo settings.

    python benchmarks/demo.py [--per-class 30] [--size 64] [--epochs 12] [--lime-samples 300] [--threads 1] [--seed 0] [--json]

Runs :func:`cxrclf.demo.run_demo` in this process (the command adds about 1 s of start-up)
into a temporary folder. Each stage's time runs from the end of the one before; CPU seconds
include worker processes. The defaults are :class:`cxrclf.demo.DemoSettings`' own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from dataclasses import asdict, replace

from cxrclf.demo import DemoSettings, run_demo


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench(settings: DemoSettings, seed: int) -> dict:
    stages: list[dict] = []
    mark = [time.perf_counter(), _cpu()]

    def announce(stage: str, detail: str, path=None) -> None:
        now, cpu = time.perf_counter(), _cpu()
        if stage == "warning":
            return
        if stages and stages[-1]["stage"] == stage:  # a stage announced twice (train starts, train ends; one line per prediction)
            stages[-1]["wall_s"] += now - mark[0]
            stages[-1]["cpu_s"] += cpu - mark[1]
        else:
            stages.append({"stage": stage, "wall_s": now - mark[0], "cpu_s": cpu - mark[1]})
        mark[:] = [now, cpu]

    start, cpu_start = time.perf_counter(), _cpu()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_demo(os.path.join(tmp, "demo"), seed=seed, settings=settings, announce=announce)
    evaluated = result.stages["evaluate"]
    photograph = next(p for p in result.stages["predict"] if p["file"].endswith("astronaut.png"))
    return {
        "settings": asdict(settings), "seed": seed,
        "stages": [{k: round(v, 1) if isinstance(v, float) else v for k, v in s.items()} for s in stages],
        "total_wall_s": round(time.perf_counter() - start, 1), "total_cpu_s": round(_cpu() - cpu_start, 1),
        "test_images": evaluated["n_images"], "macro_auc": evaluated["point"]["macro_auc"], "accuracy": evaluated["point"]["accuracy"],
        "photograph_flagged": photograph["in_distribution"] is False, "load_average": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    defaults = DemoSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=defaults.per_class)
    parser.add_argument("--size", type=int, default=defaults.size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lime-samples", type=int, default=defaults.lime_samples)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = replace(defaults, per_class=args.per_class, size=args.size, epochs=args.epochs, lime_samples=args.lime_samples, threads=args.threads)
    result = bench(settings, args.seed)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print("| stage | wall s | CPU s |\n|---|---|---|")
    for stage in result["stages"]:
        print(f"| {stage['stage']} | {stage['wall_s']:.1f} | {stage['cpu_s']:.1f} |")
    print(f"| **all** | **{result['total_wall_s']:.1f}** | **{result['total_cpu_s']:.1f}** |")
    print(f"\n{result['test_images']} test images: macro AUC {result['macro_auc']:.3f}, accuracy {result['accuracy']:.3f}; "
          f"photograph flagged: {result['photograph_flagged']}; load average {result['load_average']} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
