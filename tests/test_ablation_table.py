"""The ablation benchmark's arm settings and summary table (docs/ablation.md's table is printed by them)."""
from __future__ import annotations

import importlib.util

import pandas as pd
import pytest

from lib import paths


@pytest.fixture(scope="module")
def ablation():
    spec = importlib.util.spec_from_file_location("ablation", paths.PROJECT_ROOT / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUDGET = {"epochs": 6, "iterations_per_epoch": 40, "val_iterations_per_epoch": 5}


def test_control_arm_trains_as_many_epochs_as_two_rounds(ablation):
    control = ablation.arm_settings("seed recipe, 2 x epochs", 0, BUDGET)
    pseudo = ablation.arm_settings("+ pseudo-labels", 0, BUDGET)
    recipe = ablation.arm_settings("seed recipe", 3, BUDGET)
    assert control.epochs == 12 and control.pseudo_label_rounds == 0
    assert pseudo.epochs * (pseudo.pseudo_label_rounds + 1) == control.epochs
    assert recipe.epochs == 6 and recipe.seed == 3 and recipe.iterations_per_epoch == 40
    assert ablation.arm_settings("+ resolution aug", 0, BUDGET).scale_range == (0.95, 1.8)
    assert recipe.normalisation == control.normalisation == pseudo.normalisation == "dataset"  # the seed's
    kidney = ablation.arm_settings("+ per-kidney normalisation + pseudo-labels", 0, BUDGET)
    assert kidney.normalisation == "kidney" and kidney.pseudo_label_rounds == 1
    assert ablation.arm_settings("+ per-kidney normalisation", 0, BUDGET).normalisation == "kidney"
    assert BUDGET["epochs"] == 6  # the shared budget is not changed by an arm


def test_summary_table_orders_arms_and_reports_spread(ablation):
    rows = [{"arm": arm, "seed": seed, "resample": resample, "test_mean": value}
            for arm, seed, resample, value in [
                ("+ both", 0, False, 0.6), ("+ both", 0, True, 0.7), ("seed recipe", 0, True, 0.5),
                ("seed recipe", 1, True, 0.7), ("seed recipe", 2, True, 0.6), ("seed recipe", 0, False, 0.4),
                ("seed recipe", 1, False, 0.4), ("seed recipe", 2, False, 0.4)]]
    table = ablation.summary_table(pd.DataFrame(rows))
    assert list(zip(table["arm"], table["resample"])) == [
        ("seed recipe", "on"), ("seed recipe", "off"), ("+ both", "on"), ("+ both", "off")]
    assert table["seeds"].tolist() == [3, 3, 1, 1]
    assert table["test_mean"].iloc[0] == "0.600 ± 0.100 [0.500, 0.700]"
    assert table["test_mean"].iloc[1] == "0.400 ± 0.000 [0.400, 0.400]"
    assert table["test_mean"].iloc[2] == "0.700 (one seed: no spread)"
    assert ablation.markdown(table).splitlines()[0] == "| arm | resample | seeds | test_mean |"
