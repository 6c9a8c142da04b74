"""Run-length encoding exactly as the competition uses it.

A (H, W) mask is flattened in row-major order and written as "start length" pairs with 1-indexed starts;
an empty mask is "1 0". Decoding also accepts the empty string, NaN (pandas' reading of an empty cell) and
trailing spaces, as found in the hosts' solution files.
"""
from __future__ import annotations

import math

import numpy as np

from lib import volume

EMPTY = "1 0"


class RLEError(ValueError):
    """A malformed run-length string."""


def encode(mask: np.ndarray) -> str:
    """Encode a 2D mask (any dtype; nonzero = foreground) as a Kaggle RLE string."""
    if mask.ndim != 2:
        raise ValueError(f"RLE encodes 2D slices, got an array of shape {mask.shape}")
    spans = volume.runs(mask.reshape(-1) != 0)
    return " ".join(f"{start + 1} {stop - start}" for start, stop in spans) or EMPTY


def runs(rle: str | float | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate an RLE string into 0-indexed (starts, lengths) for a flat mask of `size` pixels."""
    if rle is None or (isinstance(rle, float) and math.isnan(rle)):
        rle = ""
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}")
    shown = repr(rle if len(rle) <= 60 else rle[:60] + "...")  # in the messages
    tokens = rle.split()
    if len(tokens) % 2:
        raise RLEError(f"RLE has an odd number of values ({len(tokens)}): {shown}")
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError:
        raise RLEError(f"RLE holds a value that is not an integer: {shown}") from None
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any() or (lengths < 0).any():
        raise RLEError(f"RLE has a start below 1 or a negative length: {shown}")
    keep = lengths > 0  # "1 0" and other empty runs carry nothing
    starts, lengths = starts[keep], lengths[keep]
    ends = starts + lengths
    if (starts[1:] < ends[:-1]).any():
        raise RLEError(f"RLE runs overlap or are out of order: {shown}")
    if ends.size and ends[-1] > size:
        raise RLEError(f"RLE run ends at pixel {int(ends[-1])}, past the slice's {size} pixels: {shown}")
    return starts, lengths


def decode(rle: str | float | None, shape: tuple[int, int]) -> np.ndarray:
    """Decode a Kaggle RLE string into a uint8 mask of `shape` with values 0 and 1."""
    size = int(shape[0]) * int(shape[1])
    starts, lengths = runs(rle, size)
    # Mark +1 at each run start and -1 at each end, then a cumulative sum fills the runs.
    delta = np.zeros(size + 1, dtype=np.int8)
    delta[starts] = 1
    delta[starts + lengths] -= 1  # ends are unique because runs neither overlap nor are empty
    return np.cumsum(delta[:-1], dtype=np.int8).astype(np.uint8).reshape(shape)
