"""Images per second of `cxrclf fuse` on the shared real set (or synthetic phantoms).

    python benchmarks/fuse.py [--data ../shared/data/cxr-mini] [--workers 1 2] [--repeat 3] [--json]

Each run fuses Cohen + RSNA + Montgomery + Shenzhen into a temporary folder (decode, hash,
PNG write, dedup, split) and reports the best of ``--repeat`` wall times per worker count.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from cxrclf.data.fuse import FuseOptions, fuse

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-mini"


def bench_fuse(data: Path, workers: int, repeat: int) -> dict:
    times, images = [], 0
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            options = FuseOptions(cohen=data / "cohen", rsna=data / "rsna", nlm=data / "montgomery", shenzhen=data / "shenzhen", workers=workers)
            start = time.perf_counter()
            report = fuse(options, Path(tmp) / "fused")
            times.append(time.perf_counter() - start)
            images = report["images"] + report["excluded"]["by_reason"].get("exact duplicate", 0)
    best = min(times)
    return {"workers": workers, "images": images, "seconds": round(best, 3), "images_per_s": round(images / best, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"benchmarks/fuse.py: {args.data}: data folder not found")
    rows = [bench_fuse(args.data, w, args.repeat) for w in args.workers]
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2))
        return
    print(f"fuse on {args.data} ({platform.machine()}, best of {args.repeat})")
    print(f"{'workers':>8} {'images':>7} {'seconds':>8} {'images/s':>9}")
    for row in rows:
        print(f"{row['workers']:>8} {row['images']:>7} {row['seconds']:>8} {row['images_per_s']:>9}")


if __name__ == "__main__":
    main()
