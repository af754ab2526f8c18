"""A 64 px (``--size``) training step on 1 and 2 PyTorch threads, OpenMP waiting actively or passively, with and without a busy process beside it.

    python benchmarks/threads.py [--steps 20] [--rounds 3] [--size 64] [--spin N ...] [--only LABEL ...]
                                 [--neighbour both|idle|busy] [--json]

Each setting runs in a fresh process (``OMP_WAIT_POLICY`` is read when PyTorch loads its
OpenMP runtime, so it cannot change later). The step is ``resnet-baseline``, batch 16,
64 px, through :class:`cxrclf.train.loop.Trainer` (as the demo trains). "busy" starts one
Python process spinning on the CPU for the length of the measurement: on a 2-core machine
it takes one core, as another user's job would. ``auto`` is the thread count and wait
policy the CLI now chooses (:mod:`cxrclf.threads`). Rounds alternate the settings so that
drift in the machine's load hits them all; the median is reported, with ``uptime`` beside it,
and the CLI's choice over OpenMP's spinning default round by round. ``--spin N`` adds 2
threads with ``GOMP_SPINCOUNT=N`` (GNU OpenMP spins that long before it sleeps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = [  # (label, threads, OMP_WAIT_POLICY, GOMP_SPINCOUNT=N, or None for OpenMP's default)
    ("1 thread", 1, None),
    ("2 threads", 2, None),
    ("2 threads, PASSIVE", 2, "PASSIVE"),
    ("auto", 0, "auto"),
]


def child(threads: int, steps: int, size: int = 64) -> None:
    """Print the images per second of ``steps`` training steps after 3 of warm-up."""
    import numpy as np
    import pandas as pd
    import torch

    from cxrclf.models.zoo import create_model
    from cxrclf.threads import use_threads
    from cxrclf.train.data import ImageSet
    from cxrclf.train.loop import Batches, Distributed, Trainer

    chosen = use_threads(threads or None)
    torch.manual_seed(0)
    bundle = create_model("resnet-baseline", 3, pretrained=False, image_size=size)
    batch, count = 16, 16 * (steps + 3)
    rng = np.random.default_rng(0)
    images = ImageSet(rng.integers(0, 256, size=(count, size, size), dtype=np.uint8), rng.integers(0, 3, size=count), pd.DataFrame(index=range(count)))
    device = torch.device("cpu")
    trainer = Trainer(bundle.model, 1e-3, None, device, Distributed())
    batches = Batches(images, bundle.in_chans, bundle.mean, bundle.std, device)
    order, augment = np.arange(count), np.zeros(count, dtype=bool)
    generator = torch.Generator().manual_seed(0)
    trainer.fit_epoch(batches, order[:3 * batch], augment[:3 * batch], batch, generator)
    start = time.perf_counter()
    trainer.fit_epoch(batches, order[3 * batch:], augment[3 * batch:], batch, generator)
    print(json.dumps({"img_s": steps * batch / (time.perf_counter() - start), "threads": chosen, "policy": os.environ.get("OMP_WAIT_POLICY", "") or (f"spin {os.environ['GOMP_SPINCOUNT']}" if "GOMP_SPINCOUNT" in os.environ else "")}))


def measure(threads: int, policy: str | None, busy: bool, steps: int, size: int = 64) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env["HF_HUB_OFFLINE"] = "1"
    if policy == "auto":
        from cxrclf.threads import passive_wait

        passive_wait(env)
    elif policy and policy.startswith("GOMP_SPINCOUNT="):
        env["GOMP_SPINCOUNT"] = policy.split("=", 1)[1]
    elif policy:
        env["OMP_WAIT_POLICY"] = policy
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        result = subprocess.run([sys.executable, __file__, "--child", str(threads), "--steps", str(steps), "--size", str(size)], env=env, capture_output=True, text=True, check=True)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--spin", type=int, nargs="*", default=[], help="also 2 threads with GOMP_SPINCOUNT=N (libgomp's spin before sleeping)")
    parser.add_argument("--only", nargs="*", default=None, help="only these settings (labels, e.g. '2 threads' auto)")
    parser.add_argument("--neighbour", choices=("both", "idle", "busy"), default="both", help="measure without and/or with the busy process")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.steps, args.size)
        return
    settings = SETTINGS + [(f"2 threads, spin {n}", 2, f"GOMP_SPINCOUNT={n}") for n in args.spin]
    if args.only is not None:
        settings = [s for s in settings if s[0] in args.only]
    neighbours = {"both": (False, True), "idle": (False,), "busy": (True,)}[args.neighbour]
    samples: dict[tuple[str, bool], list[dict]] = {}
    for _ in range(args.rounds):
        for busy in neighbours:
            for label, threads, policy in settings:
                samples.setdefault((label, busy), []).append(measure(threads, policy, busy, args.steps, args.size))
    rows = [{"setting": label, "busy neighbour": busy, "threads": runs[0]["threads"], "policy": runs[0]["policy"] or "default",
             "img_s": round(statistics.median(r["img_s"] for r in runs), 1), "rounds": [round(r["img_s"], 1) for r in runs]}
            for (label, busy), runs in samples.items()]
    ratios = _auto_against_default(samples, neighbours)
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if args.json:
        print(json.dumps({"rows": rows, "auto / 2 threads default, per round": ratios, "uptime": uptime, "cpus": len(os.sched_getaffinity(0))}, indent=2))
        return
    print(f"{'setting':22} {'busy':5} {'threads':>7} {'policy':10} {'img/s':>7}")
    for row in rows:
        print(f"{row['setting']:22} {str(row['busy neighbour']):5} {row['threads']:>7} {row['policy']:10} {row['img_s']:>7}")
    for busy, values in ratios.items():
        print(f"auto / 2 threads default ({busy}), round by round: {values['rounds']}; median {values['median']}")
    print(uptime)


def _auto_against_default(samples: dict[tuple[str, bool], list[dict]], neighbours: tuple[bool, ...]) -> dict[str, dict]:
    """The CLI's choice over OpenMP's spinning default, paired by round (both ran minutes apart at most)."""
    ratios = {}
    for busy in neighbours:
        auto, default = samples.get(("auto", busy)), samples.get(("2 threads", busy))
        if auto and default:
            values = [round(a["img_s"] / d["img_s"], 3) for a, d in zip(auto, default)]
            ratios["busy" if busy else "idle"] = {"rounds": values, "median": round(statistics.median(values), 3)}
    return ratios


if __name__ == "__main__":
    main()
