"""submission.csv: ids, order, checks, never losing a previous file; synthetic data scores 1.0 on itself."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import data, rle
from lib.metric import score_submission
from lib.submission import SubmissionError, group_rows, write_submission


def test_synthetic_tiny_loads_and_scores_one_against_its_own_solution(synthetic_tiny: Path, tmp_path: Path) -> None:
    groups = data.discover(synthetic_tiny)
    assert {"kidney_1_dense", "kidney_2", "kidney_3_sparse", "kidney_3_dense", "kidney_5", "kidney_6"} <= set(groups)
    solution = pd.read_csv(synthetic_tiny / "solution.csv", dtype={"id": str, "rle": str}, keep_default_na=False)
    rows = []
    for name in ("kidney_6", "kidney_5"):  # any order: the sample decides
        group = groups[name]
        truth = solution[solution["image"] == name].sort_values("slice")
        masks = np.stack([rle.decode(r, (group.height, group.width)) for r in truth["rle"]])
        assert masks.any()
        rows += group_rows(group, masks)
    written = write_submission(rows, tmp_path / "submission.csv", synthetic_tiny / "sample_submission.csv")
    sample = pd.read_csv(synthetic_tiny / "sample_submission.csv")
    assert list(written["id"]) == list(sample["id"])
    result = score_submission(solution, pd.read_csv(tmp_path / "submission.csv", keep_default_na=False))
    assert result["score"] == 1.0 and set(result["per_image"]) == {"kidney_5", "kidney_6"}


def test_rows_and_empty_slices(mini_root: Path) -> None:
    group = data.open_group("kidney_5", mini_root)
    masks = np.zeros(group.shape, np.uint8)
    masks[1, 2, 3] = 1
    rows = group_rows(group, masks)
    assert rows == [("kidney_5_0000", "1 0"), ("kidney_5_0001", f"{2 * 6 + 3 + 1} 1"), ("kidney_5_0002", "1 0")]
    with pytest.raises(SubmissionError, match="mask shape"):
        group_rows(group, masks[:2])


def test_checks_before_writing(tmp_path: Path) -> None:
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"id": ["k_0000", "k_0001"], "rle": ["1 0", "1 0"]}).to_csv(sample, index=False)
    out = tmp_path / "submission.csv"
    with pytest.raises(SubmissionError, match="duplicate ids"):
        write_submission([("k_0000", "1 0"), ("k_0000", "1 0")], out)
    with pytest.raises(SubmissionError, match="without an RLE string"):
        write_submission([("k_0000", float("nan")), ("k_0001", "1 0")], out)
    with pytest.raises(SubmissionError, match=r"1 missing \(e.g. \['k_0001'\]\)"):
        write_submission([("k_0000", "1 0")], out, sample)
    with pytest.raises(SubmissionError, match="1 not expected"):
        write_submission([("k_0000", "1 0"), ("k_0001", "1 0"), ("k_0002", "1 0")], out, sample)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_previous_submission_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    write_submission([("k_0000", "1 0")], out)
    write_submission([("k_0000", "1 5")], out)
    write_submission([("k_0000", "2 5")], out)
    kept = sorted(tmp_path.glob("submission.*.csv"))
    assert len(kept) == 2
    assert {pd.read_csv(p)["rle"][0] for p in kept} == {"1 0", "1 5"}
    assert pd.read_csv(out)["rle"][0] == "2 5"
