"""Training in rounds with refined sparse labels (pseudo-labels), as the 3rd-place team did (docs/training.md):
each round r = 1..R refines the sparse groups' labels to `given OR probability >= t` with round r-1's model and
fine-tunes from it. Round r lives in `rounds/round_<r>/`; the last round's model is where a plain run puts it.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from lib import data, postprocess, predictor
from lib.training import fine_tune, nnunet_dataset
from lib.training.fine_tune import TrainResult, TrainSettings
from lib.volume import chunks

TRUTH_FOLDER = "synthetic_truth"  # <root>/synthetic_truth/<group>/NNNN.tif, written by tools.synthetic


def round_dir(output_dir: Path | str, r: int) -> Path:
    """The folder of round `r`'s run and labels (the last round's model goes to `output_dir` itself)."""
    return Path(output_dir) / "rounds" / f"round_{r}"


def round_settings(settings: TrainSettings, r: int, pretrained: Path | None = None) -> TrainSettings:
    """Round `r`'s settings: from the previous round's model (when given), its own scratch folder."""
    return replace(settings, pretrained=str(pretrained) if pretrained else settings.pretrained,
                   scratch_dir=str(Path(settings.scratch_dir) / f"round_{r}")
                   if settings.scratch_dir and settings.pseudo_label_rounds else settings.scratch_dir)


def run_dir(output_dir: Path | str, settings: TrainSettings, r: int) -> Path:
    """Where round `r` trains: `output_dir` for the last round (and a plain run), else its round folder."""
    return Path(output_dir) if r == settings.pseudo_label_rounds else round_dir(output_dir, r)


def first_work_dir(settings: TrainSettings, output_dir: Path | str) -> Path:
    """The nnU-Net scratch folder of the first round (where notebook 02 converts the dataset)."""
    return round_settings(settings, 0).work_dir(run_dir(output_dir, settings, 0))


def refined_groups(settings: TrainSettings) -> list[str]:
    """The sparse training groups whose labels are refined (those with a share in `sparse_label_share`)."""
    return [g for g in settings.train_groups if g in settings.sparse_label_share]


def truth_report(root: Path | str, group: data.Group, refined_dir: Path) -> dict | None:
    """Against the whole tree (synthetic data only; None when `root` has no truth for the group): the share of
    true vessel voxels labelled before and after refinement, and the share of added voxels that are true vessel."""
    truth_dir = Path(root) / TRUTH_FOLDER / group.name
    if not truth_dir.is_dir():
        return None
    counts = np.zeros(5, np.int64)  # true, given & true, refined & true, added, added & true
    for start, stop in chunks(group.shape[0]):
        numbers = group.slices[start:stop]
        truth = np.stack(list(nnunet_dataset.read_mask_slices(truth_dir, numbers))).astype(bool)
        refined = np.stack(list(nnunet_dataset.read_mask_slices(refined_dir, numbers))).astype(bool)
        given = group.read_labels(start, stop) > 0
        added = refined & ~given
        counts += [truth.sum(), (given & truth).sum(), (refined & truth).sum(), added.sum(), (added & truth).sum()]
    true, given_true, refined_true, added, added_true = counts.tolist()
    return {"true_labelled_before": given_true / max(true, 1), "true_labelled_after": refined_true / max(true, 1),
            "added_that_is_true": added_true / added if added else float("nan")}


def train_with_pseudo_labels(data_dir: Path | str, output_dir: Path | str, settings: TrainSettings | None = None,
                             progress: bool = True) -> tuple[TrainResult, pd.DataFrame]:
    """Train `1 + settings.pseudo_label_rounds` rounds (see the module docstring): the last round's result and one
    row per refined group and round (none for the seed recipe's one plain round). A rerun reuses finished rounds
    (their final checkpoint) and written labels, never rewriting them."""
    settings = settings or TrainSettings()
    output_dir = Path(output_dir)
    rounds = settings.pseudo_label_rounds
    if rounds == 0:
        return fine_tune.train(data_dir, output_dir, settings, progress), pd.DataFrame()
    groups = refined_groups(settings)
    if not groups:
        raise ValueError(f"pseudo_label_rounds={rounds} but no training group is in sparse_label_share "
                         f"({sorted(settings.sparse_label_share)}); train_groups: {list(settings.train_groups)}")
    record_file = output_dir / "refinement.json"
    rows: list[dict] = json.loads(record_file.read_text()) if record_file.is_file() else []
    previous, result = None, None
    fingerprint = round_dir(output_dir, 0) / "dataset_fingerprint.json"  # round 0's, for every later round's dataset
    for r in range(rounds + 1):
        folder = run_dir(output_dir, settings, r)
        labels = {g: round_dir(output_dir, r) / "labels" / g for g in groups} if r > 0 else None
        if r > 0:
            done = {(row["round"], row["group"]) for row in rows}  # refined before an interruption
            todo = {g: folder for g, folder in labels.items() if (r, g) not in done}
            rows += _refine_round(data_dir, previous, todo, r, settings, round_dir(output_dir, r) / "scratch", progress)
            record_file.write_text(json.dumps(rows, indent=2))
        this = round_settings(settings, r, previous)
        model_dir = fine_tune.default_model_dir(folder)
        if r < rounds and (model_dir / "fold_0" / "checkpoint_final.pth").is_file():
            previous = model_dir  # finished earlier
        else:
            result = fine_tune.train(data_dir, folder, this, progress, label_dirs=labels,
                                     fingerprint_file=fingerprint if r > 0 else None)
            previous = result.model_dir
        work = this.work_dir(folder)
        if r == 0 and not fingerprint.is_file():
            shutil.copyfile(work / "preprocessed" / nnunet_dataset.DATASET_NAME / "dataset_fingerprint.json", fingerprint)
        if r < rounds:  # the next round rebuilds its own dataset: this one's data is no longer needed
            for sub in ("raw", "preprocessed"):
                shutil.rmtree(work / sub, ignore_errors=True)
    return result, pd.DataFrame(rows)


def _refine_round(data_dir: Path | str, model_dir: Path, labels: dict[str, Path], r: int, settings: TrainSettings,
                  scratch: Path, progress: bool) -> list[dict]:
    """Refine these sparse groups' labels with the model of round r-1: each group predicted, cut at its share and
    written to its `labels` folder; its probabilities (float16, 2 B per voxel) live in `scratch` only until then."""
    if not labels:
        return []
    run = predictor.Predictor(predictor.load_model(model_dir, settings.device), tta=False, progress=progress)
    scratch.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, out_dir in labels.items():
        group = data.open_group(name, data_dir)
        share = settings.sparse_label_share[name]
        if out_dir.exists():  # complete but unrecorded (interrupted in between): written again
            shutil.rmtree(out_dir)
        probs_file = scratch / f"{name}_probabilities.npy"
        probs = run.predict_group(group, probs_file, overwrite=True)
        threshold = postprocess.share_threshold(probs, group, share)
        counts = postprocess.write_refined_labels(probs, group, threshold, out_dir, group.slices, progress)
        del probs
        probs_file.unlink()
        probs_file.with_suffix(".json").unlink(missing_ok=True)
        rows.append({"round": r, "group": name, "target_share": share, "threshold": threshold, **counts,
                     "given_share_of_refined": counts["given"] / max(counts["refined"], 1),
                     **(truth_report(data_dir, group, out_dir) or {})})
    shutil.rmtree(scratch, ignore_errors=True)
    return rows
