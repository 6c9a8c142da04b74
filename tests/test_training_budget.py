"""The training plan: calibration on the CPU, the projection of notebook 02's stages (arithmetic against a hand-made
calibration, never timings), the budget check and its suggested settings, Kaggle detection, the CLI (tools.budget)."""
from __future__ import annotations

import math
import os
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from lib import data, inference_budget, predictor, training_budget
from lib.training import nnunet_dataset
from lib.training.fine_tune import TrainSettings
from tools import budget

PATCH = (64, 192, 192)  # the hepatic patch on a GPU
HAND = training_budget.TrainingCalibration(
    device="cuda:0", configuration="hepatic", patch_size=PATCH, batch_size=2, conversion_voxel_seconds=2e-8,
    fingerprint_voxel_seconds=1e-8, preprocessing_voxel_seconds=5e-8, train_step_seconds=1.0, val_step_seconds=0.3,
    augmentation_batch_seconds=4.5, val_batch_seconds=0.1, augmentation_workers=3, trainer_start_seconds=30.0,
    epoch_checkpoint_seconds=5.0, tile_seconds=0.2, predict_voxel_seconds_z=1e-9, predict_voxel_seconds_axes=3e-9,
    flip_passes=8, refine_voxel_seconds=4e-9, curve_voxel_seconds=6e-9, seconds=20.0, source="hand-made")
NNUNET_ENV = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_n_proc_DA", "nnUNet_compile")


def settings(**kw) -> TrainSettings:
    return TrainSettings(**{"configuration": "tiny", "device": "cpu", **kw})


def stages(table: pd.DataFrame) -> list[tuple[int, str, str]]:
    return list(zip(table["round"], table["stage"], table["group"]))


def test_calibration_without_the_network_is_positive_finite_and_leaves_the_process_as_it_was() -> None:
    before = ({k: os.environ.get(k) for k in NNUNET_ENV}, torch.get_num_threads(), torch.backends.cudnn.benchmark)
    c = training_budget.calibrate(settings(), block_shape=(16, 96, 80), network=False)
    assert (c.device, c.configuration, c.patch_size, c.batch_size) == ("cpu", "tiny", (32, 64, 64), 2)
    for name in ("conversion_voxel_seconds", "fingerprint_voxel_seconds", "preprocessing_voxel_seconds",
                 "augmentation_batch_seconds", "val_batch_seconds", "trainer_start_seconds",
                 "epoch_checkpoint_seconds", "refine_voxel_seconds", "curve_voxel_seconds", "seconds"):
        assert 0 < getattr(c, name) < math.inf, name
    assert math.isnan(c.train_step_seconds) and math.isnan(c.tile_seconds)  # not measured
    assert c.augmentation_workers >= 1 and c.flip_passes == 8
    after = ({k: os.environ.get(k) for k in NNUNET_ENV}, torch.get_num_threads(), torch.backends.cudnn.benchmark)
    assert after == before


@pytest.mark.slow  # a few steps and tiles of the tiny network: tens of seconds on 2 cores
def test_calibration_on_the_cpu_with_tiny_gives_positive_finite_numbers(tmp_path: Path) -> None:
    c = training_budget.calibrate(settings(), block_shape=(16, 96, 80))
    for name in ("train_step_seconds", "val_step_seconds", "tile_seconds", "conversion_voxel_seconds",
                 "preprocessing_voxel_seconds", "augmentation_batch_seconds"):
        assert 0 < getattr(c, name) < math.inf, name
    assert 0 <= c.predict_voxel_seconds_z < math.inf and 0 <= c.predict_voxel_seconds_axes < math.inf
    assert c.iteration_seconds() == pytest.approx(c.train_step_seconds + c.augmentation_batch_seconds)  # CPU: shared
    budget.write_calibration(c, tmp_path / "calibration.json")
    assert budget.read_calibration(tmp_path / "calibration.json") == c


def test_projection_follows_notebook_02_and_a_round_predicts_the_sparse_groups(synthetic_tiny: Path) -> None:
    groups = data.discover(synthetic_tiny)
    seed = training_budget.project(HAND, settings(), groups)
    assert stages(seed) == [(0, "conversion", ""), (0, "fingerprint", ""), (0, "preprocessing", ""),
                            (0, "training", ""), (0, "validation (final)", "kidney_3_dense"),
                            (0, "validation (best checkpoint)", "kidney_3_dense")]
    rounds = training_budget.project(HAND, settings(pseudo_label_rounds=2), groups)
    one_round = [("pseudo-label prediction", "kidney_2"), ("pseudo-label prediction", "kidney_3_sparse"),
                 ("conversion", ""), ("preprocessing", ""), ("training", "")]
    assert stages(rounds) == stages(seed)[:4] + [(1, *s) for s in one_round] + [(2, *s) for s in one_round] \
        + [(2, *s[1:]) for s in stages(seed)[4:]]
    assert rounds["cumulative_hours"].is_monotonic_increasing
    assert rounds["cumulative_hours"].iloc[-1] == pytest.approx(rounds["seconds"].sum() / 3600)
    no_val = training_budget.project(HAND, settings(val_group=None), groups)
    assert not no_val["stage"].str.startswith("validation").any()


def test_projection_arithmetic_against_a_hand_made_calibration(synthetic_tiny: Path) -> None:
    groups = data.discover(synthetic_tiny)
    s = settings(epochs=4, iterations_per_epoch=10, val_iterations_per_epoch=3, pseudo_label_rounds=1)
    table = training_budget.project(HAND, s, groups).set_index(["round", "stage", "group"])
    cases = nnunet_dataset.plan_cases(groups, s.train_groups, s.val_group, s.slab_depth)
    voxels = sum((c.stop - c.start) * groups[c.group].height * groups[c.group].width for c in cases)
    assert table.loc[(0, "conversion", ""), "seconds"] == pytest.approx(voxels * 2e-8)
    assert table.loc[(0, "fingerprint", ""), "seconds"] == pytest.approx(voxels * 1e-8)
    assert table.loc[(1, "preprocessing", ""), "seconds"] == pytest.approx(voxels * 5e-8)
    # GPU: the step (1 s) waits for the augmentation (4.5 s per batch over 3 workers); validation: 0.3 s steps.
    epoch = 10 * 1.5 + 3 * 0.3 + 5.0
    assert table.loc[(0, "training", ""), "seconds"] == pytest.approx(30 + 4 * epoch)
    assert table.loc[(0, "training", ""), "iterations"] == 4 * 13
    k2 = groups["kidney_2"]  # 50 µm: predicted at its own shape, no TTA, then refined
    tiles = inference_budget.tiles(k2.shape, PATCH)
    assert table.loc[(1, "pseudo-label prediction", "kidney_2"), "seconds"] == pytest.approx(
        tiles * 0.2 + math.prod(k2.shape) * (1e-9 + 4e-9))
    val = groups["kidney_3_dense"]
    plain = table.loc[(1, "validation (final)", "kidney_3_dense"), "seconds"]
    assert plain == pytest.approx(inference_budget.tiles(val.shape, PATCH) * 0.2 + math.prod(val.shape) * (1e-9 + 6e-9))
    flips = training_budget.project(HAND, s, groups, validation_tta=True).iloc[-1]["seconds"]
    assert flips == pytest.approx(plain + 7 * inference_budget.tiles(val.shape, PATCH) * 0.2)  # 8 passes per tile
    on_cpu = replace(HAND, device="cpu")
    assert on_cpu.iteration_seconds() == 5.5 and on_cpu.val_iteration_seconds() == pytest.approx(0.4)


def test_real_competition_shapes_give_the_real_work() -> None:
    groups = budget.competition_groups()
    assert {g: groups[g].shape for g in groups} == {g: data.COMPETITION_SHAPES[g] for g in data.LABEL_KIND}
    table = training_budget.project(HAND, settings(pseudo_label_rounds=1), groups)
    # kidney_3_sparse trains on its slices outside kidney_3_dense's 0496..0996 (534 of 1035).
    voxels = 2279 * 1303 * 912 + 2217 * 1041 * 1511 + 534 * 1706 * 1510 + 501 * 1706 * 1510
    assert table.loc[table["stage"] == "conversion", "voxels"].tolist() == [voxels, voxels]
    assert voxels == pytest.approx(8.86e9, rel=1e-3)
    predicted = table[table["stage"] == "pseudo-label prediction"].set_index("group")["voxels"]
    assert predicted.to_dict() == {"kidney_2": 2217 * 1041 * 1511, "kidney_3_sparse": 1035 * 1706 * 1510}


def fitting(message: str) -> dict:
    """The settings a refusal suggests first, e.g. {"pseudo_label_rounds": 1} or {"epochs": 7}."""
    first = message.split("fits: ")[1].split(" or ")[0]
    return {k: int(v) for k, v in re.findall(r"(pseudo_label_rounds|epochs)=(\d+)", first)}


@pytest.mark.parametrize("rounds", [0, 2])
def test_check_budget_names_the_stage_and_a_setting_that_fits(rounds: int) -> None:
    groups = budget.competition_groups()
    s = settings(pseudo_label_rounds=rounds)
    table = training_budget.project(HAND, s, groups)
    total = table["cumulative_hours"].iloc[-1]
    training_budget.check_budget(table, None)  # no budget: no check
    training_budget.check_budget(table, total * (1 + training_budget.MARGIN) * 1.01)  # fits with the margin
    hours = total * 0.8
    with pytest.raises(ValueError) as refused:
        training_budget.check_budget(table, hours)
    message = str(refused.value)
    assert "\n" not in message and f"the {hours:g} h budget" in message
    first = table[table["cumulative_hours"] > hours / (1 + training_budget.MARGIN)].iloc[0]
    assert training_budget.stage_label(first) in message
    suggested = fitting(message)
    assert suggested and (rounds == 0) == ("pseudo_label_rounds" not in suggested)
    again = training_budget.project(HAND, replace(s, **suggested), groups)
    training_budget.check_budget(again, hours)  # the suggestion really fits
    assert again["cumulative_hours"].iloc[-1] == pytest.approx(training_budget.fits_with(table, **{
        "rounds" if k == "pseudo_label_rounds" else k: v for k, v in suggested.items()}))
    if "epochs" in suggested:  # the largest that fits: one more does not
        with pytest.raises(ValueError):
            table = training_budget.project(HAND, replace(s, epochs=suggested["epochs"] + 1), groups)
            training_budget.check_budget(table, hours)


def test_validation_tta_that_breaks_the_budget_is_named_and_dropping_it_fits() -> None:
    groups = budget.competition_groups()
    s = settings(pseudo_label_rounds=1)
    plain = training_budget.project(HAND, s, groups)
    flips = training_budget.project(HAND, s, groups, validation_tta=True)
    assert (flips["seconds_without_tta"].dropna() == plain["seconds"][plain["stage"].str.startswith("validation")]).all()
    hours = (plain["cumulative_hours"].iloc[-1] * (1 + training_budget.MARGIN)) * 1.01  # fits without TTA, not with it
    training_budget.check_budget(plain, hours)
    with pytest.raises(ValueError, match=r"validation \(final\) of kidney_3_dense would end at .*validation_tta=False"):
        training_budget.check_budget(flips, hours)


def test_check_budget_says_when_nothing_fits() -> None:
    table = training_budget.project(HAND, settings(pseudo_label_rounds=1), budget.competition_groups())
    with pytest.raises(ValueError, match=r"would end at .*no setting of pseudo_label_rounds and epochs fits") as e:
        training_budget.check_budget(table, 0.01)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="budget_hours must be positive"):
        training_budget.check_budget(table, 0)


def test_default_budget_is_kaggles_on_kaggle_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setenv("KAGGLE_WORKING_DIR", str(tmp_path / "absent"))
    assert training_budget.resolve_budget_hours("auto") is None
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert training_budget.resolve_budget_hours("auto") == 11.5
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    monkeypatch.setenv("KAGGLE_WORKING_DIR", str(tmp_path))  # a Kaggle working folder exists
    assert training_budget.resolve_budget_hours("auto") == 11.5
    assert training_budget.resolve_budget_hours(None) is None and training_budget.resolve_budget_hours(3) == 3.0
    with pytest.raises(ValueError, match="budget_hours must be positive"):
        training_budget.resolve_budget_hours(-1)


def test_cli_projects_a_saved_calibration_and_refuses_in_one_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    saved = tmp_path / "calibration.json"
    budget.write_calibration(HAND, saved)
    assert budget.read_calibration(saved) == HAND
    common = ["training", "--real-shapes", "--calibration", str(saved), "--pseudo-label-rounds", "1"]
    assert budget.main(common + ["--budget-hours", "none"]) == 0
    out = capsys.readouterr().out
    assert "hand-made" in out and "pseudo-label prediction" in out and "kidney_2" in out
    assert budget.main(common + ["--budget-hours", "0.01"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: training is projected at") and len(err.splitlines()) == 1
    assert budget.main(["training", "--data-dir", str(tmp_path / "nothing"), "--calibration", str(saved)]) == 2
    assert "competition root not found" in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"device": "cpu"}')
    assert budget.main(["training", "--real-shapes", "--calibration", str(tmp_path / "other.json")]) == 2
    assert "other.json: not a training calibration" in capsys.readouterr().err


def test_tta_modes_cost_what_lib_plan_counts() -> None:
    group = budget.competition_groups()["kidney_3_dense"]
    none = training_budget._prediction_seconds(HAND, 0.05, group, "none")
    axes = training_budget._prediction_seconds(HAND, 0.05, group, "axes")
    tiles = sum(inference_budget.tiles([group.shape[a] for a in v], PATCH) for v in predictor.tta_views("axes"))
    assert axes == pytest.approx(tiles * 0.2 + math.prod(group.shape) * 3e-9) and axes > 2.5 * none


@pytest.mark.parametrize("shape", [(501, 1706, 1510), (10, 50, 70)])
def test_the_model_space_shape_of_a_spacing_is_that_of_a_model_with_it(shape: tuple[int, int, int]) -> None:
    """`project` knows the training spacing, not a Model: predictor.model_space_shape takes either."""
    model = predictor.Model(None, {}, PATCH, (0.05,) * 3, {}, (0, 1, 2), torch.device("cpu"))
    for voxel_um in (None, 50.0, 50.16, 50.28, 63.08, 5.2):
        assert predictor.model_space_shape(shape, voxel_um, 0.05, True) == predictor.model_space_shape(
            shape, voxel_um, model, True) == predictor.model_space_shape(shape, voxel_um, (0.05,) * 3, True)


def test_plan_training_reports_then_refuses_in_one_line(synthetic_tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setenv("KAGGLE_WORKING_DIR", "/nonexistent/kaggle/working")
    lines: list[str] = []
    table, used = training_budget.plan_training(synthetic_tiny, settings(), "auto", calibration=HAND, report=lines.append)
    assert used is HAND and "hand-made" in lines[0] and "training" in lines[1] and "nothing to check" in lines[2]
    lines.clear()
    with pytest.raises(ValueError, match=r"^training is projected at [^\n]*fits: epochs=\d+"):
        training_budget.plan_training(synthetic_tiny, settings(), table["cumulative_hours"].iloc[-1] * 0.9, calibration=HAND,
                             report=lines.append)
    assert len(lines) == 3  # the table was shown before the refusal
