"""From vessel probabilities to masks: thresholds (fixed, tuned on validation, or top fraction) and
removal of small 26-connected components, every step streamed along z in bounded memory.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
import pandas as pd
import tifffile
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from lib.metric import SurfaceDice
from lib.volume import chunks, probability, save_slices

DEFAULT_GRID = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))  # 19 thresholds
THRESHOLD_FILE = "threshold.json"  # in a model folder: the cut notebook 02 tuned on validation, and its curve


@dataclass(frozen=True)
class ThresholdRule:
    """How to binarise: "fixed" (value = probability), "tune" (on the validation group), "top" (value = fraction),
    "model" (the threshold stored in the model folder by notebook 02)."""

    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, spec: float | str) -> ThresholdRule:
        """0.4 -> fixed; "tune" -> tuned; "top:0.002" -> keep the top 0.2% of voxels per volume; "model" -> stored."""
        if isinstance(spec, bool) or not isinstance(spec, (int, float, str)):
            raise ValueError(f"threshold must be a number, 'tune', 'model' or 'top:<fraction>', got {spec!r}")
        text = str(spec).strip().lower()
        if text in ("tune", "model"):
            return cls(text)
        kind, number = ("top", text[4:].strip()) if text.startswith("top:") else ("fixed", text)
        try:
            value = float(number)
        except ValueError:
            expected = "top:<fraction> needs a number, e.g. top:0.002" if kind == "top" else \
                "threshold must be a number, 'tune', 'model' or 'top:<fraction>'"
            raise ValueError(f"{expected}, got {spec!r}") from None
        if not 0 < value < 1:  # also refuses nan and inf
            what = "top fraction" if kind == "top" else "a fixed threshold"
            raise ValueError(f"{what} must lie in (0, 1), got {spec!r}")
        return cls(kind, value)


def threshold_curve(probs: np.ndarray, labels, thresholds: Sequence[float] = DEFAULT_GRID,
                    progress: bool = True) -> pd.DataFrame:
    """Surface Dice (and Dice) of `probs >= t` (float16/uint8) against `labels` (a `data.Group` or a (Z, H, W)
    array-like) for every t, in one streaming pass: each threshold's accumulator holds a few slices."""
    accs = {float(t): SurfaceDice() for t in thresholds}
    for start, stop in tqdm(chunks(probs.shape[0]), desc="threshold curve", unit="chunk", disable=not progress):
        truth = _read_labels(labels, start, stop)
        p = probability(np.asarray(probs[start:stop]))
        for g, q in zip(truth, p):
            for t, acc in accs.items():
                acc.update(g, q >= t)
    return pd.DataFrame([{"threshold": t, "surface_dice": a.score, "dice": a.dice} for t, a in accs.items()])


def best_threshold(curve: pd.DataFrame) -> float:
    """The threshold with the highest surface Dice (the lower one on ties)."""
    return float(curve.sort_values(["surface_dice", "threshold"], ascending=[False, True]).iloc[0]["threshold"])


def threshold_grid(rule: ThresholdRule) -> list[float]:
    """The thresholds a validation curve is scored at: the default grid, 0.5 (an argmax) and a fixed rule's value."""
    return sorted(set(DEFAULT_GRID) | {0.5} | ({rule.value} if rule.kind == "fixed" else set()))


def decide_threshold(rule: ThresholdRule, curve: pd.DataFrame | None,
                     model_dirs: Sequence[Path | str] | None = None) -> float | None:
    """The global cut a rule asks for: the fixed value, the curve's best for "tune" (which needs a curve), the
    model folders' stored threshold for "model", or None for "top" (cut per kidney by `top_fraction_threshold`)."""
    if rule.kind == "tune":
        if curve is None:
            raise ValueError("threshold='tune' needs a validation group with labels (val_group)")
        return best_threshold(curve)
    if rule.kind == "model":
        return stored_threshold(model_dirs or [])
    return rule.value if rule.kind == "fixed" else None


def save_threshold(model_dir: Path | str, curve: pd.DataFrame, threshold: float, val_group: str,
                   settings: dict | None = None) -> None:
    """Store the validation curve and the chosen cut in the model folder (as nnU-Net stores its post-processing),
    so inference needs no validation group."""
    record = {"threshold": float(threshold), "metric": "surface Dice at tolerance 0 (the leaderboard metric)",
              "val_group": val_group, "settings": settings or {},
              "curve": [{k: float(v) for k, v in row.items()} for row in curve.to_dict("records")]}
    (Path(model_dir) / THRESHOLD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def stored_threshold(model_dirs: Sequence[Path | str]) -> float:
    """The threshold stored in a model folder; for an ensemble the mean of its members' (each must have one)."""
    if not model_dirs:
        raise ValueError("threshold='model' needs the model folder(s) that hold " + THRESHOLD_FILE)
    values = []
    for folder in model_dirs:
        path = Path(folder) / THRESHOLD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; threshold='model' needs the threshold notebook 02 stores "
                                    "after validation (or use 'tune', a number or 'top:<fraction>')")
        try:
            values.append(float(json.loads(path.read_text())["threshold"]))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a stored threshold ({type(e).__name__}: {e})") from None
    return float(np.mean(values))


def top_fraction_threshold(probs: np.ndarray, fraction: float) -> float:
    """The probability above which `fraction` of the volume's voxels lie (2nd place kept the top 0.2%); exact for
    float16 and uint8 storage: a histogram over every representable value, built slice by slice."""
    counts = _code_histogram(probs)
    # Non-negative float16 values sort like their bit patterns, so the top of the histogram is the top of the data.
    above = np.cumsum(counts[::-1])[::-1]  # voxels >= each code
    enough = np.flatnonzero(above >= fraction * probs.size)
    return _code_value(int(enough[-1]) if len(enough) else 0, len(counts))  # 0 when there are fewer voxels


def share_threshold(probs: np.ndarray, labels, share: float) -> float:
    """The cut t at which the given labels make up `share` of `labels OR probs >= t` (pseudo-label refinement), or
    more: voxels tied at the cut are left out. Exact on the stored float16/uint8 codes, streamed along z; `labels` a
    `data.Group` or a (Z, H, W) array-like. Share 1: a cut above every unlabelled voxel."""
    if not 0 < share <= 1:
        raise ValueError(f"share must lie in (0, 1], got {share}")
    given = 0
    unlabelled = []
    for start, stop in chunks(probs.shape[0]):
        mask = _read_labels(labels, start, stop) > 0
        given += int(mask.sum())
        unlabelled.append(_code_histogram(probs[start:stop], ~mask))
    wanted = round(given * (1 / share - 1))
    above = np.cumsum(np.sum(unlabelled, axis=0)[::-1])[::-1]  # unlabelled voxels >= each stored code
    fits = np.flatnonzero(above <= wanted)
    return _code_value(int(fits[0]), len(above)) if len(fits) else 2.0  # 2: not even the top code fits, add none


def write_refined_labels(probs: np.ndarray, labels, threshold: float, out_dir: Path | str,
                         slice_numbers: Sequence[int], progress: bool = True) -> dict:
    """Write `labels OR probs >= threshold` as one compressed 0/255 mask NNNN.tif per slice into `out_dir`
    (which must not exist: written into `<out_dir>.partial` and renamed when complete). Given vessel voxels are
    never removed. Returns voxel counts: given, refined, added."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: refined labels already there; earlier results are never overwritten")
    stage = out_dir.with_name(out_dir.name + ".partial")
    stage.mkdir(parents=True, exist_ok=True)
    counts = {"given": 0, "refined": 0}
    for start, stop in tqdm(chunks(probs.shape[0]), desc=f"refined labels {out_dir.name}", unit="chunk",
                            disable=not progress):
        given = _read_labels(labels, start, stop) > 0
        refined = given | (probability(np.asarray(probs[start:stop])) >= threshold)
        counts["given"] += int(given.sum())
        counts["refined"] += int(refined.sum())
        for z, mask in zip(slice_numbers[start:stop], refined):
            tifffile.imwrite(stage / f"{z:04d}.tif", mask.astype(np.uint8) * np.uint8(255), compression="zlib",
                             metadata=None)
    stage.rename(out_dir)
    return {**counts, "added": counts["refined"] - counts["given"]}


def _read_labels(labels, start: int, stop: int) -> np.ndarray:
    return labels.read_labels(start, stop) if hasattr(labels, "read_labels") else np.asarray(labels[start:stop])


def _code_histogram(probs: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """How many voxels (where `where`) hold each stored code: 256 uint8 or 65536 float16 bit patterns."""
    bins = 256 if probs.dtype == np.uint8 else 65536
    counts = np.zeros(bins, np.int64)
    for start, stop in chunks(probs.shape[0]):
        chunk = np.asarray(probs[start:stop])
        codes = chunk if chunk.dtype == np.uint8 else chunk.astype(np.float16).view(np.uint16)
        counts += np.bincount((codes if where is None else codes[where[start:stop]]).ravel(), minlength=bins)
    return counts


def _code_value(code: int, bins: int) -> float:
    """The probability a stored code stands for: uint8 x 255 (256 bins) or a float16 bit pattern."""
    return code / 255 if bins == 256 else float(np.array(code, np.uint16).view(np.float16))


def binarize(probs: np.ndarray, threshold: float, out_file: Path | str) -> np.memmap:
    """Write `probs >= threshold` as a (Z, H, W) uint8 0/1 `.npy` memmap, chunk by chunk."""
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    masks = (probability(np.asarray(probs[a:b])) >= threshold for a, b in chunks(probs.shape[0]))
    save_slices(out_file, probs.shape, np.uint8, masks)
    return np.load(out_file, mmap_mode="r+")


def remove_small_components(mask: np.ndarray, min_size: int, slab: int = 64, progress: bool = True) -> dict:
    """Zero 26-connected components smaller than `min_size` voxels, in place, one z-slab of labels in memory at a time.

    cc3d labels each slab; components that continue across a slab boundary are merged as a graph (scipy's
    connected_components over the label pairs touching across boundary slices), so sizes are those of whole
    components. A second pass relabels each slab (cc3d is deterministic) and removes the small ones.
    """
    ranges = chunks(mask.shape[0], slab)
    sizes, pairs, offsets = [np.zeros(0, np.int64)], [np.zeros((0, 2), np.int64)], [0]
    previous_last = None
    for a, b in tqdm(ranges, desc="components (pass 1)", unit="slab", disable=not progress):
        labels = cc3d.connected_components(np.asarray(mask[a:b]) > 0, connectivity=26).astype(np.int64)
        count = np.bincount(labels.ravel())
        sizes.append(count[1:])
        if previous_last is not None:
            pairs.append(_touching(previous_last, labels[0], offsets[-2], offsets[-1]))
        previous_last = labels[-1]
        offsets.append(offsets[-1] + len(count) - 1)
    total = offsets[-1]
    size, pairs = np.concatenate(sizes), np.concatenate(pairs)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(total, total))
    components, root = connected_components(graph, directed=False)  # root: whole-component id of each slab-local one
    component_size = np.bincount(root, weights=size, minlength=components).astype(np.int64)
    small = component_size[root] < min_size  # per slab-local component, via its root
    removed_voxels = int(size[small].sum())
    for k, (a, b) in enumerate(tqdm(ranges, desc="components (pass 2)", unit="slab", disable=not progress)):
        local_small = small[offsets[k]:offsets[k + 1]]
        if local_small.any():
            labels = cc3d.connected_components(np.asarray(mask[a:b]) > 0, connectivity=26)
            drop = np.concatenate([[False], local_small])[labels]
            mask[a:b][drop] = 0  # a view: written in place
    return {"components": int(components), "removed_components": int((component_size < min_size).sum()),
            "removed_voxels": removed_voxels, "kept_voxels": int(size.sum()) - removed_voxels}


def segment(probs: np.ndarray, threshold: float, out_file: Path | str, min_component_size: int = 0,
            progress: bool = True) -> tuple[np.memmap, dict]:
    """Binarise a probability volume into a uint8 memmap and drop components below `min_component_size`."""
    mask = binarize(probs, threshold, out_file)
    stats = {"threshold": float(threshold)}
    if min_component_size > 1:
        stats.update(remove_small_components(mask, min_component_size, progress=progress))
        mask.flush()
    vessel = sum(int(np.count_nonzero(mask[a:b])) for a, b in chunks(mask.shape[0]))
    stats["vessel_fraction"] = vessel / mask.size
    return mask, stats


def _touching(last: np.ndarray, first: np.ndarray, offset_last: int, offset_first: int) -> np.ndarray:
    """Pairs of global component ids that touch across a slab boundary (26-connectivity: 9 offsets)."""
    pairs = []
    h, w = last.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            a = last[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
            b = first[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            both = (a > 0) & (b > 0)
            pairs.append(np.stack([a[both] - 1 + offset_last, b[both] - 1 + offset_first], 1))
    return np.unique(np.concatenate(pairs), axis=0)
