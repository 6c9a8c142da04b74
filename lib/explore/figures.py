"""Figures of slices and masks without pyplot (`lib.notebook.publish` saves and shows them): notebook 01's views,
notebooks 02-03's prediction planes. Readers hold one xy slice at a time, never a whole kidney at full resolution."""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from lib import data
from lib.data import Group
from lib.volume import runs

AXES = ("xy", "xz", "yz")
LABEL_COLOR = (1.0, 0.1, 0.1)  # red: the ground-truth labels (with a prediction shown: labels it missed)
PREDICTION_COLOR = (0.0, 0.85, 1.0)  # cyan: a prediction (with labels shown: where it has no label)
BOTH_COLOR = (1.0, 0.9, 0.0)  # yellow: labels and prediction agree
READ_AHEAD = 8  # slices read ahead by a background thread in streamed passes
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "figure.titlesize": 13,
    "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "figure.facecolor": "white", "savefig.facecolor": "white",
}


def image_slice(group: Group, index: int) -> np.ndarray:
    """The xy image at slice position `index` (one TIFF read), in the stored dtype."""
    return data.read_slice(group.image_files[index], (group.height, group.width), group.dtype)


def label_slice(group: Group, index: int) -> np.ndarray:
    """The vessel mask at slice position `index` as bool (one TIFF read or one RLE decode)."""
    return group.read_labels(index, index + 1)[0] > 0


def sample_positions(n: int, max_count: int) -> np.ndarray:
    """At most `max_count` evenly spaced positions in [0, n), first and last included."""
    return np.unique(np.linspace(0, n - 1, min(n, max_count)).round().astype(np.int64))


def plane_positions(n: int, max_slices: int) -> tuple[np.ndarray, int]:
    """Every k-th slice position of [0, n), k chosen so that at most `max_slices` are read; returns (positions, k)."""
    step = max(1, math.ceil(n / max(1, max_slices)))
    count = len(range(0, n, step))
    start = (n - 1 - step * (count - 1)) // 2  # centre the sampled range
    return np.arange(start, n, step, dtype=np.int64)[:count], step


def read_ahead(read: Callable[[int], Any], positions: Sequence[int]) -> Iterator[Any]:
    """`read(p)` for each position in order, with up to `READ_AHEAD` reads in flight on threads (bounded memory)."""
    with ThreadPoolExecutor(data.READ_THREADS) as pool:
        queue: deque = deque()
        for p in positions:
            queue.append(pool.submit(read, p))
            if len(queue) > READ_AHEAD:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def _images_and_labels(group: Group, positions: Sequence[int]) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(image, label mask or None without labels) at each position, read ahead."""
    return read_ahead(lambda z: (image_slice(group, z), label_slice(group, z) if group.has_labels else None), positions)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def z_note(step: int, count: int, n: int) -> str:
    """How a z-subsampled plane was read: "all slices" or "every 18th slice (127 of 2279 read)"."""
    return "all slices" if step == 1 else f"every {ordinal(step)} slice ({count} of {n} read)"


@dataclass
class IntensityStats:
    """Exact intensity histograms (one bin per value) of sampled slices of `group`, split by its labels if any."""

    group: Group
    positions: np.ndarray  # slice positions sampled
    offset: int  # intensity of bin 0 (non-zero only for signed dtypes)
    counts: np.ndarray  # voxels per intensity value, all sampled voxels
    vessel_counts: np.ndarray | None = None  # the same for labelled vessel voxels

    @property
    def values(self) -> np.ndarray:
        return np.arange(self.offset, self.offset + len(self.counts))

    def percentile(self, q: float, which: str = "all") -> float:
        """The q-th percentile (0-100) of "all", "vessel" or "other" sampled voxels (other: background, tissue and
        a sparse group's unlabelled vessels); NaN when there are none."""
        other = None if self.vessel_counts is None else self.counts - self.vessel_counts
        counts = {"all": self.counts, "vessel": self.vessel_counts, "other": other}[which]
        if counts is None or counts.sum() == 0:
            return float("nan")
        cum = np.cumsum(counts, dtype=np.float64)
        return float(np.searchsorted(cum, q / 100 * cum[-1], side="left") + self.offset)

    def window(self) -> tuple[float, float]:
        """A display window: the 0.5th to 99.5th percentiles of all sampled voxels."""
        lo, hi = self.percentile(0.5), self.percentile(99.5)
        return lo, max(hi, lo + 1)


def intensity_stats(group: Group, max_slices: int = 32) -> IntensityStats:
    """Histogram at most `max_slices` evenly spaced slices of `group`, one slice in memory at a time."""
    positions = sample_positions(group.shape[0], max_slices)
    info = np.iinfo(group.dtype)
    offset = int(info.min)
    nbins = int(info.max) - offset + 1
    counts = np.zeros(nbins, np.int64)
    vessel = np.zeros(nbins, np.int64) if group.has_labels else None
    for img, lab in _images_and_labels(group, positions):
        values = img.ravel() if offset == 0 else (img.astype(np.int64) - offset).ravel()
        counts += np.bincount(values, minlength=nbins)
        if vessel is not None:
            vessel += np.bincount(values[lab.ravel()], minlength=nbins)
    return IntensityStats(group, positions, offset, counts, vessel)


def percentile_table(stats: Mapping[str, IntensityStats]) -> pd.DataFrame:
    """Percentiles per group of all voxels, vessel and non-vessel voxels (NaN unlabelled): inputs to normalisation."""
    rows = []
    for s in stats.values():
        mean = np.average(s.values, weights=s.counts)
        std = np.sqrt(np.average((s.values - mean) ** 2, weights=s.counts))
        total = int(s.counts.sum())
        rows.append({
            "group": s.group.name, "split": s.group.split, "labels": s.group.label_kind or "none",
            "slices_sampled": len(s.positions), "voxels_sampled": total, "min": s.percentile(0), "p0.5": s.percentile(0.5),
            "p50": s.percentile(50), "p99.5": s.percentile(99.5), "max": s.percentile(100), "mean": round(mean, 1),
            "std": round(std, 1),
            "vessel_%": np.nan if s.vessel_counts is None else round(100 * s.vessel_counts.sum() / max(total, 1), 3),
            "vessel_p0.5": s.percentile(0.5, "vessel"), "vessel_p50": s.percentile(50, "vessel"),
            "vessel_p99.5": s.percentile(99.5, "vessel"), "other_p50": s.percentile(50, "other"),
        })
    return pd.DataFrame(rows).set_index("group")


def _rebin(s: IntensityStats, counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(s.values, bins=edges, weights=counts)[0]


def figure_style() -> AbstractContextManager:
    """The project's figure style (font sizes, white background) for the figures made inside."""
    return mpl.rc_context(STYLE)


def plot_intensity_histograms(stats: Mapping[str, IntensityStats], bins: int = 200) -> Figure:
    """One panel per group: log-scale histogram of sampled intensities, vessel (red) vs non-vessel (grey)."""
    items = list(stats.values())
    cols = min(3, max(1, len(items)))
    rows = math.ceil(len(items) / cols)
    with figure_style():
        fig = Figure(figsize=(5.2 * cols, 3.6 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.ravel()[len(items):]:
            ax.set_visible(False)
        for ax, s in zip(axes.ravel(), items):
            g = s.group
            lo, hi = s.percentile(0.01), s.percentile(99.99)
            pad = max(1.0, 0.04 * (hi - lo))
            edges = np.linspace(lo - pad, hi + pad + 1, bins + 1)
            centres = (edges[:-1] + edges[1:]) / 2
            if s.vessel_counts is None:
                ax.fill_between(centres, _rebin(s, s.counts, edges), step="mid", color="0.45", alpha=0.8,
                                label="all voxels (group without labels)")
            else:
                ax.fill_between(centres, _rebin(s, s.counts - s.vessel_counts, edges), step="mid", color="0.55", alpha=0.7,
                                label="non-vessel")
                ax.step(centres, _rebin(s, s.vessel_counts, edges), where="mid", color=LABEL_COLOR, lw=1.5,
                        label="vessel (labelled)")
                ax.axvline(s.percentile(50, "vessel"), color=LABEL_COLOR, ls=":", lw=1.2, label="vessel median")
            for q, label in ((0.5, "p0.5 / p99.5 (all)"), (99.5, None)):
                ax.axvline(s.percentile(q), color="k", ls="--", lw=1, label=label)
            ax.set(yscale="log", ylim=(0.8, None), xlim=(edges[0], edges[-1]), xlabel="intensity (raw, stored value)",
                   ylabel="voxels (log scale)",
                   title=f"{g.name} ({g.split}, {g.label_kind or 'no'} labels, {len(s.positions)} of {g.shape[0]} slices)")
            ax.grid(alpha=0.25)
        legend = {text: handle for ax in axes.ravel()[:len(items)] for handle, text in zip(*ax.get_legend_handles_labels())}
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=len(legend), frameon=False)
        fig.suptitle("Intensity histograms of sampled slices")
    return fig


def block_reduce(plane: np.ndarray, d: int) -> np.ndarray:
    """A 2D plane at 1/d resolution: d x d block means of an image, max-pooled blocks of a bool mask (so thin
    vessels survive downsampling); ragged edges padded by repetition."""
    if d == 1:
        return plane
    h, w = plane.shape
    padded = np.pad(plane, ((0, -h % d), (0, -w % d)), mode="edge")
    is_mask = plane.dtype == bool
    out = np.zeros((padded.shape[0] // d, padded.shape[1] // d), bool if is_mask else np.float32)
    combine = np.logical_or if is_mask else np.add
    for i in range(d):  # d * d strided views: much faster than reducing a (h/d, d, w/d, d) reshape
        for j in range(d):
            combine(out, padded[i::d, j::d], out=out)
    return out if is_mask else out / (d * d)


@dataclass
class LabelScan:
    """One pass over a group's label slices: vessel fraction per slice, centroid, and projections (vessel voxels
    per ray on a grid max-pooled `downsample` times per axis; the maximum-intensity projection is `count > 0`)."""

    group: Group
    fraction: np.ndarray  # vessel voxels / H*W, per slice
    along_z: np.ndarray  # (H/d, W/d) counts
    along_y: np.ndarray  # (Z/d, W/d)
    along_x: np.ndarray  # (Z/d, H/d)
    downsample: int = 1
    centroid: tuple[int, int, int] | None = None  # (z, y, x) of the vessel voxels, full resolution


def scan_labels(group: Group, downsample: int | None = None) -> LabelScan:
    """Read every label slice of `group` once (streaming). `downsample` (default: the smallest factor bringing
    every axis to at most 1024) max-pools the projections; fraction and centroid are full resolution."""
    if not group.has_labels:
        raise data.DataError(f"{group.name}: this group has no labels")
    z_n, h, w = group.shape
    d = downsample or max(1, math.ceil(max(group.shape) / 1024))
    hd, wd, zd = -(-h // d), -(-w // d), -(-z_n // d)
    fraction = np.zeros(z_n)
    along_z = np.zeros((hd, wd), np.int32)
    along_y = np.zeros((zd, wd), np.int32)
    along_x = np.zeros((zd, hd), np.int32)
    block = np.zeros((hd, wd), bool)
    sums = np.zeros(4)  # voxels, z, y, x moments
    ys, xs = np.arange(h), np.arange(w)
    for z, m in enumerate(read_ahead(lambda i: label_slice(group, i), range(z_n))):
        n = int(m.sum())
        fraction[z] = n / (h * w)
        if n:
            sums += (n, z * n, (m.sum(1) * ys).sum(), (m.sum(0) * xs).sum())
            block |= block_reduce(m, d)
        if z % d == d - 1 or z == z_n - 1:
            along_z += block
            along_y[z // d] = block.sum(0)
            along_x[z // d] = block.sum(1)
            block[:] = False
    centroid = tuple(int(round(v / sums[0])) for v in sums[1:]) if sums[0] else None
    return LabelScan(group, fraction, along_z, along_y, along_x, d, centroid)  # type: ignore[arg-type]


def plot_vessel_fraction(scans: Mapping[str, LabelScan]) -> Figure:
    """Vessel fraction per slice along z, one row per labelled group (x = slice number, shared)."""
    items = list(scans.values())
    with figure_style():
        fig = Figure(figsize=(11, 1.0 + 1.9 * len(items)), layout="constrained")
        axes = fig.subplots(len(items), 1, sharex=True, squeeze=False)[:, 0]
        for ax, s in zip(axes, items):
            numbers, pct = s.group.slices, 100 * s.fraction  # slice numbers: kidney_3_dense starts at 496
            ax.fill_between(numbers, pct, step="mid", color=LABEL_COLOR, alpha=0.35, lw=0)
            ax.step(numbers, pct, where="mid", color=LABEL_COLOR, lw=1)
            empty = s.fraction == 0
            gaps = runs(empty)
            for a, b in gaps:
                ax.axvspan(numbers[a] - 0.5, numbers[b - 1] + 0.5, color="0.3", alpha=0.15, lw=0)
            spans = ", ".join(f"{numbers[a]}-{numbers[b - 1]}" for a, b in gaps[:4])
            note = f"mean {pct.mean():.3f}%, max {pct.max():.3f}%; {int(empty.sum())} of {len(pct)} slices empty"
            if spans:
                note += f" ({spans}{', ...' if len(gaps) > 4 else ''})"
            ax.text(0.005, 0.93, note, transform=ax.transAxes, va="top", fontsize=9,
                    bbox=dict(facecolor="white", alpha=0.8, lw=0))
            ax.set(ylabel="vessel %", ylim=(0, max(pct.max() * 1.35, 1e-3)))
            ax.set_title(f"{s.group.name} ({s.group.label_kind} labels, {len(numbers)} slices)", loc="right")
            ax.grid(alpha=0.25)
        axes[-1].set_xlabel("slice number (z)")
        axes[0].legend(handles=[Patch(color="0.3", alpha=0.15, label="no labelled vessel in slice")],
                       loc="upper right")
        fig.suptitle("Vessel fraction per slice along z (labels read slice by slice)")
    return fig


def _ortho_figure(shape: tuple[int, int, int], z_span: tuple[float, float], titles: Mapping[str, str]
                  ) -> tuple[Figure, dict[str, tuple[Axes, tuple, float]], Axes, float]:
    """The orthogonal layout: xy top-left, yz (z horizontal) top-right, xz below xy (covering `z_span` along z), an
    info panel bottom-right. Returns the figure, (axes, extent, aspect) per plane, the info axes and `z_stretch`."""
    z_n, h, w = shape
    zz = max(z_n, 0.25 * max(h, w))
    total_w, total_h = w + zz, h + zz
    scale = 9.0 / max(total_w, total_h)
    fig = Figure(figsize=(max(total_w * scale, 5.5) + 1.2, max(total_h * scale, 4.5) + 0.8), layout="constrained")
    gs = fig.add_gridspec(2, 2, width_ratios=[w, zz], height_ratios=[h, zz])
    stretch = z_stretch(z_n, h, w)
    note, z = stretch_note(stretch), "z (slice position)"
    panels = {"xy": (fig.add_subplot(gs[0, 0], title=titles["xy"], xlabel="x", ylabel="y"),
                     (-0.5, w - 0.5, h - 0.5, -0.5), 1.0),
              "yz": (fig.add_subplot(gs[0, 1], title=titles["yz"] + note, xlabel=z, ylabel="y"),
                     (*z_span, h - 0.5, -0.5), 1 / stretch),
              "xz": (fig.add_subplot(gs[1, 0], title=titles["xz"] + note, xlabel="x", ylabel=z),
                     (-0.5, w - 0.5, z_span[1], z_span[0]), stretch)}
    return fig, panels, fig.add_subplot(gs[1, 1]), stretch


def _info_panel(ax: Axes, image: AxesImage, label: str, text: str, y: float) -> None:
    """The orthogonal layout's bottom-right panel: a colorbar of `image` and a few lines of text at height `y`."""
    ax.axis("off")
    ax.figure.colorbar(image, ax=ax, location="left", fraction=0.12, shrink=0.9).set_label(label)
    ax.text(0.35, y, text, transform=ax.transAxes, va="center", fontsize=9)


def z_stretch(z_n: int, h: int, w: int) -> float:
    """How much to stretch z so that a thin volume's xz/yz planes are a quarter of the in-plane size (1: none)."""
    stretch = 0.25 * max(h, w) / z_n
    return stretch if stretch > 1.5 else 1.0


def stretch_note(stretch: float) -> str:
    """A title line saying how much z was stretched ("" when not)."""
    return "" if stretch == 1.0 else f"\nz stretched {stretch:.0f}x"


def display_interpolation(stretch: float) -> str:
    """Nearest-neighbour for stretched (thin) planes, else matplotlib's default antialiasing."""
    return "nearest" if stretch != 1.0 else "auto"


def plot_projections(scan: LabelScan) -> Figure:
    """Projections of the vessel mask along z, x and y in the orthogonal layout (log colour: voxels per ray)."""
    g, d = scan.group, scan.downsample
    z_n, h, w = g.shape
    titles = {"xy": "along z (top view)", "yz": "along x (side view)", "xz": "along y (front view)"}
    with figure_style():
        fig, panels, ax_info, stretch = _ortho_figure(g.shape, (-0.5, z_n - 0.5), titles)
        norm = LogNorm(vmin=1, vmax=max(2, int(max(scan.along_z.max(), scan.along_y.max(), scan.along_x.max()))))
        cmap = mpl.colormaps["inferno"].with_extremes(bad="black", under="black")
        for name, counts in (("xy", scan.along_z), ("yz", scan.along_x.T), ("xz", scan.along_y)):
            ax, extent, aspect = panels[name]
            im = ax.imshow(np.ma.masked_less(counts, 1), cmap=cmap, norm=norm, extent=extent, aspect=aspect,
                           interpolation=display_interpolation(stretch))
            ax.set_facecolor("black")
        grid = "full resolution" if d == 1 else f"max-pooled {d}x{d}x{d}"
        _info_panel(ax_info, im, "vessel voxels along the ray (log)", f"{g.name}\n{g.label_kind} labels\n"
                    f"{z_n} x {h} x {w}\n{grid}\n\nMIP = any vessel on the ray;\ncolour = how many", 0.5)
        fig.suptitle(f"{g.name}: projections of the vessel mask (streamed slice by slice)")
    return fig


@dataclass
class OrthoViews:
    """xy, xz and yz planes through `point` (z, y, x); xz/yz hold every `step`-th slice (`z_positions`)."""

    group: Group
    point: tuple[int, int, int]
    z_positions: np.ndarray
    step: int
    images: dict[str, np.ndarray]  # "xy": (H, W), "xz": (N, W) at y = point[1], "yz": (N, H) at x = point[2]
    labels: dict[str, np.ndarray] | None = None  # the same planes of the labels (bool)
    predictions: dict[str, np.ndarray] | None = None  # and of a predicted mask


def default_point(group: Group, scan: LabelScan | None = None) -> tuple[int, int, int]:
    """The vessel centroid from `scan` when it has vessels, else the centre of the volume."""
    if scan is not None and scan.centroid is not None:
        return scan.centroid
    return tuple(n // 2 for n in group.shape)  # type: ignore[return-value]


def orthogonal_views(group: Group, point: tuple[int, int, int] | None = None, max_slices: int = 128,
                     prediction: np.ndarray | None = None) -> OrthoViews:
    """Planes through `point` (default: centre) from 1 + N slice reads, N <= `max_slices`, keeping one row and one
    column of each (memory O(N * (H + W))); `prediction`, a (Z, H, W) mask or memmap, adds its planes."""
    z_n, h, w = group.shape
    z0, y0, x0 = point if point is not None else default_point(group)
    z0, y0, x0 = int(np.clip(z0, 0, z_n - 1)), int(np.clip(y0, 0, h - 1)), int(np.clip(x0, 0, w - 1))
    positions, step = plane_positions(z_n, max_slices)
    n = len(positions)
    images = {"xz": np.empty((n, w), group.dtype), "yz": np.empty((n, h), group.dtype)}
    labels = {"xz": np.zeros((n, w), bool), "yz": np.zeros((n, h), bool)} if group.has_labels else None
    for i, (img, lab) in enumerate(_images_and_labels(group, positions)):
        images["xz"][i], images["yz"][i] = img[y0], img[:, x0]
        if labels is not None:
            labels["xz"][i], labels["yz"][i] = lab[y0], lab[:, x0]
    images["xy"] = image_slice(group, z0)
    if labels is not None:
        labels["xy"] = label_slice(group, z0)
    predictions = None if prediction is None else {"xy": np.asarray(prediction[z0]) > 0,
                                                   "xz": np.asarray(prediction[positions, y0, :]) > 0,
                                                   "yz": np.asarray(prediction[positions, :, x0]) > 0}
    return OrthoViews(group, (z0, y0, x0), positions, step, images, labels, predictions)


def overlay_rgba(mask: np.ndarray, color: tuple[float, float, float], alpha: float) -> np.ndarray:
    """An RGBA float32 image: `color` where `mask`, with opacity `alpha`; transparent elsewhere."""
    out = np.zeros((*mask.shape, 4), np.float32)
    out[..., :3] = color
    out[..., 3] = np.asarray(mask, bool) * np.float32(alpha)
    return out


def mask_layers(label: np.ndarray | None, prediction: np.ndarray | None, alpha: float
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """RGBA layers for labels (red) and a prediction (cyan); with both, red marks labels the prediction missed and
    yellow (in the prediction layer) agreement."""
    pred_rgba = None if prediction is None else overlay_rgba(prediction, PREDICTION_COLOR, alpha)
    if label is None or prediction is None:
        return (None if label is None else overlay_rgba(label, LABEL_COLOR, alpha)), pred_rgba
    lab, pred = np.asarray(label, bool), np.asarray(prediction, bool)
    pred_rgba[pred & lab, :3] = BOTH_COLOR
    return overlay_rgba(lab & ~pred, LABEL_COLOR, alpha), pred_rgba


def show_plane(ax: Axes, image: np.ndarray, window: tuple[float, float], layers: Sequence[np.ndarray | None],
               **imshow: Any) -> AxesImage:
    """`image` in grey at `window` with the RGBA `layers` of `mask_layers` over it (None: not shown)."""
    im = ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], **imshow)
    for layer in layers:
        if layer is not None:
            ax.imshow(layer, **imshow)
    return im


def legend_handles(alpha: float, label: bool, prediction: bool) -> list[Patch]:
    """Legend patches for the mask layers shown (the colours `mask_layers` uses)."""
    shown = [(LABEL_COLOR, "labels")] * label + [(PREDICTION_COLOR, "prediction")] * prediction
    if label and prediction:
        shown = [(LABEL_COLOR, "labels only (missed)"), (PREDICTION_COLOR, "prediction only"), (BOTH_COLOR, "both")]
    return [Patch(color=color, alpha=alpha, label=text) for color, text in shown]


def reference_group(groups: Mapping[str, Group]) -> str:
    """The training kidney other kidneys are compared with: kidney_1_dense, else the first dense, else the first."""
    return min(groups, key=lambda n: (n != "kidney_1_dense", groups[n].label_kind != "dense"))


def plot_orthogonal(views: OrthoViews, window: tuple[float, float] | None = None, alpha: float = 0.5) -> Figure:
    """xy / yz / xz planes in the orthogonal layout, grey image, red mask overlay, dashed cross-hairs."""
    g, (z0, y0, x0) = views.group, views.point
    z_n, h, w = g.shape
    lo, hi = window if window is not None else tuple(np.percentile(views.images["xy"], [0.5, 99.5]))
    zs, step = views.z_positions, views.step
    titles = {"xy": f"xy at z={z0} (slice {g.slices[z0]:04d})", "yz": f"yz at x={x0}", "xz": f"xz at y={y0}"}
    planes = {name: [None if layer is None else layer[name] for layer in (views.images, views.labels, views.predictions)]
              for name in AXES}
    planes["yz"] = [None if a is None else a.T for a in planes["yz"]]  # z horizontal
    crosshairs = {"xy": (y0, x0), "yz": (y0, z0), "xz": (z0, x0)}  # where the other planes cut: (row, column)
    with figure_style():
        fig, panels, ax_info, _ = _ortho_figure(g.shape, (zs[0] - step / 2, zs[-1] + step / 2), titles)
        for name, (ax, extent, aspect) in panels.items():
            image, label, prediction = planes[name]
            im = show_plane(ax, image, (lo, hi), mask_layers(label, prediction, alpha), extent=extent, aspect=aspect,
                            interpolation=display_interpolation(aspect))  # xy: never stretched
            ax.axhline(crosshairs[name][0], color="yellow", ls="--", lw=0.8)
            ax.axvline(crosshairs[name][1], color="yellow", ls="--", lw=0.8)
        handles = legend_handles(alpha, views.labels is not None, views.predictions is not None)
        handles.append(Line2D([], [], color="yellow", ls="--", label="other planes"))
        ax_info.legend(handles=handles, loc="upper right", frameon=False)
        voxel = f"{g.voxel_um:g} µm voxels\n" if g.voxel_um else ""
        _info_panel(ax_info, im, "intensity (display window)", f"{g.name}\n{z_n} x {h} x {w}\n{voxel}xz, yz: "
                    f"{z_note(step, len(zs), z_n)}\nwindow {lo:.0f}..{hi:.0f}", 0.35)
        sub = "" if step == 1 else f", xz/yz from every {ordinal(step)} slice"
        fig.suptitle(f"{g.name}: orthogonal planes through (z, y, x) = {views.point}{sub}")
    return fig


def plot_domain_shift(stats: Mapping[str, IntensityStats], reference: str, others: Sequence[str], bins: int = 200) -> Figure:
    """Middle xy slice (one read) of `reference` and each of `others`, at the reference's window and at their own,
    axes in mm; below, intensity densities raw and after per-kidney percentile scaling (p0.5 -> 0, p99.5 -> 1)."""
    names = [reference, *[o for o in others if o != reference]]
    n = len(names)
    ref_window = stats[reference].window()
    with figure_style():
        fig = Figure(figsize=(max(4.0 * n, 9), 11), layout="constrained")
        gs = fig.add_gridspec(3, 2 * n, height_ratios=[1, 1, 0.9])
        ax_raw = fig.add_subplot(gs[2, :n])
        ax_norm = fig.add_subplot(gs[2, n:])
        edges = np.linspace(min(stats[n_].percentile(0.01) for n_ in names),
                            max(stats[n_].percentile(99.99) for n_ in names) + 1, bins + 1)
        scaled = np.linspace(-0.3, 1.3, bins + 1)  # bin edges in scaled intensity
        for col, name in enumerate(names):
            s, g = stats[name], stats[name].group
            z = g.shape[0] // 2
            img = image_slice(g, z)
            mm = (g.voxel_um or 1.0) / 1000
            unit = "mm" if g.voxel_um else "px"
            ext = (0, g.width * mm, g.height * mm, 0)
            for row, (win, what) in enumerate(((ref_window, f"{reference} window"), (s.window(), "own window"))):
                ax = fig.add_subplot(gs[row, 2 * col:2 * col + 2])
                im = ax.imshow(img, cmap="gray", vmin=win[0], vmax=win[1], extent=ext)
                ax.set_title(f"{name} ({g.split}, {g.voxel_um or '?'} µm)\nslice {g.slices[z]:04d}, {what}",
                             fontsize=10)
                ax.set(xlabel=f"x ({unit})", ylabel=f"y ({unit})")
                if col == n - 1:
                    fig.colorbar(im, ax=ax, fraction=0.05, label="intensity")
            style = dict(color="k", lw=2.0) if name == reference else dict(color=mpl.colormaps["tab10"](col % 10), lw=1.4)
            dens = _rebin(s, s.counts, edges)
            ax_raw.plot((edges[:-1] + edges[1:]) / 2, dens / dens.sum(), label=name, **style)
            p_lo, p_hi = s.window()
            nd = _rebin(s, s.counts, p_lo + scaled * (p_hi - p_lo))
            ax_norm.plot(scaled[:-1] + 0.8 / bins, nd / max(nd.sum(), 1), label=name, **style)
        ax_raw.set(title="raw intensity", xlabel="intensity (stored value)", ylabel="fraction of voxels")
        ax_norm.set(title="after per-kidney scaling: (v - p0.5) / (p99.5 - p0.5)", xlabel="scaled intensity",
                    ylabel="fraction of voxels")
        for ax in (ax_raw, ax_norm):
            ax.legend()
            ax.grid(alpha=0.25)
        fig.suptitle(f"Domain shift: test kidneys next to {reference} (top row: one display window for all)")
    return fig


def plot_threshold_curve(curve: pd.DataFrame, chosen: float | None, group: str) -> Figure:
    """Surface Dice (the leaderboard metric) and Dice against the probability threshold, the chosen cut marked."""
    with figure_style():
        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.add_subplot()
        ax.plot(curve["threshold"], curve["surface_dice"], "o-", label="surface Dice (tolerance 0)")
        ax.plot(curve["threshold"], curve["dice"], "s--", alpha=0.6, label="Dice")
        if chosen is not None:
            ax.axvline(chosen, color="tab:red", ls=":", label=f"chosen {chosen:.2f}")
        ax.set(xlabel="probability threshold", ylabel="score", ylim=(0, 1), title=f"Threshold curve on {group}")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_predicted_fraction(per_kidney: pd.DataFrame) -> Figure:
    """Share of voxels predicted as vessel per kidney (`vessel_fraction` column): a blank or flooded kidney shows."""
    with figure_style():
        fig = Figure(figsize=(6, 3.5), layout="constrained")
        ax = fig.add_subplot()
        ax.bar(per_kidney.index.astype(str), per_kidney["vessel_fraction"] * 100, color="tab:cyan")
        ax.set(ylabel="predicted vessel voxels (%)", title="Predicted vessel fraction per kidney")
        ax.grid(axis="y", alpha=0.3)
    return fig
