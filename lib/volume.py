"""Volumes on disk: `.npy` files written slice by slice and read back as memmaps, so a whole kidney never has
to sit in memory. Probabilities are stored as float16 (or uint8 x 255) to halve (quarter) the disk."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

CHUNK = 16  # slices read, written or scored together when a volume is streamed along z


def chunks(depth: int, size: int = CHUNK) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `size` slices covering `depth` slices in z order."""
    return [(start, min(start + size, depth)) for start in range(0, depth, size)]


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of the runs of True in a 1D bool array (e.g. the slices kept, or the empty ones)."""
    edges = np.flatnonzero(np.diff(np.pad(np.asarray(flags, np.int8), 1)))  # starts and stops alternate
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def save_slices(path: Path | str, shape: tuple[int, ...], dtype: str | np.dtype, chunks: Iterable[np.ndarray]) -> None:
    """Write a `.npy` file from slices or slabs in order, through a file handle rather than a memmap, so the
    written pages go to the page cache instead of staying in this process's memory."""
    dtype = np.dtype(dtype)
    written, expected = 0, int(np.prod(shape))
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": tuple(shape)})
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
            written += np.size(chunk)
    if written != expected:
        raise ValueError(f"{path}: wrote {written} values for shape {tuple(shape)} ({expected} expected)")


def probability(stored: np.ndarray) -> np.ndarray:
    """Probabilities as float32 in [0, 1] from a stored float16 or uint8 (x255) array or slice."""
    return stored.astype(np.float32) / 255 if stored.dtype == np.uint8 else stored.astype(np.float32)
