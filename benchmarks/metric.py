"""Benchmark the streaming surface Dice against DeepMind's surface-distance (the hosts' reference).

1. The same 200x512x512 vessel-like pair through both: wall time, peak extra memory (tracemalloc, inputs
   excluded) and the ratios, plus the difference of the two scores.
2. The project metric alone on a 501x1706x1510 pair (kidney_3_dense size) read from RLE CSVs in the hosts'
   format, in a fresh process: wall time and peak resident memory of the whole process.

Run: `.venv/bin/python benchmarks/metric.py` (about 2 minutes on 2 cores; `--quick` for a smaller run).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from lib import rle
from lib.metric import score_submission, surface_dice


def vessel_slices(shape: tuple[int, int, int], seed: int, jitter: int = 0):
    """Yield (gt, pred) slices of drifting discs (tube cross-sections, radius 1-6): vessel-like, about 0.5%."""
    depth, height, width = shape
    rng = np.random.default_rng(seed)
    n = max(8, height * width // 15000)
    centre = rng.random((n, 2)) * (height, width)
    velocity = rng.normal(0, 0.6, (n, 2))
    radius = rng.uniform(1, 6, n)
    yy, xx = np.ogrid[:height, :width]
    noise = np.random.default_rng(seed + 1)
    for z in range(depth):
        gt = np.zeros((height, width), bool)
        pred = np.zeros((height, width), bool)
        for (cy, cx), r in zip(centre + velocity * z, radius):
            y0, y1 = max(int(cy - r - 2), 0), min(int(cy + r + 3), height)
            x0, x1 = max(int(cx - r - 2), 0), min(int(cx + r + 3), width)
            if y0 >= y1 or x0 >= x1:
                continue
            d2 = (yy[y0:y1] - cy) ** 2 + (xx[:, x0:x1] - cx) ** 2
            gt[y0:y1, x0:x1] |= d2 <= r * r
            rp = r + noise.normal(0, 0.4)  # the prediction gets the radius slightly wrong
            pred[y0:y1, x0:x1] |= d2 <= rp * rp
        yield gt, pred


def run_reference_vs_project(shape: tuple[int, int, int]) -> None:
    import surface_distance

    if not hasattr(np, "Inf"):  # surface-distance 0.1 still uses np.Inf, removed in numpy 2
        np.Inf = np.inf
    pairs = list(vessel_slices(shape, seed=0))
    gt = np.stack([g for g, _ in pairs])
    pred = np.stack([p for _, p in pairs])
    del pairs
    print(f"pair {shape}: vessel fraction {gt.mean():.3%}")

    def reference() -> float:
        d = surface_distance.compute_surface_distances(gt, pred, (1, 1, 1))
        return float(surface_distance.compute_surface_dice_at_tolerance(d, 0))

    results = {}
    for name, fn in (("surface-distance", reference), ("lib.metric", lambda: surface_dice(gt, pred))):
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
        tracemalloc.start()
        fn()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results[name] = (value, seconds, peak)
        print(f"  {name:17s} score {value:.12f}  time {seconds:8.2f} s  peak extra memory {peak / 2**20:8.1f} MiB")
    (ref, t_ref, m_ref), (own, t_own, m_own) = results["surface-distance"], results["lib.metric"]
    print(f"  speed-up {t_ref / t_own:.1f}x, memory {m_ref / m_own:.0f}x less, |score difference| {abs(ref - own):.1e}")


def run_kidney_from_rle(shape: tuple[int, int, int]) -> None:
    depth, height, width = shape
    with tempfile.TemporaryDirectory() as tmp:
        solution, submission = Path(tmp) / "solution.csv", Path(tmp) / "submission.csv"
        sol_rows, sub_rows = [], []
        for z, (gt, pred) in enumerate(vessel_slices(shape, seed=1)):
            sol_rows.append((f"kidney_3_dense_{z:04d}", rle.encode(gt), width, height, "kidney_3_dense", z))
            sub_rows.append((f"kidney_3_dense_{z:04d}", rle.encode(pred)))
        pd.DataFrame(sol_rows, columns=["id", "rle", "width", "height", "image", "slice"]).to_csv(solution, index=False)
        pd.DataFrame(sub_rows, columns=["id", "rle"]).to_csv(submission, index=False)
        del sol_rows, sub_rows
        mb = (solution.stat().st_size + submission.stat().st_size) / 2**20
        print(f"kidney_3_dense-size pair {shape} from RLE ({mb:.0f} MiB of CSV), scored in a fresh process:")
        out = subprocess.run([sys.executable, __file__, "--score", str(solution), str(submission)],
                             capture_output=True, text=True, check=True)
        print(out.stdout.rstrip())


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def score_files(solution: str, submission: str) -> None:
    start = time.perf_counter()
    result = score_submission(pd.read_csv(solution, dtype={"id": str, "rle": str}, keep_default_na=False),
                              pd.read_csv(submission, dtype={"id": str, "rle": str}, keep_default_na=False))
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    print(f"  lib.metric score {result['score']:.6f}  time {seconds:.1f} s  peak resident memory {peak:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller volumes, for a smoke run")
    parser.add_argument("--score", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.score:
        return score_files(*args.score)
    print(f"numpy {np.__version__}; {Path('/proc/cpuinfo').read_text().count('processor')} CPU cores")
    run_reference_vs_project((50, 128, 128) if args.quick else (200, 512, 512))
    run_kidney_from_rle((50, 400, 300) if args.quick else (501, 1706, 1510))


if __name__ == "__main__":
    main()
