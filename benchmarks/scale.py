"""cxrclf at the size of the public sources: near-duplicate search, fuse, preprocess, a training epoch, DDP memory.

    python benchmarks/scale.py search   [--sizes 10000 100000 200000 1000000] [--brute-max 20000] [--json]
    python benchmarks/scale.py pipeline [--images 1000 10000] [--work DIR] [--workers 2] [--stages sources fuse preprocess train]
                                        [--fuse-runs 1] [--json]
    python benchmarks/scale.py ddp      [--images 1000] [--work DIR] [--json]

``search`` times :func:`cxrclf.data.split.hamming_pairs` at 24 bits on random 256-bit hashes
and on clustered ones (cluster centres, each with 4 members up to 8 bits away, the rest of
the hashes random), and brute force beside it up to ``--brute-max`` hashes, checking that
the pairs are identical. ``pipeline`` writes synthetic X-rays in the NIH ChestX-ray14
layout (128 px phantoms, normal and pneumonia, with a tenth as many COVID-19 images in
the Cohen layout so that the 3-class scheme can train; each phantom posed anew and under its
own exposure, so that their perceptual hashes lie as far apart as real radiographs') and times
fuse (decode, hash, deduplicate, split; ``--fuse-runs`` times, and how alike the fused hashes
are), preprocess (64 px) and one training epoch (``resnet-baseline``, 64 px, one thread);
``--stages`` picks some of them (on sources an earlier run wrote). ``ddp`` trains the same epoch with ``torchrun --nproc-per-node`` 1
and 2 and samples the memory of the whole process tree (PSS: pages shared between ranks
count once in total) and the part of it that maps the image cache.

Every measurement runs in its own process, whose peak resident memory (its own and its
workers') is reported. ``uptime`` is printed beside the timings: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_mib() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"peak_mib": round(own, 1), "peak_worker_mib": round(children, 1)}


def _cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU time of this process and its finished workers: unlike the wall clock, blind to waits for the
    disk. The user time is the stage's own work; the system time is mostly the file system's (creating, writing and
    renaming files), and varies with its state from run to run."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime


def _cpu_since(before: tuple[float, float]) -> dict:
    user, system = _cpu_seconds()
    return {"cpu_user_seconds": round(user - before[0], 1), "cpu_system_seconds": round(system - before[1], 1)}


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _child(*args: str, env: dict | None = None) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- search

def _hashes(n: int, kind: str, seed: int = 0) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, size=(n, 256), dtype=np.uint8)
    if kind == "clustered":  # a fifth of the hashes: centres with 4 members each, up to 8 bits from their centre
        centres = n // 25
        members = bits[centres:5 * centres].reshape(centres, 4, 256)
        members[:] = bits[:centres, None, :]
        flips = rng.integers(0, 256, size=(centres, 4, 8))
        keep = rng.integers(0, 9, size=(centres, 4))
        for k in range(8):
            rows, cols = np.nonzero(keep > k)
            members[rows, cols, flips[rows, cols, k]] ^= 1
        bits = bits[rng.permutation(n)]
    return [row.tobytes().hex() for row in np.packbits(bits, axis=1)]


def search_child(n: int, kind: str, brute: bool) -> dict:
    import numpy as np

    from cxrclf.data import hamming
    from cxrclf.data.split import hamming_pairs

    hashes = _hashes(n, kind)
    start = time.perf_counter()
    pairs = hamming_pairs(hashes, 24)
    seconds = time.perf_counter() - start
    out = {"hashes": n, "kind": kind, "pairs": len(pairs), "seconds": round(seconds, 2), "chunks": hamming.plan(n, 24)} | _peak_mib()
    if brute:
        start = time.perf_counter()
        oracle = hamming.brute_force_pairs(hamming.hash_words(hashes), 24)
        out["brute_seconds"] = round(time.perf_counter() - start, 2)
        out["identical"] = bool(np.array_equal(np.array(pairs, dtype=np.int64).reshape(-1, 2), oracle))
    return out


def search(sizes: list[int], brute_max: int) -> list[dict]:
    rows = []
    for n in sizes:
        for kind in ("random", "clustered"):
            rows.append(_child("_search", str(n), kind, "1" if n <= brute_max else "0"))
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- pipeline

def sources_child(work: Path, images: int) -> dict:
    import numpy as np

    from cxrclf.data import synthetic
    from cxrclf.labels import COVID19, NORMAL, OTHER_PNEUMONIA

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    # distinct: each phantom posed anew and under its own exposure, so that near-duplicates are as rare as among real films
    # (alike phantoms make the search's output, and fuse's time per image, grow with the square of their number)
    synthetic.write_nih(work / "nih", {NORMAL: images // 2, OTHER_PNEUMONIA: images - images // 2}, rng, size=128, distinct=True)
    synthetic.write_cohen(work / "cohen", {COVID19: max(8, images // 10)}, rng, size=128, extras=False, distinct=True)
    return {"stage": "write sources", "seconds": round(time.perf_counter() - start, 1)} | _peak_mib()


def fuse_child(work: Path, workers: int) -> dict:
    from cxrclf.data.fuse import FuseOptions, fuse

    shutil.rmtree(work / "fused", ignore_errors=True)  # a first fuse, as a user's: replacing 55,000 files costs seconds of its own
    os.sync()  # and the removal's writes (and discards) done before the clock starts
    start = time.perf_counter()
    cpu = _cpu_seconds()
    report = fuse(FuseOptions(nih=work / "nih", cohen=work / "cohen", workers=workers), work / "fused", overwrite=True)
    seconds = time.perf_counter() - start
    return {"stage": "fuse", "images": report["images"], "seconds": round(seconds, 1)} | _cpu_since(cpu) | _peak_mib() | hash_spread(work / "fused" / "manifest.csv")


def hash_spread(manifest: Path, sample: int = 2000) -> dict:
    """How alike a fused folder's perceptual hashes are: the entropy of their bits (the sum over the 256 bits) and the
    median distance between two of them (on up to ``sample`` hashes). The shared set's 262 real radiographs: 240 bits,
    118 apart; random hashes: 256, 128."""
    import numpy as np
    import pandas as pd

    hashes = pd.read_csv(manifest, usecols=["phash"])["phash"].dropna().tolist()
    bits = np.unpackbits(np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), np.uint8).reshape(len(hashes), 32), axis=1)
    share = bits.mean(axis=0).clip(1e-12, 1 - 1e-12)
    entropy = float(-(share * np.log2(share) + (1 - share) * np.log2(1 - share)).sum())
    picked = bits[np.random.default_rng(0).permutation(len(bits))[:sample]].astype(np.int16)
    distances = np.concatenate([(picked[i + 1:] != picked[i]).sum(axis=1) for i in range(len(picked) - 1)])
    return {"hash_entropy_bits": round(entropy, 1), "hash_median_distance": float(np.median(distances))}


def preprocess_child(work: Path, workers: int) -> dict:
    from cxrclf.prepare import preprocess_folder
    from cxrclf.preprocess.params import PreprocessParams

    shutil.rmtree(work / "prep", ignore_errors=True)  # a first preprocess, as for fuse
    os.sync()
    start = time.perf_counter()
    cpu = _cpu_seconds()
    summary = preprocess_folder(work / "fused", work / "prep", PreprocessParams(size=64, work_size=128), workers=workers, overwrite=True)
    return {"stage": "preprocess", "images": summary["images"], "seconds": round(time.perf_counter() - start, 1)} | _cpu_since(cpu) | _peak_mib()


def train_options(work: Path, out: Path, threads: int | None = 1):
    from cxrclf.train.loop import TrainOptions

    return TrainOptions(model="resnet-baseline", strategy="oversample", classes=3, data=work / "prep", out=out, epochs=1, patience=1,
                        batch_size=16, lr=1e-3, image_size=64, pretrained=False, threads=threads, overwrite=True)


def train_child(work: Path) -> dict:
    from cxrclf.train.loop import train

    os.environ["CXRCLF_CACHE"] = str(work / "cache")  # this benchmark's own plane cache, emptied first
    shutil.rmtree(work / "cache", ignore_errors=True)  # the first epoch builds the cache, as a user's first run does
    start = time.perf_counter()
    train(train_options(work, work / "run"))
    metrics = (work / "run" / "metrics.csv").read_text().splitlines()
    row = dict(zip(metrics[0].split(","), metrics[1].split(",")))
    return {"stage": "train 1 epoch", "images": int(float(row["images_per_s"]) * float(row["seconds"])), "seconds": round(time.perf_counter() - start, 1),
            "epoch_seconds": float(row["seconds"]), "images_per_s": float(row["images_per_s"])} | _peak_mib()


STAGES = ("sources", "fuse", "preprocess", "train")


def pipeline(sizes: list[int], work_root: Path, workers: int, stages: tuple[str, ...] = STAGES, fuse_runs: int = 1) -> list[dict]:
    rows = []
    for images in sizes:
        work = work_root / f"nih-{images}"
        if "sources" in stages:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
        elif not (work / "nih" / "Data_Entry_2017.csv").is_file():
            raise SystemExit(f"{work / 'nih'}: no sources written there; add the stage `sources`")
        plan = {"sources": [("_sources", str(work), str(images))], "fuse": [("_fuse", str(work), str(workers))] * fuse_runs,
                "preprocess": [("_preprocess", str(work), str(workers))], "train": [("_train", str(work))]}
        for stage in (step for name in STAGES if name in stages for step in plan[name]):
            row = {"size": images} | _child(*stage) | {"uptime": _uptime()}
            if row.get("images"):
                row["ms_per_image"] = round(1000 * row["seconds"] / row["images"], 2)
                for kind in ("user", "system"):
                    if f"cpu_{kind}_seconds" in row:
                        row[f"cpu_{kind}_ms_per_image"] = round(1000 * row[f"cpu_{kind}_seconds"] / row["images"], 2)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    return rows


# ----------------------------------------------------------------------------- ddp

def _tree(pid: int) -> list[int]:
    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        frontier += [int(c) for c in children]
    return found


def _pss_kib(pid: int, cache_marker: str) -> tuple[int, int]:
    """(total PSS, PSS of mappings of the image cache) of one process, in KiB."""
    total = cached = 0
    current_is_cache = False
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                current_is_cache = cache_marker in line
            elif line.startswith("Pss:"):
                value = int(line.split()[1])
                total += value
                if current_is_cache:
                    cached += value
    except OSError:
        pass
    return total, cached


def ddp(images: int, work_root: Path) -> list[dict]:
    work = work_root / f"nih-{images}"
    if not (work / "prep" / "manifest.csv").is_file():
        raise SystemExit(f"run `scale.py pipeline --images {images} --work {work_root}` first")
    rows = []
    for ranks in (1, 2):
        shutil.rmtree(work / "cache", ignore_errors=True)
        out = work / f"run-ddp{ranks}"
        command = [shutil.which("torchrun") or "torchrun", "--standalone", f"--nproc-per-node={ranks}", "-m", "cxrclf", "train", "--model", "resnet-baseline",
                   "--strategy", "oversample", "--classes", "3", "--data", str(work / "prep"), "--out", str(out), "--epochs", "1", "--patience", "1",
                   "--batch-size", "16", "--image-size", "64", "--no-pretrained", "--overwrite", "--threads", "1"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", CXRCLF_CACHE=str(work / "cache"))
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = peak_cache = 0
        per_process: dict[int, int] = {}  # each process's own peak PSS: the launcher (torchrun) and every rank
        while process.poll() is None:
            pids = _tree(process.pid)
            sizes = [_pss_kib(pid, "/cache/64px-") for pid in pids]
            total, cached = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
            peak, peak_cache = max(peak, total), max(peak_cache, cached)
            for pid, (own, _) in zip(pids, sizes):
                per_process[pid] = max(per_process.get(pid, 0), own)
            time.sleep(0.2)
        if process.returncode:
            raise SystemExit(f"torchrun failed:\n{process.stderr.read()[-3000:]}")
        launcher = per_process.pop(process.pid, 0)
        # the ranks are the processes that held memory of their own (torchrun's helpers, if any, stay under 100 MiB)
        rank_peaks = sorted((kib for kib in per_process.values() if kib > 100 * 1024), reverse=True)
        rows.append({"ranks": ranks, "images": images, "seconds": round(time.perf_counter() - start, 1), "peak_pss_mib": round(peak / 1024, 1),
                     "launcher_peak_pss_mib": round(launcher / 1024, 1), "rank_peak_pss_mib": [round(k / 1024, 1) for k in rank_peaks],
                     "peak_cache_pss_mib": round(peak_cache / 1024, 1),
                     "cache_file_mib": round(sum(p.stat().st_size for p in (work / "cache").glob("64px-*.u8")) / 2**20, 1), "uptime": _uptime()})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search")
    s.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 200_000, 1_000_000])
    s.add_argument("--brute-max", type=int, default=20_000)
    p = sub.add_parser("pipeline")
    p.add_argument("--images", type=int, nargs="+", default=[1000, 10_000])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--fuse-runs", type=int, default=1, help="run fuse this many times (its time varies most)")
    d = sub.add_parser("ddp")
    d.add_argument("--images", type=int, default=1000)
    for each in (s, p, d):
        each.add_argument("--json", action="store_true")
    for each in (p, d):
        each.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "cxrclf-scale")
    for name in ("_search", "_sources", "_fuse", "_preprocess", "_train"):
        hidden = sub.add_parser(name)
        hidden.add_argument("args", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.command.startswith("_"):
        a = args.args
        result = {"_search": lambda: search_child(int(a[0]), a[1], a[2] == "1"), "_sources": lambda: sources_child(Path(a[0]), int(a[1])),
                  "_fuse": lambda: fuse_child(Path(a[0]), int(a[1])), "_preprocess": lambda: preprocess_child(Path(a[0]), int(a[1])),
                  "_train": lambda: train_child(Path(a[0]))}[args.command]()
        print(json.dumps(result))
        return
    uptime = _uptime()
    rows = search(args.sizes, args.brute_max) if args.command == "search" else pipeline(args.images, args.work, args.workers, tuple(args.stages), args.fuse_runs) if args.command == "pipeline" else ddp(args.images, args.work)
    if args.json:
        print(json.dumps({"rows": rows, "uptime_before": uptime, "uptime_after": _uptime()}, indent=2))
        return
    for row in rows:
        print("  ".join(f"{k}={v}" for k, v in row.items() if k != "uptime"))
    print(f"before: {uptime}\nafter:  {_uptime()}")


if __name__ == "__main__":
    main()
