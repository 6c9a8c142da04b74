"""From vessel probabilities to masks: thresholds (fixed, tuned on validation, or top fraction) and
removal of small 26-connected components, every step streamed along z in bounded memory.

Tuning walks the validation volume once and feeds every candidate threshold's own streaming surface-Dice
accumulator, so it holds a few slices per threshold whatever the depth.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from lib.metric import SurfaceDice
from lib.volume import probability, save_slices

DEFAULT_GRID = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))  # 19 thresholds
CHUNK = 16


@dataclass(frozen=True)
class ThresholdRule:
    """How to binarise: "fixed" (value = probability), "tune" (on the validation group), "top" (value = fraction)."""

    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, spec: float | str) -> ThresholdRule:
        """0.4 -> fixed; "tune" -> tuned; "top:0.002" -> keep the top 0.2% of voxels per volume."""
        if isinstance(spec, bool) or not isinstance(spec, (int, float, str)):
            raise ValueError(f"threshold must be a number, 'tune' or 'top:<fraction>', got {spec!r}")
        text = str(spec).strip().lower()
        if text == "tune":
            return cls("tune")
        kind, number = ("top", text[4:].strip()) if text.startswith("top:") else ("fixed", text)
        try:
            value = float(number)
        except ValueError:
            expected = "top:<fraction> needs a number, e.g. top:0.002" if kind == "top" else \
                "threshold must be a number, 'tune' or 'top:<fraction>'"
            raise ValueError(f"{expected}, got {spec!r}") from None
        if not 0 < value < 1:  # also refuses nan and inf
            what = "top fraction" if kind == "top" else "a fixed threshold"
            raise ValueError(f"{what} must lie in (0, 1), got {spec!r}")
        return cls(kind, value)


def threshold_curve(probs: np.ndarray, labels, thresholds: Sequence[float] = DEFAULT_GRID,
                    progress: bool = True) -> pd.DataFrame:
    """Surface Dice (and Dice) of `probs >= t` against `labels` for every t, in one streaming pass.

    `labels` is a `data.Group` with labels or a (Z, H, W) array-like; `probs` a (Z, H, W) float16/uint8 array.
    """
    accs = {float(t): SurfaceDice() for t in thresholds}
    depth = probs.shape[0]
    for start in tqdm(range(0, depth, CHUNK), desc="threshold curve", unit="chunk", disable=not progress):
        stop = min(start + CHUNK, depth)
        truth = labels.read_labels(start, stop) if hasattr(labels, "read_labels") else np.asarray(labels[start:stop])
        p = probability(np.asarray(probs[start:stop]))
        for g, q in zip(truth, p):
            for t, acc in accs.items():
                acc.update(g, q >= t)
    return pd.DataFrame([{"threshold": t, "surface_dice": a.score, "dice": a.dice} for t, a in accs.items()])


def best_threshold(curve: pd.DataFrame) -> float:
    """The threshold with the highest surface Dice (the lower one on ties)."""
    return float(curve.sort_values(["surface_dice", "threshold"], ascending=[False, True]).iloc[0]["threshold"])


def top_fraction_threshold(probs: np.ndarray, fraction: float) -> float:
    """The probability above which `fraction` of the volume's voxels lie (2nd place kept the top 0.2%).

    Exact for float16 and uint8 storage: a histogram over every representable value, built slice by slice.
    """
    bins = 256 if probs.dtype == np.uint8 else 65536
    counts = np.zeros(bins, np.int64)
    for start in range(0, probs.shape[0], CHUNK):
        chunk = np.asarray(probs[start:start + CHUNK])
        codes = chunk if chunk.dtype == np.uint8 else chunk.astype(np.float16).view(np.uint16)
        counts += np.bincount(codes.ravel(), minlength=bins)
    # Non-negative float16 values sort like their bit patterns, so the top of the histogram is the top of the data.
    wanted = fraction * probs.size
    above = np.cumsum(counts[::-1])[::-1]  # voxels >= each code
    code = int(np.flatnonzero(above >= wanted)[-1]) if (above >= wanted).any() else 0
    return code / 255 if bins == 256 else float(np.array(code, np.uint16).view(np.float16))


def binarize(probs: np.ndarray, threshold: float, out_file: Path | str) -> np.memmap:
    """Write `probs >= threshold` as a (Z, H, W) uint8 0/1 `.npy` memmap, chunk by chunk."""
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    chunks = (probability(np.asarray(probs[a:a + CHUNK])) >= threshold for a in range(0, probs.shape[0], CHUNK))
    save_slices(out_file, probs.shape, np.uint8, chunks)
    return np.load(out_file, mmap_mode="r+")


def remove_small_components(mask: np.ndarray, min_size: int, slab: int = 64, progress: bool = True) -> dict:
    """Zero 26-connected components smaller than `min_size` voxels, in place, one z-slab at a time.

    cc3d labels each slab; components that continue across a slab boundary are merged with a union-find
    over the boundary slices, so sizes are those of whole components. A second pass relabels each slab
    (cc3d is deterministic) and removes the small ones. Memory: one slab of uint32 labels.
    """
    depth = mask.shape[0]
    ranges = [(a, min(a + slab, depth)) for a in range(0, depth, slab)]
    sizes: list[np.ndarray] = []
    offsets = [0]
    parent_pairs: list[np.ndarray] = []
    previous_last = None
    for a, b in tqdm(ranges, desc="components (pass 1)", unit="slab", disable=not progress):
        labels = cc3d.connected_components(np.asarray(mask[a:b]) > 0, connectivity=26).astype(np.int64)
        count = np.bincount(labels.ravel())
        sizes.append(count[1:])
        if previous_last is not None:
            parent_pairs.append(_touching(previous_last, labels[0], offsets[-2], offsets[-1]))
        previous_last = labels[-1]
        offsets.append(offsets[-1] + len(count) - 1)
    total = offsets[-1]
    size = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    root = _union(total, np.concatenate(parent_pairs) if parent_pairs else np.zeros((0, 2), np.int64))
    component_size = np.bincount(root, weights=size, minlength=total).astype(np.int64)
    small = component_size[root] < min_size  # per slab-local component, via its root
    removed_voxels = int(size[small].sum())
    for k, (a, b) in enumerate(tqdm(ranges, desc="components (pass 2)", unit="slab", disable=not progress)):
        local_small = small[offsets[k]:offsets[k + 1]]
        if not local_small.any():
            continue
        labels = cc3d.connected_components(np.asarray(mask[a:b]) > 0, connectivity=26)
        drop = np.concatenate([[False], local_small])[labels]
        block = np.asarray(mask[a:b]).copy()
        block[drop] = 0
        mask[a:b] = block
    roots = np.unique(root)
    return {"components": int(len(roots)), "removed_components": int((component_size[roots] < min_size).sum()),
            "removed_voxels": removed_voxels, "kept_voxels": int(size.sum()) - removed_voxels}


def segment(probs: np.ndarray, threshold: float, out_file: Path | str, min_component_size: int = 0,
            progress: bool = True) -> tuple[np.memmap, dict]:
    """Binarise a probability volume into a uint8 memmap and drop components below `min_component_size`."""
    mask = binarize(probs, threshold, out_file)
    stats = {"threshold": float(threshold)}
    if min_component_size > 1:
        stats.update(remove_small_components(mask, min_component_size, progress=progress))
        mask.flush()
    vessel = sum(int(np.count_nonzero(mask[a:a + CHUNK])) for a in range(0, mask.shape[0], CHUNK))
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


def _union(n: int, pairs: np.ndarray) -> np.ndarray:
    """Root id of each of `n` ids after merging `pairs` (union-find with path halving)."""
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs.tolist():
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    while True:  # flatten: every id points at its root
        grand = parent[parent]
        if (grand == parent).all():
            return parent
        parent = grand
