"""Thresholds (fixed, tuned, top fraction) and slab-wise small-component removal."""
from __future__ import annotations

from pathlib import Path

import cc3d
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from lib import postprocess
from lib.metric import surface_dice
from lib.postprocess import ThresholdRule


def vessels_and_probabilities(shape=(24, 40, 36), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Blobby ground truth and a noisy probability map that is highest inside it."""
    rng = np.random.default_rng(seed)
    gt = ndimage.gaussian_filter(rng.random(shape), 2) > 0.53
    probs = np.clip(0.6 * gt + 0.5 * ndimage.gaussian_filter(rng.random(shape), 1), 0, 1)
    return gt.astype(np.uint8) * 255, probs.astype(np.float16)


@pytest.mark.parametrize("spec, rule", [
    (0.4, ThresholdRule("fixed", 0.4)), ("0.25", ThresholdRule("fixed", 0.25)), ("tune", ThresholdRule("tune")),
    ("top:0.002", ThresholdRule("top", 0.002)), (" TOP:0.5 ", ThresholdRule("top", 0.5)),
])
def test_parse_rules(spec, rule) -> None:
    assert ThresholdRule.parse(spec) == rule


@pytest.mark.parametrize("spec, message", [
    (0, r"a fixed threshold must lie in \(0, 1\), got 0"), (1.5, r"a fixed threshold must lie in \(0, 1\), got 1.5"),
    ("1.5", r"a fixed threshold must lie in \(0, 1\), got '1.5'"), ("nan", r"must lie in \(0, 1\)"),
    ("top:2", r"top fraction must lie in \(0, 1\), got 'top:2'"),
    ("top:abc", r"top:<fraction> needs a number, e.g. top:0.002, got 'top:abc'"),
    ("best", r"threshold must be a number, 'tune', 'model' or 'top:<fraction>', got 'best'"),
    (True, "threshold must be a number"), (None, "threshold must be a number"), ([0.5], "threshold must be a number"),
])
def test_parse_rejects_with_the_reason(spec, message) -> None:
    with pytest.raises(ValueError, match=message):
        ThresholdRule.parse(spec)


def test_threshold_curve_is_the_metric_at_each_threshold() -> None:
    gt, probs = vessels_and_probabilities()
    curve = postprocess.threshold_curve(probs, gt, thresholds=(0.2, 0.5, 0.7, 0.9), progress=False)
    for row in curve.itertuples():
        assert row.surface_dice == pytest.approx(surface_dice(gt, probs.astype(np.float32) >= row.threshold), abs=1e-12)


def test_best_threshold_is_the_highest_score_and_the_lower_cut_on_ties() -> None:
    curve = pd.DataFrame({"threshold": [0.9, 0.2, 0.7, 0.4], "surface_dice": [0.1, 0.5, 0.8, 0.8],
                          "dice": [0.9, 0.9, 0.9, 0.9]})  # unsorted; Dice must not decide
    assert postprocess.best_threshold(curve) == 0.4
    assert postprocess.best_threshold(curve.iloc[:3]) == 0.7


def test_threshold_curve_reads_group_labels(synthetic_tiny: Path) -> None:
    from lib import data

    group = data.open_group("kidney_1_dense", synthetic_tiny)
    labels = group.read_labels()
    probs = (labels / 255 * 0.8 + 0.1).astype(np.float16)  # a perfect ranking
    curve = postprocess.threshold_curve(probs, group, thresholds=(0.05, 0.5, 0.95), progress=False)
    expected = [surface_dice(labels, np.ones_like(labels)), 1.0, surface_dice(labels, np.zeros_like(labels))]
    assert list(curve["surface_dice"]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, np.uint8])
def test_top_fraction_threshold(dtype) -> None:
    rng = np.random.default_rng(1)
    p = rng.random((10, 50, 40))
    probs = (p * 255).round().astype(np.uint8) if dtype == np.uint8 else p.astype(np.float16)
    t = postprocess.top_fraction_threshold(probs, 0.01)
    stored = probs.astype(np.float32) / 255 if dtype == np.uint8 else probs.astype(np.float32)
    kept = (stored >= t).mean()
    assert 0.01 <= kept and (stored > t).mean() < 0.01  # the smallest threshold that keeps at least 1%


def test_binarize(tmp_path: Path) -> None:
    _, probs = vessels_and_probabilities()
    mask = postprocess.binarize(probs, 0.5, tmp_path / "mask.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "mask.npy"), probs.astype(np.float32) >= 0.5)
    assert mask.dtype == np.uint8


@pytest.mark.parametrize("slab", [1, 3, 7, 100])
def test_remove_small_components_matches_whole_volume_cc3d(slab: int) -> None:
    rng = np.random.default_rng(slab)
    mask = (ndimage.gaussian_filter(rng.random((30, 40, 35)), 1.2) > 0.56).astype(np.uint8)
    mask[5:25, 20, 20] = 1  # a long thin tube through many slabs, 26-connected diagonally at one place:
    mask[25, 21, 21] = 1
    expected = cc3d.dust(mask.astype(bool), threshold=12, connectivity=26)
    work = mask.copy()
    stats = postprocess.remove_small_components(work, min_size=12, slab=slab, progress=False)
    np.testing.assert_array_equal(work.astype(bool), expected)
    _, n = cc3d.connected_components(mask.astype(bool), connectivity=26, return_N=True)
    assert stats["components"] == n
    assert stats["removed_voxels"] == int(mask.sum() - expected.sum())


def test_remove_small_components_on_a_memmap(tmp_path: Path) -> None:
    mask = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.uint8, shape=(9, 12, 12))
    mask[0, 0, 0] = 1  # a single voxel: dropped
    mask[2:9, 5, 5] = 1  # 7 voxels across slabs: kept
    postprocess.remove_small_components(mask, min_size=5, slab=2, progress=False)
    mask.flush()
    again = np.load(tmp_path / "m.npy")
    assert again[0, 0, 0] == 0 and again[2:9, 5, 5].all()
