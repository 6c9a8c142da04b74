"""The slice browser behind notebook 01's interactive section: group, axis (xy/xz/yz), slice, label and
prediction overlays, opacity and contrast, reading O(1) slices per xy step (ipywidgets in a live frontend,
a static figure under papermill)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from lib import data
from lib.data import Group
from lib.explore.figures import (
    AXES,
    PREDICTION_COLOR,
    IntensityStats,
    _interpolation,
    _legend_handles,
    _ordinal,
    _stretch_note,
    _style,
    _z_note,
    _z_stretch,
    image_slice,
    label_slice,
    mask_layers,
    overlay_rgba,
    plane_positions,
)
from lib.paths import resolve_path

# ----------------------------------------------------------------------------------------------------------
# Interactive browser
# ----------------------------------------------------------------------------------------------------------


class SliceReader:
    """Reads single xy slices and counts them: the browser's reading cost meter (injectable in tests)."""

    def __init__(self) -> None:
        self.reads = 0
        self.log: list[tuple[str, str, int]] = []  # (group, "image"/"label", position)

    def image(self, group: Group, index: int) -> np.ndarray:
        self.reads += 1
        self.log.append((group.name, "image", index))
        return image_slice(group, index)

    def label(self, group: Group, index: int) -> np.ndarray:
        self.reads += 1
        self.log.append((group.name, "label", index))
        return label_slice(group, index)


Prediction = Callable[[str, str, int], "np.ndarray | None"]
"""`(group_name, axis, index) -> 2D mask or None`. For "xy", index is the slice position and the mask is (H, W).
For "xz"/"yz", index is y/x; return None to let the browser build the plane from xy calls (cached, z-subsampled
like the image), or a full-z plane (Z, W)/(Z, H) or one already matching the displayed rows."""


def prediction_source(prediction: Prediction | str | Path | Mapping[str, np.ndarray] | None,
                      groups: Mapping[str, Group]) -> Prediction | None:
    """Turn a callable, a folder of predicted slice TIFFs or a mapping group -> 3D array into a `Prediction`.

    A folder holds `<group>/NNNN.tif` or `<group>/labels/NNNN.tif` (nonzero = vessel), numbered as the group's
    slices; a mapping's arrays may be `np.memmap`s / `np.load(..., mmap_mode="r")` (planes then cost Z rows).
    """
    if prediction is None or callable(prediction):
        return prediction
    if isinstance(prediction, Mapping):
        arrays = prediction

        def from_arrays(name: str, axis: str, index: int) -> np.ndarray | None:
            if name not in arrays:
                return None
            a = arrays[name]
            return np.asarray({"xy": lambda: a[index], "xz": lambda: a[:, index, :], "yz": lambda: a[:, :, index]}
                              [axis]()) != 0
        return from_arrays
    root = resolve_path(prediction)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: prediction folder not found")

    def from_folder(name: str, axis: str, index: int) -> np.ndarray | None:
        if axis != "xy" or name not in groups:
            return None
        number = groups[name].slices[index]
        for sub in (root / name, root / name / "labels", root / "train" / name / "labels", root / "test" / name):
            for ext in (".tif", ".tiff"):
                path = sub / f"{number:04d}{ext}"
                if path.is_file():
                    return data.read_slice(path) != 0
        return None
    return from_folder


@dataclass
class ThresholdPrediction:
    """A stand-in prediction: voxels above (or below) a per-group intensity threshold. Reads the image slice."""

    groups: Mapping[str, Group]
    thresholds: Mapping[str, float]
    bright: bool = True

    @classmethod
    def from_stats(cls, groups: Mapping[str, Group], stats: Mapping[str, IntensityStats],
                   share_percent: float | None = None) -> ThresholdPrediction:
        """Keep the brightest `share_percent` % voxels of each group (the darkest if vessels are darker than the
        rest); default share: the labelled vessel share of the first densely labelled group (else 1%)."""
        labelled = [s for s in stats.values() if s.vessel_counts is not None and s.vessel_counts.sum()]
        labelled.sort(key=lambda s: s.label_kind != "dense")
        ref = labelled[0] if labelled else None
        bright = ref is None or ref.percentile(50, "vessel") >= ref.percentile(50, "other")
        if share_percent is None:
            share_percent = 1.0 if ref is None else 100 * ref.vessel_counts.sum() / ref.counts.sum()
        q = 100 - share_percent if bright else share_percent
        return cls(groups, {n: s.percentile(q) for n, s in stats.items()}, bright)

    def __call__(self, name: str, axis: str, index: int) -> np.ndarray | None:
        if axis != "xy" or name not in self.thresholds:
            return None
        img = image_slice(self.groups[name], index)
        return img > self.thresholds[name] if self.bright else img < self.thresholds[name]


@dataclass
class _PlaneCache:
    """The current group's z-subsampled, in-plane strided stack from which xz/yz planes are cut."""

    positions: np.ndarray
    step: int
    stride: int
    layers: dict[str, np.ndarray] = field(default_factory=dict)  # "image", "label", "prediction"


class SliceBrowser:
    """Browse groups slice by slice along xy, xz or yz, with the labels and optionally a prediction overlaid.

    Reading cost per update: xy reads one image slice, one label slice and asks the prediction for one slice,
    whatever the kidney size. xz/yz need one row/column of every slice: the first xz/yz view of a group reads
    every k-th slice (at most `max_plane_slices`, strided in-plane to fit `plane_budget_mb`) into a cache, after
    which moving through xz/yz planes reads nothing. On a 2279 x 1303 x 912 kidney with the defaults that is
    127 reads per layer once (every 18th slice, every 2nd pixel in-plane, about 75 MB of images). Switching
    group drops the cache.

    Widgets (ipywidgets) drive callbacks that update matplotlib artists with `set_data`; `widget()` returns the
    control panel with the figure, `static_figure()` renders xy, xz and yz once (for papermill runs).
    """

    def __init__(self, groups: Mapping[str, Group] | Sequence[Group], prediction: Any = None, *,
                 stats: Mapping[str, IntensityStats] | None = None, group: str | None = None,
                 point: tuple[int, int, int] | None = None, max_plane_slices: int = 128,
                 plane_budget_mb: float = 256, alpha: float = 0.5, reader: SliceReader | None = None,
                 figsize: tuple[float, float] = (7.5, 7.0), dpi: int = 90) -> None:
        import ipywidgets as W  # imported here: the batch functions do not need it

        self.groups = dict(groups) if isinstance(groups, Mapping) else {g.name: g for g in groups}
        if not self.groups:
            raise ValueError("SliceBrowser needs at least one group")
        self.prediction = prediction_source(prediction, self.groups)
        self.stats = dict(stats or {})
        self.reader = reader or SliceReader()
        self.max_plane_slices = max_plane_slices
        self.dpi = dpi
        self.plane_budget_mb = plane_budget_mb
        self.cursor: list[int] = [0, 0, 0]  # (z, y, x) of the current group
        self._cache: _PlaneCache | None = None
        self._hold = False  # set while widgets are adjusted programmatically
        self._output: Any = None  # the ipywidgets.Output showing the figure once widget() was called

        first = group or next(iter(self.groups))
        self.group_w = W.Dropdown(options=list(self.groups), value=first, description="group")
        self.axis_w = W.ToggleButtons(options=list(AXES), value="xy", description="axis",
                                      style={"button_width": "48px"})
        self.index_w = W.IntSlider(0, 0, 1, description="slice", continuous_update=False,
                                   layout=W.Layout(width="95%"))
        self.labels_w = W.Checkbox(True, description="labels (red)", indent=False)
        self.prediction_w = W.Checkbox(self.prediction is not None, description="prediction (cyan)", indent=False,
                                       disabled=self.prediction is None)
        self.alpha_w = W.FloatSlider(alpha, min=0.0, max=1.0, step=0.05, description="opacity")
        self.window_w = W.FloatRangeSlider(value=(0, 1), min=0, max=1, step=1, description="window",
                                           continuous_update=False, layout=W.Layout(width="95%"))
        self.info_w = W.HTML()

        with _style():
            self.fig = Figure(figsize=figsize, layout="constrained")
            self.ax = self.fig.add_subplot()
            blank = np.zeros((2, 2))
            self.image_artist = self.ax.imshow(blank, cmap="gray", vmin=0, vmax=1, aspect="equal")
            self.label_artist = self.ax.imshow(overlay_rgba(blank > 0), aspect="equal")
            self.prediction_artist = self.ax.imshow(overlay_rgba(blank > 0, PREDICTION_COLOR), aspect="equal")
            self.colorbar = self.fig.colorbar(self.image_artist, ax=self.ax, fraction=0.046, pad=0.02,
                                              label="intensity")

        self.group_w.observe(self._on_group, "value")
        self.axis_w.observe(self._on_axis, "value")
        self.index_w.observe(self._on_index, "value")
        for w in (self.labels_w, self.prediction_w, self.alpha_w):
            w.observe(self._on_overlay, "value")
        self.window_w.observe(self._on_window, "value")
        self._enter_group(first, point)
        self.update()

    # --- state ------------------------------------------------------------------------------------------
    @property
    def group(self) -> Group:
        return self.groups[self.group_w.value]

    @property
    def axis(self) -> str:
        return self.axis_w.value

    def _axis_dim(self, axis: str) -> int:
        """Which cursor coordinate the slider moves: z for xy, y for xz, x for yz."""
        return AXES.index(axis)

    def _enter_group(self, name: str, point: tuple[int, int, int] | None = None) -> None:
        g = self.groups[name]
        self._cache = None
        self.cursor = list(point) if point is not None else [n // 2 for n in g.shape]
        self.cursor = [int(np.clip(c, 0, n - 1)) for c, n in zip(self.cursor, g.shape)]
        self._sync_slider()
        s = self.stats.get(name)
        if s is not None:
            lo, hi = s.percentile(0), s.percentile(100)
            self._set_window(lo, max(hi, lo + 1), s.window())
        else:  # no statistics: the window comes from the first slice shown (no extra read)
            self._window_pending = True

    def _set_window(self, lo: float, hi: float, value: tuple[float, float]) -> None:
        self._hold = True
        try:
            self.window_w.min, self.window_w.max = -1e12, 1e12  # widen first: min must stay below max
            self.window_w.value = (float(value[0]), float(value[1]))
            self.window_w.min, self.window_w.max = float(lo), float(hi)
            self.window_w.step = max(1.0, (hi - lo) / 1000)
        finally:
            self._hold = False
        self._window_pending = False
        self.image_artist.set_clim(*self.window_w.value)

    def _sync_slider(self) -> None:
        dim = self._axis_dim(self.axis)
        self._hold = True
        try:
            self.index_w.max = self.group.shape[dim] - 1
            self.index_w.value = self.cursor[dim]
            self.index_w.description = ("z", "y", "x")[dim]
        finally:
            self._hold = False

    # --- callbacks ----------------------------------------------------------------------------------------
    def _on_group(self, change: dict) -> None:
        if self._hold:
            return
        self._enter_group(change["new"])
        self.update()

    def _on_axis(self, change: dict) -> None:
        if self._hold:
            return
        self._sync_slider()
        self.update()

    def _on_index(self, change: dict) -> None:
        if self._hold:
            return
        self.cursor[self._axis_dim(self.axis)] = int(change["new"])
        self.update()

    def _on_overlay(self, change: dict) -> None:
        self._apply_overlays()
        self._refresh()

    def _on_window(self, change: dict) -> None:
        if self._hold:
            return
        self.image_artist.set_clim(*change["new"])
        self._refresh()

    # --- data -----------------------------------------------------------------------------------------------
    def _plane_cache(self) -> _PlaneCache:
        if self._cache is None:
            z_n, h, w = self.group.shape
            positions, step = plane_positions(z_n, self.max_plane_slices)
            per_pixel = self.group.dtype.itemsize + (1 if self.group.has_labels else 0) + 1
            stride = 1
            while len(positions) * -(-h // stride) * -(-w // stride) * per_pixel > self.plane_budget_mb * 1e6:
                stride += 1
            self._cache = _PlaneCache(positions, step, stride)
        return self._cache

    def _stack(self, layer: str) -> np.ndarray | None:
        """The cached z-subsampled stack of `layer`, read on first use (N reads or prediction calls)."""
        cache = self._plane_cache()
        if layer not in cache.layers:
            g, s = self.group, cache.stride
            if layer == "image":
                cache.layers[layer] = np.stack([self.reader.image(g, int(z))[::s, ::s] for z in cache.positions])
            elif layer == "label":
                if not g.has_labels:
                    return None
                cache.layers[layer] = np.stack([self.reader.label(g, int(z))[::s, ::s] for z in cache.positions])
            else:
                planes = [self.prediction(g.name, "xy", int(z)) for z in cache.positions]
                if any(p is None for p in planes):
                    return None
                cache.layers[layer] = np.stack([np.asarray(p, bool)[::s, ::s] for p in planes])
        return cache.layers[layer]

    def _prediction_plane(self, axis: str, index: int, rows: int, cols: int) -> np.ndarray | None:
        """A prediction plane matching the displayed (rows, cols) plane, or None."""
        if self.prediction is None or not self.prediction_w.value:
            return None
        g = self.group
        if axis == "xy":
            p = self.prediction(g.name, "xy", index)
            return None if p is None else np.asarray(p, bool)
        p = self.prediction(g.name, axis, index)
        cache = self._plane_cache()
        if p is not None:
            p = np.asarray(p, bool)
            if p.shape[0] == g.shape[0]:
                p = p[cache.positions]
            if p.shape[1] != cols:
                p = p[:, ::cache.stride]
            return p if p.shape == (rows, cols) else None
        stack = self._stack("prediction")
        if stack is None:
            return None
        k = index // cache.stride
        return stack[:, k, :] if axis == "xz" else stack[:, :, k]

    def view(self, axis: str | None = None) -> dict[str, Any]:
        """Arrays for `axis` (default: current) at the cursor: image, label, prediction, extent, title, labels."""
        axis = axis or self.axis
        g = self.group
        z_n, h, w = g.shape
        z, y, x = self.cursor
        if axis == "xy":
            image = self.reader.image(g, z)
            label = self.reader.label(g, z) if g.has_labels else None
            pred = self._prediction_plane("xy", z, h, w)
            extent = (-0.5, w - 0.5, h - 0.5, -0.5)
            stretch = 1.0
            title = f"{g.name}  xy  z={z} of {z_n} (slice {g.slices[z]:04d})"
            xlabel, ylabel = "x", "y"
        else:
            cache = self._plane_cache()
            s, step, zs = cache.stride, cache.step, cache.positions
            index = y if axis == "xz" else x
            k = index // s
            cut = (lambda a: a[:, k, :]) if axis == "xz" else (lambda a: a[:, :, k])
            image = cut(self._stack("image"))
            labels = self._stack("label") if g.has_labels else None
            label = None if labels is None else cut(labels)
            pred = self._prediction_plane(axis, index, *image.shape)
            span = h if axis == "xz" else w
            extent = (-s / 2, image.shape[1] * s - s / 2, zs[-1] + step / 2, zs[0] - step / 2)
            name = "y" if axis == "xz" else "x"
            sub = _z_note(step, len(zs), z_n) + ("" if s == 1 else f", in-plane every {_ordinal(s)} pixel")
            stretch = _z_stretch(z_n, h, w)  # thin volumes (3-slice test kidneys) stay visible
            title = f"{g.name}  {axis}  {name}={k * s} of {span}{_stretch_note(stretch)}\n{sub}"
            xlabel, ylabel = ("x" if axis == "xz" else "y"), "z (slice position)"
        return {"image": image, "label": label, "prediction": pred, "extent": extent, "title": title,
                "xlabel": xlabel, "ylabel": ylabel, "aspect": 1.0 if axis == "xy" else stretch}

    def update(self) -> None:
        """Read what the current state shows and push it into the artists (the body of every callback)."""
        v = self.view()
        self._view = v
        self.image_artist.set_data(v["image"])
        for artist in (self.image_artist, self.label_artist, self.prediction_artist):
            artist.set_extent(v["extent"])
        if self._window_pending:
            lo, hi = (float(a) for a in np.percentile(v["image"], [0.5, 99.5]))
            self._set_window(float(v["image"].min()), float(max(v["image"].max(), lo + 1)), (lo, max(hi, lo + 1)))
        self.ax.set_xlim(v["extent"][0], v["extent"][1])
        self.ax.set_ylim(v["extent"][2], v["extent"][3])
        self.ax.set_title(v["title"], fontsize=10)
        self.ax.set_xlabel(v["xlabel"])
        self.ax.set_ylabel(v["ylabel"])
        self.ax.set_aspect(v["aspect"])
        for artist in (self.image_artist, self.label_artist, self.prediction_artist):
            artist.set_interpolation(_interpolation(v["aspect"]))
        self._apply_overlays()
        self.info_w.value = (f"<code>{self.group.name}</code> {self.group.shape[0]} x {self.group.shape[1]} x "
                             f"{self.group.shape[2]}, cursor (z, y, x) = {tuple(self.cursor)}, "
                             f"slices read so far: {self.reader.reads}")
        self._refresh()

    def _apply_overlays(self) -> None:
        """Overlay visibility, colours and opacity from the checkboxes and the slider (no reads, except one
        prediction call when the prediction is switched on after the view was read)."""
        v, alpha = self._view, float(self.alpha_w.value)
        shape = v["image"].shape
        if v["prediction"] is None and self.prediction is not None and self.prediction_w.value:
            v["prediction"] = self._prediction_plane(self.axis, self.cursor[self._axis_dim(self.axis)], *shape)
        show_label = bool(self.labels_w.value) and v["label"] is not None
        show_pred = bool(self.prediction_w.value) and v["prediction"] is not None
        label_rgba, pred_rgba = mask_layers(v["label"] if show_label else None,
                                            v["prediction"] if show_pred else None, alpha)
        empty = np.zeros((*shape, 4), np.float32)
        self.label_artist.set_data(empty if label_rgba is None else label_rgba)
        self.label_artist.set_visible(show_label)
        self.prediction_artist.set_data(empty if pred_rgba is None else pred_rgba)
        self.prediction_artist.set_visible(show_pred)
        if self.ax.get_legend() is not None:
            self.ax.get_legend().remove()
        handles = _legend_handles(alpha, show_label, show_pred)
        if handles:
            self.ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.7)

    def _refresh(self) -> None:
        """Redraw: in a live frontend the Output widget shows the figure again (inline backend, no ipympl)."""
        if self._output is None:
            return
        from io import BytesIO

        from IPython.display import Image, clear_output, display

        buffer = BytesIO()
        self.fig.savefig(buffer, format="png", dpi=self.dpi)  # PNG bytes: independent of the matplotlib backend
        with self._output:
            clear_output(wait=True)
            display(Image(data=buffer.getvalue()))

    # --- presentation -----------------------------------------------------------------------------------------
    def widget(self) -> Any:
        """The control panel and the figure, for a live Jupyter frontend."""
        import ipywidgets as W

        if self._output is None:
            self._output = W.Output()
        controls = W.VBox([
            W.HBox([self.group_w, self.axis_w]), self.index_w,
            W.HBox([self.labels_w, self.prediction_w, self.alpha_w]), self.window_w, self.info_w,
        ])
        self._refresh()
        return W.VBox([controls, self._output])

    def static_figure(self) -> Figure:
        """xy, xz and yz at the cursor, as the browser shows them, in one figure (for runs without a frontend)."""
        views = [self.view(a) for a in AXES]
        lo, hi = self.window_w.value
        alpha = float(self.alpha_w.value)
        with _style():
            fig = Figure(figsize=(16, 5.6), layout="constrained")
            axes = fig.subplots(1, 3)
            shown = (False, False)
            for ax, v in zip(axes, views):
                kw = dict(extent=v["extent"], aspect=v["aspect"], interpolation=_interpolation(v["aspect"]))
                im = ax.imshow(v["image"], cmap="gray", vmin=lo, vmax=hi, **kw)
                label = v["label"] if self.labels_w.value else None
                pred = v["prediction"] if self.prediction_w.value else None
                for layer in mask_layers(label, pred, alpha):
                    if layer is not None:
                        ax.imshow(layer, **kw)
                shown = (shown[0] or label is not None, shown[1] or pred is not None)
                ax.set_title(v["title"], fontsize=10)
                ax.set(xlabel=v["xlabel"], ylabel=v["ylabel"])
            fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, label="intensity")
            handles = _legend_handles(alpha, *shown)
            if handles:
                fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
            fig.suptitle("Slice browser, rendered once (no live frontend): xy, xz, yz at cursor "
                         f"(z, y, x) = {tuple(self.cursor)}")
        return fig


# ----------------------------------------------------------------------------------------------------------
# Notebook plumbing
# ----------------------------------------------------------------------------------------------------------


