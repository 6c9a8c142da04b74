"""The runtime plan: will these models and TTA settings finish the hidden test inside Kaggle's 9 hours?

`calibrate` times a model on a one-patch synthetic block, `project` multiplies by every hidden-test kidney for each TTA
choice and ensemble size, `choose` picks the strongest that fits (docs/inference.md; `python -m tools.budget inference`).
"""
from __future__ import annotations

import itertools
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lib import data, predictor

HIDDEN_TEST = {k: (data.COMPETITION_SHAPES[k], data.VOXEL_SIZE_UM[k]) for k in ("kidney_5", "kidney_6")}
MARGIN = 0.25  # a setting fits when its projection x 1.25 is within the budget
WORKER_START_SECONDS = 20.0  # spawning a worker per device and loading the models there, per kidney


@dataclass(frozen=True)
class Calibration:
    """Measured on one device: network seconds per tile (one model, one pass) and the predictor's own seconds
    per model-space voxel, z-view only and with the y/x-views (memmaps)."""

    device: str
    tile_seconds: float
    voxel_seconds_z: float
    voxel_seconds_axes: float
    seconds: float


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn` takes on `device`, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def calibrate(model: predictor.Model, repeats: int = 3) -> Calibration:
    """Time one model's network on a patch and the predictor on a one-patch synthetic block (seconds)."""
    begin = time.perf_counter()
    device = model.device
    x = torch.randn((1, 1, *model.patch_size), device=device)

    def best(fn) -> float:
        return min((timed(fn, device) for _ in range(repeats)), default=math.inf)

    network = predictor.network_logits(model)
    network(x)  # warm-up (kernel selection, lazy initialisation)
    tile = best(lambda: network(x))
    rng = np.random.default_rng(0)
    if model.intensity is None:  # "kidney": the block's own statistics normalise it
        volume = rng.integers(10_000, 30_000, model.patch_size, dtype=np.uint16)
    else:
        volume = rng.normal(model.intensity["mean"], model.intensity["std"], model.patch_size).astype(np.float32)
    block = predictor.ArrayGroup("calibration", volume)
    with tempfile.TemporaryDirectory(prefix="sennet-plan-") as tmp:
        def run(tta: str) -> float:
            job = predictor.Predictor(model, tta=tta, progress=False)
            return best(lambda: job.predict_group(block, Path(tmp) / f"{tta}.npy", overwrite=True))
        z_only, axes = run("none"), run("axes")
    return Calibration(str(device), tile, max(z_only - tile, 0.0) / volume.size,
                       max(axes - 3 * tile, 0.0) / volume.size, time.perf_counter() - begin)


def tiles(shape: Sequence[int], patch: Sequence[int], tile_step: float = 0.5) -> int:
    """Tiles of nnU-Net's grid over a volume."""
    return math.prod(len(s) for s in predictor.Grid.of(shape, patch, tile_step).steps)


def prediction_seconds(calibration: Calibration, work: Sequence[int], patch: Sequence[int], tta: bool | str,
                       flip_passes: int, models: int = 1, tile_step: float = 0.5) -> float:
    """Seconds to predict a model-space volume of shape `work`: network tiles over each TTA view x passes per tile
    x models, plus the predictor's own work per voxel (z-view only, or with the y/x-views)."""
    views = predictor.tta_views(tta)
    passes = flip_passes if predictor.tta_flips(tta) else 1
    n_tiles = sum(tiles([work[a] for a in view], patch, tile_step) for view in views)
    per_voxel = calibration.voxel_seconds_axes if len(views) > 1 else calibration.voxel_seconds_z
    return n_tiles * passes * models * calibration.tile_seconds + math.prod(work) * per_voxel


def project(calibration: Calibration, model: predictor.Model, max_models: int = 1, devices: int = 1,
            tile_step: float = 0.5, resample: bool = True) -> pd.DataFrame:
    """Projected hours per kidney and in total for every TTA choice and ensemble size 1..max_models."""
    flip_passes = 2 ** len(model.mirror_axes)
    rows = []
    for tta, k in itertools.product(predictor.TTA_MODES, range(1, max_models + 1)):
        passes = len(predictor.tta_views(tta)) * (flip_passes if predictor.tta_flips(tta) else 1)
        row = {"tta": tta, "models": k, "passes_per_voxel": passes * k}
        for name, (shape, voxel_um) in HIDDEN_TEST.items():
            work = predictor.model_space_shape(tuple(shape), voxel_um, model, resample)
            seconds = prediction_seconds(calibration, work, model.patch_size, tta, flip_passes, k, tile_step) / devices
            row[f"{name}_hours"] = (seconds + (WORKER_START_SECONDS if devices > 1 else 0.0)) / 3600
        row["total_hours"] = sum(v for key, v in row.items() if key.endswith("_hours"))
        rows.append(row)
    return pd.DataFrame(rows)


def choose(table: pd.DataFrame, hours: float) -> pd.Series:
    """The strongest setting (most passes per voxel, then most models) whose projection x (1 + MARGIN) fits."""
    fits = table[table["total_hours"] * (1 + MARGIN) <= hours]
    if fits.empty:
        fastest = table.sort_values("total_hours").iloc[0]
        raise ValueError(f"no setting fits {hours:g} h with a {MARGIN:.0%} margin: the fastest, tta={fastest.tta} "
                         f"with {fastest.models} model(s), projects {fastest.total_hours:.2f} h")
    return fits.sort_values(["passes_per_voxel", "models", "total_hours"], ascending=[False, False, True]).iloc[0]


def plan(models: Sequence[predictor.Model], hours: float, devices: int = 1, tile_step: float = 0.5,
         resample: bool = True) -> tuple[pd.DataFrame, pd.Series, Calibration]:
    """Calibrate on the first model's device, project every setting, pick the strongest that fits `hours`."""
    if not hours > 0:
        raise ValueError(f"budget_hours must be positive, got {hours}")
    calibration = calibrate(models[0])
    table = project(calibration, models[0], len(models), devices, tile_step=tile_step, resample=resample)
    table["fits"] = table["total_hours"] * (1 + MARGIN) <= hours
    chosen = choose(table, hours)
    table["chosen"] = (table["tta"] == chosen.tta) & (table["models"] == chosen.models)
    return table, chosen, calibration
