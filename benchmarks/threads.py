"""A 64 px training step on 1 and 2 PyTorch threads, OpenMP waiting actively or passively, with and without a busy process beside it.

    python benchmarks/threads.py [--steps 20] [--rounds 3] [--json]

Each setting runs in a fresh process (``OMP_WAIT_POLICY`` is read when PyTorch loads its
OpenMP runtime, so it cannot change later). The step is ``resnet-baseline``, batch 16,
64 px, through :class:`cxrclf.train.loop.Trainer` (as the demo trains). "busy" starts one
Python process spinning on the CPU for the length of the measurement: on a 2-core machine
it takes one core, as another user's job would. ``auto`` is the thread count and wait
policy the CLI now chooses (:mod:`cxrclf.threads`). Rounds alternate the settings so that
drift in the machine's load hits them all; the median is reported, with ``uptime`` beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = [  # (label, threads, OMP_WAIT_POLICY or None for OpenMP's default)
    ("1 thread", 1, None),
    ("2 threads", 2, None),
    ("2 threads, PASSIVE", 2, "PASSIVE"),
    ("auto", 0, "auto"),
]


def child(threads: int, steps: int) -> None:
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
    bundle = create_model("resnet-baseline", 3, pretrained=False, image_size=64)
    batch, count = 16, 16 * (steps + 3)
    rng = np.random.default_rng(0)
    images = ImageSet(rng.integers(0, 256, size=(count, 64, 64), dtype=np.uint8), rng.integers(0, 3, size=count), pd.DataFrame(index=range(count)))
    device = torch.device("cpu")
    trainer = Trainer(bundle.model, 1e-3, None, device, Distributed())
    batches = Batches(images, bundle.in_chans, bundle.mean, bundle.std, device)
    order, augment = np.arange(count), np.zeros(count, dtype=bool)
    generator = torch.Generator().manual_seed(0)
    trainer.fit_epoch(batches, order[:3 * batch], augment[:3 * batch], batch, generator)
    start = time.perf_counter()
    trainer.fit_epoch(batches, order[3 * batch:], augment[3 * batch:], batch, generator)
    print(json.dumps({"img_s": steps * batch / (time.perf_counter() - start), "threads": chosen, "policy": os.environ.get("OMP_WAIT_POLICY", "")}))


def measure(threads: int, policy: str | None, busy: bool, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["HF_HUB_OFFLINE"] = "1"
    if policy == "auto":
        from cxrclf.threads import passive_wait

        passive_wait(env)
    elif policy:
        env["OMP_WAIT_POLICY"] = policy
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        result = subprocess.run([sys.executable, __file__, "--child", str(threads), "--steps", str(steps)], env=env, capture_output=True, text=True, check=True)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.steps)
        return
    samples: dict[tuple[str, bool], list[dict]] = {}
    for _ in range(args.rounds):
        for busy in (False, True):
            for label, threads, policy in SETTINGS:
                samples.setdefault((label, busy), []).append(measure(threads, policy, busy, args.steps))
    rows = [{"setting": label, "busy neighbour": busy, "threads": runs[0]["threads"], "policy": runs[0]["policy"] or "default",
             "img_s": round(statistics.median(r["img_s"] for r in runs), 1)} for (label, busy), runs in samples.items()]
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    if args.json:
        print(json.dumps({"rows": rows, "uptime": uptime, "cpus": len(os.sched_getaffinity(0))}, indent=2))
        return
    print(f"{'setting':22} {'busy':5} {'threads':>7} {'policy':8} {'img/s':>7}")
    for row in rows:
        print(f"{row['setting']:22} {str(row['busy neighbour']):5} {row['threads']:>7} {row['policy']:8} {row['img_s']:>7}")
    print(uptime)


if __name__ == "__main__":
    main()
