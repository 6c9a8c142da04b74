"""Shared fixtures: small hand-made competition roots (independent of the synthetic generator)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from lib import rle


def write_group(root: Path, split: str, name: str, images: np.ndarray | None, labels: np.ndarray | None = None,
                first: int = 0) -> None:
    """Write a group's slices as the competition does: images/NNNN.tif (uint16), labels/NNNN.tif (0/255)."""
    for kind, vol in (("images", images), ("labels", labels)):
        if vol is None:
            continue
        folder = root / split / name / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i, sl in enumerate(vol):
            tifffile.imwrite(folder / f"{first + i:04d}.tif", sl)


def random_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 image volume and a 0/255 uint8 label volume of `shape`."""
    labels = (rng.random(shape) > 0.9).astype(np.uint8) * 255
    images = rng.integers(0, 60000, shape, dtype=np.uint16)
    return images, labels


@pytest.fixture
def mini_root(tmp_path: Path) -> Path:
    """A tiny competition root: two dense/sparse train groups, a labels-only dense range, two test kidneys."""
    rng = np.random.default_rng(0)
    root = tmp_path / "root"
    k1 = random_volume(rng, (6, 9, 7))
    k3 = random_volume(rng, (8, 5, 11))
    write_group(root, "train", "kidney_1_dense", *k1)
    write_group(root, "train", "kidney_3_sparse", *k3)
    write_group(root, "train", "kidney_3_dense", None, k3[1][2:6], first=2)
    write_group(root, "test", "kidney_5", random_volume(rng, (3, 4, 6))[0])
    rows = [(f"kidney_1_dense_{i:04d}", rle.encode(s)) for i, s in enumerate(k1[1])]
    rows += [(f"kidney_3_sparse_{i:04d}", rle.encode(s)) for i, s in enumerate(k3[1])]
    rows += [(f"kidney_3_dense_{i + 2:04d}", rle.encode(s)) for i, s in enumerate(k3[1][2:6])]
    pd.DataFrame(rows, columns=["id", "rle"]).to_csv(root / "train_rles.csv", index=False)
    np.save(tmp_path / "k1_images.npy", k1[0])
    np.save(tmp_path / "k1_labels.npy", k1[1])
    np.save(tmp_path / "k3_images.npy", k3[0])
    return root


@pytest.fixture(scope="session")
def synthetic_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic `tiny` competition root, generated once per test session (read-only for tests)."""
    from lib.dev import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("synthetic") / "tiny", preset="tiny", seed=0, progress=False)
