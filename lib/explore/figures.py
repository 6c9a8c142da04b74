"""Figures of slices and masks: the static views of notebooks/01_explore.ipynb (and the prediction planes
notebooks 02 and 03 show).

Plain functions, arrays in, matplotlib figures out. Every reader here touches one xy slice at a time: the
whole-volume views (intensity histograms, vessel fraction along z, projections, xz/yz planes) are built from
evenly spaced or streamed slices, so a 2279-slice kidney is never held in memory at full resolution.

- `summary_table`                          one row per group (shape, voxel size, labels, disk, memory)
- `intensity_stats`, `percentile_table`,   intensity histograms of sampled slices, vessel vs non-vessel,
  `plot_intensity_histograms`              percentiles that feed normalisation
- `scan_labels`, `plot_vessel_fraction`,   one streamed pass over a group's labels: vessel fraction per slice,
  `plot_projections`                       projections of the mask along z, y, x (MIP = count > 0), centroid
- `orthogonal_views`, `plot_orthogonal`    xy, xz, yz planes through a point with the mask overlaid
- `plot_domain_shift`                      test kidneys next to a training kidney at one display window

Figures are `matplotlib.figure.Figure` objects made without pyplot: nothing is shown twice or kept alive by
pyplot's registry; `lib.notebook.publish` saves one as PNG and displays it when running under IPython.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from lib import data, rle
from lib.data import Group
from lib.volume import runs

__all__ = [
    "AXES", "LABEL_COLOR", "PREDICTION_COLOR", "BOTH_COLOR",
    "image_slice", "label_slice", "sample_positions", "plane_positions",
    "summary_table",
    "IntensityStats", "intensity_stats", "percentile_table", "plot_intensity_histograms",
    "LabelScan", "scan_labels", "plot_vessel_fraction", "plot_projections",
    "OrthoViews", "default_point", "orthogonal_views", "plot_orthogonal",
    "reference_group", "plot_domain_shift", "overlay_rgba", "mask_layers", "legend_handles",
    "figure_style", "block_any", "ordinal", "z_note", "z_stretch", "stretch_note", "display_interpolation",
]

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

# ----------------------------------------------------------------------------------------------------------
# Reading single slices, choosing slices
# ----------------------------------------------------------------------------------------------------------


def image_slice(group: Group, index: int) -> np.ndarray:
    """The xy image at slice position `index` (one TIFF read), in the stored dtype."""
    return data.read_slice(group.image_files[index], (group.height, group.width), group.dtype)


def label_slice(group: Group, index: int) -> np.ndarray:
    """The vessel mask at slice position `index` as bool (one TIFF read or one RLE decode)."""
    if group.label_files is not None:
        return data.read_slice(group.label_files[index], (group.height, group.width), np.dtype(np.uint8)) > 0
    if group.label_rles is not None:
        return rle.decode(group.label_rles[index], (group.height, group.width)) > 0
    raise data.DataError(f"{group.name}: this group has no labels")


def sample_positions(n: int, max_count: int) -> np.ndarray:
    """At most `max_count` evenly spaced positions in [0, n), first and last included."""
    if n <= 0 or max_count <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(0, n - 1, min(n, max_count)).round().astype(np.int64))


def plane_positions(n: int, max_slices: int) -> tuple[np.ndarray, int]:
    """Every k-th slice position of [0, n), k chosen so that at most `max_slices` are read; returns (positions, k)."""
    step = max(1, math.ceil(n / max(1, max_slices)))
    count = len(range(0, n, step))
    start = (n - 1 - step * (count - 1)) // 2  # centre the sampled range
    return np.arange(start, n, step, dtype=np.int64)[:count], step


def _prefetch(read: Callable[[int], Any], positions: Sequence[int], ahead: int = READ_AHEAD) -> Iterator[Any]:
    """`read(p)` for each position in order, with up to `ahead` reads in flight on threads (bounded memory)."""
    positions = [int(p) for p in positions]
    with ThreadPoolExecutor(max(1, min(ahead, data.READ_THREADS))) as pool:
        queue: deque = deque()
        for p in positions:
            queue.append(pool.submit(read, p))
            if len(queue) > ahead:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def z_note(step: int, count: int, n: int) -> str:
    """How a z-subsampled plane was read: "all slices" or "every 18th slice (127 of 2279 read)"."""
    return "all slices" if step == 1 else f"every {ordinal(step)} slice ({count} of {n} read)"


def summary_table(groups: Mapping[str, Group]) -> pd.DataFrame:
    """`data.summary` with one "H x W" column (sizes in GB; kidney_3_dense's images are kidney_3_sparse's files)."""
    table = data.summary(dict(groups))
    table.insert(2, "H x W", [f"{h} x {w}" for h, w in zip(table["height"], table["width"])])
    return table.drop(columns=["height", "width"])


# ----------------------------------------------------------------------------------------------------------
# Intensities
# ----------------------------------------------------------------------------------------------------------


@dataclass
class IntensityStats:
    """Exact intensity histograms (one bin per value) of sampled slices, split by the labels when present."""

    group: str
    split: str
    label_kind: str | None
    voxel_um: float | None
    n_slices: int
    positions: np.ndarray  # slice positions sampled
    offset: int  # intensity of bin 0 (non-zero only for signed dtypes)
    counts: np.ndarray  # voxels per intensity value, all sampled voxels
    vessel_counts: np.ndarray | None = None  # the same for labelled vessel voxels

    @property
    def values(self) -> np.ndarray:
        return np.arange(self.offset, self.offset + len(self.counts))

    @property
    def other_counts(self) -> np.ndarray | None:
        """Non-vessel voxels (background and tissue, and in sparse groups unlabelled vessels)."""
        return None if self.vessel_counts is None else self.counts - self.vessel_counts

    def percentile(self, q: float, which: str = "all") -> float:
        """The q-th percentile (0-100) of "all", "vessel" or "other" sampled voxels; NaN when there are none."""
        counts = {"all": self.counts, "vessel": self.vessel_counts, "other": self.other_counts}[which]
        if counts is None or counts.sum() == 0:
            return float("nan")
        cum = np.cumsum(counts, dtype=np.float64)
        return float(np.searchsorted(cum, q / 100 * cum[-1], side="left") + self.offset)

    def window(self, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
        """A display window from percentiles of all sampled voxels."""
        lo, hi = self.percentile(low), self.percentile(high)
        return lo, max(hi, lo + 1)

    def mean_std(self) -> tuple[float, float]:
        v, c = self.values.astype(np.float64), self.counts.astype(np.float64)
        mean = float((v * c).sum() / c.sum())
        return mean, float(np.sqrt((c * (v - mean) ** 2).sum() / c.sum()))


def intensity_stats(group: Group, max_slices: int = 32) -> IntensityStats:
    """Histogram at most `max_slices` evenly spaced slices of `group`, one slice in memory at a time."""
    positions = sample_positions(group.shape[0], max_slices)
    info = np.iinfo(group.dtype)
    offset = int(info.min)
    nbins = int(info.max) - offset + 1
    counts = np.zeros(nbins, np.int64)
    vessel = np.zeros(nbins, np.int64) if group.has_labels else None
    read = (lambda z: (image_slice(group, z), label_slice(group, z))) if vessel is not None \
        else (lambda z: (image_slice(group, z), None))
    for img, lab in _prefetch(read, positions):
        values = img.ravel() if offset == 0 else (img.astype(np.int64) - offset).ravel()
        counts += np.bincount(values, minlength=nbins)
        if vessel is not None:
            vessel += np.bincount(values[lab.ravel()], minlength=nbins)
    return IntensityStats(group.name, group.split, group.label_kind, group.voxel_um, group.shape[0], positions,
                          offset, counts, vessel)


def percentile_table(stats: Mapping[str, IntensityStats]) -> pd.DataFrame:
    """Percentiles per group (all voxels; vessel and non-vessel voxels where labelled): inputs to normalisation."""
    rows = []
    for s in stats.values():
        mean, std = s.mean_std()
        total = int(s.counts.sum())
        row = {
            "group": s.group, "split": s.split, "labels": s.label_kind or "none", "slices_sampled": len(s.positions),
            "voxels_sampled": total, "min": s.percentile(0), "p0.5": s.percentile(0.5), "p50": s.percentile(50),
            "p99.5": s.percentile(99.5), "max": s.percentile(100), "mean": round(mean, 1), "std": round(std, 1),
            "vessel_%": np.nan, "vessel_p0.5": np.nan, "vessel_p50": np.nan, "vessel_p99.5": np.nan,
            "other_p50": np.nan,
        }
        if s.vessel_counts is not None:
            row.update({
                "vessel_%": round(100 * s.vessel_counts.sum() / max(total, 1), 3),
                "vessel_p0.5": s.percentile(0.5, "vessel"), "vessel_p50": s.percentile(50, "vessel"),
                "vessel_p99.5": s.percentile(99.5, "vessel"), "other_p50": s.percentile(50, "other"),
            })
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def _rebin(s: IntensityStats, counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.histogram(s.values, bins=edges, weights=counts)[0]


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return math.ceil(n / cols), cols


@contextmanager
def figure_style() -> Iterator[None]:
    """The project's figure style (font sizes, white background) for the figures made inside."""
    with mpl.rc_context(STYLE):
        yield


def plot_intensity_histograms(stats: Mapping[str, IntensityStats], bins: int = 200) -> Figure:
    """One panel per group: log-scale histogram of sampled intensities, vessel (red) vs non-vessel (grey)."""
    items = list(stats.values())
    rows, cols = _grid(len(items))
    with figure_style():
        fig = Figure(figsize=(5.2 * cols, 3.6 * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.ravel()[len(items):]:
            ax.set_visible(False)
        for ax, s in zip(axes.ravel(), items):
            lo, hi = s.percentile(0.01), s.percentile(99.99)
            pad = max(1.0, 0.04 * (hi - lo))
            edges = np.linspace(lo - pad, hi + pad + 1, bins + 1)
            centres = (edges[:-1] + edges[1:]) / 2
            if s.vessel_counts is None:
                ax.fill_between(centres, _rebin(s, s.counts, edges), step="mid", color="0.45", alpha=0.8,
                                label="all voxels (group without labels)")
            else:
                ax.fill_between(centres, _rebin(s, s.other_counts, edges), step="mid", color="0.55", alpha=0.7,
                                label="non-vessel")
                ax.step(centres, _rebin(s, s.vessel_counts, edges), where="mid", color=LABEL_COLOR, lw=1.5,
                        label="vessel (labelled)")
                ax.axvline(s.percentile(50, "vessel"), color=LABEL_COLOR, ls=":", lw=1.2, label="vessel median")
            for q, ls in ((0.5, "--"), (99.5, "--")):
                ax.axvline(s.percentile(q), color="k", ls=ls, lw=1)
            ax.plot([], [], "k--", lw=1, label="p0.5 / p99.5 (all)")
            ax.set_yscale("log")
            ax.set_ylim(bottom=0.8)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_xlabel("intensity (raw, stored value)")
            ax.set_ylabel("voxels (log scale)")
            ax.set_title(f"{s.group} ({s.split}, {s.label_kind or 'no'} labels, {len(s.positions)} of {s.n_slices} "
                         "slices)")
            ax.grid(alpha=0.25)
        legend: dict[str, Any] = {}
        for ax in axes.ravel()[:len(items)]:
            for handle, text in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(text, handle)
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=len(legend), frameon=False)
        fig.suptitle("Intensity histograms of sampled slices")
    return fig


# ----------------------------------------------------------------------------------------------------------
# Labels along z: vessel fraction and projections, one streamed pass
# ----------------------------------------------------------------------------------------------------------


def block_any(mask: np.ndarray, d: int) -> np.ndarray:
    """Max-pool a 2D bool mask by d x d blocks (ragged edges padded), so thin vessels survive downsampling."""
    if d == 1:
        return mask
    h, w = mask.shape
    out = np.zeros((-(-h // d), -(-w // d)), bool)
    for i in range(d):  # d * d strided views: much faster than reducing a (h/d, d, w/d, d) reshape
        for j in range(d):
            part = mask[i::d, j::d]
            out[:part.shape[0], :part.shape[1]] |= part
    return out


@dataclass
class LabelScan:
    """What one pass over a group's label slices gives: vessel fraction per slice, projections, centroid.

    Projections count vessel voxels along each ray of a grid downsampled `downsample` times per axis by
    max-pooling (1 = full resolution); their maximum-intensity projection (MIP) is `count > 0`.
    """

    group: str
    label_kind: str | None
    shape: tuple[int, int, int]
    slice_numbers: np.ndarray  # slice number of each position (kidney_3_dense starts at 496 on real data)
    fraction: np.ndarray  # vessel voxels / H*W, per slice
    along_z: np.ndarray  # (H/d, W/d) counts
    along_y: np.ndarray  # (Z/d, W/d)
    along_x: np.ndarray  # (Z/d, H/d)
    downsample: int = 1
    centroid: tuple[int, int, int] | None = None  # (z, y, x) of the vessel voxels, full resolution

    def mip(self, axis: str) -> np.ndarray:
        """Binary maximum-intensity projection along "z", "y" or "x"."""
        return {"z": self.along_z, "y": self.along_y, "x": self.along_x}[axis] > 0


def scan_labels(group: Group, max_size: int = 1024, downsample: int | None = None) -> LabelScan:
    """Read every label slice of `group` once (streaming): fraction per slice, projections, centroid.

    `downsample` (default: the smallest factor bringing every axis to at most `max_size`) max-pools the
    projections in-plane and along z; the fraction and the centroid are always full resolution.
    """
    if not group.has_labels:
        raise data.DataError(f"{group.name}: this group has no labels")
    z_n, h, w = group.shape
    d = downsample or max(1, math.ceil(max(group.shape) / max_size))
    hd, wd, zd = -(-h // d), -(-w // d), -(-z_n // d)
    fraction = np.zeros(z_n)
    along_z = np.zeros((hd, wd), np.int32)
    along_y = np.zeros((zd, wd), np.int32)
    along_x = np.zeros((zd, hd), np.int32)
    block = np.zeros((hd, wd), bool)
    sums = np.zeros(4)  # voxels, z, y, x moments
    ys, xs = np.arange(h), np.arange(w)
    for z, m in enumerate(_prefetch(lambda i: label_slice(group, i), range(z_n))):
        n = int(m.sum())
        fraction[z] = n / (h * w)
        if n:
            sums += (n, z * n, (m.sum(1) * ys).sum(), (m.sum(0) * xs).sum())
            block |= block_any(m, d)
        if z % d == d - 1 or z == z_n - 1:
            along_z += block
            along_y[z // d] = block.sum(0)
            along_x[z // d] = block.sum(1)
            block[:] = False
    centroid = tuple(int(round(v / sums[0])) for v in sums[1:]) if sums[0] else None
    return LabelScan(group.name, group.label_kind, group.shape, np.asarray(group.slices), fraction,
                     along_z, along_y, along_x, d, centroid)  # type: ignore[arg-type]


def plot_vessel_fraction(scans: Mapping[str, LabelScan]) -> Figure:
    """Vessel fraction per slice along z, one row per labelled group (x = slice number, shared)."""
    items = list(scans.values())
    with figure_style():
        fig = Figure(figsize=(11, 1.0 + 1.9 * len(items)), layout="constrained")
        axes = fig.subplots(len(items), 1, sharex=True, squeeze=False)[:, 0]
        for ax, s in zip(axes, items):
            pct = 100 * s.fraction
            ax.fill_between(s.slice_numbers, pct, step="mid", color=LABEL_COLOR, alpha=0.35, lw=0)
            ax.step(s.slice_numbers, pct, where="mid", color=LABEL_COLOR, lw=1)
            empty = s.fraction == 0
            for a, b in runs(empty):
                ax.axvspan(s.slice_numbers[a] - 0.5, s.slice_numbers[b - 1] + 0.5, color="0.3", alpha=0.15, lw=0)
            spans = ", ".join(f"{s.slice_numbers[a]}-{s.slice_numbers[b - 1]}" for a, b in runs(empty)[:4])
            note = f"mean {pct.mean():.3f}%, max {pct.max():.3f}%; {int(empty.sum())} of {len(pct)} slices empty"
            if spans:
                note += f" ({spans}{', ...' if len(runs(empty)) > 4 else ''})"
            ax.text(0.005, 0.93, note, transform=ax.transAxes, va="top", fontsize=9,
                    bbox=dict(facecolor="white", alpha=0.8, lw=0))
            ax.set_ylabel("vessel %")
            ax.set_ylim(0, max(pct.max() * 1.35, 1e-3))
            ax.set_title(f"{s.group} ({s.label_kind} labels, {s.shape[0]} slices)", loc="right")
            ax.grid(alpha=0.25)
        axes[-1].set_xlabel("slice number (z)")
        axes[0].legend(handles=[Patch(color="0.3", alpha=0.15, label="no labelled vessel in slice")],
                       loc="upper right")
        fig.suptitle("Vessel fraction per slice along z (labels read slice by slice)")
    return fig


def _ortho_figure(z_n: int, h: int, w: int, size: float = 9.0) -> tuple[Figure, Any, Any, Any, Any, float]:
    """A figure in the classic orthogonal layout: xy top-left, yz (z horizontal) top-right, xz below xy.

    Returns the figure, the four axes and the z stretch: a thin volume (the public test kidneys hold 3 slices)
    is drawn with z stretched to a quarter of the in-plane size, so the xz/yz panels stay readable.
    """
    zz = max(z_n, 0.25 * max(h, w))
    total_w, total_h = w + zz, h + zz
    scale = size / max(total_w, total_h)
    fig = Figure(figsize=(max(total_w * scale, 5.5) + 1.2, max(total_h * scale, 4.5) + 0.8), layout="constrained")
    gs = fig.add_gridspec(2, 2, width_ratios=[w, zz], height_ratios=[h, zz])
    return fig, fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[1, 0]), \
        fig.add_subplot(gs[1, 1]), z_stretch(z_n, h, w)


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
    z_n, h, w = scan.shape
    d = scan.downsample
    with figure_style():
        fig, ax_xy, ax_yz, ax_xz, ax_info, stretch = _ortho_figure(z_n, h, w)
        vmax = max(1, int(max(scan.along_z.max(), scan.along_y.max(), scan.along_x.max())))
        norm = LogNorm(vmin=1, vmax=max(vmax, 2))
        cmap = mpl.colormaps["inferno"].with_extremes(bad="black", under="black")
        kw = dict(cmap=cmap, norm=norm, aspect="equal", interpolation=display_interpolation(stretch))
        mask = lambda a: np.ma.masked_less(a, 1)  # noqa: E731
        im = ax_xy.imshow(mask(scan.along_z), extent=(-0.5, w - 0.5, h - 0.5, -0.5), **kw)
        ax_yz.imshow(mask(scan.along_x.T), extent=(-0.5, z_n - 0.5, h - 0.5, -0.5), **dict(kw, aspect=1 / stretch))
        ax_xz.imshow(mask(scan.along_y), extent=(-0.5, w - 0.5, z_n - 0.5, -0.5), **dict(kw, aspect=stretch))
        for ax in (ax_xy, ax_yz, ax_xz):
            ax.set_facecolor("black")
        ax_xy.set(title="along z (top view)", xlabel="x", ylabel="y")
        ax_yz.set(title="along x (side view)" + stretch_note(stretch), xlabel="z (slice position)", ylabel="y")
        ax_xz.set(title="along y (front view)" + stretch_note(stretch), xlabel="x", ylabel="z (slice position)")
        ax_info.axis("off")
        cb = fig.colorbar(im, ax=ax_info, location="left", fraction=0.12, shrink=0.9)
        cb.set_label("vessel voxels along the ray (log)")
        grid = "full resolution" if d == 1 else f"max-pooled {d}x{d}x{d}"
        ax_info.text(0.35, 0.5, f"{scan.group}\n{scan.label_kind} labels\n{z_n} x {h} x {w}\n{grid}\n\n"
                     "MIP = any vessel on the ray;\ncolour = how many", transform=ax_info.transAxes,
                     va="center", fontsize=9)
        fig.suptitle(f"{scan.group}: projections of the vessel mask (streamed slice by slice)")
    return fig


# ----------------------------------------------------------------------------------------------------------
# Orthogonal views through a point
# ----------------------------------------------------------------------------------------------------------


@dataclass
class OrthoViews:
    """xy, xz and yz planes through `point` (z, y, x); xz/yz hold every `step`-th slice (`z_positions`)."""

    group: str
    shape: tuple[int, int, int]
    point: tuple[int, int, int]
    z_positions: np.ndarray
    step: int
    xy: np.ndarray  # (H, W)
    xz: np.ndarray  # (N, W) at y = point[1]
    yz: np.ndarray  # (N, H) at x = point[2]
    xy_label: np.ndarray | None = None
    xz_label: np.ndarray | None = None
    yz_label: np.ndarray | None = None
    voxel_um: float | None = None
    slice_numbers: tuple[int, ...] = field(default=(), repr=False)
    xy_prediction: np.ndarray | None = None
    xz_prediction: np.ndarray | None = None
    yz_prediction: np.ndarray | None = None


def default_point(group: Group, scan: LabelScan | None = None) -> tuple[int, int, int]:
    """The vessel centroid from `scan` when it has vessels, else the centre of the volume."""
    if scan is not None and scan.centroid is not None:
        return scan.centroid
    z_n, h, w = group.shape
    return z_n // 2, h // 2, w // 2


def orthogonal_views(group: Group, point: tuple[int, int, int] | None = None, max_slices: int = 128,
                     prediction: np.ndarray | None = None) -> OrthoViews:
    """Planes through `point` (default: centre). Reads 1 + N slices, N <= `max_slices` (z subsampled).

    Only one row and one column of each z-subsampled slice are kept: memory O(N * (H + W)). `prediction`,
    a (Z, H, W) mask (array or memmap), adds the same planes of a predicted mask.
    """
    z_n, h, w = group.shape
    z0, y0, x0 = point if point is not None else default_point(group)
    z0, y0, x0 = int(np.clip(z0, 0, z_n - 1)), int(np.clip(y0, 0, h - 1)), int(np.clip(x0, 0, w - 1))
    positions, step = plane_positions(z_n, max_slices)
    labelled = group.has_labels
    xz = np.empty((len(positions), w), group.dtype)
    yz = np.empty((len(positions), h), group.dtype)
    xz_l = np.zeros((len(positions), w), bool) if labelled else None
    yz_l = np.zeros((len(positions), h), bool) if labelled else None
    def read(z):
        return ((image_slice(group, z), label_slice(group, z) if labelled else None))
    for i, (img, lab) in enumerate(_prefetch(read, positions)):
        xz[i], yz[i] = img[y0], img[:, x0]
        if labelled:
            xz_l[i], yz_l[i] = lab[y0], lab[:, x0]
    planes = {}
    if prediction is not None:
        planes = {"xy_prediction": np.asarray(prediction[z0]) > 0,
                  "xz_prediction": np.asarray(prediction[positions, y0, :]) > 0,
                  "yz_prediction": np.asarray(prediction[positions, :, x0]) > 0}
    return OrthoViews(group.name, group.shape, (z0, y0, x0), positions, step, image_slice(group, z0), xz, yz,
                      label_slice(group, z0) if labelled else None, xz_l, yz_l, group.voxel_um, group.slices,
                      **planes)


def overlay_rgba(mask: np.ndarray, color: tuple[float, float, float] = LABEL_COLOR, alpha: float = 0.5) -> np.ndarray:
    """An RGBA float32 image: `color` where `mask`, with opacity `alpha`; transparent elsewhere."""
    out = np.zeros((*mask.shape, 4), np.float32)
    out[..., :3] = color
    out[..., 3] = np.asarray(mask, bool) * np.float32(alpha)
    return out


def mask_layers(label: np.ndarray | None, prediction: np.ndarray | None, alpha: float = 0.5
                ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """RGBA layers for labels and a prediction: red labels and cyan prediction; where both are present, red
    marks labels the prediction missed, cyan predictions without a label, yellow (in the prediction layer)
    agreement."""
    if prediction is None:
        return (None if label is None else overlay_rgba(label, LABEL_COLOR, alpha)), None
    pred = np.asarray(prediction, bool)
    if label is None:
        return None, overlay_rgba(pred, PREDICTION_COLOR, alpha)
    lab = np.asarray(label, bool)
    pred_rgba = overlay_rgba(pred, PREDICTION_COLOR, alpha)
    pred_rgba[pred & lab, :3] = BOTH_COLOR
    return overlay_rgba(lab & ~pred, LABEL_COLOR, alpha), pred_rgba


def legend_handles(alpha: float, label: bool, prediction: bool) -> list[Patch]:
    """Legend patches for the mask layers shown (the colours `mask_layers` uses)."""
    if label and prediction:
        return [Patch(color=LABEL_COLOR, alpha=alpha, label="labels only (missed)"),
                Patch(color=PREDICTION_COLOR, alpha=alpha, label="prediction only"),
                Patch(color=BOTH_COLOR, alpha=alpha, label="both")]
    if prediction:
        return [Patch(color=PREDICTION_COLOR, alpha=alpha, label="prediction")]
    return [Patch(color=LABEL_COLOR, alpha=alpha, label="labels")] if label else []


def reference_group(groups: Mapping[str, Group]) -> str:
    """The training kidney other kidneys are compared with: kidney_1_dense, else the first dense, else the first."""
    if "kidney_1_dense" in groups:
        return "kidney_1_dense"
    return next((n for n, g in groups.items() if g.label_kind == "dense"), next(iter(groups)))


def plot_orthogonal(views: OrthoViews, window: tuple[float, float] | None = None, alpha: float = 0.5) -> Figure:
    """xy / yz / xz planes in the orthogonal layout, grey image, red mask overlay, dashed cross-hairs."""
    z_n, h, w = views.shape
    z0, y0, x0 = views.point
    lo, hi = window if window is not None else tuple(np.percentile(views.xy, [0.5, 99.5]))
    zs, step = views.z_positions, views.step
    z_ext = (zs[0] - step / 2, zs[-1] + step / 2)
    def t(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a.T

    panels = [
        ("xy", views.xy, views.xy_label, views.xy_prediction, (-0.5, w - 0.5, h - 0.5, -0.5)),
        ("yz", views.yz.T, t(views.yz_label), t(views.yz_prediction), (*z_ext, h - 0.5, -0.5)),
        ("xz", views.xz, views.xz_label, views.xz_prediction, (-0.5, w - 0.5, z_ext[1], z_ext[0])),
    ]
    with figure_style():
        fig, ax_xy, ax_yz, ax_xz, ax_info, stretch = _ortho_figure(z_n, h, w)
        aspects = {"xy": 1.0, "yz": 1 / stretch, "xz": stretch}
        for ax, (name, img, lab, pred, ext) in zip((ax_xy, ax_yz, ax_xz), panels):
            interp = display_interpolation(stretch) if name != "xy" else "auto"
            im = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, extent=ext, aspect=aspects[name], interpolation=interp)
            for layer in mask_layers(lab, pred, alpha):
                if layer is not None:
                    ax.imshow(layer, extent=ext, aspect=aspects[name], interpolation=interp)
        number = views.slice_numbers[z0] if views.slice_numbers else z0
        ax_xy.set(title=f"xy at z={z0} (slice {number:04d})", xlabel="x", ylabel="y")
        ax_yz.set(title=f"yz at x={x0}{stretch_note(stretch)}", xlabel="z (slice position)", ylabel="y")
        ax_xz.set(title=f"xz at y={y0}{stretch_note(stretch)}", xlabel="x", ylabel="z (slice position)")
        ax_xy.axhline(y0, color="yellow", ls="--", lw=0.8)
        ax_xy.axvline(x0, color="yellow", ls="--", lw=0.8)
        ax_yz.axvline(z0, color="yellow", ls="--", lw=0.8)
        ax_yz.axhline(y0, color="yellow", ls="--", lw=0.8)
        ax_xz.axhline(z0, color="yellow", ls="--", lw=0.8)
        ax_xz.axvline(x0, color="yellow", ls="--", lw=0.8)
        ax_info.axis("off")
        cb = fig.colorbar(im, ax=ax_info, location="left", fraction=0.12, shrink=0.9)
        cb.set_label("intensity (display window)")
        handles = legend_handles(alpha, views.xy_label is not None, views.xy_prediction is not None)
        handles.append(Line2D([], [], color="yellow", ls="--", label="other planes"))
        ax_info.legend(handles=handles, loc="upper right", frameon=False)
        voxel = f"{views.voxel_um:g} µm voxels\n" if views.voxel_um else ""
        ax_info.text(0.35, 0.35, f"{views.group}\n{z_n} x {h} x {w}\n{voxel}xz, yz: {z_note(step, len(zs), z_n)}"
                     f"\nwindow {lo:.0f}..{hi:.0f}", transform=ax_info.transAxes, va="center", fontsize=9)
        sub = "" if step == 1 else f", xz/yz from every {ordinal(step)} slice"
        fig.suptitle(f"{views.group}: orthogonal planes through (z, y, x) = {views.point}{sub}")
    return fig


# ----------------------------------------------------------------------------------------------------------
# Train/test domain shift
# ----------------------------------------------------------------------------------------------------------


def plot_domain_shift(groups: Mapping[str, Group], stats: Mapping[str, IntensityStats], reference: str,
                      others: Sequence[str], bins: int = 200) -> Figure:
    """Middle xy slice of `reference` and each of `others`, at the reference's window and at their own,
    axes in mm; below, intensity densities raw and after per-kidney percentile scaling (p0.5 -> 0, p99.5 -> 1).

    Reads one slice per kidney (the stats come from `intensity_stats`).
    """
    names = [reference, *[o for o in others if o != reference]]
    n = len(names)
    ref_window = stats[reference].window()
    with figure_style():
        fig = Figure(figsize=(max(4.0 * n, 9), 11), layout="constrained")
        gs = fig.add_gridspec(3, 2 * n, height_ratios=[1, 1, 0.9])
        for col, name in enumerate(names):
            g, s = groups[name], stats[name]
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
                ax.set_xlabel(f"x ({unit})")
                ax.set_ylabel(f"y ({unit})")
                if col == n - 1:
                    fig.colorbar(im, ax=ax, fraction=0.05, label="intensity")
        ax_raw = fig.add_subplot(gs[2, :n])
        ax_norm = fig.add_subplot(gs[2, n:])
        colors = mpl.colormaps["tab10"]
        lo = min(stats[n_].percentile(0.01) for n_ in names)
        hi = max(stats[n_].percentile(99.99) for n_ in names)
        for i, name in enumerate(names):
            s = stats[name]
            c = "k" if name == reference else colors(i % 10)
            lw = 2.0 if name == reference else 1.4
            edges = np.linspace(lo, hi + 1, bins + 1)
            dens = _rebin(s, s.counts, edges)
            ax_raw.plot((edges[:-1] + edges[1:]) / 2, dens / dens.sum(), color=c, lw=lw, label=name)
            p_lo, p_hi = s.window()
            nedges = p_lo + np.linspace(-0.3, 1.3, bins + 1) * (p_hi - p_lo)
            nd = _rebin(s, s.counts, nedges)
            ax_norm.plot(np.linspace(-0.3, 1.3, bins + 1)[:-1] + 0.8 / bins, nd / max(nd.sum(), 1), color=c, lw=lw,
                         label=name)
        ax_raw.set(title="raw intensity", xlabel="intensity (stored value)", ylabel="fraction of voxels")
        ax_norm.set(title="after per-kidney scaling: (v - p0.5) / (p99.5 - p0.5)", xlabel="scaled intensity",
                    ylabel="fraction of voxels")
        for ax in (ax_raw, ax_norm):
            ax.legend()
            ax.grid(alpha=0.25)
        fig.suptitle(f"Domain shift: test kidneys next to {reference} (top row: one display window for all)")
    return fig


# ----------------------------------------------------------------------------------------------------------
# Threshold and prediction summaries (notebook 03)
# ----------------------------------------------------------------------------------------------------------


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
