"""The data layer: discovery, lazy reads, kidney_3_dense, labels from RLE, and one error per bad input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import write_group

from lib import data
from lib.data import DataError


def test_discovers_groups_shapes_and_labels(mini_root: Path) -> None:
    groups = data.discover(mini_root)
    assert list(groups) == ["kidney_1_dense", "kidney_3_dense", "kidney_3_sparse", "kidney_5"]
    k1, k3d, k5 = groups["kidney_1_dense"], groups["kidney_3_dense"], groups["kidney_5"]
    assert k1.shape == (6, 9, 7) and k1.dtype == np.uint16 and k1.label_kind == "dense" and k1.voxel_um == 50.0
    assert groups["kidney_3_sparse"].label_kind == "sparse"
    assert k5.split == "test" and not k5.has_labels and k5.label_kind is None and k5.voxel_um == 50.28
    assert k3d.slices == (2, 3, 4, 5) and k3d.slice_id(0) == "kidney_3_dense_0002"


def test_reads_z_ranges_in_stored_dtype(mini_root: Path) -> None:
    k1 = data.open_group("kidney_1_dense", mini_root)
    images, labels = np.load(mini_root.parent / "k1_images.npy"), np.load(mini_root.parent / "k1_labels.npy")
    np.testing.assert_array_equal(k1.read_images(2, 5), images[2:5])
    np.testing.assert_array_equal(k1.read_labels(), labels)
    assert k1.read_images(1, 2).dtype == np.uint16 and k1.read_labels(0, 1).dtype == np.uint8


def test_kidney_3_dense_takes_images_from_kidney_3_sparse(mini_root: Path) -> None:
    k3d = data.open_group("kidney_3_dense", mini_root)
    k3_images = np.load(mini_root.parent / "k3_images.npy")
    np.testing.assert_array_equal(k3d.read_images(), k3_images[2:6])
    assert all("kidney_3_sparse" in str(p) for p in k3d.image_files)


def test_labels_from_train_rles_when_no_label_tiffs(mini_root: Path) -> None:
    expected = data.open_group("kidney_1_dense", mini_root).read_labels()
    shutil.rmtree(mini_root / "train" / "kidney_1_dense" / "labels")
    k1 = data.open_group("kidney_1_dense", mini_root)
    assert k1.label_files is None and k1.has_labels
    np.testing.assert_array_equal(k1.read_labels(1, 4), expected[1:4])


def test_summary_table(mini_root: Path) -> None:
    table = data.summary(data.discover(mini_root))
    assert table.loc["kidney_1_dense", "slices"] == 6
    assert table.loc["kidney_5", "labels"] == "none"
    assert table.loc["kidney_1_dense", "float32_GB"] == pytest.approx(6 * 9 * 7 * 4 / 1e9)


def _image(root: Path, group: str, n: int) -> Path:
    return root / "train" / group / "images" / f"{n:04d}.tif"


def test_gap_in_numbering(mini_root: Path) -> None:
    _image(mini_root, "kidney_1_dense", 3).unlink()
    with pytest.raises(DataError, match=r"kidney_1_dense/images: slice 0003.tif missing"):
        data.open_group("kidney_1_dense", mini_root)


def test_slice_of_other_shape(mini_root: Path) -> None:
    tifffile.imwrite(_image(mini_root, "kidney_1_dense", 4), np.zeros((9, 8), np.uint16))
    with pytest.raises(DataError, match=r"0004.tif: slice shape \(9, 8\) differs"):
        data.open_group("kidney_1_dense", mini_root)
    group = data.open_group("kidney_1_dense", mini_root, validate=False)  # caught again when read
    with pytest.raises(DataError, match=r"0004.tif: slice shape"):
        group.read_images()


def test_multichannel_tiff(mini_root: Path) -> None:
    tifffile.imwrite(_image(mini_root, "kidney_1_dense", 2), np.zeros((9, 7, 3), np.uint16), photometric="rgb")
    with pytest.raises(DataError, match=r"0002.tif: expected one 2D grayscale slice"):
        data.open_group("kidney_1_dense", mini_root)


def test_float_tiff(mini_root: Path) -> None:
    tifffile.imwrite(_image(mini_root, "kidney_1_dense", 1), np.zeros((9, 7), np.float32))
    with pytest.raises(DataError, match=r"0001.tif: expected an integer image"):
        data.open_group("kidney_1_dense", mini_root)


def test_truncated_tiff(mini_root: Path) -> None:
    path = _image(mini_root, "kidney_1_dense", 5)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"0005.tif: truncated TIFF"):
        data.open_group("kidney_1_dense", mini_root)


def test_garbage_tiff(mini_root: Path) -> None:
    _image(mini_root, "kidney_1_dense", 0).write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match=r"0000.tif: unreadable TIFF"):
        data.open_group("kidney_1_dense", mini_root)


def test_label_count_mismatch(mini_root: Path) -> None:
    (mini_root / "train" / "kidney_1_dense" / "labels" / "0005.tif").unlink()
    with pytest.raises(DataError, match=r"kidney_1_dense/labels: 5 label slices \(0000..0004\) do not match the 6"):
        data.open_group("kidney_1_dense", mini_root)


def test_label_of_wrong_dtype(mini_root: Path) -> None:
    tifffile.imwrite(mini_root / "train" / "kidney_1_dense" / "labels" / "0001.tif", np.zeros((9, 7), np.uint16))
    with pytest.raises(DataError, match=r"labels/0001.tif: label dtype uint16"):
        data.open_group("kidney_1_dense", mini_root)


def test_group_without_images(mini_root: Path) -> None:
    (mini_root / "test" / "kidney_7").mkdir()
    with pytest.raises(DataError, match=r"kidney_7: group folder has no images/ folder"):
        data.discover(mini_root)
    (mini_root / "test" / "kidney_7" / "images").mkdir()
    with pytest.raises(DataError, match=r"kidney_7/images: group folder has no image slices"):
        data.discover(mini_root)


def test_missing_root_and_group(tmp_path: Path, mini_root: Path) -> None:
    with pytest.raises(DataError, match="competition root not found"):
        data.discover(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no group named 'kidney_9'"):
        data.open_group("kidney_9", mini_root)


def test_rle_rows_missing_for_some_slices(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write_group(root, "train", "kidney_2", np.zeros((3, 4, 4), np.uint16))
    (root / "train_rles.csv").write_text("id,rle\nkidney_2_0000,1 0\nkidney_2_0001,1 0\n")
    with pytest.raises(DataError, match=r"train_rles.csv: kidney_2 has 2 RLE rows for 3 image slices"):
        data.discover(root)


def test_default_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from lib import paths

    monkeypatch.delenv("SENNET_DATA_DIR", raising=False)
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path / "kaggle" / "input"))
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path / "out"))
    assert paths.default_data_dir() == tmp_path / "out" / "data" / "synthetic"
    legacy = tmp_path / "kaggle" / "input" / "blood-vessel-segmentation"
    legacy.mkdir(parents=True)
    assert paths.default_data_dir() == tmp_path / "out" / "data" / "synthetic"  # an empty folder is no competition
    (legacy / "test").mkdir()
    (legacy / "sample_submission.csv").write_text("id,rle\n")
    assert paths.default_data_dir() == legacy
