"""The slice browser's view model without widgets, and on the real layout's quirks: kidney_3_dense (labels only,
on a slice range of kidney_3_sparse), a test kidney without labels, a prediction folder with a missing slice."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from lib import data
from lib.explore.browser import SliceBrowser

PROJECT = Path(__file__).resolve().parent.parent


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_view_model_needs_no_widgets() -> None:
    code = "import sys, lib.explore.browser; assert 'ipywidgets' not in sys.modules, 'ipywidgets imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT)


def test_view_model_state_renders_and_counts_reads(synthetic_tiny: Path) -> None:
    groups = data.discover(synthetic_tiny)
    g = groups["kidney_1_dense"]
    model = SliceBrowser(groups, group="kidney_1_dense", point=(3, 20, 30))
    assert (model.axis, model.index, model.index_name, model.index_max) == ("xy", 3, "z", g.shape[0] - 1)
    np.testing.assert_array_equal(model.displayed["image"], tifffile.imread(g.image_files[3]))
    np.testing.assert_array_equal(model.displayed["label"], tifffile.imread(g.label_files[3]) > 0)
    assert model.reads == 2 and "slices read so far: 2" in model.info()

    model.set_index(10_000)  # clipped to the last slice
    assert model.index == g.shape[0] - 1 and "slice 0019" in model.ax.get_title()
    model.set_index(9)
    with_labels = model.png()
    model.set_labels(False)
    without = pixels(model.png())
    assert model.reads == 6 and not model.label_artist.get_visible()
    changed = np.abs(pixels(with_labels) - without).max(-1) > 0
    assert 0 < changed.mean() < 0.2  # the labelled vessels (and the legend) changed, not the whole picture
    model.set_window(0, 1)  # everything above 1 is white
    assert (pixels(model.png()) > 250).mean() > 0.5

    model.set_axis("yz")
    assert (model.index_name, model.index, model.index_max) == ("x", 30, g.width - 1)
    assert model.displayed["image"].shape == (g.shape[0], g.height)
    with pytest.raises(ValueError, match="axis must be one of"):
        model.set_axis("zz")
    with pytest.raises(KeyError, match="no such group"):
        model.set_group("kidney_9")
    model.set_group("kidney_2")
    assert model.axis == "yz" and model.cursor == [n // 2 for n in groups["kidney_2"].shape]


def test_kidney_3_dense_shows_sparse_images_with_dense_labels(mini_root: Path) -> None:
    groups = data.discover(mini_root)
    images = np.load(mini_root.parent / "k3_images.npy")
    dense = np.stack([tifffile.imread(mini_root / "train/kidney_3_dense/labels" / f"{n:04d}.tif") for n in range(2, 6)])
    model = SliceBrowser(groups, group="kidney_3_dense", point=(1, 2, 3))
    assert groups["kidney_3_dense"].shape == (4, 5, 11)
    np.testing.assert_array_equal(model.displayed["image"], images[3])  # position 1 is slice 0003 of kidney_3_sparse
    np.testing.assert_array_equal(model.displayed["label"], dense[1] > 0)
    assert "slice 0003" in model.ax.get_title()
    model.set_axis("xz")
    np.testing.assert_array_equal(model.displayed["image"], images[2:6, 2, :])
    np.testing.assert_array_equal(model.displayed["label"], dense[:, 2, :] > 0)


def test_test_kidney_without_labels(mini_root: Path) -> None:
    groups = data.discover(mini_root)
    model = SliceBrowser(groups, group="kidney_5")
    assert model.displayed["label"] is None and not model.label_artist.get_visible()
    assert "kidney_5 has no labels" in model.ax.get_title() and model.reads == 1  # image only
    model.set_labels(True)
    model.set_axis("xz")  # a 3-slice kidney: every slice, one image read each
    assert model.displayed["image"].shape == (3, 6) and model.reads == 1 + 3
    assert model.static_figure() is not None


def test_prediction_folder_with_a_missing_slice(mini_root: Path, tmp_path: Path) -> None:
    groups = data.discover(mini_root)
    labels = np.load(mini_root.parent / "k1_labels.npy")
    pred_dir = tmp_path / "pred"
    (pred_dir / "kidney_1_dense").mkdir(parents=True)
    for z, mask in enumerate(labels):
        if z != 3:  # slice 0003 missing
            tifffile.imwrite(pred_dir / "kidney_1_dense" / f"{z:04d}.tif", mask)
    model = SliceBrowser(groups, pred_dir, group="kidney_1_dense", point=(2, 4, 3))
    assert model.show_prediction and model.prediction_artist.get_visible()
    np.testing.assert_array_equal(model.displayed["prediction"], labels[2] > 0)

    model.set_index(3)  # no predicted slice 0003: shown as missing, the image and labels still shown
    assert model.displayed["prediction"] is None and not model.prediction_artist.get_visible()
    assert "prediction missing for slice 0003" in model.ax.get_title()
    np.testing.assert_array_equal(model.displayed["label"], labels[3] > 0)
    model.set_prediction(False)
    assert "prediction missing" not in model.ax.get_title()
    model.set_prediction(True)

    model.set_axis("xz")  # the plane is built from every slice: the missing one is an empty row
    expected = labels[:, 4, :] > 0
    expected[3] = False
    np.testing.assert_array_equal(model.displayed["prediction"], expected)
    assert "prediction missing for 1 of 6 slices" in model.ax.get_title()
    assert model.static_figure() is not None and model.png()


def test_prediction_switched_on_later_is_read_once(mini_root: Path) -> None:
    groups = data.discover(mini_root)
    labels = np.load(mini_root.parent / "k1_labels.npy")
    calls: list[tuple[str, str, int]] = []

    def predict(name: str, axis: str, index: int) -> np.ndarray | None:
        calls.append((name, axis, index))
        return labels[index] > 0 if axis == "xy" and name == "kidney_1_dense" else None

    model = SliceBrowser(groups, predict, group="kidney_1_dense", point=(4, 0, 0))
    model.set_prediction(False)
    model.set_index(5)
    assert calls == [("kidney_1_dense", "xy", 4)]  # hidden: not asked for slice 5
    model.set_prediction(True)
    model.set_alpha(0.9)
    assert calls[1:] == [("kidney_1_dense", "xy", 5)]
    np.testing.assert_array_equal(model.displayed["prediction"], labels[5] > 0)
    model.set_group("kidney_5")  # a group the prediction knows nothing about
    assert "prediction missing for slice 0001" in model.ax.get_title()
