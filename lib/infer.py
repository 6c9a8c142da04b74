"""What notebook 03 does, as functions a plain script can call too: tune the threshold on a labelled group,
predict every test kidney into submission rows, write and score `submission.csv`.

    model = inference.load_model(infer.locate_model(None))
    tuning = infer.tune_threshold(model, groups["kidney_3_dense"], rule, scratch)
    kidneys = list(infer.predict_kidneys(model, tests, rule, tuning.threshold, scratch))
    submission.write_submission(infer.rows(kidneys), "submission.csv", root / "sample_submission.csv")

or all of it in one call: `infer.predict_submission(model_dir, data_dir, out_dir)`. Every kidney is streamed
(probabilities and masks are memmaps under `scratch`), so memory does not grow with the number of slices.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lib import data, inference, metric, paths, postprocess, submission
from lib.postprocess import ThresholdRule
from lib.training import fine_tune


@dataclass
class Tuning:
    """A validation group's threshold curve (surface Dice and Dice per threshold) and the cut the rule picks."""

    curve: pd.DataFrame
    threshold: float | None
    seconds: float


@dataclass
class KidneyPrediction:
    """One test kidney after prediction and post-processing: its mask (a memmap) and submission rows."""

    name: str
    group: data.Group
    mask: np.ndarray
    rows: list[tuple[str, str]]
    stats: dict = field(default_factory=dict)  # threshold, vessel_fraction, components removed, seconds


def locate_model(model_dir: str | Path | None) -> Path:
    """`model_dir` as given (relative to the project root); None: a model folder uploaded under the Kaggle input,
    else the one notebook 02 writes by default (outputs/train)."""
    if model_dir is not None:
        return paths.resolve_path(model_dir)
    found = fine_tune.find_model_dir(paths.kaggle_input()) if paths.kaggle_input().is_dir() else None
    return found or fine_tune.default_model_dir(paths.outputs_dir() / "train")


def tune_threshold(model: inference.Model, group: data.Group, rule: ThresholdRule, scratch: Path,
                   tile_step: float = 0.5, tta: bool = True, resample: bool = True,
                   progress: bool = True) -> Tuning:
    """Predict a labelled group like a test kidney and score every threshold of the rule's grid with the
    leaderboard metric (one streaming pass); returns the curve and the threshold the rule picks from it."""
    start = time.perf_counter()
    probs = inference.predict_group(model, group, Path(scratch) / "probabilities" / f"{group.name}.npy", tile_step,
                                    tta, resample, overwrite=True, progress=progress)
    curve = postprocess.threshold_curve(probs, group, postprocess.threshold_grid(rule), progress=progress)
    return Tuning(curve, postprocess.decide_threshold(rule, curve), time.perf_counter() - start)


def predict_kidneys(model: inference.Model, groups: Mapping[str, data.Group], rule: ThresholdRule,
                    threshold: float | None, scratch: Path, min_component_size: int = 0, tile_step: float = 0.5,
                    tta: bool = True, resample: bool = True, progress: bool = True) -> Iterator[KidneyPrediction]:
    """Predict, binarise (at `threshold`, or per kidney for a top-fraction rule), drop small components and
    encode every kidney, one at a time (the caller can plot each before the next starts)."""
    scratch = Path(scratch)
    for name, group in groups.items():
        start = time.perf_counter()
        probs = inference.predict_group(model, group, scratch / "probabilities" / f"{name}.npy", tile_step, tta,
                                        resample, overwrite=True, progress=progress)
        cut = threshold if threshold is not None else postprocess.top_fraction_threshold(probs, rule.value)
        mask, stats = postprocess.segment(probs, cut, scratch / "masks" / f"{name}.npy", min_component_size,
                                          progress=progress)
        rows = submission.group_rows(group, mask)
        stats.update(slices=group.shape[0], seconds=time.perf_counter() - start)
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


def predict_submission(model_dir: str | Path | None, data_dir: str | Path, out_dir: str | Path,
                       threshold: float | str = "tune", val_group: str | None = "kidney_3_dense",
                       test_groups: Sequence[str] | None = None, min_component_size: int = 0, tta: bool = True,
                       resample: bool = True, tile_step: float = 0.5, device: str = "auto",
                       submission_file: str | Path | None = None) -> dict:
    """Notebook 03 without the figures: threshold, every test kidney, `submission.csv`, and its score when the
    data root has a solution. Returns what notebook 03 writes to scores.json."""
    root, out = paths.resolve_path(data_dir), paths.resolve_path(out_dir)
    rule = ThresholdRule.parse(threshold)
    groups = data.discover(root)
    tests = data.select_groups({n: g for n, g in groups.items() if g.split == "test"}, test_groups)
    submission.expected_ids(root, tests)  # no test slice or a bad sample_submission.csv: fail before the model loads
    model = inference.load_model(locate_model(model_dir), device)
    tuning = None
    if val_group and rule.kind in ("tune", "fixed"):
        tuning = tune_threshold(model, groups[val_group], rule, out, tile_step, tta, resample)
    chosen = postprocess.decide_threshold(rule, tuning.curve if tuning else None)
    kidneys = list(predict_kidneys(model, tests, rule, chosen, out, min_component_size, tile_step, tta, resample))
    target = paths.resolve_path(submission_file) if submission_file else out / "submission.csv"
    submission.write_submission(rows(kidneys), target, root / "sample_submission.csv")
    result = {"threshold_rule": str(threshold), "threshold": chosen, "submission": str(target),
              "per_kidney": kidney_table(kidneys).reset_index().to_dict("records"),
              "test_score": score(root, target, list(tests))}
    if tuning is not None:
        result["validation_curve"] = tuning.curve.to_dict("records")
    return result
