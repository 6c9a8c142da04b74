"""What the metric losses cost per training iteration, against nnU-Net's Dice + cross-entropy, in one run.

For each loss (`lib.training.losses.LOSSES`; baseline "dice_ce") the training plan's calibration
(`lib.training_budget.calibrate`) builds the trainer as notebook 02 does and times, on the same synthetic block: nnU-Net's
`train_step` (forward, loss, backward, optimizer step) and one training batch loaded and augmented as one worker
makes it (where the skeleton recall loss makes its skeletons). The losses are timed in turn, `--repeats` rounds,
each starting with the next loss (medians over rounds), so a drift in the machine's speed or a first-in-round effect
touches every loss alike. Also timed alone: the tubed
skeleton of one batch's labels (`losses.tubed_skeleton`, what the workers add).

An iteration is step + batch on the CPU (they share the cores) and max(step, batch / workers) on a GPU (the
workers augment beside the step), as `TrainingCalibration.iteration_seconds` counts it. Goal (issue 22): skeleton
recall <= 1.3 x dice_ce per iteration.

    .venv/bin/python benchmarks/loss_cost.py                                  # CPU here: tiny network
    python benchmarks/loss_cost.py --configuration hepatic --device cuda      # a GPU: the seed's network
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from lib import training_budget
from lib.training import losses
from lib.training.fine_tune import TrainSettings


def skeleton_seconds(patch: tuple[int, int, int], batch_size: int, seed: int = 0) -> float:
    """Seconds for the tubed skeletons of one batch of vessel-like labels of the patch's shape."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    labels = [ndimage.gaussian_filter(rng.random(patch), 2.0) > 0.56 for _ in range(batch_size)]
    start = time.perf_counter()
    for label in labels:
        losses.tubed_skeleton(label)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configuration", default="tiny", choices=["tiny", "hepatic"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=5, help="timed steps and batches per calibration (median)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over the losses (median over rounds)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    rounds: dict[str, list] = {loss: [] for loss in losses.LOSSES}
    for r in range(args.repeats):
        for loss in losses.LOSSES[r % 3:] + losses.LOSSES[:r % 3]:  # each round starts with another loss
            settings = TrainSettings(configuration=args.configuration, device=args.device, loss=loss)
            calibration = training_budget.calibrate(settings, steps=args.steps)
            rounds[loss].append(calibration)
            print(f"round {r} {loss}: {calibration.summary()}", flush=True)
    first = rounds["dice_ce"][0]
    rows = {}
    for loss, calibrations in rounds.items():
        rows[loss] = {key: statistics.median(getattr(c, key) if key != "iteration_seconds" else c.iteration_seconds()
                                             for c in calibrations)
                      for key in ("train_step_seconds", "augmentation_batch_seconds", "iteration_seconds")}
    base = rows["dice_ce"]
    skeleton = statistics.median(skeleton_seconds(first.patch_size, first.batch_size, r) for r in range(3))
    print(f"\nloss cost on {first.device}, {first.configuration} patch {list(first.patch_size)} batch "
          f"{first.batch_size}, {args.repeats} rounds x {args.steps} steps (medians); baseline dice_ce\n")
    print("| loss | train step s | augmentation s/batch | iteration s | step / dice_ce | iteration / dice_ce |")
    print("|---|---|---|---|---|---|")
    for loss, row in rows.items():
        row["step_ratio"] = row["train_step_seconds"] / base["train_step_seconds"]
        row["iteration_ratio"] = row["iteration_seconds"] / base["iteration_seconds"]
        print(f"| {loss} | {row['train_step_seconds']:.3f} | {row['augmentation_batch_seconds']:.3f} | "
              f"{row['iteration_seconds']:.3f} | {row['step_ratio']:.2f}x | {row['iteration_ratio']:.2f}x |")
    print(f"\ntubed skeletons of one batch ({first.batch_size} x {list(first.patch_size)}), one worker: "
          f"{skeleton:.3f} s; {first.augmentation_workers} worker(s) here")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"device": first.device, "configuration": first.configuration,
                                        "patch_size": list(first.patch_size), "batch_size": first.batch_size,
                                        "repeats": args.repeats, "steps": args.steps, "losses": rows,
                                        "skeleton_batch_seconds": skeleton,
                                        "augmentation_workers": first.augmentation_workers}, indent=2) + "\n")


if __name__ == "__main__":
    main()
