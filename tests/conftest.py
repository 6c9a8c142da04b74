"""Shared fixtures: small hand-made competition roots (independent of the synthetic generator) and the
synthetic tiny root. Builders that tests call directly live in helpers.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import random_volume, write_group

from lib import rle


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
    from tools import synthetic

    return synthetic.generate(tmp_path_factory.mktemp("synthetic") / "tiny", preset="tiny", seed=0, progress=False)
