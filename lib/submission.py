"""The competition's submission.csv: one RLE row per test slice, checked before it is written.

Ids are `<kidney>_<slice:04d>` for the slices discovered at run time, in the order of sample_submission.csv
when it exists. An existing submission is never overwritten: it is kept as `submission.<time>.csv`.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from lib import data, rle
from lib.metric import SubmissionError


def expected_ids(root: Path | str, tests: Mapping[str, data.Group]) -> list[str]:
    """The submission's ids in sample_submission.csv's order, checked before a model is loaded (notebook 03 calls
    this first): a SubmissionError names the file when there is no test slice, or the sample is missing, malformed
    (`data.read_table`'s checks) or lists other ids than the test groups' slices."""
    sample = Path(root) / "sample_submission.csv"
    slices = [g.slice_id(z) for g in tests.values() for z in range(g.shape[0])]
    if not slices:
        raise SubmissionError(f"{Path(root) / 'test'}: no test slices (no group under test/, or none selected); "
                                   "a submission needs at least one row")
    if not sample.is_file():
        raise SubmissionError(f"{sample}: missing; it lists the ids the submission must have")
    return list(_sample_ids(sample, slices, f"the test slices ({', '.join(tests)})"))


def _sample_ids(sample: Path | str, ids: Iterable[str], what: str) -> pd.Series:
    """The ids of `sample`, checked to be exactly `ids` (`what`, for the message)."""
    try:
        expected = data.read_table(sample, ("id", "rle"))["id"]
    except data.DataError as e:
        raise SubmissionError(str(e)) from None
    missing, extra = sorted(set(expected) - set(ids)), sorted(set(ids) - set(expected))
    if missing or extra:
        raise SubmissionError(
            f"{sample}: ids differ from {what}: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(extra)} not expected (e.g. {extra[:3]})")
    return expected


def group_rows(group: data.Group, masks: np.ndarray) -> list[tuple[str, str]]:
    """(id, rle) for every slice of a group from its (Z, H, W) mask (array or memmap, nonzero = vessel)."""
    if tuple(masks.shape) != group.shape:
        raise SubmissionError(f"{group.name}: mask shape {tuple(masks.shape)} != volume shape {group.shape}")
    return [(group.slice_id(z), rle.encode(np.asarray(masks[z]))) for z in range(group.shape[0])]


def write_submission(rows: Iterable[tuple[str, str]], path: Path | str,
                     sample_submission: Path | str | None = None) -> pd.DataFrame:
    """Check and write `rows` as submission.csv; returns the frame written. Checks: at least one row, every id once,
    every rle a non-empty string ("1 0" for an empty slice) and, given a sample_submission, exactly its ids (in its
    order)."""
    path = Path(path)
    frame = pd.DataFrame(list(rows), columns=["id", "rle"])
    if frame.empty:
        raise SubmissionError(f"{path}: no rows to write (no test slice); nothing written")
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise SubmissionError(f"{len(dup)} duplicate ids, e.g. {dup.iloc[0]!r}")
    bad = frame[~frame["rle"].map(lambda r: isinstance(r, str) and r.strip() != "")]
    if len(bad):
        raise SubmissionError(f"{len(bad)} rows without an RLE string (NaN or empty), e.g. {bad['id'].iloc[0]!r}")
    if sample_submission is not None:
        expected = _sample_ids(sample_submission, frame["id"], "the rows to write")
        frame = frame.set_index("id").loc[expected].reset_index()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    frame.to_csv(partial, index=False)
    if path.exists():  # keep the previous submission under a timestamped name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept, n = path.with_name(f"{path.stem}.{stamp}{path.suffix}"), 1
        while kept.exists():
            kept, n = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}"), n + 1
        os.replace(path, kept)
    os.replace(partial, path)
    return frame
