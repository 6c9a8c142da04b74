"""The shift suite's statistics (benchmarks/shift_suite.py: docs/shift_suite.md is printed by them)."""
from __future__ import annotations

import importlib.util
import sys

import pandas as pd
import pytest

from lib import paths


@pytest.fixture(scope="module")
def suite():
    sys.path.insert(0, str(paths.PROJECT_ROOT / "benchmarks"))  # the suite imports the ablation's helpers
    spec = importlib.util.spec_from_file_location("shift_suite", paths.PROJECT_ROOT / "benchmarks" / "shift_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mean_worst_and_look_retention_per_seed(suite) -> None:
    rows = []
    for seed, scale in ((0, 1.0), (1, 0.5)):
        for kidney, base in (("kidney_5", 0.8), ("kidney_6", 0.6)):
            for shift in suite.SHIFTS:
                score = base * (0.5 if (kidney, shift) == ("kidney_6", "look kidney_3") else 1.0)
                rows.append({"normalisation": "kidney", "rule": "0.5", "seed": seed, "kidney": kidney, "shift": shift,
                             "surface_dice": score * scale})
    per = suite.per_seed(pd.DataFrame(rows))
    assert per["seed"].tolist() == [0, 1]
    first = per.iloc[0]
    assert first["unshifted"] == pytest.approx(0.7) and first["worst"] == pytest.approx(0.3)
    assert first["look_retention"] == pytest.approx(0.5) and first["worst_case"] == "kidney_6, look kidney_3"
    assert per.iloc[1]["worst"] == pytest.approx(0.15)
    table = suite.summary(per)
    assert table["worst"].iloc[0] == "0.225 ± 0.106 [0.150, 0.300]"
    assert table["look_retention"].iloc[0] == "0.500 ± 0.000 [0.500, 0.500]"
    assert len(suite.SHIFTS) == 1 + 5 + 1 + 1 + 5 and set(suite.RULES) == {"model/tune", "0.5", "top:F"}
