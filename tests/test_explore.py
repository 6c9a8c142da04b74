"""Notebook 01 and lib/explore: batch views, the slice browser (reading cost, widget callbacks), a papermill run."""
from __future__ import annotations

from pathlib import Path

import matplotlib.image
import nbformat
import numpy as np
import pytest
import tifffile
from helpers import write_group

from lib import data, notebook
from lib.explore import figures
from lib.explore.browser import SliceBrowser, prediction_source
from lib.explore.widgets import BrowserWidgets

PROJECT = Path(__file__).resolve().parent.parent
NOTEBOOK = PROJECT / "notebooks" / "01_explore.ipynb"


@pytest.fixture
def volume_root(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 40-slice labelled group with known contents (each slice's image encodes its z) and a test group."""
    rng = np.random.default_rng(1)
    z, h, w = 40, 12, 10
    images = rng.integers(100, 60000, (z, h, w), dtype=np.uint16)
    images[:, 0, 0] = np.arange(z)  # slice identity in a corner pixel
    labels = np.zeros((z, h, w), np.uint8)
    labels[5:30, 3:7, 2:5] = 255
    labels[12, 9, 8] = 255
    write_group(tmp_path, "train", "kidney_1_dense", images, labels)
    write_group(tmp_path, "test", "kidney_5", rng.integers(0, 9000, (7, 9, 11), dtype=np.uint16))
    return tmp_path, images, labels


class CountingReads:
    """Counts TIFF reads through lib.data.read_slice (what every explore reader goes through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[Path] = []
        original = data.read_slice

        def counted(path, *args, **kwargs):
            self.paths.append(Path(path))
            return original(path, *args, **kwargs)

        monkeypatch.setattr(data, "read_slice", counted)

    @property
    def n(self) -> int:
        return len(self.paths)


# ----------------------------------------------------------------------------------------------------------
# Batch functions
# ----------------------------------------------------------------------------------------------------------


def test_sampling_and_plane_positions_respect_caps() -> None:
    assert figures.sample_positions(2279, 32).tolist()[:2] == [0, 73] and len(figures.sample_positions(2279, 32)) == 32
    assert figures.sample_positions(5, 32).tolist() == [0, 1, 2, 3, 4]
    for n, cap in [(2279, 128), (20, 128), (40, 8), (41, 8), (1, 5)]:
        pos, step = figures.plane_positions(n, cap)
        assert len(pos) <= cap and pos.min() >= 0 and pos.max() < n
        assert np.all(np.diff(pos) == step)
    assert figures.plane_positions(2279, 128)[1] == 18


def test_intensity_stats_match_numpy(volume_root) -> None:
    root, images, labels = volume_root
    g = data.open_group("kidney_1_dense", root)
    s = figures.intensity_stats(g, max_slices=8)
    sampled = images[s.positions]
    assert len(s.positions) == 8 and s.counts.sum() == sampled.size
    for q in (0.5, 50, 99.5):
        assert abs(s.percentile(q) - np.percentile(sampled, q, method="inverted_cdf")) <= 1
    vessel = sampled[labels[s.positions] > 0]
    assert s.vessel_counts.sum() == vessel.size
    assert s.percentile(50, "vessel") == np.percentile(vessel, 50, method="inverted_cdf")
    table = figures.percentile_table({"kidney_1_dense": s})
    assert {"p0.5", "p50", "p99.5", "vessel_p50", "other_p50", "vessel_%"} <= set(table.columns)


def test_scan_labels_streams_fraction_projections_centroid(volume_root) -> None:
    root, _, labels = volume_root
    g = data.open_group("kidney_1_dense", root)
    mask = labels > 0
    full = figures.scan_labels(g)
    np.testing.assert_allclose(full.fraction, mask.mean(axis=(1, 2)))
    np.testing.assert_array_equal(full.along_z, mask.sum(0))
    np.testing.assert_array_equal(full.along_y, mask.sum(1))
    np.testing.assert_array_equal(full.along_x, mask.sum(2))
    assert full.centroid == tuple(int(round(c)) for c in np.argwhere(mask).mean(0))
    coarse = figures.scan_labels(g, downsample=3)  # 40 x 12 x 10 -> max-pooled 14 x 4 x 4
    pooled = np.zeros((42, 12, 12), bool)
    pooled[:40, :12, :10] = mask
    pooled = pooled.reshape(14, 3, 4, 3, 4, 3).any(axis=(1, 3, 5))
    np.testing.assert_array_equal(coarse.along_z, pooled.sum(0))
    np.testing.assert_array_equal(coarse.along_y > 0, pooled.any(1))  # the MIP along y
    np.testing.assert_allclose(coarse.fraction, full.fraction)


def test_orthogonal_views_read_subsampled_planes(volume_root, monkeypatch) -> None:
    root, images, labels = volume_root
    g = data.open_group("kidney_1_dense", root)
    reads = CountingReads(monkeypatch)
    v = figures.orthogonal_views(g, (12, 4, 3), max_slices=8)
    assert len(v.z_positions) <= 8 and reads.n == 2 * (len(v.z_positions) + 1)  # images + labels, + the xy slice
    np.testing.assert_array_equal(v.images["xy"], images[12])
    np.testing.assert_array_equal(v.images["xz"], images[v.z_positions, 4, :])
    np.testing.assert_array_equal(v.labels["yz"], labels[v.z_positions, :, 3] > 0)
    fig = figures.plot_orthogonal(v, (0, 60000))
    assert "every 5th slice" in fig.get_suptitle()


def test_orthogonal_views_carry_a_prediction(volume_root) -> None:
    root, _, labels = volume_root
    g = data.open_group("kidney_1_dense", root)
    prediction = np.zeros(g.shape, np.uint8)
    prediction[10:20, 4:6, 3] = 1
    v = figures.orthogonal_views(g, (12, 4, 3), max_slices=8, prediction=prediction)
    np.testing.assert_array_equal(v.predictions["xy"], prediction[12] > 0)
    np.testing.assert_array_equal(v.predictions["yz"], prediction[v.z_positions, :, 3] > 0)
    fig = figures.plot_orthogonal(v)
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert {"labels only (missed)", "prediction only", "both"} <= set(legend)


def test_prediction_sources(volume_root, tmp_path) -> None:
    root, _, labels = volume_root
    groups = data.discover(root)
    pred_dir = tmp_path / "pred"
    write_group(pred_dir, "", "kidney_1_dense", None, labels)  # <dir>/kidney_1_dense/labels/NNNN.tif
    from_folder = prediction_source(pred_dir, groups)
    np.testing.assert_array_equal(from_folder("kidney_1_dense", "xy", 12), labels[12] > 0)
    assert from_folder("kidney_1_dense", "xz", 3) is None  # planes: the browser builds them from xy slices
    from_arrays = prediction_source({"kidney_1_dense": labels}, groups)
    np.testing.assert_array_equal(from_arrays("kidney_1_dense", "yz", 3), labels[:, :, 3] > 0)


def test_ensure_data_refuses_to_invent_data(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="competition root not found"):
        notebook.ensure_data(tmp_path / "missing")
    assert notebook.ensure_data(tmp_path) == tmp_path
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path / "outputs"))
    with pytest.raises(FileNotFoundError, match="make data"):  # the synthetic default is named, not generated here
        notebook.ensure_data(tmp_path / "outputs" / "data" / "synthetic")
    assert not (tmp_path / "outputs").exists()


def test_live_frontend_is_false_outside_a_kernel(monkeypatch) -> None:
    monkeypatch.delenv("SENNET_INTERACTIVE", raising=False)
    assert notebook.live_frontend() is False
    monkeypatch.setenv("SENNET_INTERACTIVE", "1")
    assert notebook.live_frontend() is True


# ----------------------------------------------------------------------------------------------------------
# Slice browser: callbacks without a browser, reading cost
# ----------------------------------------------------------------------------------------------------------


def test_browser_callbacks_update_artists(synthetic_tiny) -> None:
    groups = data.discover(synthetic_tiny)
    g = groups["kidney_1_dense"]
    browser = SliceBrowser(groups, group="kidney_1_dense")
    controls = BrowserWidgets(browser)
    assert controls.index_w.max == g.shape[0] - 1 and browser.axis == "xy"

    controls.index_w.value = 7
    np.testing.assert_array_equal(browser.image_artist.get_array(), tifffile.imread(g.image_files[7]))
    label = tifffile.imread(g.label_files[7]) > 0
    rgba = np.asarray(browser.label_artist.get_array())
    np.testing.assert_array_equal(rgba[..., 3] > 0, label)
    assert label.any()
    np.testing.assert_allclose(rgba[label][:, :3] - figures.LABEL_COLOR, 0, atol=1e-6)
    assert browser.label_artist.get_visible() and np.isclose(rgba[..., 3].max(), 0.5)

    controls.alpha_w.value = 0.8
    assert np.isclose(np.asarray(browser.label_artist.get_array())[..., 3].max(), 0.8)
    controls.labels_w.value = False
    assert not browser.label_artist.get_visible()
    controls.labels_w.value = True

    controls.window_w.value = (25000.0, 29000.0)  # inside tiny kidney_1 (about 24000-31000)
    assert browser.image_artist.get_clim() == (25000.0, 29000.0)

    shown = controls.image_w.value
    controls.axis_w.value = "xz"  # slider now moves y; the plane holds a row of every slice (tiny: no subsampling)
    assert controls.index_w.max == g.height - 1 and controls.index_w.description == "y"
    assert controls.image_w.value != shown  # the panel's PNG follows the model
    controls.index_w.value = 10
    volume = g.read_images()
    np.testing.assert_array_equal(browser.image_artist.get_array(), volume[:, 10, :])
    controls.axis_w.value = "yz"
    controls.index_w.value = 5
    np.testing.assert_array_equal(browser.image_artist.get_array(), volume[:, :, 5])

    controls.group_w.value = "kidney_5"  # a test kidney: no labels, new shape
    k5 = groups["kidney_5"]
    assert controls.index_w.max == k5.width - 1 and not browser.label_artist.get_visible()
    assert browser.image_artist.get_array().shape == (k5.shape[0], k5.height)
    assert controls.window_w.value == browser.window and browser.window != (25000.0, 29000.0)
    controls.axis_w.value = "xy"
    assert browser.image_artist.get_array().shape == (k5.height, k5.width)
    assert str(browser.cursor[0]) in controls.info_w.value
    assert browser.static_figure() is not None


def test_browser_prediction_layer_in_another_colour(synthetic_tiny) -> None:
    groups = data.discover(synthetic_tiny)
    g = groups["kidney_1_dense"]
    calls: list[tuple[str, str, int]] = []

    def predict(name: str, axis: str, index: int):  # a shifted copy of the labels, xy only
        calls.append((name, axis, index))
        return np.roll(figures.label_slice(groups[name], index), 2, axis=1) if axis == "xy" else None

    browser = SliceBrowser(groups, predict, group="kidney_1_dense", point=(9, 30, 20))
    label, pred = tifffile.imread(g.label_files[9]) > 0, predict("kidney_1_dense", "xy", 9)
    assert browser.prediction_artist.get_visible()
    p_rgba = np.asarray(browser.prediction_artist.get_array())
    l_rgba = np.asarray(browser.label_artist.get_array())
    np.testing.assert_array_equal(p_rgba[..., 3] > 0, pred)
    assert (pred & ~label).any() and (pred & label).any()
    np.testing.assert_allclose(p_rgba[pred & ~label][:, :3] - figures.PREDICTION_COLOR, 0, atol=1e-6)  # cyan: no label
    np.testing.assert_allclose(p_rgba[pred & label][:, :3] - figures.BOTH_COLOR, 0, atol=1e-6)  # yellow: agreement
    np.testing.assert_array_equal(l_rgba[..., 3] > 0, label & ~pred)  # red: labels the prediction missed
    browser.set_prediction(False)
    assert not browser.prediction_artist.get_visible()
    np.testing.assert_array_equal(np.asarray(browser.label_artist.get_array())[..., 3] > 0, label)

    browser.set_prediction(True)
    browser.set_axis("xz")  # callable returns None for planes: built from xy calls, one per cached slice
    xz_pred = np.stack([predict("kidney_1_dense", "xy", z)[30] for z in range(g.shape[0])])
    np.testing.assert_array_equal(np.asarray(browser.prediction_artist.get_array())[..., 3] > 0, xz_pred)


def test_browser_reads_one_slice_per_layer_per_xy_step(volume_root, monkeypatch) -> None:
    root, images, _ = volume_root
    groups = data.discover(root)
    reads = CountingReads(monkeypatch)
    browser = SliceBrowser(groups, group="kidney_1_dense", max_plane_slices=8)
    for z in (3, 17, 39, 0, 25):
        before = reads.n
        browser.set_index(z)
        assert reads.n - before == 2  # one image + one label slice, whatever the kidney size
        assert int(browser.image_artist.get_array()[0, 0]) == z
    before = reads.n
    browser.set_alpha(0.3)
    browser.set_labels(False)
    browser.set_window(1000.0, 2000.0)
    assert reads.n == before  # overlay and contrast changes read nothing

    browser.set_axis("xz")
    first = reads.n - before
    assert 0 < first <= 2 * 8  # at most the cap per layer (images + labels), never the whole volume
    pos, step = figures.plane_positions(40, 8)
    np.testing.assert_array_equal(browser.image_artist.get_array(), images[pos, browser.cursor[1], :])
    assert f"every {step}th slice" in browser.ax.get_title()
    before = reads.n
    for y in (0, 5, 11):
        browser.set_index(y)
        np.testing.assert_array_equal(browser.image_artist.get_array(), images[pos, y, :])
    browser.set_axis("yz")
    browser.set_index(4)
    assert reads.n == before  # the cached z-subsampled stack serves every xz/yz plane of the group
    assert browser.reads == reads.n


def test_browser_plane_cache_fits_the_memory_budget(volume_root) -> None:
    root, images, _ = volume_root
    groups = data.discover(root)
    browser = SliceBrowser(groups, group="kidney_1_dense", max_plane_slices=40, plane_budget_mb=0.005)
    browser.set_axis("xz")
    stride = browser._cache.stride
    assert stride > 1 and browser._cache.layers["image"].nbytes <= 5000
    browser.set_index(6)
    np.testing.assert_array_equal(browser.image_artist.get_array(), images[:, (6 // stride) * stride, ::stride])


# ----------------------------------------------------------------------------------------------------------
# The notebook
# ----------------------------------------------------------------------------------------------------------


def test_notebook_is_stored_clean() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("data_dir", "output_dir", "groups", "max_slices_sampled"):
        assert f"\n{name} = " in "\n" + tagged[0].source
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_notebook_runs_under_papermill(synthetic_tiny, tmp_path) -> None:
    import papermill

    out_dir = tmp_path / "explore"
    executed = tmp_path / "01_explore.out.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(executed), kernel_name="python3", cwd=str(NOTEBOOK.parent),
                               parameters={"data_dir": str(synthetic_tiny), "output_dir": str(out_dir)},
                               progress_bar=False)
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    groups = data.discover(synthetic_tiny)
    expected = ["intensity_histograms", "vessel_fraction", "domain_shift", "slice_browser"]
    expected += [f"orthogonal_{n}" for n in groups]
    expected += [f"projections_{n}" for n, g in groups.items() if g.has_labels]
    for name in expected:
        png = out_dir / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 20_000, name
        pixels = matplotlib.image.imread(png)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 300 and pixels[..., :3].std() > 0.05, name
    assert (out_dir / "intensity_percentiles.csv").is_file() and (out_dir / "summary.csv").is_file()
    shown = sum("image/png" in o.get("data", {}) for o in outputs)
    assert shown == len(expected)  # every figure is also in the executed notebook
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
