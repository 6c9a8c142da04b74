"""What notebooks 03 (and 02's validation) do, as functions (`tools.infer.predict_submission` strings them together
for a script): decide the threshold (stored with the model, or tuned on a labelled group), predict every test kidney
into submission rows, write and score `submission.csv`; every kidney streamed through memmaps under `scratch`.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lib import data, inference_budget, inputs, metric, normalisation, paths, postprocess, predictor, submission
from lib.postprocess import ThresholdRule
from lib.training import fine_tune


@dataclass
class Tuning:
    """A validation group's threshold curve (surface Dice and Dice per threshold) and the cut the rule picks."""

    curve: pd.DataFrame
    threshold: float | None
    seconds: float
    probabilities: np.ndarray | None = None  # the group's predicted probabilities (a memmap)


@dataclass
class KidneyPrediction:
    """One test kidney after prediction and post-processing: its mask (a memmap) and submission rows."""

    name: str
    group: data.Group
    mask: np.ndarray
    rows: list[tuple[str, str]]
    stats: dict = field(default_factory=dict)  # threshold, vessel_fraction, components removed, seconds


def locate_model(model_dir: str | Path | None) -> Path:
    """`model_dir` as given (relative to the project root); None: a model folder found by content under the Kaggle
    input (`lib.inputs`: a model dataset, a Kaggle Model or a training notebook's output), else the one notebook 02
    writes by default (outputs/train)."""
    if model_dir is not None:
        return paths.resolve_path(model_dir)
    found = inputs.find_input("model") if paths.kaggle_input().is_dir() else None
    return found or fine_tune.default_model_dir(paths.outputs_dir() / "train")


@dataclass
class Settings:
    """What notebook 03 predicts with, decided and checked before any prediction: the predictor (model folders, TTA,
    devices, tile step, resampling), the threshold rule and global cut (None for a top fraction) and the runtime
    plan (when tta="auto")."""

    predictor: predictor.Predictor
    model_dirs: list[Path]
    rule: ThresholdRule
    threshold: float | None
    runtime_plan: pd.DataFrame | None = None

    def describe(self, tests: Mapping[str, data.Group]) -> str:
        """The models, test kidneys, rule, TTA, devices and normalisation in a few Markdown lines."""
        run = self.predictor
        models = [f"- model `{m.model_dir}` (epoch {m.checkpoint.get('epoch')}), patch {m.patch_size}, spacing "
                  f"{m.spacing_mm} mm" for m in run.models]
        kidneys = ", ".join(f"{n} {g.shape}" for n, g in tests.items())
        return "\n".join([*models, f"- test kidneys: {kidneys}; threshold rule: {self.rule}; tta: {run.tta}; "
                           f"devices: {', '.join(run.devices)}",
                           f"- **normalisation: {run.models[0].normalisation}** (raw intensities per kidney below; "
                           '"kidney" clips and z-scores each by its own)'])

    def to_json(self) -> dict:
        """What a run predicted with, as saved beside its outputs (inference_settings.json)."""
        rule = self.rule.kind if self.rule.value is None else \
            ("top:" if self.rule.kind == "top" else "") + f"{self.rule.value:g}"
        return {**self.predictor.settings(), "models": [str(d) for d in self.model_dirs], "threshold_rule": rule,
                "threshold": self.threshold}


def prepare(model_dir: str | Path | Sequence[str | Path] | None, threshold: float | str = "model",
            tta: bool | str = True, devices: str | Sequence[str] = "auto", budget_hours: float = 9.0,
            tile_step: float = 0.5, resample: bool = True) -> Settings:
    """Check every setting, load the model(s) and, for tta="auto", plan the runtime (calibration, projection,
    the strongest setting that fits `budget_hours` with a 25% margin): one-line errors before any prediction.
    `devices`: "auto" (every visible GPU, else the CPU), one device or a list (one worker process each)."""
    rule = ThresholdRule.parse(threshold)
    mode = "auto" if str(tta).strip().lower() == "auto" else predictor.parse_tta(tta)
    targets = [str(d) for d in predictor.resolve_devices(devices)]
    several = model_dir is not None and not isinstance(model_dir, (str, Path))  # a list of folders: an ensemble
    dirs = [locate_model(d) for d in (model_dir if several else [model_dir])]
    models = predictor.load_models(dirs, targets[0])
    table = None
    if mode == "auto":
        table, chosen, _ = inference_budget.plan(models, budget_hours, len(targets), tile_step, resample)
        mode, models, dirs = str(chosen.tta), models[:int(chosen.models)], dirs[:int(chosen.models)]
    stored = postprocess.decide_threshold(rule, None, dirs) if rule.kind == "model" else None
    run = predictor.Predictor(models, tile_step, mode, resample, devices=targets)
    return Settings(run, dirs, rule, stored, table)


def intensity_table(run: predictor.Predictor, groups: Mapping[str, data.Group], progress: bool = True
                    ) -> pd.DataFrame:
    """Each kidney's raw intensity statistics (one streaming pass each, kept for its prediction), every kidney
    checked to keep contrast under the models' normalisation before any prediction: NoContrastError naming it."""
    stats = normalisation.check_kidneys(list(groups.values()), [m.intensity for m in run.models], progress)
    table = pd.DataFrame(stats).T.rename_axis("kidney")
    table.insert(0, "normalisation", run.models[0].normalisation)
    return table


def tune_threshold(run: predictor.Predictor, group: data.Group, rule: ThresholdRule, scratch: Path) -> Tuning:
    """Predict a labelled group like a test kidney and score every threshold of the rule's grid with the
    leaderboard metric (one streaming pass); returns the curve and the threshold the rule picks from it."""
    start = time.perf_counter()
    probs = run.predict_group(group, Path(scratch) / "probabilities" / f"{group.name}.npy", overwrite=True)
    curve = postprocess.threshold_curve(probs, group, postprocess.threshold_grid(rule), progress=run.progress)
    return Tuning(curve, postprocess.decide_threshold(rule, curve), time.perf_counter() - start, probs)


def choose_threshold(settings: Settings, val: data.Group | None, scratch: Path, progress: bool = True
                     ) -> tuple[float | None, Tuning | None]:
    """The cut for every kidney: the models' stored one (rule "model"), or the rule's on `val` predicted here like a
    test kidney ("tune"; a fixed cut gets its curve too); None for a top fraction (decided per kidney)."""
    tuning = None
    if val is not None and settings.rule.kind in ("tune", "fixed"):
        tuning = tune_threshold(replace(settings.predictor, progress=progress), val, settings.rule, scratch)
    if settings.rule.kind == "model":
        return settings.threshold, tuning
    return postprocess.decide_threshold(settings.rule, tuning.curve if tuning else None), tuning


def threshold_verdict(curve: pd.DataFrame, chosen: float, tuned_here: bool) -> str | None:
    """One Markdown line: the validation surface Dice at the chosen cut against the argmax (0.5), when the curve
    has the cut."""
    at = curve.set_index("threshold")["surface_dice"]
    if chosen not in at.index:
        return None
    verdict = "equals" if chosen == 0.5 else ("beats" if at[chosen] > at[0.5] else "does not beat")
    source = "predicted here" if tuned_here else "stored with the model"
    return (f"Validation surface Dice ({source}) at the chosen threshold {chosen:.2f}: **{at[chosen]:.4f}**; at 0.5 "
            f"(argmax): **{at[0.5]:.4f}**. The chosen threshold {verdict} the argmax.")


@dataclass
class Validation:
    """One trained model folder tuned on the validation group (notebook 02's last step): its curve and cut, the cut
    stored in the folder's threshold.json for notebook 03's rule "model"."""

    name: str  # "final", or the second folder's name (the best checkpoint)
    model_dir: Path
    tuning: Tuning

    def at(self, column: str, cut: float | None = None) -> float:
        """`column` ("surface_dice" or "dice") of the curve at `cut` (default: the stored cut)."""
        return float(self.tuning.curve.set_index("threshold")[column][self.tuning.threshold if cut is None else cut])

    def markdown(self, val_group: str) -> str:
        cut = self.tuning.threshold
        return (f"**Validation of {self.name} ({val_group}): surface Dice {self.at('surface_dice'):.4f} at the stored "
                f"threshold {cut:.2f}** (Dice {self.at('dice'):.4f}); at 0.5 (argmax): {self.at('surface_dice', 0.5):.4f}")


def trained_model_dirs(model_dir: Path) -> list[Path]:
    """A training's model folders: the final model and, when its weights differ, the best checkpoint's."""
    second = predictor.checkpoint_model_dir(model_dir, "checkpoint_best.pth")
    return [Path(model_dir)] + ([second] if second is not None else [])


def validate(model_dirs: Sequence[Path], val: data.Group, folder: Path, device: str = "auto",
             tta: bool | str = False) -> list[Validation]:
    """Each model folder predicted on `val` like a test kidney and tuned with the leaderboard metric; each cut
    stored in its folder's threshold.json."""
    validations = []
    for k, model_dir in enumerate(model_dirs):
        name = model_dir.name if k else "final"
        run = predictor.Predictor(predictor.load_model(model_dir, device), tta=tta)
        tuning = tune_threshold(run, val, ThresholdRule("tune"), Path(folder) / name)
        postprocess.save_threshold(model_dir, tuning.curve, tuning.threshold, val.name, {"tta": tta, "model": name})
        validations.append(Validation(name, model_dir, tuning))
    return validations


def training_summary(settings: fine_tune.TrainSettings, result: fine_tune.TrainResult, model_dirs: Sequence[Path],
                     validations: Sequence[Validation]) -> dict:
    """What notebook 02 writes to train_summary.json (the pipeline reads the validation score from it)."""
    summary = {"model_dir": str(result.model_dir), "model_dirs": [str(d) for d in model_dirs],
               "from_scratch": settings.pretrained is None, "configuration": settings.configuration,
               "epochs": settings.epochs, "training_seconds": result.seconds}
    if validations:
        first = validations[0]
        summary.update({"val_group": settings.val_group, "val_surface_dice": first.at("surface_dice"),
                        "val_dice": first.at("dice"), "val_threshold": float(first.tuning.threshold),
                        "val_surface_dice_at_0.5": first.at("surface_dice", 0.5)})
    for v in validations[1:]:
        summary["second_model"] = {"model_dir": str(v.model_dir), "val_threshold": float(v.tuning.threshold),
                                   "val_surface_dice": v.at("surface_dice")}
    return summary


def predict_kidneys(settings: Settings, groups: Mapping[str, data.Group], threshold: float | None, scratch: Path,
                    min_component_size: int = 0, progress: bool = True) -> Iterator[KidneyPrediction]:
    """Predict, binarise (at `threshold`, or per kidney for a top-fraction rule), drop small components and
    encode every kidney, one at a time (the caller can plot each before the next starts)."""
    scratch, run = Path(scratch), replace(settings.predictor, progress=progress)
    for name, group in groups.items():
        start = time.perf_counter()
        probs = run.predict_group(group, scratch / "probabilities" / f"{name}.npy", overwrite=True)
        cut = threshold if threshold is not None else postprocess.top_fraction_threshold(probs, settings.rule.value)
        mask, stats = postprocess.segment(probs, cut, scratch / "masks" / f"{name}.npy", min_component_size,
                                          progress=progress)
        rows = submission.group_rows(group, mask)
        raw = normalisation.kidney_statistics(group)  # computed before the prediction, cached
        stats.update(slices=group.shape[0], seconds=time.perf_counter() - start,
                     **{f"raw_{k}": raw[k] for k in ("percentile_00_5", "percentile_99_5", "mean", "std")})
        yield KidneyPrediction(name, group, mask, rows, stats)


def rows(kidneys: Sequence[KidneyPrediction]) -> list[tuple[str, str]]:
    """The submission rows of all kidneys, kidney by kidney in slice order."""
    return [row for kidney in kidneys for row in kidney.rows]


def kidney_table(kidneys: Sequence[KidneyPrediction]) -> pd.DataFrame:
    """One row per kidney: slices, threshold, predicted vessel fraction, components removed, seconds."""
    return pd.DataFrame([{"kidney": k.name, **k.stats} for k in kidneys]).set_index("kidney")


def score(root: Path, submission_file: Path, kidneys: Sequence[str]) -> dict | None:
    """Surface Dice of `submission_file` per kidney when the data root ships a `solution.csv` (synthetic data);
    None otherwise (as on Kaggle)."""
    solution_file = Path(root) / "solution.csv"
    if not solution_file.is_file():
        return None
    solution = pd.read_csv(solution_file, dtype={"id": str, "rle": str}, keep_default_na=False)
    solution = solution[solution["image"].isin(list(kidneys))]
    predicted = pd.read_csv(submission_file, dtype=str, keep_default_na=False)
    return metric.score_submission(solution, predicted, names=(str(solution_file), str(submission_file)))


def stored_curve(model_dirs: Sequence[Path]) -> pd.DataFrame | None:
    """The validation curve notebook 02 stored beside the first model's threshold, if any."""
    path = Path(model_dirs[0]) / postprocess.THRESHOLD_FILE
    return pd.DataFrame(json.loads(path.read_text())["curve"]) if path.is_file() else None


def scores_record(settings: Settings, chosen: float | None, per_kidney: pd.DataFrame, target: Path,
                  tuning: Tuning | None, test_score: dict | None) -> dict:
    """What notebook 03 writes to scores.json: settings, threshold, timings, per-kidney rows, the validation curve
    (predicted here or stored by notebook 02) and the test score when the data root has a solution."""
    timings = ({"validation": tuning.seconds} if tuning else {}) | per_kidney["seconds"].to_dict()
    result = {**settings.to_json(), "threshold": chosen, "timings_seconds": timings,
              "per_kidney": per_kidney.reset_index().to_dict("records"), "submission": str(target)}
    curve = tuning.curve if tuning is not None else stored_curve(settings.model_dirs)
    if curve is not None:
        result["validation_curve"] = curve.to_dict("records")
    if test_score is not None:
        result["test_score"] = test_score
    return result
