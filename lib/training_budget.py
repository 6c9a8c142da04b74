"""The training plan: will notebook 02's stages finish inside Kaggle's ~12-hour GPU session?

`calibrate` times each stage on this device on a small synthetic block, `project` multiplies by the run's work,
`check_budget` refuses what does not fit (docs/kaggle.md, "The training plan"; `python -m tools.budget training`).
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

from lib import data, inference_budget, paths, postprocess, predictor, refine
from lib.model.network import CONFIGURATION, build_network, resolve_device
from lib.training import fine_tune, nnunet_dataset
from lib.training.fine_tune import TrainSettings

# A setting fits when its projection x (1 + MARGIN) is within the budget: less than lib.inference_budget's 25%, since
# training resumes from its checkpoints (docs/kaggle.md). 11.5 h / 1.15 = 10.0 h: still 20% of slack before 12 h.
MARGIN = 0.15
KAGGLE_BUDGET_HOURS = 11.5  # a GPU session lasts about 12 h (competition.md, "Kaggle limits"); 0.5 h left for the output
BLOCK_SHAPE = (64, 256, 256)  # the calibration block: 4.2 M voxels, big enough that fixed costs hardly count
CALIBRATION_GROUP = "kidney_1_dense"  # the block is written as this group (dense labels, 50 µm)
WARMUP_STEPS = {"cuda": 2, "cpu": 1}  # steps not timed (cuDNN's kernel choice, lazy initialisation, first batch)
FINGERPRINT_SAMPLES = 10**6  # foreground voxels sampled per case (nnU-Net: 1e8 spread over a run's ~80 cases)
VALIDATED_MODELS = ("final", "best checkpoint")  # notebook 02 validates both when they differ: counted always


@dataclass(frozen=True)
class TrainingCalibration:
    """Seconds each stage of notebook 02 takes on one device: per voxel (conversion, fingerprint, preprocessing,
    refinement, threshold curve, the predictor's own work), per step or batch (training), per tile (prediction).
    `source` says whether it was measured here or composed (an estimate); NaN: not measured."""

    device: str
    configuration: str
    patch_size: tuple[int, int, int]
    batch_size: int
    conversion_voxel_seconds: float
    fingerprint_voxel_seconds: float
    preprocessing_voxel_seconds: float
    train_step_seconds: float  # forward + deep-supervision loss + backward + optimizer step, one batch
    val_step_seconds: float  # nnU-Net's validation_step (forward + loss + pseudo Dice), one batch
    augmentation_batch_seconds: float  # one training batch loaded and augmented by one worker
    val_batch_seconds: float  # one validation batch loaded (no spatial augmentation) by one worker
    augmentation_workers: int  # nnU-Net's augmentation processes that run in parallel on this machine
    trainer_start_seconds: float  # building and initialising the trainer, writing the final checkpoint
    epoch_checkpoint_seconds: float  # checkpoint_latest + checkpoint_best, written each epoch
    tile_seconds: float  # network seconds per tile, one pass (lib.inference_budget.Calibration.tile_seconds)
    predict_voxel_seconds_z: float  # the predictor's own work per voxel, z-view (lib.inference_budget's voxel_seconds_z)
    predict_voxel_seconds_axes: float  # the same with the y- and x-views, through memmaps (voxel_seconds_axes)
    flip_passes: int  # network passes per tile with mirroring TTA (2 ** mirror axes)
    refine_voxel_seconds: float  # share cut + refined masks of a pseudo-label round, per group voxel
    curve_voxel_seconds: float  # the validation's threshold curve, per group voxel
    seconds: float  # the calibration's own time
    source: str = "measured"

    def iteration_seconds(self) -> float:
        """One training iteration: the GPU step overlapped with the workers' augmentation, or both on the CPU."""
        return self._overlapped(self.train_step_seconds, self.augmentation_batch_seconds, self.augmentation_workers)

    def val_iteration_seconds(self) -> float:
        """One validation iteration (nnU-Net's validation loader has half the training loader's workers)."""
        return self._overlapped(self.val_step_seconds, self.val_batch_seconds, self.augmentation_workers // 2)

    def _overlapped(self, step: float, batch: float, workers: int) -> float:
        """A step beside `workers` loading batches on a GPU (the slower of the two), after its batch on the CPU."""
        return max(step, batch / max(workers, 1)) if self.device.startswith("cuda") else step + batch

    def summary(self) -> str:
        """One line: what was measured, where, and the per-stage figures."""
        return (f"calibration ({self.source}) on {self.device}, {self.configuration} patch {list(self.patch_size)} "
                f"batch {self.batch_size}: conversion {self.conversion_voxel_seconds * 1e9:.1f}, fingerprint "
                f"{self.fingerprint_voxel_seconds * 1e9:.1f}, preprocessing {self.preprocessing_voxel_seconds * 1e9:.1f}"
                f" ns/voxel; training {self.iteration_seconds():.3f} s/it (step {self.train_step_seconds:.3f} s, "
                f"augmentation {self.augmentation_batch_seconds:.3f} s/batch over {self.augmentation_workers} "
                f"worker(s)), validation {self.val_iteration_seconds():.3f} s/it; prediction "
                f"{self.tile_seconds * 1000:.1f} ms/tile + {self.predict_voxel_seconds_z * 1e9:.1f} ns/voxel")


# ---------------------------------------------------------------------------------------------------- calibration


def calibrate(settings: TrainSettings, block_shape: Sequence[int] = BLOCK_SHAPE, steps: int | None = None,
              network: bool = True) -> TrainingCalibration:
    """Time every stage's own code on the settings' device on a small synthetic block (the environment, torch's
    threads and cuDNN flags are restored). `steps`: timed steps, batches and prediction repeats (default 3 on a
    GPU, 1 on the CPU). `network=False` skips what runs the network (NaN), e.g. the hepatic network on a CPU."""
    device = resolve_device(settings.device)
    steps = max(steps, 1) if steps is not None else (3 if device.type == "cuda" else 1)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sennet-budget-") as tmp, _scoped_state(Path(tmp) / "nnunet"):
        root = Path(tmp) / "root"
        group = write_block(root, tuple(block_shape))
        timings, (plans, dataset_json) = _time_data_stages(root, Path(tmp) / "nnunet", settings, device)
        trainer, timings["trainer_start_seconds"] = _build_trainer(plans, dataset_json, settings, device)
        loaders, timings["augmentation_workers"] = _loaders(trainer)
        batch, timings["augmentation_batch_seconds"] = _time_batches(loaders[0], steps)
        val_batch, timings["val_batch_seconds"] = _time_batches(loaders[1], steps)
        timings.update(_time_steps(trainer, batch, val_batch, steps) if network else
                       {"train_step_seconds": math.nan, "val_step_seconds": math.nan})
        latest, best = (inference_budget.timed(partial(trainer.save_checkpoint, str(Path(tmp) / name)), device)
                        for name in ("checkpoint_latest.pth", "checkpoint_best.pth"))  # as FineTuneTrainer's each epoch
        timings["epoch_checkpoint_seconds"] = latest + best
        timings["trainer_start_seconds"] += best  # the final checkpoint is written as the best one is
        mirror_axes = tuple(trainer.inference_allowed_mirroring_axes or (0, 1, 2))
        del trainer, loaders, batch, val_batch
        gc.collect()  # the trainer's network and optimizer state off the device before the next network is built
        timings.update(_time_prediction(plans, device, steps) if network else dict.fromkeys(
            ("tile_seconds", "predict_voxel_seconds_z", "predict_voxel_seconds_axes"), math.nan))
        timings.update(_time_postprocessing(group))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    config = plans["configurations"][CONFIGURATION]
    return TrainingCalibration(str(device), settings.configuration, tuple(config["patch_size"]),
                               int(config["batch_size"]), flip_passes=2 ** len(mirror_axes),
                               seconds=time.perf_counter() - begin, **timings)


def write_block(root: Path, shape: tuple[int, int, int] = BLOCK_SHAPE) -> data.Group:
    """A competition root holding one labelled group of `shape` (slices as the competition ships them: uint16
    images with kidney-like intensities, 0/255 labels of a few winding tubes, about 1% vessel)."""
    rng = np.random.default_rng(0)
    depth, height, width = shape
    yy, xx = np.mgrid[:height, :width]
    tubes = [(rng.uniform(0, height), rng.uniform(0, width), rng.uniform(-1, 1, 2), rng.uniform(2, 5))
             for _ in range(8)]
    folder = root / "train" / CALIBRATION_GROUP
    for kind in ("images", "labels"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for z in range(depth):
        label = np.zeros((height, width), bool)
        for cy, cx, (dy, dx), radius in tubes:
            label |= (yy - (cy + dy * z) % height) ** 2 + (xx - (cx + dx * z) % width) ** 2 < radius ** 2
        image = rng.normal(34853, 2336, (height, width)) + 3000 * label  # kidney_2's mean and sd (competition.md)
        tifffile.imwrite(folder / "images" / f"{z:04d}.tif", np.clip(image, 0, 65535).astype(np.uint16))
        tifffile.imwrite(folder / "labels" / f"{z:04d}.tif", label.astype(np.uint8) * np.uint8(255))
    return data.open_group(CALIBRATION_GROUP, root)


def _clocked(fn: Callable[[], object]) -> tuple[object, float]:
    """What `fn` returns and the seconds it took (work on the CPU; inference_budget.timed waits for a GPU's)."""
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


@contextlib.contextmanager
def _scoped_state(work_dir: Path) -> Iterator[None]:
    """nnU-Net's folders in `work_dir` and no torch.compile while calibrating; the process as it was afterwards."""
    names = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_compile")
    flags = (torch.get_num_threads(), torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        with paths.restored_environment(*names):
            nnunet_dataset.nnunet_env(work_dir)
            os.environ.setdefault("nnUNet_compile", "false")  # as fine_tune.train (unless set)
            yield
    finally:
        torch.set_num_threads(flags[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[1], flags[2]


def _time_data_stages(root: Path, work_dir: Path, settings: TrainSettings,
                      device: torch.device) -> tuple[dict, tuple[dict, dict]]:
    """Seconds per voxel of conversion, fingerprint and preprocessing of the block as fine_tune.train runs them, and
    `fine_tune.prepare`'s plans and dataset.json."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.imageio.tif_reader_writer import Tiff3DIO

    split = nnunet_dataset.Split((CALIBRATION_GROUP,), None, settings.slab_depth)
    _, conversion = _clocked(lambda: nnunet_dataset.write_raw_dataset(
        root, work_dir, split, normalisation=settings.normalisation, progress=False))
    cases = nnunet_dataset.read_cases(work_dir)
    voxels = sum(c.stop - c.start for c in cases) * math.prod(data.open_group(CALIBRATION_GROUP, root).shape[1:])
    raw = Path(os.environ["nnUNet_raw"]) / nnunet_dataset.DATASET_NAME
    files = [nnunet_dataset.raw_files(raw, c.name) for c in cases]
    results, fingerprint = _clocked(lambda: [DatasetFingerprintExtractor.analyze_case(
        [str(image)], str(label), Tiff3DIO, FINGERPRINT_SAMPLES) for image, label in files])
    fingerprint_file = work_dir / "dataset_fingerprint.json"
    fingerprint_file.write_text(json.dumps(_fingerprint(results)))
    arch, _ = fine_tune.architecture_plans(settings.configuration, None, work_dir)
    patch = fine_tune.patch_size_for(arch, device, settings.patch_size)
    prepared, preprocessing = _clocked(lambda: fine_tune.prepare(arch, patch, settings.batch_size, cases, True,
                                                                 fingerprint_file, progress=False))
    return {"conversion_voxel_seconds": conversion / voxels, "fingerprint_voxel_seconds": fingerprint / voxels,
            "preprocessing_voxel_seconds": preprocessing / voxels}, prepared


def _fingerprint(results: Sequence[tuple]) -> dict:
    """nnU-Net's dataset fingerprint (the keys fine_tune.kidney_plans reads) from `analyze_case` results."""
    intensities = np.concatenate([r[2][0] for r in results]).astype(np.float64)
    stats = {"mean": float(np.mean(intensities)), "median": float(np.median(intensities)),
             "std": float(np.std(intensities)), "min": float(np.min(intensities)), "max": float(np.max(intensities)),
             "percentile_99_5": float(np.percentile(intensities, 99.5)),
             "percentile_00_5": float(np.percentile(intensities, 0.5))}
    return {"spacings": [[float(s) for s in r[1]] for r in results],
            "shapes_after_crop": [[int(s) for s in r[0]] for r in results],
            "foreground_intensity_properties_per_channel": {"0": stats},
            "median_relative_size_after_cropping": float(np.median([r[4] for r in results]))}


def _build_trainer(plans: dict, dataset_json: dict, settings: TrainSettings,
                   device: torch.device) -> tuple[fine_tune.FineTuneTrainer, float]:
    """The trainer as fine_tune.train builds it (random weights: speed does not depend on them); seconds taken."""
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)  # as fine_tune.train trains on the CPU
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's banner and log lines
        return _clocked(lambda: fine_tune.new_trainer(plans, dataset_json, device, settings))


def _loaders(trainer: fine_tune.FineTuneTrainer) -> tuple[tuple, int]:
    """nnU-Net's two loaders built in this process, and the augmentation workers the real run has here (docs/kaggle.md)."""
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    workers = get_allowed_n_proc_DA()  # nnUNet_n_proc_DA as the run would see it (before it is set to 0 below)
    if trainer.device.type == "cpu":
        workers = min(workers, int(os.environ.get("nnUNet_n_proc_DA", 1)))  # fine_tune.train: 1 on the CPU
    else:
        workers = min(workers, max((os.cpu_count() or 1) - 1, 1))
    os.environ["nnUNet_n_proc_DA"] = "0"  # nnU-Net's SingleThreadedAugmenter: batches made here, timed here
    with contextlib.redirect_stdout(io.StringIO()):
        loaders = trainer.get_dataloaders()
    return loaders, max(workers, 1)


def _time_batches(loader, batches: int) -> tuple[dict, float]:
    """A batch and the median seconds one worker (torch single-threaded, as lib.training.trainer's) takes to make one."""
    threads = torch.get_num_threads()  # restored here for the steps; after an error, by calibrate's _scoped_state
    torch.set_num_threads(1)
    made = [_clocked(lambda: next(loader)) for _ in range(batches)]
    torch.set_num_threads(threads)
    return made[-1][0], float(np.median([seconds for _, seconds in made]))


def _time_steps(trainer: fine_tune.FineTuneTrainer, batch: dict, val_batch: dict, steps: int) -> dict:
    """Median seconds of nnU-Net's train_step and validation_step on real batches (warm-up excluded; left in eval)."""
    device = trainer.device
    trainer.network.train()
    for _ in range(WARMUP_STEPS.get(device.type, 2)):
        trainer.train_step(batch)
    train = [inference_budget.timed(lambda: trainer.train_step(batch), device) for _ in range(steps)]
    trainer.network.eval()
    trainer.loss.eval()  # as the run's validation epochs: dice_ce alone (lib.training.trainer)
    with torch.no_grad():
        trainer.validation_step(val_batch)
        val = [inference_budget.timed(lambda: trainer.validation_step(val_batch), device) for _ in range(steps)]
    return {"train_step_seconds": float(np.median(train)), "val_step_seconds": float(np.median(val))}


def _time_prediction(plans: dict, device: torch.device, repeats: int) -> dict:
    """lib.inference_budget's calibration of the configuration's network (random weights: speed does not depend on
    them): network seconds per tile, the predictor's own seconds per voxel (z-view; three views), best of `repeats`."""
    model = predictor.from_network(build_network(plans, deep_supervision=False), plans, device)
    measured = inference_budget.calibrate(model, repeats=repeats)
    return {"tile_seconds": measured.tile_seconds, "predict_voxel_seconds_z": measured.voxel_seconds_z,
            "predict_voxel_seconds_axes": measured.voxel_seconds_axes}


def _time_postprocessing(group: data.Group) -> dict:
    """Seconds per group voxel (on the CPU) of a pseudo-label refinement and of the validation's threshold curve."""
    labels = group.read_labels() > 0
    probs = (0.9 * labels + 0.04 * np.random.default_rng(1).random(labels.shape)).astype(np.float16)
    share = fine_tune.SPARSE_LABEL_SHARE["kidney_2"]
    with tempfile.TemporaryDirectory(prefix="sennet-refine-") as tmp:
        _, refine_seconds = _clocked(lambda: postprocess.write_refined_labels(
            probs, group, postprocess.share_threshold(probs, group, share), Path(tmp) / "refined", group.slices,
            progress=False))
    grid = postprocess.threshold_grid(postprocess.ThresholdRule("tune"))
    _, curve_seconds = _clocked(lambda: postprocess.threshold_curve(probs, group, grid, progress=False))
    return {"refine_voxel_seconds": refine_seconds / probs.size, "curve_voxel_seconds": curve_seconds / probs.size}


# ----------------------------------------------------------------------------------------------------- projection


def project(calibration: TrainingCalibration, settings: TrainSettings, groups: Mapping[str, data.Group],
            validation_tta: bool | str = False) -> pd.DataFrame:
    """Projected seconds of every stage of notebook 02 in its order (docs/kaggle.md), one row each: the work, seconds
    and cumulative hours at the stage's end. `groups`: `data.discover(root)`, or the real shapes (`tools.budget`)."""
    cases = nnunet_dataset.plan_cases(dict(groups), settings.train_groups, settings.val_group, settings.slab_depth)
    voxels = sum((c.stop - c.start) * groups[c.group].height * groups[c.group].width for c in cases)
    spacing = float(np.median([c.spacing_mm for c in cases]))  # the fingerprint's median spacing: the model's
    epoch = (settings.iterations_per_epoch * calibration.iteration_seconds()
             + settings.val_iterations_per_epoch * calibration.val_iteration_seconds()
             + calibration.epoch_checkpoint_seconds)
    rows = []
    for r in range(settings.pseudo_label_rounds + 1):
        for name in (refine.refined_groups(settings) if r else []):
            group = groups[name]
            seconds = _prediction_seconds(calibration, spacing, group, False) \
                + math.prod(group.shape) * calibration.refine_voxel_seconds
            rows.append(_row(r, "pseudo-label prediction", name, seconds, voxels=math.prod(group.shape)))
        rows.append(_row(r, "conversion", "", voxels * calibration.conversion_voxel_seconds, voxels=voxels))
        if r == 0:  # later rounds reuse round 0's fingerprint (the same normalisation)
            rows.append(_row(r, "fingerprint", "", voxels * calibration.fingerprint_voxel_seconds, voxels=voxels))
        rows.append(_row(r, "preprocessing", "", voxels * calibration.preprocessing_voxel_seconds, voxels=voxels))
        iterations = settings.epochs * (settings.iterations_per_epoch + settings.val_iterations_per_epoch)
        rows.append(_row(r, "training", "", calibration.trainer_start_seconds + settings.epochs * epoch,
                         iterations=iterations, epochs=settings.epochs, epoch_seconds=epoch))
    if settings.val_group:
        val = groups[settings.val_group]
        curve = math.prod(val.shape) * calibration.curve_voxel_seconds
        seconds = _prediction_seconds(calibration, spacing, val, validation_tta) + curve
        plain = _prediction_seconds(calibration, spacing, val, False) + curve
        for which in VALIDATED_MODELS:
            rows.append(_row(settings.pseudo_label_rounds, f"validation ({which})", settings.val_group, seconds,
                             voxels=math.prod(val.shape), seconds_without_tta=plain))
    table = pd.DataFrame(rows)
    table["cumulative_hours"] = table["seconds"].cumsum() / 3600
    return table


def _row(r: int, stage: str, group: str, seconds: float, **work: float) -> dict:
    """One stage's row: its work (voxels; iterations, epochs, seconds per epoch; seconds without TTA) and seconds."""
    columns = ("voxels", "iterations", "epochs", "epoch_seconds", "seconds", "seconds_without_tta")
    return {"round": r, "stage": stage, "group": group, **dict.fromkeys(columns), **work, "seconds": float(seconds)}


def _prediction_seconds(calibration: TrainingCalibration, spacing_mm: float, group: data.Group,
                        tta: bool | str) -> float:
    """Seconds to predict a group at the model's spacing, as lib.inference_budget projects it."""
    figures = inference_budget.Calibration(calibration.device, calibration.tile_seconds,
                                           calibration.predict_voxel_seconds_z, calibration.predict_voxel_seconds_axes,
                                           calibration.seconds)
    work = predictor.model_space_shape(group.shape, group.voxel_um, spacing_mm, resample=True)
    return inference_budget.prediction_seconds(figures, work, calibration.patch_size, tta, calibration.flip_passes)


# --------------------------------------------------------------------------------------------------------- budget


def resolve_budget_hours(value: float | str | None) -> float | None:
    """A notebook's `budget_hours`: None -> no check, a positive number, or "auto": 11.5 h on Kaggle (which sets
    KAGGLE_KERNEL_RUN_TYPE and has /kaggle/working, or KAGGLE_WORKING_DIR as for tools.kaggle), None elsewhere."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        working = Path(os.environ.get("KAGGLE_WORKING_DIR", "/kaggle/working"))
        on_kaggle = bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or working.is_dir()
        return KAGGLE_BUDGET_HOURS if on_kaggle else None
    if value is None:
        return None
    hours = float(value)
    if not hours > 0:
        raise ValueError(f"budget_hours must be positive, \"auto\" or None, got {value!r}")
    return hours


def stage_label(row: pd.Series) -> str:
    """How a stage is named in messages, e.g. "round 1 pseudo-label prediction of kidney_2"."""
    if row["stage"].startswith("validation"):
        return f"{row['stage']} of {row['group']}"
    return f"round {row['round']} {row['stage']}" + (f" of {row['group']}" if row["group"] else "")


def check_budget(table: pd.DataFrame, budget_hours: float | None) -> None:
    """Nothing when the projection x (1 + MARGIN) fits `budget_hours` (or there is no budget); else a one-line
    ValueError naming the first stage that passes it and settings that fit (from the table's own figures)."""
    if budget_hours is None:
        return
    if not budget_hours > 0:
        raise ValueError(f"budget_hours must be positive, got {budget_hours}")
    limit = budget_hours / (1 + MARGIN)
    over = table[table["cumulative_hours"] > limit]
    if over.empty:
        return
    first = over.iloc[0]
    total = float(table["cumulative_hours"].iloc[-1])
    raise ValueError(f"training is projected at {_hours(total)} h, over the {budget_hours:g} h budget with its "
                     f"{MARGIN:.0%} margin (projections up to {_hours(limit)} h fit): {stage_label(first)} would "
                     f"end at {_hours(first.cumulative_hours)} h; {_fitting_settings(table, limit)}")


def fits_with(table: pd.DataFrame, rounds: int | None = None, epochs: int | None = None,
              validation_tta: bool = True) -> float:
    """Projected hours of the same run with fewer pseudo-label rounds, another number of epochs and/or no TTA in
    the validation, from the table's rows (training is linear in epochs: start + epochs x seconds per epoch)."""
    validation = table["stage"].str.startswith("validation")
    rows = table[validation | (table["round"] <= (table["round"].max() if rounds is None else rounds))]
    seconds = rows["seconds"].astype(float)
    if epochs is not None:
        start = rows["seconds"] - rows["epochs"] * rows["epoch_seconds"]
        seconds = seconds.where(rows["stage"] != "training", start + epochs * rows["epoch_seconds"])
    if not validation_tta:
        seconds = seconds.where(~validation[rows.index], rows["seconds_without_tta"])
    return float(seconds.to_numpy(dtype=float).sum()) / 3600


def largest_epochs(table: pd.DataFrame, limit_hours: float, rounds: int | None = None) -> int:
    """The most epochs whose projection (with `rounds` pseudo-label rounds) is within `limit_hours`; 0: none."""
    zero = fits_with(table, rounds, 0)
    per_epoch = fits_with(table, rounds, 1) - zero
    return max(int(math.floor((limit_hours - zero) / per_epoch + 1e-9)), 0) if per_epoch > 0 else 0


def _fitting_settings(table: pd.DataFrame, limit: float) -> str:
    """Settings that fit `limit` hours: fewer rounds, no validation TTA, fewer epochs, or no rounds and fewer epochs."""
    rounds = int(table["round"].max())
    epochs = int(table.loc[table["stage"] == "training", "epochs"].iloc[0])
    options = []
    if (fewer := next((r for r in range(rounds - 1, -1, -1) if fits_with(table, r) <= limit), None)) is not None:
        options.append(f"pseudo_label_rounds={fewer} ({_hours(fits_with(table, fewer))} h)")
    validation = table[table["stage"].str.startswith("validation")]
    plain = fits_with(table, validation_tta=False)
    if (validation["seconds"] > validation["seconds_without_tta"]).any() and plain <= limit:
        options.append(f"validation_tta=False ({_hours(plain)} h)")
    most = largest_epochs(table, limit)
    if 1 <= most < epochs:
        options.append(f"epochs={most} ({_hours(fits_with(table, epochs=most))} h)")
    if not options and rounds and (most := largest_epochs(table, limit, 0)) >= 1:
        options.append(f"pseudo_label_rounds=0 with epochs={most} ({_hours(fits_with(table, 0, most))} h)")
    if not options:
        return (f"no setting of pseudo_label_rounds and epochs fits: pseudo_label_rounds=0 with epochs=1 projects "
                f"{_hours(fits_with(table, 0, 1))} h (fewer iterations_per_epoch, validation_tta=False or a larger "
                "budget_hours)")
    return "fits: " + " or ".join(options)


def plan_training(data_dir: Path | str, settings: TrainSettings, budget_hours: float | str | None = "auto",
                  validation_tta: bool | str = False, calibration: TrainingCalibration | None = None,
                  report: Callable[[str], object] = print) -> tuple[pd.DataFrame, TrainingCalibration]:
    """Notebook 02's call before it converts anything: calibrate on the settings' device (unless given), project the
    run on the groups in `data_dir`, `report` the calibration and the table, then `check_budget` ("auto" resolved)."""
    budget = resolve_budget_hours(budget_hours)
    calibration = calibration or calibrate(settings)
    table = project(calibration, settings, data.discover(data_dir), validation_tta)
    report(calibration.summary())
    report(format_table(table))
    report(f"budget: {budget:g} h with a {MARGIN:.0%} margin (projections up to {_hours(budget / (1 + MARGIN))} h fit)"
           if budget else "budget: none (not on Kaggle): nothing to check")
    check_budget(table, budget)
    return table, calibration


def format_table(table: pd.DataFrame) -> str:
    """The table as text: work in voxels (G or M) or iterations, the stage's time and the cumulative hours."""
    def work(voxels: float, iterations: float) -> str:
        if pd.notna(voxels):
            return f"{voxels / 1e9:.2f} G voxels" if voxels >= 1e8 else f"{voxels / 1e6:.2f} M voxels"
        return f"{int(iterations):,} iterations"

    return table[["round", "stage", "group"]].assign(
        work=[work(v, i) for v, i in zip(table["voxels"], table["iterations"])],
        time=[f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s" for s in table["seconds"]],
        cumulative_hours=[_hours(h) for h in table["cumulative_hours"]]).to_string(index=False)


def _hours(hours: float) -> str:
    """Hours for messages: one decimal, two significant digits below an hour."""
    return f"{hours:.1f}" if hours >= 1 else f"{hours:.2g}"
