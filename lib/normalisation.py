"""Intensity normalisation: every kidney clipped to its own 0.5/99.5 percentiles and z-scored ("kidney"), or by the
training set's statistics ("dataset", nnU-Net's CTNormalization, which can clip a test kidney to one value: the real
kidneys' intensities barely overlap, docs/normalisation.md). The scheme is recorded in the plans (`PLANS_KEY`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from lib.volume import chunks

SCHEMES = ("kidney", "dataset")
PERCENTILES = (0.5, 99.5)  # as nnU-Net's CTNormalization clips
PLANS_KEY = "sennet_normalisation"  # plans.json: {"scheme": ..., "percentiles": [...]}
_CACHE: dict[tuple, dict] = {}  # statistics of kidneys read from files, by file identity


class NoContrastError(ValueError):
    """A kidney whose voxels leave nothing to segment once normalised (one value, or sd 0 after clipping)."""


class Volume(Protocol):
    """What the statistics read: a `data.Group` or an in-memory `predictor.ArrayGroup`."""

    name: str

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def read_images(self, start: int = 0, stop: int | None = None) -> np.ndarray: ...


def check_scheme(scheme: str) -> str:
    """`scheme` when it is one of SCHEMES, else a one-line ValueError."""
    if scheme not in SCHEMES:
        raise ValueError(f"normalisation must be one of {', '.join(map(repr, SCHEMES))}, got {scheme!r}")
    return scheme


def scheme_of(plans: dict) -> str:
    """The scheme a model's plans record; plans from before the record (and nnU-Net's own) are "dataset"."""
    return plans.get(PLANS_KEY, {}).get("scheme", "dataset")


NNUNET_SCHEMES = {"kidney": "NoNormalization", "dataset": "CTNormalization"}  # what nnU-Net's preprocessing applies


def plans_record(scheme: str) -> dict:
    """What the plans record for `scheme` under `PLANS_KEY`."""
    return {"scheme": check_scheme(scheme), "percentiles": list(PERCENTILES)}


def statistics_from_histogram(counts: np.ndarray) -> dict:
    """Clip bounds (np.percentile's linear rule, exactly), and the mean and sd of the clipped values, of the values
    0..len(counts)-1 occurring `counts` times."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        raise ValueError("no voxels")
    cumulative = np.cumsum(counts)

    def percentile(q: float) -> float:
        position = q / 100 * (n - 1)
        below, frac = int(np.floor(position)), position - np.floor(position)
        lo, hi = (int(np.searchsorted(cumulative, k, side="right")) for k in (below, min(below + 1, n - 1)))
        return lo + frac * (hi - lo)

    low, high = (percentile(q) for q in PERCENTILES)
    clipped = np.clip(np.arange(len(counts), dtype=np.float64), low, high)  # every value 0..len(counts)-1
    mean = float((counts * clipped).sum() / n)
    std = float(np.sqrt((counts * (clipped - mean) ** 2).sum() / n))
    present = np.flatnonzero(counts)
    return {"percentile_00_5": low, "percentile_99_5": high, "mean": mean, "std": std,
            "min": float(present[0]), "max": float(present[-1]), "voxels": n}


def _statistics_of_values(values: np.ndarray) -> dict:
    low, high = (float(v) for v in np.percentile(values, PERCENTILES))
    clipped = np.clip(values.astype(np.float64), low, high)
    return {"percentile_00_5": low, "percentile_99_5": high, "mean": float(clipped.mean()),
            "std": float(clipped.std()), "min": float(values.min()), "max": float(values.max()),
            "voxels": int(values.size)}


def _cache_key(volume: Volume) -> tuple | None:
    files = getattr(volume, "image_files", None)
    if not files:
        return None
    ends = (files[0], files[-1])
    return (volume.name, volume.shape, *(str(f) for f in ends), *(f.stat().st_mtime_ns for f in ends))


def kidney_statistics(volume: Volume, progress: bool = False) -> dict:
    """The "kidney" rule's statistics of a whole kidney, exact: a histogram of its integer voxels in one streaming
    pass (an in-memory float volume: computed directly). Kidneys read from files are cached by file identity."""
    key = _cache_key(volume)
    if key is not None and key in _CACHE:
        return _CACHE[key]
    first = volume.read_images(0, 1)
    if first.dtype.kind not in "ui" or first.dtype.itemsize > 2:
        stats = _statistics_of_values(np.asarray(volume.read_images()))
    else:
        counts = np.zeros(2 ** (8 * first.dtype.itemsize), dtype=np.int64)
        with tqdm(total=volume.shape[0], desc=f"{volume.name} statistics", unit="slice", disable=not progress) as bar:
            for start, stop in chunks(volume.shape[0]):
                counts += np.bincount(volume.read_images(start, stop).ravel(), minlength=len(counts))
                bar.update(stop - start)
        stats = statistics_from_histogram(counts)
    if key is not None:
        if len(_CACHE) > 32:
            _CACHE.clear()
        _CACHE[key] = stats
    return stats


def check_contrast(name: str, stats: dict, window: dict | None = None) -> None:
    """NoContrastError naming the kidney when its voxels are one value, or leave sd 0 once clipped to its own
    percentiles or to `window` (a "dataset" model's training percentiles)."""
    if stats["percentile_99_5"] <= stats["percentile_00_5"] or stats["std"] == 0:
        raise NoContrastError(f"{name}: no contrast: its voxels are {stats['percentile_00_5']:g} after the "
                              f"{PERCENTILES[0]}-{PERCENTILES[1]} percentile clip (min {stats['min']:g}, max "
                              f"{stats['max']:g}); refusing to predict it")
    if window is not None:
        low, high = window["percentile_00_5"], window["percentile_99_5"]
        if stats["min"] >= high or stats["max"] <= low:
            raise NoContrastError(f"{name}: no contrast under the model's dataset normalisation: every voxel "
                                  f"({stats['min']:g}-{stats['max']:g}) lies outside its window {low:g}-{high:g}, "
                                  "so all clip to one value; refusing to predict it (train with normalisation="
                                  "\"kidney\")")


def check_kidneys(volumes: Sequence[Volume], windows: Sequence[dict | None] = (None,), progress: bool = False
                  ) -> dict[str, dict]:
    """Every kidney's statistics, each checked for contrast (`check_contrast`) under every model's window, before
    any prediction; {name: statistics}."""
    found = {}
    for volume in volumes:
        found[volume.name] = kidney_statistics(volume, progress)
        for window in windows:
            check_contrast(volume.name, found[volume.name], window)
    return found


def normalize(image: np.ndarray, intensity: dict | None) -> np.ndarray:
    """Clip to the statistics' 0.5/99.5 percentiles, z-score with their mean and sd (nnU-Net's CTNormalization
    form, whichever scheme gave the statistics), in float32."""
    if intensity is None:
        raise ValueError("this model normalises each kidney by its own statistics: bind it to the kidney first "
                         "(Predictor.for_kidney)")
    out = np.clip(image.astype(np.float32), intensity["percentile_00_5"], intensity["percentile_99_5"])
    out -= np.float32(intensity["mean"])
    out /= np.float32(max(intensity["std"], 1e-8))
    return out
