"""The training plan and the hidden-test plan from the command line (lib.training_budget, lib.inference_budget).

    python -m tools.budget training --data-dir ROOT [--configuration hepatic] [--epochs 15] [--pseudo-label-rounds 1]
                                    [--real-shapes] [--budget-hours 11.5] [--calibration FILE.json]
    python -m tools.budget inference MODEL_DIR [MODEL_DIR ...] --hours 9 [--devices cuda:0 cuda:1] [--out plan.csv]

`training` calibrates here (or reads a saved calibration), projects notebook 02's stages, prints them and checks the
budget; `inference` calibrates the model(s), projects every TTA choice and ensemble size and prints the one chosen.
Bad input (and a plan over its budget) is one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

import pandas as pd

from lib import data, inference_budget, paths, predictor, training_budget
from lib.training import fine_tune
from lib.training.fine_tune import TrainSettings
from lib.training_budget import TrainingCalibration
from tools import errors


def competition_groups() -> dict[str, data.Group]:
    """The competition's training groups with their real shapes (`data.COMPETITION_SHAPES`), as `data.Group`s
    whose files are never read (kidney_3_dense's images are kidney_3_sparse's slices 0496..0996): what
    `training_budget.project` needs to project the real data from a machine that does not have it."""
    base = Path("<competition>") / "train"
    groups = {}
    for name in data.LABEL_KIND:
        depth, height, width = data.COMPETITION_SHAPES[name]
        slices = tuple(data.KIDNEY_3_DENSE_SLICES) if name == "kidney_3_dense" else tuple(range(depth))
        source = data.IMAGES_FROM.get(name, name)
        groups[name] = data.Group(name, "train", slices, tuple(base / source / "images" / f"{z:04d}.tif" for z in slices),
                                  tuple(base / name / "labels" / f"{z:04d}.tif" for z in slices), height=height,
                                  width=width)
    return groups


def write_calibration(calibration: TrainingCalibration, path: Path) -> None:
    """The calibration as JSON (NaN: not measured), to project other settings on it later (`--calibration`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(calibration), indent=2) + "\n")


def read_calibration(path: Path) -> TrainingCalibration:
    """A calibration written by `write_calibration` (e.g. the T4 estimate of benchmarks/training_budget.py)."""
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from e
    names = [f.name for f in fields(TrainingCalibration)]
    missing = [n for n in names if n != "source" and n not in saved] if isinstance(saved, dict) else ["everything"]
    if missing:
        raise ValueError(f"{path}: not a training calibration (missing: {', '.join(missing)})")
    values = {n: (math.nan if saved[n] is None else saved[n]) for n in names if n in saved}
    return TrainingCalibration(**{**values, "patch_size": tuple(values["patch_size"])})


def run_training(args: argparse.Namespace) -> int:
    """Calibrate here (or read a calibration), project, print, check the budget."""
    try:
        settings = TrainSettings(configuration=args.configuration, epochs=args.epochs,
                                 iterations_per_epoch=args.iterations, val_iterations_per_epoch=args.val_iterations,
                                 pseudo_label_rounds=args.pseudo_label_rounds, batch_size=args.batch_size,
                                 patch_size=tuple(args.patch_size) if args.patch_size else None, device=args.device)
        hours = None if args.budget_hours.lower() == "none" else args.budget_hours
        budget = training_budget.resolve_budget_hours(hours)
        groups = competition_groups() if args.real_shapes else data.discover(args.data_dir or paths.default_data_dir())
        calibration = read_calibration(args.calibration) if args.calibration else training_budget.calibrate(settings)
        table = training_budget.project(calibration, settings, groups, args.validation_tta)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_BAD_INPUT
    if args.save_calibration:
        write_calibration(calibration, args.save_calibration)
    print(calibration.summary())
    print(training_budget.format_table(table))
    try:
        training_budget.check_budget(table, budget)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_BAD_INPUT
    print(f"fits the {budget:g} h budget with a {training_budget.MARGIN:.0%} margin" if budget else "no budget to check")
    return 0


def run_inference(args: argparse.Namespace) -> int:
    """Calibrate the model(s) on the first device, project every setting, print the table and the choice."""
    try:
        devices = predictor.resolve_devices(args.devices)
        models = predictor.load_models(args.model_dirs, str(devices[0]))
        table, chosen, calibration = inference_budget.plan(models, args.hours, len(devices), args.tile_step)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.EXIT_BAD_INPUT
    print(f"calibration on {calibration.device}: {calibration.tile_seconds * 1000:.1f} ms per tile, "
          f"{calibration.voxel_seconds_z * 1e9:.2f} / {calibration.voxel_seconds_axes * 1e9:.2f} ns per voxel "
          f"(z-view / axes), {len(devices)} device(s)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"chosen: tta={chosen.tta}, {chosen.models} model(s): {chosen.total_hours:.2f} h projected "
          f"(budget {args.hours:g} h, margin {inference_budget.MARGIN:.0%})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        args.out.with_suffix(".json").write_text(pd.Series(asdict(calibration)).to_json(indent=2) + "\n")
    return 0


def parser() -> argparse.ArgumentParser:
    """The two subcommands and their options."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    about = "project notebook 02's training stages on this machine, check them against a session budget (Kaggle: 11.5 h)"
    train = sub.add_parser("training", help=about, description=about)
    train.set_defaults(run=run_training)
    train.add_argument("--data-dir", type=Path, default=None, help="competition root (default: the project's)")
    train.add_argument("--real-shapes", action="store_true", help="project the real competition shapes instead")
    train.add_argument("--configuration", default="hepatic", choices=sorted(fine_tune.ARCHITECTURES))
    train.add_argument("--epochs", type=int, default=15)
    train.add_argument("--iterations", type=int, default=250, help="iterations per epoch")
    train.add_argument("--val-iterations", type=int, default=50, help="validation iterations per epoch")
    train.add_argument("--pseudo-label-rounds", type=int, default=0)
    train.add_argument("--batch-size", type=int, default=2)
    train.add_argument("--patch-size", type=int, nargs=3, default=None)
    train.add_argument("--validation-tta", default="none", help="none, flips, axes or axes+flips")
    train.add_argument("--device", default="auto")
    train.add_argument("--budget-hours", default="auto", help='"auto" (11.5 on Kaggle, none elsewhere), a number, none')
    train.add_argument("--calibration", type=Path, default=None, help="use this saved calibration (.json) instead")
    train.add_argument("--save-calibration", type=Path, default=None, help="write the calibration here (.json)")
    about = "project the hidden-test time of model(s) per TTA choice and ensemble size, pick the strongest that fits"
    infer = sub.add_parser("inference", help=about, description=about)
    infer.set_defaults(run=run_inference)
    infer.add_argument("model_dirs", nargs="+", type=Path, help="model folder(s) written by notebook 02 (an ensemble)")
    infer.add_argument("--hours", type=float, default=9.0, help="budget (Kaggle: 9 h); a 25%% margin is kept")
    infer.add_argument("--devices", nargs="+", default=None,
                       help="devices to predict on (default: every visible GPU, else the CPU); calibrated on the first")
    infer.add_argument("--tile-step", type=float, default=0.5)
    infer.add_argument("--out", type=Path, default=None, help="also write the table here (.csv)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tools.budget training|inference ...`: the exit code (0, or 2 for bad input or over budget)."""
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
