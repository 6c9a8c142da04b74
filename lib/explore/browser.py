"""The slice browser's view model: what is shown (group, axis xy/xz/yz, slice, overlays, opacity, window) and the
figure showing it, without widgets (`lib.explore.widgets` binds them; runs without a frontend use `static_figure()`)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from lib import data
from lib.data import Group
from lib.explore import figures
from lib.paths import resolve_path

Prediction = Callable[[str, str, int], "np.ndarray | None"]
"""`(group_name, axis, index) -> 2D mask or None`: for "xy" the (H, W) mask at slice position index, None when missing;
for "xz"/"yz" (index y/x) a full-z or displayed-rows plane, or None: the browser builds it from cached xy calls."""


def prediction_source(prediction: Prediction | str | Path | Mapping[str, np.ndarray] | None,
                      groups: Mapping[str, Group]) -> Prediction | None:
    """Turn a callable, a folder of predicted slice TIFFs (`<group>/NNNN.tif` or `<group>/labels/NNNN.tif`,
    nonzero = vessel, numbered as the group's slices) or a mapping group -> 3D array or memmap into a `Prediction`."""
    if prediction is None or callable(prediction):
        return prediction
    if isinstance(prediction, Mapping):
        arrays = prediction

        def from_arrays(name: str, axis: str, index: int) -> np.ndarray | None:
            return np.take(arrays[name], index, axis=figures.AXES.index(axis)) != 0 if name in arrays else None
        return from_arrays
    root = resolve_path(prediction)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: prediction folder not found")

    def from_folder(name: str, axis: str, index: int) -> np.ndarray | None:
        if axis != "xy" or name not in groups:
            return None
        number = groups[name].slices[index]
        folders = (root / name, root / name / "labels", root / "train" / name / "labels", root / "test" / name)
        path = next((p for f in folders for p in (f / f"{number:04d}.tif", f / f"{number:04d}.tiff") if p.is_file()), None)
        return None if path is None else data.read_slice(path) != 0
    return from_folder


def threshold_prediction(stats: Mapping[str, figures.IntensityStats]) -> Prediction:
    """A stand-in prediction from each group's image slice: as many of its brightest voxels (the darkest if vessels
    are darker than the rest) as the labelled vessel share of the first densely labelled group (else 1%)."""
    labelled = [s for s in stats.values() if s.vessel_counts is not None and s.vessel_counts.sum()]
    ref = min(labelled, key=lambda s: s.group.label_kind != "dense", default=None)  # the first dense one
    bright = ref is None or ref.percentile(50, "vessel") >= ref.percentile(50, "other")
    share_percent = 1.0 if ref is None else 100 * ref.vessel_counts.sum() / ref.counts.sum()
    thresholds = {n: s.percentile(100 - share_percent if bright else share_percent) for n, s in stats.items()}

    def predict(name: str, axis: str, index: int) -> np.ndarray | None:
        if axis != "xy" or name not in thresholds:
            return None
        img = figures.image_slice(stats[name].group, index)
        return img > thresholds[name] if bright else img < thresholds[name]
    return predict


@dataclass
class _PlaneCache:
    """The current group's z-subsampled, in-plane strided stack from which xz/yz planes are cut."""

    positions: np.ndarray
    step: int
    stride: int
    layers: dict[str, np.ndarray] = field(default_factory=dict)  # "image", "label", "prediction"
    missing_predictions: int = 0  # cached slices the prediction had nothing for (shown as empty rows)


class SliceBrowser:
    """Browse groups slice by slice along xy, xz or yz, with the labels and optionally a prediction overlaid. Each
    `set_*` method reads what the new state shows into `displayed` and the artists; `png()` renders them. xz/yz planes
    are cut from a per-group cache of at most `max_plane_slices` slices in `plane_budget_mb` (docs/explorer.md)."""

    FIGSIZE, DPI = (7.5, 7.0), 90

    def __init__(self, groups: Mapping[str, Group], prediction: Any = None, *,
                 stats: Mapping[str, figures.IntensityStats] | None = None, group: str | None = None,
                 point: tuple[int, int, int] | None = None, max_plane_slices: int = 128,
                 plane_budget_mb: float = 256) -> None:
        self.groups = dict(groups)
        if not self.groups:
            raise ValueError("SliceBrowser needs at least one group")
        self.prediction = prediction_source(prediction, self.groups)
        self.stats = dict(stats or {})
        self.reads = 0  # slices read so far: the browser's reading cost meter
        self.max_plane_slices = max_plane_slices
        self.plane_budget_mb = plane_budget_mb
        self.axis = "xy"
        self.show_labels = True
        self.show_prediction = self.prediction is not None
        self.alpha = 0.5  # overlay opacity
        self.window = (0.0, 1.0)  # display window (intensity at black, at white)
        self.window_range = (0.0, 1.0)  # the range a window control offers: the group's intensities

        with figures.figure_style():
            self.fig = Figure(figsize=self.FIGSIZE, dpi=self.DPI)
            self.canvas = FigureCanvasAgg(self.fig)
            self.ax = self.fig.add_axes((0.12, 0.08, 0.70, 0.79))  # fixed: room for a 4-line title above
            self.image_artist = self.ax.imshow(np.zeros((2, 2)), cmap="gray", vmin=0, vmax=1)  # data set by _update
            self.label_artist = self.ax.imshow(np.zeros((2, 2, 4)))
            self.prediction_artist = self.ax.imshow(np.zeros((2, 2, 4)))
            self.fig.colorbar(self.image_artist, cax=self.fig.add_axes((0.86, 0.08, 0.03, 0.79)), label="intensity")
        for artist in (self.image_artist, self.label_artist, self.prediction_artist, self.ax.title):
            artist.set_animated(True)  # drawn over a cached background (ticks, labels, colorbar): see render()
        self._background: Any = None
        self._background_key: tuple | None = None
        self.set_group(group or next(iter(self.groups)), point)

    @property
    def group(self) -> Group:
        return self.groups[self.group_name]

    @property
    def dim(self) -> int:
        """Which cursor coordinate the slider moves: 0 (z) for xy, 1 (y) for xz, 2 (x) for yz."""
        return figures.AXES.index(self.axis)

    @property
    def index(self) -> int:
        return self.cursor[self.dim]

    @property
    def index_max(self) -> int:
        return self.group.shape[self.dim] - 1

    @property
    def index_name(self) -> str:
        return ("z", "y", "x")[self.dim]

    def set_group(self, name: str, point: tuple[int, int, int] | None = None) -> None:
        """Show group `name` at `point` (z, y, x; default the centre), keeping the axis; starts a new plane cache."""
        if name not in self.groups:
            raise KeyError(f"{name}: no such group (have {', '.join(self.groups)})")
        self.group_name = name
        g = self.group
        cursor = point if point is not None else figures.default_point(g)
        self.cursor = [int(np.clip(c, 0, n - 1)) for c, n in zip(cursor, g.shape)]
        positions, step = figures.plane_positions(g.shape[0], self.max_plane_slices)  # the xz/yz cache, read on first use
        per_pixel = g.dtype.itemsize + (1 if g.has_labels else 0) + 1
        stride = 1
        while len(positions) * -(-g.height // stride) * -(-g.width // stride) * per_pixel > self.plane_budget_mb * 1e6:
            stride += 1
        self._cache = _PlaneCache(positions, step, stride)
        s = self.stats.get(name)
        if s is not None:
            lo, hi = s.percentile(0), s.percentile(100)
            self.window_range = (float(lo), float(max(hi, lo + 1)))
            self.window = s.window()
        self._update(window_from_image=s is None)  # no statistics: the window from the first slice shown

    def set_axis(self, axis: str) -> None:
        """Cut along "xy", "xz" or "yz" through the cursor."""
        if axis not in figures.AXES:
            raise ValueError(f"axis must be one of {figures.AXES}, not {axis!r}")
        self.axis = axis
        self._update()

    def set_index(self, index: int) -> None:
        """Move the cursor along the current axis (z for xy, y for xz, x for yz), clipped to the volume."""
        self.cursor[self.dim] = int(np.clip(index, 0, self.index_max))
        self._update()

    def set_labels(self, show: bool) -> None:
        self.show_labels = bool(show)
        self._apply_overlays()

    def set_prediction(self, show: bool) -> None:
        """Show or hide the prediction (asks the prediction for the current view when first shown)."""
        self.show_prediction = bool(show) and self.prediction is not None
        v = self.displayed
        if self.show_prediction and not v["prediction_read"]:
            v["prediction"], note = self._prediction_plane(self.axis, self.index, *v["image"].shape)
            v["notes"] += [note] if note else []
            v["prediction_read"] = True
        self._apply_overlays()

    def set_alpha(self, alpha: float) -> None:
        self.alpha = float(np.clip(alpha, 0.0, 1.0))
        self._apply_overlays()

    def set_window(self, low: float, high: float) -> None:
        """The display window: `low` shows black, `high` white."""
        self.window = (float(low), float(max(high, low + 1e-6)))
        self.image_artist.set_clim(*self.window)

    def _stack(self, layer: str) -> np.ndarray | None:
        """The cached z-subsampled stack of `layer`, read on first use (N reads or prediction calls)."""
        cache = self._cache
        if layer not in cache.layers:
            g, s = self.group, cache.stride
            if layer != "prediction":
                # strided copies, so each full slice is freed as soon as it is read (peak: the budgeted stack)
                read = figures.label_slice if layer == "label" else figures.image_slice
                slices = figures.read_ahead(lambda z: read(g, z)[::s, ::s].copy(), cache.positions)
                cache.layers[layer] = np.stack(list(slices))
                self.reads += len(cache.positions)
            else:  # a prediction callable need not be thread-safe: asked in order
                planes = [self.prediction(g.name, "xy", z) for z in cache.positions.tolist()]
                empty = np.zeros((-(-g.height // s), -(-g.width // s)), bool)
                cache.missing_predictions = sum(p is None for p in planes)
                if cache.missing_predictions == len(planes):
                    return None
                cache.layers[layer] = np.stack([empty if p is None else np.asarray(p, bool)[::s, ::s] for p in planes])
        return cache.layers[layer]

    def _prediction_plane(self, axis: str, index: int, rows: int, cols: int) -> tuple[np.ndarray | None, str]:
        """A prediction plane matching the displayed (rows, cols) plane, or None; and a note when one is missing."""
        g, cache = self.group, self._cache
        p = self.prediction(g.name, axis, index)
        if axis == "xy":
            return (None, f"prediction missing for slice {g.slices[index]:04d}") if p is None else (np.asarray(p, bool), "")
        if p is not None:
            p = np.asarray(p, bool)
            if p.shape[0] == g.shape[0]:
                p = p[cache.positions]
            if p.shape[1] != cols:
                p = p[:, ::cache.stride]
            return (p, "") if p.shape == (rows, cols) else (None, f"prediction plane of shape {p.shape} ignored")
        stack = self._stack("prediction")
        if stack is None:
            return None, f"prediction missing for {g.name}"
        k = index // cache.stride
        note = "" if not cache.missing_predictions else \
            f"prediction missing for {cache.missing_predictions} of {len(cache.positions)} slices (empty rows)"
        return np.take(stack, k, axis=figures.AXES.index(axis)), note

    def view(self, axis: str | None = None) -> dict[str, Any]:
        """Arrays for `axis` (default: current) at the cursor: image, label, prediction (None when hidden or
        missing), extent, title, axis labels, aspect and `notes` (what is missing)."""
        axis = axis or self.axis
        g = self.group
        z_n, h, w = g.shape
        dim = figures.AXES.index(axis)
        index = self.cursor[dim]
        if axis == "xy":
            image = figures.image_slice(g, index)
            label = figures.label_slice(g, index) if g.has_labels else None
            self.reads += 1 + g.has_labels
            extent = (-0.5, w - 0.5, h - 0.5, -0.5)
            stretch = 1.0
            title = f"{g.name}  xy  z={index} of {z_n} (slice {g.slices[index]:04d})"
            xlabel, ylabel = "x", "y"
        else:
            s, step, zs = self._cache.stride, self._cache.step, self._cache.positions
            k = index // s
            image = np.take(self._stack("image"), k, axis=dim)
            label = np.take(self._stack("label"), k, axis=dim) if g.has_labels else None
            extent = (-s / 2, image.shape[1] * s - s / 2, zs[-1] + step / 2, zs[0] - step / 2)
            sub = figures.z_note(step, len(zs), z_n) + ("" if s == 1 else f", in-plane every {figures.ordinal(s)} pixel")
            stretch = figures.z_stretch(z_n, h, w)  # thin volumes (3-slice test kidneys) stay visible
            title = f"{g.name}  {axis}  {'zyx'[dim]}={k * s} of {g.shape[dim]}{figures.stretch_note(stretch)}\n{sub}"
            xlabel, ylabel = axis[0], "z (slice position)"  # x along xz, y along yz
        prediction, note = self._prediction_plane(axis, index, *image.shape) if self.show_prediction else (None, "")
        notes = [note] if note else []
        if label is None:
            notes.append(f"{g.name} has no labels")
        return {"axis": axis, "image": image, "label": label, "prediction": prediction, "extent": extent,
                "title": title, "xlabel": xlabel, "ylabel": ylabel, "aspect": stretch, "notes": notes,
                "prediction_read": self.show_prediction}

    def _update(self, window_from_image: bool = False) -> None:
        """Read what the current state shows and push it into the artists."""
        v = self.displayed = self.view()
        width, height = self.ax.get_position().size * self.fig.bbox.size  # the axes in pixels
        rows, cols = v["image"].shape  # drawn in blocks bringing it down to about the axes' size (step 1: as is)
        v["step"] = max(1, int(min(rows / height, cols / width)))
        self.image_artist.set_data(figures.block_reduce(v["image"], v["step"]))
        for artist in (self.image_artist, self.label_artist, self.prediction_artist):
            artist.set_extent(v["extent"])
            artist.set_interpolation(figures.display_interpolation(v["aspect"]))
        if window_from_image:
            lo, hi = (float(a) for a in np.percentile(v["image"], [0.5, 99.5]))
            self.window_range = (float(v["image"].min()), float(max(v["image"].max(), lo + 1)))
            self.window = (lo, max(hi, lo + 1))
        self.image_artist.set_clim(*self.window)
        self.ax.set(xlim=v["extent"][:2], ylim=v["extent"][2:], xlabel=v["xlabel"], ylabel=v["ylabel"], aspect=v["aspect"])
        self._apply_overlays()

    def _apply_overlays(self) -> None:
        """Overlay visibility, colours and opacity from the state (no reads)."""
        v = self.displayed
        label = v["label"] if self.show_labels else None
        pred = v["prediction"] if self.show_prediction else None
        masks = [None if m is None else figures.block_reduce(m, v["step"]) for m in (label, pred)]
        for artist, rgba in zip((self.label_artist, self.prediction_artist), figures.mask_layers(*masks, self.alpha)):
            artist.set_visible(rgba is not None)
            if rgba is not None:
                artist.set_data(rgba)
        if self.ax.get_legend() is not None:
            self.ax.get_legend().remove()
        handles = figures.legend_handles(self.alpha, label is not None, pred is not None)
        if handles:
            self.ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.7).set_animated(True)
        notes = [n for n in v["notes"] if "prediction" not in n or self.show_prediction]
        self.ax.set_title(v["title"] + "".join(f"\n{n}" for n in notes), fontsize=10)

    def render(self) -> np.ndarray:
        """The figure as an (H, W, 3) uint8 RGB array. Ticks, labels and colorbar (most of the drawing time) are
        drawn once per plane geometry and window as a background; a step draws images, title and legend over it."""
        key = (self.group_name, self.axis, tuple(self.displayed["extent"]), self.window)
        if key != self._background_key:
            self.canvas.draw()  # everything but the animated artists
            self._background, self._background_key = self.canvas.copy_from_bbox(self.fig.bbox), key
        else:
            self.canvas.restore_region(self._background)
        for artist in (self.image_artist, self.label_artist, self.prediction_artist, *self.ax.spines.values(),
                       self.ax.title, self.ax.get_legend()):
            if artist is not None and artist.get_visible():
                self.ax.draw_artist(artist)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()

    def png(self) -> bytes:
        """The figure as PNG bytes (what a frontend shows; light compression: encoding is on every step)."""
        buffer = BytesIO()
        Image.fromarray(self.render()).save(buffer, format="png", compress_level=1)
        return buffer.getvalue()

    def info(self) -> str:
        """One line on the group, the cursor and the reading cost so far."""
        g = self.group
        return (f"{g.name} {g.shape[0]} x {g.shape[1]} x {g.shape[2]}, cursor (z, y, x) = {tuple(self.cursor)}, "
                f"slices read so far: {self.reads}")

    def static_figure(self) -> Figure:
        """xy, xz and yz at the cursor, as the browser shows them, in one figure (for runs without a frontend)."""
        views = [self.view(a) for a in figures.AXES]
        with figures.figure_style():
            fig = Figure(figsize=(16, 5.6), layout="constrained")
            axes = fig.subplots(1, 3)
            for ax, v in zip(axes, views):  # a view holds no prediction while it is hidden
                label = v["label"] if self.show_labels else None
                im = figures.show_plane(ax, v["image"], self.window, figures.mask_layers(label, v["prediction"], self.alpha),
                                        extent=v["extent"], aspect=v["aspect"],
                                        interpolation=figures.display_interpolation(v["aspect"]))
                ax.set_title(v["title"] + "".join(f"\n{n}" for n in v["notes"]), fontsize=10)
                ax.set(xlabel=v["xlabel"], ylabel=v["ylabel"])
            fig.colorbar(im, ax=axes, fraction=0.02, pad=0.01, label="intensity")
            handles = figures.legend_handles(self.alpha, self.show_labels and self.group.has_labels,
                                             any(v["prediction"] is not None for v in views))
            if handles:
                fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
            fig.suptitle("Slice browser, rendered once (no live frontend): xy, xz, yz at cursor "
                         f"(z, y, x) = {tuple(self.cursor)}")
        return fig
