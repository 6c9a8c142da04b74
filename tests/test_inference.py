"""Notebook 03 as functions: threshold decision, every test kidney into rows, submission.csv and its score."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import INTENSITY, random_network, small_plans, write_model_dir

from lib import data, inference, paths, postprocess
from lib.postprocess import ThresholdRule
from lib.training import fine_tune
from tools import infer

PATCH = (32, 64, 64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    plans = small_plans(PATCH, intensity={**INTENSITY, "mean": 20000.0, "std": 5000.0,
                                          "percentile_00_5": 5000.0, "percentile_99_5": 40000.0})
    return write_model_dir(tmp_path_factory.mktemp("model"), plans, random_network(plans))


def test_decide_threshold_follows_the_rule() -> None:
    curve = pd.DataFrame({"threshold": [0.3, 0.5, 0.7], "surface_dice": [0.2, 0.6, 0.6], "dice": [0.1, 0.2, 0.3]})
    assert postprocess.decide_threshold(ThresholdRule("tune"), curve) == 0.5  # the best; the lower one on a tie
    assert postprocess.decide_threshold(ThresholdRule("fixed", 0.35), curve) == 0.35
    assert postprocess.decide_threshold(ThresholdRule("top", 0.01), None) is None
    with pytest.raises(ValueError, match="val_group"):
        postprocess.decide_threshold(ThresholdRule("tune"), None)
    grid = postprocess.threshold_grid(ThresholdRule("fixed", 0.33))
    assert 0.33 in grid and 0.5 in grid and grid == sorted(grid)


def test_locate_model_prefers_the_kaggle_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path / "outputs"))
    assert inference.locate_model(None) == fine_tune.default_model_dir(tmp_path / "outputs" / "train")
    uploaded = tmp_path / "input" / "my-model" / "Dataset501" / "trainer"
    (uploaded / "fold_0").mkdir(parents=True)
    (uploaded / "plans.json").write_text("{}")
    (uploaded / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    assert inference.locate_model(None) == uploaded
    assert inference.locate_model("outputs/elsewhere") == paths.PROJECT_ROOT / "outputs" / "elsewhere"


def test_predict_submission_from_a_script(synthetic_tiny: Path, model_dir: Path, tmp_path: Path) -> None:
    result = infer.predict_submission(model_dir, synthetic_tiny, tmp_path / "infer", threshold="top:0.02",
                                      val_group=None, tta=False, device="cpu")
    tests = {n: g for n, g in data.discover(synthetic_tiny).items() if g.split == "test"}
    written = pd.read_csv(result["submission"], dtype=str, keep_default_na=False)
    assert len(written) == sum(g.shape[0] for g in tests.values())
    sample = pd.read_csv(synthetic_tiny / "sample_submission.csv", dtype=str)
    assert written["id"].tolist() == sample["id"].tolist()  # sample_submission's order
    kidneys = {row["kidney"]: row for row in result["per_kidney"]}
    assert set(kidneys) == set(tests)
    for row in kidneys.values():  # the top-fraction rule cuts each kidney at its own 2%
        assert row["vessel_fraction"] == pytest.approx(0.02, rel=0.25)
        assert row["threshold"] > 0
    assert set(result["test_score"]["per_image"]) == set(tests)  # synthetic data ships a solution.csv
    assert "validation_curve" not in result and result["threshold"] is None
    assert result["threshold_rule"] == "top:0.02" and result["tile_step"] == 0.5 and result["devices"] == ["cpu"]
    assert set(result["timings_seconds"]) == set(tests)  # one prediction time per kidney, no validation
    masks = {n: np.load(tmp_path / "infer" / "masks" / f"{n}.npy", mmap_mode="r") for n in tests}
    assert all(m.shape == tests[n].shape for n, m in masks.items())


def test_stored_threshold_is_used_without_a_validation_group(synthetic_tiny: Path, model_dir: Path,
                                                              tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"threshold.json: missing; threshold='model' needs"):
        inference.prepare(model_dir, "model", devices="cpu")  # before any prediction
    curve = pd.DataFrame({"threshold": [0.3, 0.55], "surface_dice": [0.4, 0.6], "dice": [0.3, 0.5]})
    stored = tmp_path / "model"
    stored.mkdir()
    for item in model_dir.rglob("*"):
        if item.is_file():
            (stored / item.relative_to(model_dir)).parent.mkdir(parents=True, exist_ok=True)
            (stored / item.relative_to(model_dir)).write_bytes(item.read_bytes())
    postprocess.save_threshold(stored, curve, 0.55, "kidney_3_dense")
    result = infer.predict_submission(stored, synthetic_tiny, tmp_path / "infer", val_group="kidney_3_dense",
                                      tta="none", device="cpu")
    assert result["threshold"] == 0.55 and result["tta"] == "none"
    assert not (tmp_path / "infer" / "probabilities" / "kidney_3_dense.npy").exists()  # no validation predicted
    assert [row["threshold"] for row in result["validation_curve"]] == [0.3, 0.55]  # the stored curve
    assert all(row["threshold"] == 0.55 for row in result["per_kidney"])
    # An ensemble's stored threshold is the mean of its members'.
    assert postprocess.stored_threshold([stored, stored]) == pytest.approx(0.55)


def test_threshold_verdict_compares_the_cut_with_the_argmax() -> None:
    curve = pd.DataFrame({"threshold": [0.3, 0.5, 0.7], "surface_dice": [0.4, 0.5, 0.6], "dice": [0.3, 0.4, 0.5]})
    assert inference.threshold_verdict(curve, 0.7, tuned_here=True).endswith("The chosen threshold beats the argmax.")
    assert "(stored with the model)" in inference.threshold_verdict(curve, 0.3, tuned_here=False)
    assert "does not beat" in inference.threshold_verdict(curve, 0.3, tuned_here=False)
    assert "equals" in inference.threshold_verdict(curve, 0.5, tuned_here=True)
    assert inference.threshold_verdict(curve, 0.65, tuned_here=True) is None  # not on the curve: nothing to say


def test_bad_settings_fail_before_prediction(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tile_step: takes a number in \(0, 1\], got 2"):
        infer.predict_submission(model_dir, tmp_path, tmp_path / "out", tile_step=2)  # notebook 03's schema
    with pytest.raises(TypeError, match="no option 'thresold'; did you mean 'threshold'"):
        infer.predict_submission(model_dir, tmp_path, tmp_path / "out", thresold=0.5)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown tta 'sideways'"):
        inference.prepare(model_dir, 0.5, tta="sideways", devices="cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        inference.prepare(model_dir, 0.5, devices=["gpu0"])
    with pytest.raises(ValueError, match="threshold must be a number, 'tune', 'model'"):
        inference.prepare(model_dir, "best", devices="cpu")
    assert ThresholdRule.parse("model") == ThresholdRule("model")
