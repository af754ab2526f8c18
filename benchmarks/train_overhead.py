"""cxrclf's training step against a bare PyTorch loop: same model, batch and data, one run.

    python benchmarks/train_overhead.py [--model resnet18] [--image-size 128] [--batch-size 10]
                                        [--steps 20] [--rounds 5] [--device cpu] [--json]

The bare loop feeds pre-normalised float tensors to ``model(x)`` and steps Adam. cxrclf's
path is :meth:`cxrclf.train.loop.Trainer.fit_epoch`: uint8 planes in memory, conversion and
normalisation per batch, channels_last, the frozen-BN train mode of the zoo's model. Rounds
alternate between the two so drift in machine load hits both; the median is reported.
Goal: overhead at most 5%.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxrclf.models.zoo import create_model
from cxrclf.train.data import ImageSet
from cxrclf.train.loop import Batches, Distributed, Trainer


def bench(model_name: str, image_size: int, batch_size: int, steps: int, rounds: int, device_name: str, bf16: bool) -> dict:
    device = torch.device(device_name)
    torch.manual_seed(0)
    bundle = create_model(model_name, 3, pretrained=False, image_size=image_size)
    count = batch_size * steps
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, size=(count, image_size, image_size), dtype=np.uint8)
    labels = rng.integers(0, 3, size=count)
    images = ImageSet(planes, labels, pd.DataFrame(index=range(count)))

    trainer = Trainer(copy.deepcopy(bundle.model), 1e-4, None, device, Distributed())
    batches = Batches(images, bundle.in_chans, bundle.mean, bundle.std, device)
    order, augment = np.arange(count), np.zeros(count, dtype=bool)

    bare_model = copy.deepcopy(bundle.model).to(device).to(memory_format=torch.channels_last).train()
    bare_optimizer = torch.optim.Adam([p for p in bare_model.parameters() if p.requires_grad], lr=1e-4)
    mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
    std = torch.tensor(bundle.std).view(1, -1, 1, 1)
    x_all = ((torch.from_numpy(planes).float().div(255).unsqueeze(1).expand(-1, bundle.in_chans, -1, -1) - mean) / std)
    x_all = x_all.contiguous(memory_format=torch.channels_last).to(device)
    y_all = torch.from_numpy(labels).to(device)

    def bare_epoch() -> None:
        for start in range(0, count, batch_size):
            x, y = x_all[start:start + batch_size], y_all[start:start + batch_size]
            bare_optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = bare_model(x)
            F.cross_entropy(logits.float(), y).backward()
            bare_optimizer.step()

    def cxrclf_epoch() -> None:
        trainer.fit_epoch(batches, order, augment, batch_size, torch.Generator().manual_seed(0))

    def timed(function) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(bare_epoch), timed(cxrclf_epoch)  # warm-up
    bare, ours = [], []
    for _ in range(rounds):
        bare.append(timed(bare_epoch))
        ours.append(timed(cxrclf_epoch))
    bare_s, ours_s = statistics.median(bare), statistics.median(ours)
    return {
        "model": model_name, "image_size": image_size, "batch_size": batch_size, "steps": steps, "device": str(device),
        "bare_images_per_s": round(count / bare_s, 2), "cxrclf_images_per_s": round(count / ours_s, 2),
        "overhead_percent": round(100 * (ours_s - bare_s) / bare_s, 2),
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = bench(args.model, args.image_size, args.batch_size, args.steps, args.rounds, args.device, args.device == "cuda")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']} at {result['image_size']} px, batch {result['batch_size']}, {result['steps']} steps, {result['device']} ({result['machine']}, {result['threads']} threads)")
    print(f"bare PyTorch loop : {result['bare_images_per_s']:>8} img/s")
    print(f"cxrclf Trainer    : {result['cxrclf_images_per_s']:>8} img/s")
    print(f"overhead          : {result['overhead_percent']:>7}%")


if __name__ == "__main__":
    main()
