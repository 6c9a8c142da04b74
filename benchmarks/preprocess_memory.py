"""Peak memory of the training data path per z-slab: conversion to the nnU-Net raw dataset (this process) and
nnU-Net's fingerprinting + preprocessing (its worker processes), on full-size slabs of SYNTHETIC kidney_1_dense.

Prints bytes per slab voxel for each stage, the number behind the bound stated in lib/training/nnunet_dataset.py, and
what it means for the default 128-slice slabs of the real groups on a 29 GB Kaggle machine. Baseline: each whole
kidney as a single nnU-Net case (no slabs), extrapolated with the same per-voxel cost.

Run: `.venv/bin/python benchmarks/preprocess_memory.py [--slices 64] [--slab-depth 32 64]` (a few minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile

from lib.training import fine_tune, nnunet_dataset
from tools import synthetic

GROUPS = {"kidney_1_dense": (2279, 1303, 912), "kidney_2": (2217, 1041, 1511), "kidney_3_sparse": (1035, 1706, 1510)}


def vm_hwm_mib() -> float:
    """This process's peak resident memory (VmHWM)."""
    line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def write_root(root: Path, slices: int, first: int = 1100) -> tuple[int, int]:
    """A competition root holding `slices` full-size slices of synthetic kidney_1_dense from the middle of the
    kidney (its ends hold no vessel, and nnU-Net's fingerprint needs foreground), renumbered from 0000."""
    images, labels = root / "train" / "kidney_1_dense" / "images", root / "train" / "kidney_1_dense" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for s in synthetic.render_slices("full", 0, "kidney_1_dense", range(first, first + slices)):
        tifffile.imwrite(images / f"{s.index - first:04d}.tif", s.image)
        tifffile.imwrite(labels / f"{s.index - first:04d}.tif", s.label)
    return s.image.shape


def measure(data: Path, work: Path, slab_depth: int) -> dict:
    """Run in a fresh process: convert and preprocess with one worker; peak memory of each stage."""
    os.environ["nnUNet_def_n_proc"] = "1"
    start = time.perf_counter()
    nnunet_dataset.write_raw_dataset(data, work, nnunet_dataset.Split(["kidney_1_dense"], None, slab_depth),
                                     progress=False)
    convert = vm_hwm_mib()
    cases = nnunet_dataset.read_cases(work)
    arch, _ = fine_tune.architecture_plans("tiny", None, work)
    fine_tune.prepare(arch, [32, 64, 64], 2, cases, progress=False)
    # Fingerprinting may run in worker processes; preprocessing runs here, case by case (VmHWM covers it).
    workers = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, vm_hwm_mib())
    return {"convert_MiB": convert, "workers_MiB": workers, "seconds": time.perf_counter() - start,
            "slab_voxels": max(c.stop - c.start for c in cases)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64, help="full-size slices of synthetic kidney_1_dense")
    parser.add_argument("--slab-depth", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)  # data work depth, in a fresh process
    args = parser.parse_args()
    if args.measure:
        data, work, depth = args.measure
        nnunet_dataset.nnunet_env(work)
        print("RESULT " + json.dumps(measure(Path(data), Path(work), int(depth))))
        return
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent / "outputs") as tmp:
        data = Path(tmp) / "data"
        start = time.perf_counter()
        height, width = write_root(data, args.slices)
        print(f"SYNTHETIC kidney_1_dense, {args.slices} full-size slices ({height} x {width}) rendered in "
              f"{time.perf_counter() - start:.0f} s")
        rows = []
        for depth in args.slab_depth:
            run = subprocess.run([sys.executable, __file__, "--measure", str(data), str(Path(tmp) / f"work{depth}"),
                                  str(depth)], capture_output=True, text=True)
            result = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
            if run.returncode or not result:
                raise SystemExit(f"measurement at slab depth {depth} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
            r = json.loads(result[0][len("RESULT "):])
            voxels = r["slab_voxels"] * height * width
            r.update(depth=depth, convert_B_per_voxel=r["convert_MiB"] * 2**20 / voxels,
                     workers_B_per_voxel=r["workers_MiB"] * 2**20 / voxels)
            rows.append(r)
            print(f"  slab depth {depth:4d}: conversion process peak {r['convert_MiB']:7.0f} MiB "
                  f"({r['convert_B_per_voxel']:5.1f} B/voxel), nnU-Net worker peak {r['workers_MiB']:7.0f} MiB "
                  f"({r['workers_B_per_voxel']:5.1f} B/voxel), {r['seconds']:.0f} s")
    # Peak = fixed overhead (libraries, and the parent's RSS that spawned workers report as a starting point)
    # + a cost per slab voxel: the slope between the smallest and the largest slab.
    small, large = rows[0], rows[-1]
    voxels = [r["slab_voxels"] * height * width for r in (small, large)]
    slope = (large["workers_MiB"] - small["workers_MiB"]) * 2**20 / (voxels[1] - voxels[0])
    fixed = large["workers_MiB"] * 2**20 - slope * voxels[1]
    print(f"\nnnU-Net preprocessing peak ~ {fixed / 2**30:.1f} GiB fixed + {slope:.1f} B per slab voxel. With the "
          f"default 128-slice slabs (a 29 GB Kaggle machine):")
    for name, (z, h, w) in GROUPS.items():
        peak, whole = fixed + slope * 128 * h * w, fixed + slope * z * h * w
        print(f"  {name:16s} {h} x {w}: ~{peak / 2**30:4.1f} GiB per 128-slice slab; "
              f"baseline, the whole kidney as one case ({z} slices): ~{whole / 2**30:4.1f} GiB")


if __name__ == "__main__":
    main()
