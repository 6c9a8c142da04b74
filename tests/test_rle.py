"""RLE: the Kaggle convention exactly, round trips on odd shapes, and clear errors on malformed strings."""
from __future__ import annotations

import numpy as np
import pytest

from lib import rle


def test_known_strings() -> None:
    mask = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    assert rle.encode(mask) == "2 3"  # row-major, 1-indexed: pixels 2, 3, 4
    assert rle.encode(np.array([[1, 0], [0, 1]])) == "1 1 4 1"
    assert rle.encode(np.zeros((3, 5))) == "1 0"
    assert rle.encode(np.full((2, 2), 255, np.uint8)) == "1 4"


@pytest.mark.parametrize("text", ["1 0", "", "   ", "1 0 ", float("nan"), None])
def test_empty_forms_decode_to_empty(text) -> None:
    assert rle.decode(text, (4, 3)).sum() == 0


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (13, 1), (7, 5), (31, 64), (129, 3)])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.5, 0.98, 1.0])
def test_round_trip_random_masks(shape: tuple[int, int], density: float) -> None:
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    mask = (rng.random(shape) < density).astype(np.uint8)
    decoded = rle.decode(rle.encode(mask), shape)
    assert decoded.dtype == np.uint8 and decoded.shape == shape
    np.testing.assert_array_equal(decoded, mask)


def test_trailing_spaces_and_touching_runs() -> None:
    np.testing.assert_array_equal(rle.decode("1 2 3 1  ", (1, 4)), [[1, 1, 1, 0]])


@pytest.mark.parametrize("text, problem", [
    ("1 2 5", "odd number"),
    ("1 x", "not an integer"),
    ("0 3", "start below 1"),
    ("2 -1", "negative length"),
    ("1 5 3 2", "overlap"),
    ("7 1 2 1", "out of order"),
    ("11 3", "past the slice"),
])
def test_malformed_strings(text: str, problem: str) -> None:
    with pytest.raises(rle.RLEError, match=problem):
        rle.decode(text, (3, 4))


def test_encode_rejects_3d() -> None:
    with pytest.raises(ValueError, match="2D"):
        rle.encode(np.zeros((2, 2, 2)))
