"""The training plan on a Kaggle T4, ESTIMATED (no T4 was available): what lib.training_budget projects for the seed recipe
and for one pseudo-label round on the real competition shapes, and on which calibration that rests.

The calibration is composed from three sources, and the JSON it writes says so in its `source`:

- measured HERE, on this machine's CPU (`lib.training_budget.calibrate` with the hepatic configuration and the GPU patch
  64 x 192 x 192, `network=False`): seconds per voxel of conversion, fingerprint and preprocessing (CPU work, single
  process, on Kaggle too, except blosc2's compression threads: Kaggle's 4 cores may do better than 2 here), one batch
  of nnU-Net's augmentation by one worker, the trainer's start and its checkpoints, and per voxel the refinement and
  the threshold curve (lib.postprocess: CPU work on Kaggle too). Augmentation workers: 3, Kaggle's 4 cores less the
  main process.
- measured on an H200 (docs/benchmarks/gpu_check_h200.json, an earlier session): the hepatic train step (median, batch
  2, AMP), the validation step (what the second epoch took beyond its training steps, over its validation
  iterations: an upper bound) and the prediction of a 501 x 1028 x 1257 block (no TTA, all of its time counted as
  network time per tile, so the predictor's own per-voxel work is scaled too: errs long).
- scaled to a T4 by H200 / T4 = 989 / 65 = 15.2, the ratio of NVIDIA's datasheet dense FP16 tensor throughput (H200
  SXM: 1,979 TFLOPS with sparsity, i.e. 989 dense; T4: 65 TFLOPS mixed precision); their memory bandwidths give the
  same ratio (4.8 TB/s / 320 GB/s = 15.0). A 3D U-Net at batch 2 does not saturate an H200 (the ratio may be
  smaller), a T4 held at 70 W rarely sustains its boost clock (it may be larger): an ESTIMATE, not a measurement.
  `--ratio` shows how the projection moves with it.

On a GPU itself, `lib.training_budget.calibrate` measures all of it (the network and the predictor's own work with
lib.inference_budget.calibrate): no estimate needed.

Run: `.venv/bin/python benchmarks/training_budget.py [--ratio 15.2] [--out FILE.json]` (about 20 s on 2 cores), then
`python -m tools.budget training --real-shapes --calibration FILE.json ...` projects other settings on the same calibration
(default FILE: outputs/benchmarks/training_budget_t4.json).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from lib import inference_budget, paths, training_budget
from lib.training.fine_tune import TrainSettings
from tools import budget

H200_FILE = paths.PROJECT_ROOT / "docs" / "benchmarks" / "gpu_check_h200.json"
T4_RATIO = 989 / 65  # H200 SXM dense FP16 tensor TFLOPS / T4 FP16 (mixed precision) TFLOPS, NVIDIA datasheets
KAGGLE_CORES = 4  # a T4 x2 session (competition.md, "Kaggle limits")


def h200_figures(path: Path = H200_FILE) -> dict:
    """The hepatic network on the H200: train step, validation step (upper bound), prediction seconds per tile."""
    steps = json.loads(path.read_text())["steps"]
    train = steps["train"]["result"]
    step, spec = train["step_s_median"], steps["train"]["spec"]
    val_step = (train["epoch_s"][1] - spec["iterations"] * step) / spec["val_iterations"]
    run = next(r for r in steps["inference_depth"]["result"]["depth"]["runs"]
               if r["method"] == "ours" and r["shape"][0] == 501)
    tiles = inference_budget.tiles(run["shape"], run["patch_size"])
    return {"device": train["device"], "gpu": steps["inference_depth"]["result"].get("cuda_device", "H200"),
            "patch_size": train["patch_size"], "train_step_seconds": step, "val_step_seconds": val_step,
            "tile_seconds": run["seconds"] / tiles, "prediction_run": f"{'x'.join(map(str, run['shape']))} in "
            f"{run['seconds']:.1f} s = {tiles} tiles"}


def t4_estimate(ratio: float = T4_RATIO) -> training_budget.TrainingCalibration:
    """CPU-measured data stages and augmentation, H200-measured network times x `ratio` (module docstring)."""
    h200 = h200_figures()
    settings = TrainSettings(configuration="hepatic", device="cpu", patch_size=tuple(h200["patch_size"]))
    here = training_budget.calibrate(settings, block_shape=training_budget.BLOCK_SHAPE, steps=3, network=False)
    return replace(here, device="cuda (Kaggle T4, estimated)", augmentation_workers=KAGGLE_CORES - 1,
                   train_step_seconds=h200["train_step_seconds"] * ratio,
                   val_step_seconds=h200["val_step_seconds"] * ratio, tile_seconds=h200["tile_seconds"] * ratio,
                   predict_voxel_seconds_z=0.0, predict_voxel_seconds_axes=0.0,
                   source=f"ESTIMATE: network times of {h200['gpu']} x {ratio:.1f}; data stages, augmentation, "
                          f"checkpoints, refinement and threshold curve measured on this CPU ({here.seconds:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=T4_RATIO, help="H200 / T4 speed of the network (default 15.2)")
    ap.add_argument("--out", type=Path, default=paths.PROJECT_ROOT / "outputs" / "benchmarks" / "training_budget_t4.json")
    args = ap.parse_args(argv)
    print(f"H200 figures ({H200_FILE.name}): {h200_figures()}")
    calibration = t4_estimate(args.ratio)
    budget.write_calibration(calibration, args.out)
    print(calibration.summary())
    print(f"source: {calibration.source}\nwritten: {args.out}")
    groups = budget.competition_groups()
    for rounds in (0, 1):
        settings = TrainSettings(configuration="hepatic", pseudo_label_rounds=rounds)
        table = training_budget.project(calibration, settings, groups)
        print(f"\n{'seed recipe' if rounds == 0 else 'one pseudo-label round'} (hepatic, 15 epochs x (250 + 50) "
              f"iterations, real competition shapes), on the ESTIMATED T4 calibration:")
        print(training_budget.format_table(table))
        try:
            training_budget.check_budget(table, training_budget.KAGGLE_BUDGET_HOURS)
            print(f"fits Kaggle's {training_budget.KAGGLE_BUDGET_HOURS} h budget "
                  f"with the {training_budget.MARGIN:.0%} margin")
        except ValueError as e:
            print(f"refused: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
