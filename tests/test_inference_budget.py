"""The runtime plan: calibration with the tiny network on the CPU, projection of the hidden test, the choice, the CLI
(tools.budget)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import random_network, small_plans, write_model_dir

from lib import inference_budget, predictor
from tools import budget

PATCH = (32, 64, 64)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    plans = small_plans(PATCH)
    return write_model_dir(tmp_path_factory.mktemp("model"), plans, random_network(plans))


@pytest.fixture(scope="module")
def table(model_dir: Path) -> pd.DataFrame:
    model = predictor.load_model(model_dir, "cpu")
    calibration = inference_budget.calibrate(model, repeats=1)
    assert calibration.tile_seconds > 0 and calibration.voxel_seconds_axes >= 0
    return inference_budget.project(calibration, model, max_models=2)


@pytest.mark.slow  # the calibration: a few tiles of the tiny network
def test_projection_covers_every_setting_and_scales_with_the_work(table: pd.DataFrame) -> None:
    assert set(zip(table.tta, table.models)) == {(t, k) for t in predictor.TTA_MODES for k in (1, 2)}
    hours = table.set_index(["tta", "models"])["total_hours"]
    assert hours["flips", 1] > 4 * hours["none", 1]  # 8 passes per tile
    assert hours["axes+flips", 1] > hours["flips", 1] and hours["axes", 1] > hours["none", 1]
    assert hours["none", 2] > hours["none", 1]
    # kidney_6 is resampled from 63.08 to 50 um: projected on its model-space shape, about 2x its voxels.
    k6 = predictor.model_space_shape((501, 1028, 1257), 63.08, predictor.Model(None, {}, PATCH, (0.05,) * 3, {},
                                                                             (0, 1, 2), None), True)
    assert k6 == (632, 1297, 1586)


@pytest.mark.slow
def test_choice_is_the_strongest_that_fits_with_a_margin(table: pd.DataFrame) -> None:
    one = table[table.models == 1].set_index("tta")["total_hours"]
    budget = one["flips"] * 1.3  # fits flips with the 25% margin, not axes+flips (3x the tiles)
    assert one["axes+flips"] * 1.25 > budget
    chosen = inference_budget.choose(table[table.models == 1], budget)
    assert chosen.tta == "flips" and chosen.models == 1
    fastest = table.sort_values("total_hours").iloc[0]
    with pytest.raises(ValueError, match=rf"no setting fits 0.001 h .*the fastest, tta={fastest.tta} with 1 model"):
        inference_budget.choose(table, 0.001)


def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert budget.main(["inference", str(tmp_path / "nothing"), "--hours", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing: model folder not found" in err and len(err.splitlines()) == 1
    assert budget.main(["inference", str(tmp_path), "--devices", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_prints_and_saves_the_table(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "inference_budget.csv"
    args = ["inference", str(model_dir), str(model_dir), "--hours", "1e6", "--devices", "cpu", "--out", str(out)]
    assert budget.main(args) == 0
    printed = capsys.readouterr().out
    assert "chosen: tta=axes+flips, 2 model(s)" in printed  # everything fits a huge budget: the strongest
    saved = pd.read_csv(out)
    assert len(saved) == 8 and saved.chosen.sum() == 1
