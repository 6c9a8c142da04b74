"""The streaming surface Dice against DeepMind's surface-distance (the hosts' reference), and the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lib import rle
from lib.metric import (
    CUBE_AREA,
    SubmissionError,
    SurfaceDice,
    score_submission,
    surface_dice,
)

if not hasattr(np, "Inf"):  # surface-distance 0.1 still uses np.Inf, removed in numpy 2
    np.Inf = np.inf
import surface_distance  # noqa: E402
from helpers import tubes  # noqa: E402
from surface_distance import lookup_tables  # noqa: E402


def reference(gt: np.ndarray, pred: np.ndarray) -> float:
    distances = surface_distance.compute_surface_distances(gt.astype(bool), pred.astype(bool), (1, 1, 1))
    return float(surface_distance.compute_surface_dice_at_tolerance(distances, 0))


def blobs(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, level: float) -> np.ndarray:
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


def test_area_table_is_the_reference_table() -> None:
    np.testing.assert_allclose(CUBE_AREA, lookup_tables.create_table_neighbour_code_to_surface_area((1, 1, 1)),
                               rtol=0, atol=1e-15)


def test_worked_value() -> None:
    gt = np.zeros((100, 100, 100), bool)
    pred = gt.copy()
    gt[:50], pred[:51] = True, True
    assert surface_dice(gt, pred) == pytest.approx(0.750877, abs=5e-7)
    assert surface_dice(gt, pred) == pytest.approx(reference(gt, pred), abs=1e-9)


@pytest.mark.parametrize("seed", range(24))
def test_matches_surface_distance_on_random_volumes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(3, 40, size=3))
    if seed % 3 == 0:  # tubes against perturbed tubes
        gt = tubes(rng, shape)
        pred = gt ^ (rng.random(shape) < 0.02)
    elif seed % 3 == 1:  # blobs against other blobs
        gt, pred = blobs(rng, shape, 1.5, 0.5), blobs(rng, shape, 1.5, 0.5)
    else:  # a blob against its shifted, eroded copy, touching the volume border
        gt = blobs(rng, shape, 2.0, 0.48)
        pred = ndimage.binary_erosion(np.roll(gt, 1, axis=int(rng.integers(3))))
    pred[0] |= gt[0]  # something on the first slice too
    assert gt.any() and pred.any()
    assert surface_dice(gt, pred) == pytest.approx(reference(gt, pred), abs=1e-9)


@pytest.mark.parametrize("case", ["single voxels apart", "same single voxel", "one empty", "voxel at corner"])
def test_small_cases(case: str) -> None:
    gt, pred = np.zeros((4, 5, 3), bool), np.zeros((4, 5, 3), bool)
    if case == "single voxels apart":
        gt[1, 1, 1], pred[2, 3, 1] = True, True
    elif case == "same single voxel":
        gt[2, 2, 2] = pred[2, 2, 2] = True
    elif case == "one empty":
        gt[1:3, 1:4, 0:2] = True
    else:
        gt[0, 0, 0] = pred[0, 0, 0] = pred[3, 4, 2] = True
    assert surface_dice(gt, pred) == pytest.approx(reference(gt, pred), abs=1e-9)


def test_both_empty_scores_one() -> None:
    empty = np.zeros((3, 4, 5), bool)
    assert surface_dice(empty, empty) == 1.0


def test_slices_in_any_dtype_and_dice() -> None:
    rng = np.random.default_rng(7)
    gt = blobs(rng, (9, 20, 11), 1.5, 0.5)
    pred = blobs(rng, (9, 20, 11), 1.5, 0.5)
    acc = SurfaceDice()
    for g, p in zip(gt.astype(np.uint8) * 255, pred.astype(np.float32)):
        acc.update(g, p)
    assert acc.score == pytest.approx(reference(gt, pred), abs=1e-9)
    assert acc.dice == pytest.approx(2 * (gt & pred).sum() / (gt.sum() + pred.sum()))


def test_torch_backend_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    gt, pred = tubes(rng, (12, 30, 25)), tubes(rng, (12, 30, 25))
    assert surface_dice(gt, pred, device="cpu") == pytest.approx(surface_dice(gt, pred), abs=1e-12)


def test_rejects_shape_changes() -> None:
    acc = SurfaceDice()
    acc.update(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="differs"):
        acc.update(np.zeros((3, 4)), np.zeros((3, 4)))


# --- the submission scorer ----------------------------------------------------------------------------

def frames(volumes: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = [{"id": f"{name}_{z:04d}", "rle": rle.encode(sl), "width": vol.shape[2], "height": vol.shape[1],
             "image": name, "slice": z} for name, vol in volumes.items() for z, sl in enumerate(vol)]
    return pd.DataFrame(rows)


@pytest.fixture
def scored_pair() -> tuple[pd.DataFrame, pd.DataFrame, float, float]:
    rng = np.random.default_rng(11)
    gt5, gt6 = tubes(rng, (10, 24, 18)), tubes(rng, (7, 15, 20))
    pred5, pred6 = np.roll(gt5, 1, axis=1), gt6.copy()
    solution = frames({"kidney_5": gt5, "kidney_6": gt6})
    submission = frames({"kidney_5": pred5, "kidney_6": pred6})[["id", "rle"]]
    return solution, submission, reference(gt5, pred5), reference(gt6, pred6)


def test_score_submission(scored_pair) -> None:
    solution, submission, ref5, ref6 = scored_pair
    result = score_submission(solution, submission.sample(frac=1, random_state=0))  # row order is free
    assert result["per_image"]["kidney_5"] == pytest.approx(ref5, abs=1e-9)
    assert result["per_image"]["kidney_6"] == pytest.approx(1.0)
    assert result["score"] == pytest.approx((ref5 + ref6) / 2, abs=1e-9)


def test_score_submission_errors(scored_pair) -> None:
    solution, submission, _, _ = scored_pair
    with pytest.raises(SubmissionError, match="submission: 1 ids of the solution are missing, e.g. 'kidney_5_0003'"):
        score_submission(solution, submission.drop(index=3))
    with pytest.raises(SubmissionError, match="submission: 1 duplicate ids"):
        score_submission(solution, pd.concat([submission, submission.iloc[[0]]]))
    with pytest.raises(SubmissionError, match="not in the solution"):
        score_submission(solution, pd.concat([submission, pd.DataFrame({"id": ["kidney_7_0000"], "rle": ["1 0"]})]))
    too_long = submission.copy()
    too_long.loc[0, "rle"] = f"1 {24 * 18 + 1}"
    with pytest.raises(SubmissionError, match=r"id 'kidney_5_0000' \(slice 24x18\): RLE run ends at pixel 433"):
        score_submission(solution, too_long)
    with pytest.raises(SubmissionError, match="missing columns"):
        score_submission(solution.drop(columns="image"), submission)


def test_cli_prints_json(tmp_path: Path, scored_pair) -> None:
    solution, submission, ref5, _ = scored_pair
    solution.to_csv(tmp_path / "solution.csv", index=False)
    submission.to_csv(tmp_path / "submission.csv", index=False)
    out = subprocess.run([sys.executable, "-m", "tools.metric", str(tmp_path / "solution.csv"),
                          str(tmp_path / "submission.csv")], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    result = json.loads(out.stdout)
    assert result["per_image"]["kidney_5"] == pytest.approx(ref5, abs=1e-9)
    bad = subprocess.run([sys.executable, "-m", "tools.metric", str(tmp_path / "solution.csv"),
                          str(tmp_path / "nope.csv")], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent)
    assert bad.returncode == 2 and "nope.csv: file not found" in bad.stderr
