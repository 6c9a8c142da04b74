"""The leaderboard metric: surface Dice at tolerance 0, equal to DeepMind's `surface-distance` (the hosts'
reference), streamed one slice pair at a time (a border cube spans slices z and z+1) in O(H*W) memory; the method is
in docs/metric.md. Both masks empty scores 1.0: the reference's 0/0 = NaN would poison the mean over images.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lib import rle

# Area of the marching-cubes surface inside a 2x2x2 cube at spacing (1, 1, 1), by 8-bit neighbour code:
# the 13 distinct values of surface-distance's table and, for each code, which one it takes.
_AREAS = np.array([
    0.0, 0.21650635094610965, 0.4330127018922193, 0.649519052838329, 0.7071067811865476,
    0.8660254037844386, 0.9236131321326573, 1.0, 1.149519052838329, 1.2990381056766578,
    1.3660254037844386, 1.4142135623730951, 1.573132184970986,
])
_AREA_OF_CODE = np.array([
    0, 1, 1, 4, 1, 4, 2, 8, 1, 2, 4, 8, 4, 8, 8, 7, 1, 4, 2, 8, 2, 8, 3, 9, 2, 6, 6, 12, 6, 12, 10, 8,
    1, 2, 4, 8, 2, 6, 6, 12, 2, 3, 8, 9, 6, 10, 12, 8, 4, 8, 8, 7, 6, 12, 10, 8, 6, 10, 12, 8, 11, 6, 6, 4,
    1, 2, 2, 6, 4, 8, 6, 12, 2, 3, 6, 10, 8, 9, 12, 8, 4, 8, 6, 12, 8, 7, 10, 8, 6, 10, 11, 6, 12, 8, 6, 4,
    2, 3, 6, 10, 6, 10, 11, 6, 3, 5, 10, 3, 10, 3, 6, 2, 8, 9, 12, 8, 12, 8, 6, 4, 10, 3, 6, 2, 6, 2, 2, 1,
    1, 2, 2, 6, 2, 6, 3, 10, 4, 6, 8, 12, 8, 12, 9, 8, 2, 6, 3, 10, 3, 10, 5, 3, 6, 11, 10, 6, 10, 6, 3, 2,
    4, 6, 8, 12, 6, 11, 10, 6, 8, 10, 7, 8, 12, 6, 8, 4, 8, 12, 9, 8, 10, 6, 3, 2, 12, 6, 8, 4, 6, 2, 2, 1,
    4, 6, 6, 11, 8, 12, 10, 6, 8, 10, 12, 6, 7, 8, 8, 4, 8, 12, 10, 6, 9, 8, 3, 2, 12, 6, 6, 2, 8, 4, 2, 1,
    8, 10, 12, 6, 12, 6, 6, 2, 9, 3, 8, 2, 8, 2, 4, 1, 7, 8, 8, 4, 8, 4, 2, 1, 8, 2, 4, 1, 4, 1, 1, 0,
])
CUBE_AREA = _AREAS[_AREA_OF_CODE]  # zero exactly for codes 0 and 255, so "area > 0" means "border cube"


class SurfaceDice:
    """Streaming surface Dice (tolerance 0) of one image: feed (gt, pred) slices in z order, then read `score`.

    Keeps only the previous slice's 4-bit square codes, so tuning many thresholds at once costs a few
    slices per threshold. With `device` (e.g. "cuda") the work runs in torch on that device.
    """

    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self._prev: tuple | None = None  # square codes of the previous (gt, pred) slice
        self._shape: tuple[int, int] | None = None
        self.area_gt = self.area_pred = self.matched_gt = self.matched_pred = 0.0
        self.voxels_gt = self.voxels_pred = self.voxels_both = 0
        self.finished = False
        self._table = CUBE_AREA
        if device is not None:
            import torch

            self._table = torch.as_tensor(CUBE_AREA, device=device)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add the next z-slice of ground truth and prediction (2D, nonzero = vessel)."""
        if self.finished:
            raise RuntimeError("SurfaceDice already finished; start a new one per image")
        if gt.shape != pred.shape or gt.ndim != 2:
            raise ValueError(f"slices must be 2D and equal in shape, got {gt.shape} and {pred.shape}")
        if self._shape is None:
            self._shape = gt.shape
            self._prev = self._square_codes(np.zeros(gt.shape, bool)), self._square_codes(np.zeros(gt.shape, bool))
        elif gt.shape != self._shape:
            raise ValueError(f"slice shape {gt.shape} differs from the image's {self._shape}")
        g, p = self._to_bool(gt), self._to_bool(pred)
        self.voxels_gt += int(g.sum())
        self.voxels_pred += int(p.sum())
        self.voxels_both += int((g & p).sum())
        self._add_cubes(self._square_codes(g), self._square_codes(p))

    def finish(self) -> None:
        """Close the image with the empty slice after the last one (idempotent)."""
        if not self.finished and self._shape is not None:
            empty = self._square_codes(np.zeros(self._shape, bool))
            self._add_cubes(empty, empty)
        self.finished = True

    @property
    def score(self) -> float:
        """Surface Dice at tolerance 0; 1.0 when both masks are empty."""
        self.finish()
        total = self.area_gt + self.area_pred
        return 1.0 if total == 0 else (self.matched_gt + self.matched_pred) / total

    @property
    def dice(self) -> float:
        """Volumetric Dice of the slices seen so far; 1.0 when both masks are empty."""
        total = self.voxels_gt + self.voxels_pred
        return 1.0 if total == 0 else 2 * self.voxels_both / total

    def _to_bool(self, a: np.ndarray):
        if self.device is None:
            return np.asarray(a) != 0
        import torch

        return torch.as_tensor(np.ascontiguousarray(a), device=self.device) != 0

    def _square_codes(self, m):
        """4-bit code of every 2x2 in-plane square of the zero-padded slice: shape (H+1, W+1)."""
        if self.device is None:
            pad = np.zeros((m.shape[0] + 2, m.shape[1] + 2), np.uint8)
        else:
            import torch

            m = torch.as_tensor(m, device=self.device)
            pad = torch.zeros((m.shape[0] + 2, m.shape[1] + 2), dtype=torch.uint8, device=self.device)
        pad[1:-1, 1:-1] = m
        pairs = pad[:, :-1] | (pad[:, 1:] << 1)  # left/right neighbours first, then rows: 2 shifts, not 3
        return pairs[:-1] | (pairs[1:] << 2)

    def _add_cubes(self, gt_codes, pred_codes) -> None:
        prev_gt, prev_pred = self._prev
        self._prev = gt_codes, pred_codes
        cubes_gt, cubes_pred = prev_gt | (gt_codes << 4), prev_pred | (pred_codes << 4)
        if self.device is None:  # vessels are sparse: look only where either is
            touched = np.flatnonzero(cubes_gt | cubes_pred)
            cubes_gt, cubes_pred = cubes_gt.ravel()[touched], cubes_pred.ravel()[touched]
        else:  # torch reads a uint8 index as a boolean mask
            cubes_gt, cubes_pred = cubes_gt.long(), cubes_pred.long()
        area_gt, area_pred = self._table[cubes_gt], self._table[cubes_pred]
        both = (area_gt > 0) & (area_pred > 0)
        self.area_gt += float(area_gt.sum())
        self.area_pred += float(area_pred.sum())
        self.matched_gt += float(area_gt[both].sum())
        self.matched_pred += float(area_pred[both].sum())


def surface_dice(gt: np.ndarray, pred: np.ndarray, device: str | None = None) -> float:
    """Surface Dice at tolerance 0 of two (Z, H, W) volumes (arrays or memmaps), read one slice at a time."""
    if gt.shape != pred.shape or len(gt.shape) != 3:
        raise ValueError(f"volumes must be 3D and equal in shape, got {gt.shape} and {pred.shape}")
    acc = SurfaceDice(device)
    for z in range(gt.shape[0]):
        acc.update(gt[z], pred[z])
    return acc.score


# --- scoring a submission against a solution in the hosts' format --------------------------------------

SOLUTION_COLUMNS = ("id", "rle", "width", "height", "image", "slice")


class SubmissionError(ValueError):
    """A submission (or its solution / sample_submission) that cannot be written or scored as it is; the message
    names the file and the id. Nothing was written."""


def score_submission(solution: pd.DataFrame, submission: pd.DataFrame, device: str | None = None,
                     names: tuple[str, str] = ("solution", "submission")) -> dict:
    """Score a submission (id, rle) against a solution (id, rle, width, height, image, slice): {"score": mean surface
    Dice over images, "per_image": {image: score}}."""
    sol_name, sub_name = names
    missing = [c for c in SOLUTION_COLUMNS if c not in solution.columns]
    if missing:
        raise SubmissionError(f"{sol_name}: missing columns {missing}; expected {list(SOLUTION_COLUMNS)}")
    if not {"id", "rle"} <= set(submission.columns):
        raise SubmissionError(f"{sub_name}: needs columns id and rle, has {list(submission.columns)}")
    for name, frame in ((sol_name, solution), (sub_name, submission)):
        dup = frame["id"][frame["id"].duplicated()]
        if len(dup):
            raise SubmissionError(f"{name}: {len(dup)} duplicate ids, e.g. {dup.iloc[0]!r}")
    pred_rle = dict(zip(submission["id"], submission["rle"]))
    absent = [i for i in solution["id"] if i not in pred_rle]
    if absent:
        raise SubmissionError(f"{sub_name}: {len(absent)} ids of the solution are missing, e.g. {absent[0]!r}")
    extra = set(pred_rle) - set(solution["id"])
    if extra:
        raise SubmissionError(f"{sub_name}: {len(extra)} ids are not in the solution, e.g. {sorted(extra)[0]!r}")
    solution = _checked_solution(solution, sol_name)

    per_image = {}
    for image, rows in solution.sort_values(["image", "slice"]).groupby("image", sort=True):
        acc = SurfaceDice(device)
        for row in rows.itertuples(index=False):
            shape = (int(row.height), int(row.width))
            acc.update(_decode(row.rle, shape, sol_name, row.id), _decode(pred_rle[row.id], shape, sub_name, row.id))
        per_image[str(image)] = acc.score
    return {"score": float(np.mean(list(per_image.values()))), "per_image": per_image}


def _checked_solution(solution: pd.DataFrame, name: str) -> pd.DataFrame:
    """width, height and slice as positive integers (slice >= 0), one slice size and no repeated slice per
    image; every error names the id."""
    if solution.empty:
        raise SubmissionError(f"{name}: no rows to score")
    solution = solution.copy()
    for column, low in (("width", 1), ("height", 1), ("slice", 0)):
        numbers = pd.to_numeric(solution[column], errors="coerce")
        bad = numbers.isna() | (numbers < low) | (numbers != numbers.round())
        if bad.any():
            row = solution[bad.to_numpy()].iloc[0]
            raise SubmissionError(f"{name}: id {row['id']!r}: {column} {row[column]!r} is not an integer >= {low}")
        solution[column] = numbers.astype(np.int64)
    no_image = solution["image"].astype(str).str.strip() == ""
    if no_image.any():
        raise SubmissionError(f"{name}: id {solution['id'][no_image].iloc[0]!r} has an empty image")
    for image, rows in solution.groupby("image", sort=False):
        first = rows.iloc[0]
        other = rows[(rows["height"] != first["height"]) | (rows["width"] != first["width"])]
        if len(other):
            row = other.iloc[0]
            swapped = (row["height"], row["width"]) == (first["width"], first["height"])
            raise SubmissionError(
                f"{name}: id {row['id']!r} is width {row['width']} x height {row['height']}, but {first['id']!r} of "
                f"the same image {image} is {first['width']} x {first['height']}"
                + (" (width and height swapped?)" if swapped else ""))
        repeated = rows[rows["slice"].duplicated()]
        if len(repeated):
            raise SubmissionError(f"{name}: id {repeated['id'].iloc[0]!r}: slice {repeated['slice'].iloc[0]} of image "
                                  f"{image} appears twice")
    return solution


def _decode(text, shape: tuple[int, int], file: str, slice_id: str) -> np.ndarray:
    try:
        return rle.decode(text, shape)
    except rle.RLEError as e:
        raise SubmissionError(f"{file}: id {slice_id!r} (slice {shape[0]}x{shape[1]}): {e}") from None

