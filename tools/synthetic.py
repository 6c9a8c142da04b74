"""SYNTHETIC kidney scans in the exact layout of the competition data, for proving code paths.

Nothing here is real HiP-CT data. The volumes are procedural: a bean-shaped kidney with a 3D-coherent texture
and a brighter cortex, branching vessel trees drawn as capsules, bright glomerulus-like blobs as unlabelled
distractors, partial-volume blur and Gaussian noise. They let the loaders, training, inference, post-processing,
submission and metric code run end to end (and a model learn *something*) without the 30 GB competition
download. They are not a substitute for the real data: scores on them say nothing about the leaderboard.

What is mimicked, because the pipeline must cope with it:
- the folder layout, file names, dtypes and CSVs of `blood-vessel-segmentation/` (see /work/shared/competition.md),
  plus the hosts' `solution.csv` for the test kidneys so synthetic runs can be scored;
- sparse labels: in kidney_2 (about 65%) and kidney_3_sparse (about 85%) whole subtrees are left 0;
  kidney_3_dense holds labels only, the full tree on a contiguous slice range of kidney_3_sparse;
- the scanner looks: each kidney's raw uint16 mean and sd over the whole volume are the real kidney's (RAW_INTENSITY:
  kidney_1 26132 +- 1415, kidney_2 34853 +- 2336, kidney_3 20355 +- 888, kidney_5 8422 +- 1074, kidney_6
  39990 +- 4964), as listed in public post-competition training code derived from the 1st-place solution, the 4th
  place's data module giving consistent ranges (competition.md, "Scanner intensities differ between kidneys").
  By construction: each kidney is rendered in signal units (background 0, tissue 1), then mapped affinely with an
  offset and gain computed from the rendered signal's moments (`_STATS_SLICES` evenly spaced slices) plus the
  noise variance, so mean and sd land on the table for every preset. kidney_1_voi is not generated;
- the test-domain shift: kidney_6 is rendered at 63.08 µm (vessels thinner in voxels) with lower vessel contrast
  and twice the noise; kidneys differ otherwise mostly in offset and scale, as in the table (kidney_5 far below
  the training kidneys, kidney_6 above with a wide sd). Trees are defined in µm and rendered at each kidney's
  voxel size.

Shift suites: `write_shifted_test(out, preset, seed, kidney, look=..., noise_factor=..., voxel_um=...)` writes a
root holding one test kidney, the same tree as `generate`'s, re-rendered with another kidney's mean/sd (an affine
remap), more noise, or another voxel size (e.g. kidney_6's 63.08 µm), with its solution.csv for scoring.

The whole tree of each sparse group is written too, outside the competition layout, so refined labels can be
scored: `<root>/synthetic_truth/<group>/NNNN.tif` (uint8 0/255, zlib-compressed, the group's slice numbers).
`lib.data.discover` reads only `train/` and `test/`, so training never sees it (`lib.refine` reads it for reports).

Everything is rendered slice by slice (memory O(H*W + number of segments)), so the `full` preset writes the
real competition shapes without ever holding a volume. Same seed -> byte-identical files.

CLI: `python -m tools.synthetic --out DIR --preset {tiny,small,full} --seed N [--groups ...] [--force]`
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tifffile
from scipy import ndimage
from tqdm import tqdm

from lib import data, rle
from tools import errors

__all__ = [
    "GROUPS", "TRAIN_GROUPS", "TEST_GROUPS", "VOXEL_UM", "PRESETS", "Preset", "SyntheticSlice",
    "RAW_INTENSITY", "generate", "render_slices", "write_shifted_test", "main",
]

# ----------------------------------------------------------------------------------------------------------
# Groups, kidneys and presets
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """One folder of the competition layout and the scanned kidney (volume) it comes from."""

    volume: str  # kidney_1 ... kidney_6: kidney_3_sparse and kidney_3_dense share kidney_3
    split: str  # "train" or "test"
    images: bool  # kidney_3_dense ships labels only
    labels: str | None  # "dense", "sparse" or None (test)


_GROUPS: dict[str, _Group] = {
    "kidney_1_dense": _Group("kidney_1", "train", True, "dense"),
    "kidney_2": _Group("kidney_2", "train", True, "sparse"),
    "kidney_3_sparse": _Group("kidney_3", "train", True, "sparse"),
    "kidney_3_dense": _Group("kidney_3", "train", False, "dense"),
    "kidney_5": _Group("kidney_5", "test", True, None),
    "kidney_6": _Group("kidney_6", "test", True, None),
}
GROUPS: tuple[str, ...] = tuple(_GROUPS)
TRAIN_GROUPS: tuple[str, ...] = tuple(g for g, info in _GROUPS.items() if info.split == "train")
TEST_GROUPS: tuple[str, ...] = tuple(g for g, info in _GROUPS.items() if info.split == "test")

VOXEL_UM: dict[str, float] = {g: data.VOXEL_SIZE_UM[g] for g in GROUPS}  # the real scans' voxel sizes


# Raw uint16 mean and sd over all voxels of each real kidney, as listed in public post-competition training code
# derived from the 1st-place solution (there: per-kidney z-scoring); the 4th place's data module gives consistent
# ranges for the training kidneys (kidney_1 20243-29649, kidney_2 29784-42380, kidney_3 18966-21944). Source:
# /work/shared/competition.md, "Scanner intensities differ between kidneys". kidney_1_voi is not generated: it is
# listed as a target for `write_shifted_test(look=...)` only.
RAW_INTENSITY: dict[str, tuple[float, float]] = {
    "kidney_1": (26132.0, 1415.0), "kidney_1_voi": (33819.0, 3744.0), "kidney_2": (34853.0, 2336.0),
    "kidney_3": (20355.0, 888.0), "kidney_5": (8422.0, 1074.0), "kidney_6": (39990.0, 4964.0),
}


@dataclass(frozen=True)
class _Look:
    """How a kidney's scan looks in signal units (background 0, tissue 1 + texture, vessels + `vessel`, Gaussian
    noise of sd `noise`). The signal is mapped affinely to uint16 so that the volume lands on RAW_INTENSITY."""

    noise: float  # in signal units (tissue = 1 above background)
    vessel: float  # vessel brightness above tissue, signal units
    labelled_share: float  # share of the vessel tree (by volume) that the labels keep


# In signal units the kidneys differ little (so vessels stay as visible, in units of each kidney's own sd, as before
# the map to RAW_INTENSITY); the map then gives each its real offset and scale: kidney_5 far below the training
# kidneys, kidney_6 above them with a wide sd. kidney_6, the shifted test domain, also has lower contrast and
# twice the noise.
_LOOKS: dict[str, _Look] = {
    "kidney_1": _Look(noise=0.10, vessel=1.3, labelled_share=1.0),
    "kidney_2": _Look(noise=0.12, vessel=1.2, labelled_share=0.65),
    "kidney_3": _Look(noise=0.10, vessel=1.3, labelled_share=0.85),
    "kidney_5": _Look(noise=0.11, vessel=1.25, labelled_share=1.0),
    "kidney_6": _Look(noise=0.22, vessel=1.0, labelled_share=1.0),
}
_STATS_SLICES = 32  # evenly spaced slices (all of a thinner volume) whose signal moments set the uint16 map


@dataclass(frozen=True)
class _Shift:
    """A re-rendering of one kidney for a shift suite (see `write_shifted_test`); the default changes nothing."""

    look: str | None = None  # a key of RAW_INTENSITY: the volume's mean and sd become that kidney's
    noise_factor: float = 1.0  # noise sd times this, the uint16 map kept (unless `look` is given)
    voxel_um: float | None = None  # render the same physical box at this voxel size


_NO_SHIFT = _Shift()


@dataclass(frozen=True)
class Preset:
    """Shapes (slices, H, W) per group and the physical size of the vessel trees.

    `shapes["kidney_3_dense"]` is (number of dense slices, H, W) of kidney_3_sparse; its files are numbered
    `kidney_3_dense_first ...` as in the real data (0496..0996).
    """

    name: str
    shapes: Mapping[str, tuple[int, int, int]]
    kidney_3_dense_first: int
    root_radius_um: float  # radius of a tree root (varied by +-15% per root)
    min_radius_um: float  # branches thinner than this are not grown
    n_roots: int  # trees entering at the hilum
    glomeruli_per_mm3: float = 30.0  # candidate unlabelled bright blobs per mm^3 of box, kept in the cortex
    description: str = ""

    @property
    def kidney_3_dense_slices(self) -> range:
        """kidney_3_sparse slice numbers that kidney_3_dense labels."""
        return range(self.kidney_3_dense_first, self.kidney_3_dense_first + self.shapes["kidney_3_dense"][0])


def _preset(name: str, shapes: dict[str, tuple[int, int, int]], dense: tuple[int, int], **kw: object) -> Preset:
    first, last = dense
    h, w = shapes["kidney_3_sparse"][1:]
    shapes = dict(shapes, kidney_3_dense=(last - first + 1, h, w))
    return Preset(name=name, shapes=shapes, kidney_3_dense_first=first, **kw)  # type: ignore[arg-type]


PRESETS: dict[str, Preset] = {
    # Unit tests: every group 16-24 slices of 48-80 px, non-square, all shapes different. Seconds.
    "tiny": _preset(
        "tiny",
        {"kidney_1_dense": (20, 64, 56), "kidney_2": (18, 56, 72), "kidney_3_sparse": (24, 72, 64),
         "kidney_5": (16, 60, 68), "kidney_6": (16, 48, 54)},
        dense=(11, 22), root_radius_um=80.0, min_radius_um=40.0, n_roots=3,
        description="unit tests: ~20 slices of ~64 px per group",
    ),
    # CPU training demo: 64-128 slices of 128-192 px. kidney_6 covers a similar physical size at 63 µm.
    "small": _preset(
        "small",
        {"kidney_1_dense": (128, 176, 128), "kidney_2": (112, 136, 192), "kidney_3_sparse": (96, 176, 160),
         "kidney_5": (96, 160, 192), "kidney_6": (64, 128, 152)},
        dense=(46, 91), root_radius_um=190.0, min_radius_um=50.0, n_roots=3,
        description="CPU training demo: 64-128 slices of 128-192 px per group",
    ),
    # The real competition shapes (kidney_3_dense: 0496..0996 of kidney_3_sparse), from the data layer.
    "full": _preset(
        "full",
        {g: data.COMPETITION_SHAPES[g] for g in GROUPS if g != "kidney_3_dense"},
        dense=(data.KIDNEY_3_DENSE_SLICES.start, data.KIDNEY_3_DENSE_SLICES.stop - 1),
        root_radius_um=900.0, min_radius_um=50.0, n_roots=5,
        description="the real competition shapes, written slice by slice",
    ),
}

# ----------------------------------------------------------------------------------------------------------
# Seeding: every generator is seeded from (seed, a stable hash of a name, ...); Python's hash() is salted.
# ----------------------------------------------------------------------------------------------------------


def _rng(seed: int, name: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode()), *extra]))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation by at most `max_deg` about a random axis (Rodrigues)."""
    axis = _unit(rng.normal(size=3))
    theta = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


# ----------------------------------------------------------------------------------------------------------
# Geometry, all in µm in box coordinates p = (z, y, x); voxel i has its centre at i * voxel.
# ----------------------------------------------------------------------------------------------------------


class _Kidney:
    """A bean: a bent ellipsoid with a notch at the hilum, slightly rotated in its box.

    Kidney frame q = R^T (p - c); normalised coordinates u = q / semi along the long (l), middle (m, the hilum
    side) and short (s) axes. Inside where g(u) < 1.
    """

    def __init__(self, extent: np.ndarray, rng: np.random.Generator) -> None:
        # A thin box (e.g. tiny's 20 slices) cuts a slab through a bigger kidney instead of a flat pancake.
        self.semi = 0.42 * np.maximum(extent, 0.6 * extent.max()) * rng.uniform(0.93, 1.0, size=3)
        self.c = extent / 2 + rng.uniform(-0.03, 0.03, size=3) * extent
        self.R = _random_rotation(rng, 12.0)
        # Long axis: the longest. The short axis is z where possible, so that slices show the hilum notch
        # (and, with the long axis in-plane, the bean's profile).
        self.l = int(np.argmax(self.semi))
        rest = [k for k in (1, 2) if k != self.l]
        self.s = 0 if self.l != 0 else min(rest, key=lambda k: self.semi[k])
        self.m = next(k for k in (0, 1, 2) if k not in (self.l, self.s))
        self.side = float(rng.choice([-1.0, 1.0]))
        self.bend = rng.uniform(0.25, 0.4)
        self.notch = rng.uniform(0.8, 1.0)
        self.hm = 1.0 - self.bend / 3.0  # medial surface at the waist, where the hilum is

    def u(self, q_l: np.ndarray, q_m: np.ndarray, q_s: np.ndarray) -> tuple[np.ndarray, ...]:
        return q_l / self.semi[self.l], self.side * q_m / self.semi[self.m], q_s / self.semi[self.s]

    def g_u(self, ul: np.ndarray, um: np.ndarray, us: np.ndarray) -> np.ndarray:
        base = ul**2 + (um - self.bend * (ul**2 - 1.0 / 3.0)) ** 2 + us**2
        notch = self.notch * np.exp(-((ul / 0.35) ** 2 + ((um - self.hm) / 0.3) ** 2 + (us / 0.5) ** 2))
        return base + notch

    def g(self, p: np.ndarray) -> np.ndarray:
        """Implicit function at points (..., 3) in µm."""
        q = (p - self.c) @ self.R  # = R^T (p - c) row-wise
        return self.g_u(*self.u(q[..., self.l], q[..., self.m], q[..., self.s]))

    def frame(self, ul: float, um: float, us: float) -> np.ndarray:
        """Box point (µm) of normalised kidney coordinates."""
        q = np.zeros(3)
        q[self.l] = ul * self.semi[self.l]
        q[self.m] = self.side * um * self.semi[self.m]
        q[self.s] = us * self.semi[self.s]
        return self.c + self.R @ q

    def outward(self, p: np.ndarray) -> np.ndarray:
        """Approximate outward normal of the ellipsoid at p (unit, box frame)."""
        q = self.R.T @ (p - self.c)
        return _unit(self.R @ (q / self.semi**2))


@dataclass
class _Tree:
    """Capsule segments of the vessel trees (µm) and the branch each belongs to."""

    a: np.ndarray  # (N, 3)
    b: np.ndarray  # (N, 3)
    r: np.ndarray  # (N,)
    branch: np.ndarray  # (N,) branch id
    parent: np.ndarray  # (n_branches,) parent branch id, -1 for roots


def _grow_trees(kidney: _Kidney, preset: Preset, rng: np.random.Generator, max_branches: int = 400_000) -> _Tree:
    """Roots enter at the hilum; each branch forks in two (Murray's law r^3 = r1^3 + r2^3, Murray's optimal
    angles) with a pull towards the cortex, bends through jittered sub-segments, and stays inside the kidney."""
    g_max = 0.8  # ends stay inside the kidney (g is the squared normalised radius)
    semi_m = kidney.semi[kidney.m]
    # Branch length L0 * sqrt(r / r_root): thin vessels are long for their radius. A root-to-leaf path (a sum over
    # ~7 generations of a ~0.9 geometric series, about 5.5 L0) spans the kidney.
    len0 = max(1.2 * semi_m / 5.5, 4.0 * preset.root_radius_um)
    n_sub = 3
    a_list: list[np.ndarray] = []
    b_list: list[np.ndarray] = []
    r_list: list[float] = []
    seg_branch: list[int] = []
    parents: list[int] = []

    # Queue entries: (start, direction, radius, parent branch, fixed end or None). Roots run from just outside
    # the hilum notch to a fixed point inside the kidney; every later branch starts inside.
    queue: deque[tuple[np.ndarray, np.ndarray, float, int, np.ndarray | None]] = deque()
    spreads = np.linspace(-1.0, 1.0, preset.n_roots) if preset.n_roots > 1 else np.zeros(1)
    for spread in spreads:
        ul, us = rng.uniform(-0.04, 0.04), rng.uniform(-0.06, 0.06)  # the roots share one hilum
        start = kidney.frame(ul, kidney.hm + 0.05, us)
        end = kidney.frame(0.4 * spread + rng.uniform(-0.08, 0.08), kidney.hm - 0.45 - rng.uniform(0, 0.15),
                           us + rng.uniform(-0.15, 0.15))
        queue.append((start, _unit(end - start), preset.root_radius_um * rng.uniform(0.85, 1.15), -1, end))

    while queue and len(parents) < max_branches:  # breadth first: a parent's id is below its children's
        p, d, r, parent, end = queue.popleft()
        if r < preset.min_radius_um:
            continue
        length = (len0 * np.sqrt(r / preset.root_radius_um) * rng.uniform(0.7, 1.3) if end is None
                  else float(np.linalg.norm(end - p)))
        for _attempt in range(6 if end is None else 0):  # steer away from the kidney's surface, else shorten
            cand = p + length * d
            if kidney.g(cand) <= g_max:
                end = cand
                break
            d = _unit(d - 0.7 * kidney.outward(cand) + 0.25 * rng.normal(size=3))
        if end is None:
            lo, hi = 0.0, length
            for _ in range(12):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if kidney.g(p + mid * d) <= g_max else (lo, mid)
            if lo < 2.0 * r:
                continue
            length, end = lo, p + lo * d
        bid = len(parents)
        parents.append(parent)
        # Curvature: interior points jittered perpendicular to the branch.
        pts = [p]
        for k in range(1, n_sub):
            jitter = rng.normal(size=3)
            jitter -= jitter.dot(d) * d
            pts.append(p + (k / n_sub) * length * d + 0.08 * length * jitter)
        pts.append(end)
        for k in range(n_sub):
            a_list.append(pts[k])
            b_list.append(pts[k + 1])
            r_list.append(r * (1.0 - 0.02 * k))
            seg_branch.append(bid)
        # Fork. alpha = r2 / r1 in [0.45, 1]; Murray: r^3 = r1^3 + r2^3 and cos(theta_i) from the same law.
        d_end = _unit(pts[-1] - pts[-2])
        alpha = rng.uniform(0.45, 1.0)
        r1 = r / (1.0 + alpha**3) ** (1.0 / 3.0)
        r2 = alpha * r1
        cos1 = np.clip((r**4 + r1**4 - r2**4) / (2 * r**2 * r1**2), -1, 1)
        cos2 = np.clip((r**4 + r2**4 - r1**4) / (2 * r**2 * r2**2), -1, 1)
        e = rng.normal(size=3)
        e = _unit(e - e.dot(d_end) * d_end)
        pull = 0.1 * kidney.outward(end)
        for ri, ci, sign in ((r1, cos1, 1.0), (r2, cos2, -1.0)):
            di = _unit(ci * d_end + sign * np.sqrt(1 - ci**2) * e + pull + 0.1 * rng.normal(size=3))
            queue.append((end, di, float(ri), bid, None))

    return _Tree(
        a=np.asarray(a_list, dtype=np.float64).reshape(-1, 3),
        b=np.asarray(b_list, dtype=np.float64).reshape(-1, 3),
        r=np.asarray(r_list, dtype=np.float64),
        branch=np.asarray(seg_branch, dtype=np.int64),
        parent=np.asarray(parents, dtype=np.int64),
    )


def _glomeruli(kidney: _Kidney, extent: np.ndarray, per_mm3: float, rng: np.random.Generator,
               chunk: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Centres (µm) and radii of small bright blobs in the cortex: they look like vessel cross-sections and are
    not vessels. Sampled in chunks so that memory stays O(number kept)."""
    n_try = int(per_mm3 * np.prod(extent) / 1e9)  # extent in µm, 1 mm^3 = 1e9 µm^3
    kept: list[np.ndarray] = []
    for start in range(0, n_try, chunk):
        pts = rng.uniform(0, 1, size=(min(chunk, n_try - start), 3)) * extent
        rho = np.sqrt(np.maximum(kidney.g(pts), 0))
        kept.append(pts[(rho > 0.8) & (rho < 0.97)])
    pts = np.concatenate(kept) if kept else np.zeros((0, 3))
    return pts, rng.uniform(45.0, 75.0, size=len(pts))


def _in_box_volume(a: np.ndarray, b: np.ndarray, r: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Volume (voxels) of each cylinder a->b of radius r inside the box, by clipping the axis (Liang-Barsky)."""
    t0, t1 = np.zeros(len(a)), np.ones(len(a))
    ba = b - a
    for k, n in enumerate(shape):
        lo, hi = -0.5, n - 0.5
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = (lo - a[:, k]) / ba[:, k], (hi - a[:, k]) / ba[:, k]
        flat = ba[:, k] == 0
        inside = (a[:, k] >= lo) & (a[:, k] <= hi)
        t0 = np.where(flat, np.where(inside, t0, 1.0), np.maximum(t0, np.minimum(ta, tb)))
        t1 = np.where(flat, np.where(inside, t1, 0.0), np.minimum(t1, np.maximum(ta, tb)))
    return np.pi * r**2 * np.linalg.norm(ba, axis=1) * np.clip(t1 - t0, 0, None)


def _choose_labelled(tree: _Tree, volume: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Per-branch flag: True = labelled. Whole subtrees are dropped at random until about `1 - share` of the
    vessel volume inside the box is unlabelled, as in the sparse kidneys."""
    n = len(tree.parent)
    labelled = np.ones(n, dtype=bool)
    if share >= 1.0 or n == 0:
        return labelled
    branch_vol = np.bincount(tree.branch, weights=volume, minlength=n)
    subtree = branch_vol.copy()
    children: list[list[int]] = [[] for _ in range(n)]
    for b in range(n - 1, -1, -1):  # children have larger ids than their parents (breadth-first growth)
        p = tree.parent[b]
        if p >= 0:
            subtree[p] += subtree[b]
            children[p].append(b)
    total = branch_vol.sum()
    target, tol = (1.0 - share) * total, 0.005 * total
    removed = 0.0
    has_dropped_below = np.zeros(n, dtype=bool)
    candidate = tree.parent >= 0  # roots (trunks at the hilum) stay labelled
    while removed < target - tol:
        ok = candidate & labelled & ~has_dropped_below & (subtree > 0) & (subtree <= target + tol - removed)
        if not ok.any():
            break
        # Pick a subtree at random, bigger ones likelier, so that whole branches go missing, not just twigs.
        idx = np.flatnonzero(ok)
        b = int(rng.choice(idx, p=subtree[idx] / subtree[idx].sum()))
        stack = [b]
        while stack:
            k = stack.pop()
            labelled[k] = False
            stack.extend(children[k])
        p = tree.parent[b]
        while p >= 0 and not has_dropped_below[p]:
            has_dropped_below[p] = True
            p = tree.parent[p]
        removed += subtree[b]
    return labelled


class _Waves:
    """A sum of plane waves sum_j amp_j cos(k_j . p + phi_j), evaluated on a slice as one real matrix product:
    cos(kz z + ky y + kx x + phi) = Re(e^{i(kz z + phi)} e^{i ky y} e^{i kx x})."""

    def __init__(self, rng: np.random.Generator, n: int, wavelengths: tuple[float, float], std: float,
                 shape: tuple[int, int], voxel: float, slope: float = 0.5) -> None:
        lam = np.exp(rng.uniform(np.log(wavelengths[0]), np.log(wavelengths[1]), size=n))
        k = 2 * np.pi / lam[:, None] * np.array([_unit(v) for v in rng.normal(size=(n, 3))])
        amp = (lam / lam.max()) ** slope
        self.amp = amp * std / np.sqrt((amp**2).sum() / 2)  # the sum's standard deviation is `std`
        self.kz, self.phi = k[:, 0], rng.uniform(0, 2 * np.pi, size=n)
        y, x = np.arange(shape[0]) * voxel, np.arange(shape[1]) * voxel
        self.uy = np.exp(1j * np.outer(y, k[:, 1]))  # (H, n)
        vx = np.exp(1j * np.outer(k[:, 2], x))  # (n, W)
        self.v = np.concatenate([vx.real, vx.imag])  # (2n, W)

    def slice(self, z_um: float) -> np.ndarray:
        m = self.uy * (self.amp * np.exp(1j * (self.kz * z_um + self.phi)))
        return np.concatenate([m.real, -m.imag], axis=1) @ self.v


# ----------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------


class SyntheticSlice(NamedTuple):
    """One rendered z-slice: the uint16 image, the uint8 {0,255} labels as written (None for test kidneys)
    and the true (dense) vessel mask (bool) for checks and the solution file."""

    index: int
    image: np.ndarray
    label: np.ndarray | None
    truth: np.ndarray


def _regrid(shape: tuple[int, int, int], voxel: float, new_voxel: float) -> tuple[int, int, int]:
    """The shape that covers the same physical box at `new_voxel` (at least one voxel per axis)."""
    return tuple(max(1, round(n * voxel / new_voxel)) for n in shape)  # type: ignore[return-value]


class _Volume:
    """One synthetic kidney scan, renderable slice by slice.

    `shape` and `voxel` are the kidney's own; a `shift` may render the same physical box (same tree, same
    labelled branches, same texture) at another voxel size, with more noise or another uint16 look.
    """

    def __init__(self, preset: Preset, seed: int, volume: str, shape: tuple[int, int, int], voxel: float,
                 shift: _Shift = _NO_SHIFT) -> None:
        self.look, self.name, self.seed = _LOOKS[volume], volume, seed
        self.voxel = float(shift.voxel_um) if shift.voxel_um is not None else voxel
        self.shape = _regrid(shape, voxel, self.voxel)
        extent = np.asarray(shape, dtype=np.float64) * voxel  # the physical box, kept by a shift
        self.kidney = _Kidney(extent, _rng(seed, volume, 1))
        self._place_tree(_grow_trees(self.kidney, preset, _rng(seed, volume, 2)), shape, voxel)
        self._place_glomeruli(*_glomeruli(self.kidney, extent, preset.glomeruli_per_mm3, _rng(seed, volume, 4)))
        h, w = self.shape[1:]
        trng = _rng(seed, volume, 5)
        # Texture: tissue grain (3.5 voxels at 50 µm) up to half a kidney; boundary: lumpy outline.
        self.texture = _Waves(trng, 48, (175.0, 0.5 * float(self.kidney.semi.mean())), 0.12, (h, w), self.voxel)
        self.lumps = _Waves(trng, 8, (0.6 * float(self.kidney.semi.min()), 2.0 * float(self.kidney.semi.max())),
                            0.05, (h, w), self.voxel)
        self.background = _Waves(trng, 6, (2000.0, 4.0 * float(extent.max())), 0.04, (h, w), self.voxel)
        self.y_um = np.arange(h, dtype=np.float64)[:, None] * self.voxel
        self.x_um = np.arange(w, dtype=np.float64)[None, :] * self.voxel
        self.noise = self.look.noise * float(shift.noise_factor)
        self.target = RAW_INTENSITY[shift.look or volume]
        # Own look: the map is set with the kidney's own noise, so more noise widens the sd. A look remap sets it
        # with the noise rendered, so mean and sd land on the look's whatever the noise.
        self.offset, self.gain = self._intensity_map(self.look.noise if shift.look is None else self.noise)

    def _place_tree(self, tree: _Tree, shape: tuple[int, int, int], voxel: float) -> None:
        """Keep the segments in render voxels, sorted by first slice. Labelled branches are chosen on the kidney's
        own grid (`shape`, `voxel`), so that a shifted rendering labels the same branches."""
        box_vol = _in_box_volume(tree.a / voxel, tree.b / voxel, tree.r / voxel, shape)
        labelled = _choose_labelled(tree, box_vol, self.look.labelled_share, _rng(self.seed, self.name, 3))
        a, b, r = tree.a / self.voxel, tree.b / self.voxel, tree.r / self.voxel  # voxel units from here on
        reach = r + 0.5  # soft occupancy reaches r + 0.5
        zlo = np.minimum(a[:, 0], b[:, 0]) - reach
        zhi = np.maximum(a[:, 0], b[:, 0]) + reach
        order = np.argsort(zlo, kind="stable")
        self.a, self.b, self.r, self.zlo, self.zhi = a[order], b[order], r[order], zlo[order], zhi[order]
        self.labelled = labelled[tree.branch][order]
        self.n_vessel_segments, self.n_branches = len(r), len(tree.parent)

    def _place_glomeruli(self, centres: np.ndarray, radii: np.ndarray) -> None:
        """Glomeruli (µm) in render voxels, sorted by first slice: spheres drawn in one batch per slice."""
        gc, gr = centres / self.voxel, radii / self.voxel
        order = np.argsort(gc[:, 0] - gr - 0.5, kind="stable")
        self.gc, self.gr = gc[order], gr[order]
        self.g_zlo, self.g_zhi = self.gc[:, 0] - self.gr - 0.5, self.gc[:, 0] + self.gr + 0.5
        self.n_glomeruli = len(gr)

    def _intensity_map(self, noise: float) -> tuple[float, float]:
        """(offset, gain) of uint16 = offset + gain * signal that give the volume the mean and sd `self.target`.

        By construction, not by trial: the noiseless signal's mean and variance over all voxels are measured on
        `_STATS_SLICES` evenly spaced slices (all of a thinner volume) and the noise variance `noise`**2 is added.
        """
        d, h, w = self.shape
        zs = np.unique(np.linspace(0, d - 1, min(d, _STATS_SLICES)).round().astype(int))
        total = total_sq = 0.0
        for z in zs:
            signal = self._signal(int(z))[0].astype(np.float64)
            total += float(signal.sum())
            total_sq += float((signal * signal).sum())
        mean = total / (len(zs) * h * w)
        var = max(total_sq / (len(zs) * h * w) - mean**2, 0.0)
        gain = self.target[1] / float(np.sqrt(var + noise**2))
        return self.target[0] - gain * mean, gain

    def _signal(self, z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(noiseless signal after the point spread, true vessel mask, labelled vessel mask) of slice z."""
        h, w = self.shape[1:]
        occ = np.zeros((h, w), dtype=np.float32)
        truth = np.zeros((h, w), dtype=bool)
        label = np.zeros((h, w), dtype=bool)
        stop = int(np.searchsorted(self.zlo, z, side="right"))
        for i in np.flatnonzero(self.zhi[:stop] >= z):
            self._capsule(i, z, occ, truth, label)
        self._glomeruli(z, occ)
        k = self.kidney
        z_um = z * self.voxel
        # Kidney frame coordinates of the slice's pixels: q_k = sum_i R[i, k] (p_i - c_i).
        dz, dy, dx = z_um - k.c[0], self.y_um - k.c[1], self.x_um - k.c[2]
        q = [k.R[0, j] * dz + k.R[1, j] * dy + k.R[2, j] * dx for j in range(3)]
        ul, um, us = k.u(q[k.l], q[k.m], q[k.s])
        g = k.g_u(ul, um, us) + self.lumps.slice(z_um)
        rho = np.sqrt(np.maximum(g, 0.0))
        edge = float(k.semi.mean()) / self.voxel  # normalised radius -> voxels, for a one-voxel soft edge
        tissue = np.clip((1.0 - rho) * edge + 0.5, 0.0, 1.0)
        cortex = np.clip((rho - 0.72) / 0.08, 0.0, 1.0)
        signal = tissue * (1.0 + 0.22 * cortex + self.texture.slice(z_um)) + self.background.slice(z_um)
        signal += self.look.vessel * occ
        signal = ndimage.gaussian_filter(signal, 0.6, mode="nearest")  # point spread: partial volume
        return signal, truth, label

    def render(self, z: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uint16 image, true vessel mask, labelled vessel mask) of slice z."""
        signal, truth, label = self._signal(z)
        # The same noise field whatever the shift: a noise factor scales it, a voxel shift draws it at its shape.
        noise = _rng(self.seed, self.name, 6, z).standard_normal(signal.shape, dtype=np.float32)
        img = self.offset + self.gain * (signal + self.noise * noise)
        image = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
        return image, truth, label

    def _capsule(self, i: int, z: int, occ: np.ndarray, truth: np.ndarray, label: np.ndarray) -> None:
        """Draw capsule i into slice z on the in-plane bounding box of its part within reach of the plane."""
        a, b, r = self.a[i], self.b[i], self.r[i]
        reach = r + 0.5
        ba = b - a
        if abs(ba[0]) > 1e-9:
            t0, t1 = sorted(((z - reach - a[0]) / ba[0], (z + reach - a[0]) / ba[0]))
            t0, t1 = max(t0, 0.0), min(t1, 1.0)
        else:
            t0, t1 = 0.0, 1.0
        ya, yb, xa, xb = a[1] + t0 * ba[1], a[1] + t1 * ba[1], a[2] + t0 * ba[2], a[2] + t1 * ba[2]
        h, w = occ.shape
        y0, y1 = max(int(np.ceil(min(ya, yb) - reach)), 0), min(int(np.floor(max(ya, yb) + reach)), h - 1)
        x0, x1 = max(int(np.ceil(min(xa, xb) - reach)), 0), min(int(np.floor(max(xa, xb) + reach)), w - 1)
        if y0 > y1 or x0 > x1:
            return
        pz = z - a[0]
        py = np.arange(y0, y1 + 1, dtype=np.float64)[:, None] - a[1]
        px = np.arange(x0, x1 + 1, dtype=np.float64)[None, :] - a[2]
        len2 = ba.dot(ba)
        if len2 > 0:
            t = np.clip((pz * ba[0] + py * ba[1] + px * ba[2]) / len2, 0.0, 1.0)
            d2 = (pz - t * ba[0]) ** 2 + (py - t * ba[1]) ** 2 + (px - t * ba[2]) ** 2
        else:
            d2 = pz**2 + py**2 + px**2
        d = np.sqrt(d2)
        box = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        np.maximum(occ[box], np.clip(r - d + 0.5, 0.0, 1.0), out=occ[box])
        hard = d <= r
        truth[box] |= hard
        if self.labelled[i]:
            label[box] |= hard

    def _glomeruli(self, z: int, occ: np.ndarray, brightness: float = 0.8) -> None:
        """Draw the glomeruli that reach slice z, all at once on a small stencil around each centre."""
        stop = int(np.searchsorted(self.g_zlo, z, side="right"))
        idx = np.flatnonzero(self.g_zhi[:stop] >= z)
        if idx.size == 0:
            return
        c, r = self.gc[idx], self.gr[idx]
        k = int(np.ceil(r.max() + 0.5)) + 1
        off = np.arange(-k, k + 1)
        yy = np.rint(c[:, 1])[:, None, None] + off[None, :, None]  # (n, 2k+1, 1)
        xx = np.rint(c[:, 2])[:, None, None] + off[None, None, :]  # (n, 1, 2k+1)
        d = np.sqrt((z - c[:, 0])[:, None, None] ** 2 + (yy - c[:, 1, None, None]) ** 2
                    + (xx - c[:, 2, None, None]) ** 2)
        val = brightness * np.clip(r[:, None, None] - d + 0.5, 0.0, 1.0)
        yy, xx = np.broadcast_arrays(yy, xx)
        h, w = occ.shape
        ok = (val > 0) & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        np.maximum.at(occ, (yy[ok].astype(np.intp), xx[ok].astype(np.intp)), val[ok].astype(occ.dtype))


def _volume_shape(preset: Preset, volume: str) -> tuple[str, tuple[int, int, int]]:
    """(name of the group that carries the images, its shape) of a kidney."""
    group = next(g for g, info in _GROUPS.items() if info.volume == volume and info.images)
    return group, preset.shapes[group]


def _make_volume(preset: Preset, seed: int, volume: str, shift: _Shift = _NO_SHIFT) -> _Volume:
    group, shape = _volume_shape(preset, volume)
    return _Volume(preset, seed, volume, shape, VOXEL_UM[group], shift)


def _get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def _slice_numbers(preset: Preset, group: str) -> range:
    if group == "kidney_3_dense":
        return preset.kidney_3_dense_slices
    return range(preset.shapes[group][0])


def render_slices(preset: str | Preset, seed: int, group: str,
                  slices: Sequence[int] | None = None) -> Iterator[SyntheticSlice]:
    """Render slices of one group exactly as `generate` writes them, plus the true (dense) vessel mask.

    For checks: e.g. the share of true vessels that the sparse labels keep. `slices` are the group's own slice
    numbers (kidney_3_dense: kidney_3_sparse's numbers, and its `image` is kidney_3_sparse's); default all.
    """
    p = _get_preset(preset)
    if group not in _GROUPS:
        raise ValueError(f"unknown group {group!r}; choose from {GROUPS}")
    info = _GROUPS[group]
    vol = _make_volume(p, seed, info.volume)
    for z in (_slice_numbers(p, group) if slices is None else slices):
        image, truth, label = vol.render(int(z))
        lab = None if info.labels is None else (truth if info.labels == "dense" else label)
        yield SyntheticSlice(int(z), image, None if lab is None else lab.astype(np.uint8) * 255, truth)


# ----------------------------------------------------------------------------------------------------------
# Writing the competition layout
# ----------------------------------------------------------------------------------------------------------


TRUTH_FOLDER = "synthetic_truth"  # <root>/synthetic_truth/<sparse group>/NNNN.tif: the whole vessel tree


def _write_tif(path: Path, arr: np.ndarray) -> None:
    # metadata=None: no JSON description; no datetime tag is written unless asked -> byte-identical files.
    tifffile.imwrite(path, arr, metadata=None)


@dataclass
class _Counts:
    slices: int = 0
    voxels: int = 0
    label: int = 0
    truth: int = 0
    intensity_sum: float = 0.0
    intensity_sq: float = 0.0
    voxel_um: float = 0.0  # the voxel the kidney was rendered at
    intensity: dict[str, object] = field(default_factory=dict)  # its uint16 map
    extra: dict[str, object] = field(default_factory=dict)

    def add(self, image: np.ndarray | None, truth: np.ndarray, label: np.ndarray | None) -> None:
        self.slices += 1
        self.voxels += truth.size
        self.truth += int(truth.sum())
        if label is not None:
            self.label += int(label.sum())
        if image is not None:
            f = image.astype(np.float64)
            self.intensity_sum += float(f.sum())
            self.intensity_sq += float((f * f).sum())


def _make_dirs(root: Path, preset: Preset, groups: Sequence[str]) -> set[int]:
    """Create the folders of `groups` and return the slice numbers they need."""
    need: set[int] = set()
    for g in groups:
        need.update(_slice_numbers(preset, g))
        info = _GROUPS[g]
        base = root / info.split / g
        if info.images:
            (base / "images").mkdir(parents=True)
        if info.labels:
            (base / "labels").mkdir(parents=True)
        if info.labels == "sparse":
            (root / TRUTH_FOLDER / g).mkdir(parents=True)
    return need


def _render_volume(root: Path, preset: Preset, vol: _Volume, groups: Sequence[str], rows: Path,
                   progress: bool) -> dict[str, _Counts]:
    """Render one kidney once and write every requested group that comes from it."""
    wanted = [g for g in groups if _GROUPS[g].volume == vol.name]
    need = _make_dirs(root, preset, wanted)
    counts = {g: _Counts() for g in wanted}
    files = {g: open(rows / f"{g}.csv", "w", newline="") for g in wanted}
    try:
        writers = {g: csv.writer(f, lineterminator="\n") for g, f in files.items()}
        h, w = vol.shape[1:]
        for z in tqdm(sorted(need), desc=f"{vol.name} ({', '.join(wanted)})", unit="slice", disable=not progress,
                      leave=False):
            image, truth, label = vol.render(z)
            for g in wanted:
                if z not in _slice_numbers(preset, g):
                    continue
                info = _GROUPS[g]
                base = root / info.split / g
                name = f"{z:04d}.tif"
                if info.images:
                    _write_tif(base / "images" / name, image)
                if info.labels:
                    lab = truth if info.labels == "dense" else label
                    _write_tif(base / "labels" / name, lab.astype(np.uint8) * 255)
                    if info.labels == "sparse":
                        tifffile.imwrite(root / TRUTH_FOLDER / g / name, truth.astype(np.uint8) * 255, metadata=None,
                                         compression="zlib")
                    writers[g].writerow([f"{g}_{z:04d}", rle.encode(lab)])
                    counts[g].add(image if info.images else None, truth, lab)
                else:  # test kidney: the hosts' solution rows hold the true mask
                    writers[g].writerow([f"{g}_{z:04d}", rle.encode(truth), w, h, g, z])
                    counts[g].add(image, truth, None)
    finally:
        for f in files.values():
            f.close()
    for g in wanted:
        counts[g].voxel_um = vol.voxel
        counts[g].intensity = {"target_mean": vol.target[0], "target_sd": vol.target[1],
                               "offset": round(vol.offset, 2), "gain": round(vol.gain, 3), "noise": vol.noise,
                               "vessel_contrast": vol.look.vessel}
        counts[g].extra = {
            "tree_branches": vol.n_branches, "tree_segments": vol.n_vessel_segments, "glomeruli": vol.n_glomeruli,
        }
    return counts


def _concat_rows(parts: Sequence[Path], out: Path, header: Sequence[str]) -> None:
    with open(out, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow(header)
        for part in parts:
            with open(part, newline="") as src:
                shutil.copyfileobj(src, f)


def _write_root(root: Path, p: Preset, chosen: Sequence[str], make: Callable[[str], _Volume],
                progress: bool) -> dict[str, _Counts]:
    """Render the `chosen` groups (each kidney once, built by `make`) into `root` with the competition's CSVs and
    the synthetic solution.csv; return the per-group counts."""
    rows = root / ".rows"
    rows.mkdir()
    counts: dict[str, _Counts] = {}
    volumes = list(dict.fromkeys(_GROUPS[g].volume for g in chosen))
    for volume in tqdm(volumes, desc=f"synthetic {p.name}", unit="kidney", disable=not progress):
        counts.update(_render_volume(root, p, make(volume), chosen, rows, progress))
    train = [g for g in sorted(chosen) if _GROUPS[g].split == "train"]
    test = [g for g in chosen if _GROUPS[g].split == "test"]
    _concat_rows([rows / f"{g}.csv" for g in train], root / "train_rles.csv", ["id", "rle"])
    _concat_rows([rows / f"{g}.csv" for g in test], root / "solution.csv",
                 ["id", "rle", "width", "height", "image", "slice"])
    with open(root / "sample_submission.csv", "w", newline="") as f:
        wr = csv.writer(f, lineterminator="\n")
        wr.writerow(["id", "rle"])
        for g in test:
            wr.writerows([f"{g}_{z:04d}", rle.EMPTY] for z in _slice_numbers(p, g))
    shutil.rmtree(rows)
    return counts


@contextmanager
def _staged(out: Path, replace: bool) -> Iterator[Path]:
    """A sibling staging folder to write into, swapped in at `out` at the end (replacing a folder there only if
    `replace`), so that a failed or interrupted run never leaves a half-written dataset at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
        if out.is_dir() and replace:
            trash = out.parent / f".{out.name}.replaced-{os.getpid()}"
            out.rename(trash)
            stage.rename(out)
            shutil.rmtree(trash)
        elif out.exists():
            raise FileExistsError(f"{out} appeared while writing; refusing to write into it")
        else:
            stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; pass force=True (--force) to replace it")
        if not (out / "synthetic.json").is_file():
            # --force replaces a synthetic dataset, never a folder this module did not write (e.g. real data).
            raise FileExistsError(f"{out} is not empty and holds no synthetic.json: refusing to replace it even "
                                  "with --force; delete it yourself if that is really meant")


def _write_json(root: Path, record: Mapping[str, object]) -> None:
    (root / "synthetic.json").write_text(json.dumps(record, indent=2) + "\n")


def generate(out: Path | str, preset: str | Preset = "tiny", seed: int = 0, groups: Sequence[str] | None = None,
             force: bool = False, progress: bool = True) -> Path:
    """Write a synthetic competition root at `out` and return it.

    Refuses a non-empty `out` unless `force`, which replaces a previous synthetic dataset (one holding
    synthetic.json). Writes into a sibling staging folder first and swaps it in at the end, so a failed or
    interrupted run never leaves a half-written dataset at `out`. `groups` restricts to some of GROUPS.
    """
    p = _get_preset(preset)
    out = Path(os.path.abspath(out))
    chosen = list(GROUPS) if groups is None else list(dict.fromkeys(groups))
    unknown = [g for g in chosen if g not in _GROUPS]
    if unknown or not chosen:
        raise ValueError(f"unknown groups {unknown}; choose from {GROUPS}")
    chosen = [g for g in GROUPS if g in chosen]  # canonical order
    _check_out(out, force)
    with _staged(out, replace=True) as stage:
        counts = _write_root(stage, p, chosen, lambda volume: _make_volume(p, seed, volume), progress)
        _write_json(stage, _provenance(p, seed, chosen, counts))
    return out


def _check_shift(kidney: str, look: str | None, noise_factor: float, voxel_um: float | None) -> _Shift:
    """The shift asked for, or a ValueError saying which argument is wrong."""
    if kidney not in TEST_GROUPS:
        raise ValueError(f"kidney must be a test kidney, one of {TEST_GROUPS}; got {kidney!r}")
    if look is not None and look not in RAW_INTENSITY:
        raise ValueError(f"unknown look {look!r}; choose one of {sorted(RAW_INTENSITY)}")
    if not (np.isfinite(noise_factor) and noise_factor >= 0):
        raise ValueError(f"noise_factor must be a finite number >= 0, got {noise_factor!r}")
    if voxel_um is not None and not (np.isfinite(voxel_um) and voxel_um > 0):
        raise ValueError(f"voxel_um must be a positive number, got {voxel_um!r}")
    return _Shift(look, float(noise_factor), None if voxel_um is None else float(voxel_um))


def write_shifted_test(out: Path | str, preset: str | Preset = "tiny", seed: int = 0, kidney: str = "kidney_5", *,
                       look: str | None = None, noise_factor: float = 1.0, voxel_um: float | None = None,
                       progress: bool = False) -> Path:
    """Write a competition root at `out` holding ONE test kidney re-rendered under a shift, and return it.

    The kidney is `generate(preset, seed)`'s: same seed, same vessel tree; only the look, noise or voxel change.
    `look` (a key of RAW_INTENSITY): raw' = (raw - mean) / sd * sd_look + mean_look over the volume, applied before
    rounding to uint16 (so one rounding, then clipping). `noise_factor`: noise sd times this (the same noise field
    scaled); without `look` the kidney's own uint16 map is kept, so its sd widens a little. `voxel_um`: the same
    physical box rendered at that voxel (e.g. 63.08, kidney_6's), shape about shape * own voxel / voxel_um per
    axis, labels rendered at that voxel too. They combine. Writes test/<kidney>/images/NNNN.tif,
    sample_submission.csv, solution.csv (the true masks, what `lib.inference.score` reads), a header-only
    train_rles.csv and synthetic.json (with a "shift" record). The kidney keeps its name, so `lib.data` takes
    its voxel size from the competition's table: the shifted voxel is in synthetic.json only.
    Refuses an `out` that exists at all (FileExistsError naming it): a shift never writes into an existing root.
    """
    p = _get_preset(preset)
    shift = _check_shift(kidney, look, noise_factor, voxel_um)
    out = Path(os.path.abspath(out))
    if out.exists():
        raise FileExistsError(f"{out} already exists: a shifted test root is written only to a new folder")
    own_voxel = VOXEL_UM[kidney]
    shape = _regrid(p.shapes[kidney], own_voxel, shift.voxel_um or own_voxel)
    shifted = dataclasses.replace(p, shapes={**p.shapes, kidney: shape})
    with _staged(out, replace=False) as stage:
        counts = _write_root(stage, shifted, [kidney], lambda volume: _make_volume(p, seed, volume, shift), progress)
        record = _provenance(shifted, seed, [kidney], counts)
        record["shift"] = {"kidney": kidney, "look": look, "noise_factor": shift.noise_factor,
                           "voxel_um": shift.voxel_um or own_voxel,
                           "unshifted": {"shape": list(p.shapes[kidney]), "voxel_um": own_voxel}}
        _write_json(stage, record)
    return out


def _provenance(p: Preset, seed: int, groups: Sequence[str], counts: Mapping[str, _Counts]) -> dict[str, object]:
    record: dict[str, object] = {
        "synthetic": True,
        "note": ("SYNTHETIC data written by tools/synthetic.py (procedural kidneys and vessel trees), in the layout of "
                 "the SenNet + HOA competition, for proving code paths. Not real HiP-CT data; scores on it say "
                 "nothing about the leaderboard."),
        "preset": p.name,
        "seed": int(seed),
        "tree": {"root_radius_um": p.root_radius_um, "min_radius_um": p.min_radius_um, "n_roots": p.n_roots,
                 "glomeruli_per_mm3": p.glomeruli_per_mm3},
        "groups": {},
    }
    for g in groups:
        info, c = _GROUPS[g], counts[g]
        entry: dict[str, object] = {
            "split": info.split,
            "volume": info.volume,
            "shape": list(p.shapes[g]),
            "slices": [_slice_numbers(p, g)[0], _slice_numbers(p, g)[-1]],
            "voxel_um": c.voxel_um,
            "images": info.images,
            "labels": info.labels,
            "true_vessel_fraction": round(c.truth / c.voxels, 6),
        }
        if info.labels:
            entry["vessel_fraction"] = round(c.label / c.voxels, 6)  # of labelled voxels, as in the labels
            entry["labelled_share_of_true_vessels"] = round(c.label / max(c.truth, 1), 4)
            entry["labelled_share_target"] = _LOOKS[info.volume].labelled_share if info.labels == "sparse" else 1.0
        if info.labels == "sparse":
            entry["truth"] = f"{TRUTH_FOLDER}/{g}"  # the whole tree, for scoring refined labels only
        if info.images:
            mean = c.intensity_sum / c.voxels
            entry["intensity"] = {**c.intensity, "mean": round(mean, 1),
                                  "std": round(float(np.sqrt(max(c.intensity_sq / c.voxels - mean**2, 0))), 1)}
        entry.update(c.extra)
        record["groups"][g] = entry  # type: ignore[index]
    return record


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return seed


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tools.synthetic --out DIR --preset tiny|small|full --seed N [--groups ...] [--force]`."""
    ap = argparse.ArgumentParser(prog="python -m tools.synthetic", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="competition root to write (must not exist or be empty)")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--seed", default=0, type=_seed, help="a non-negative integer (default 0)")
    ap.add_argument("--groups", nargs="+", choices=GROUPS, default=None, metavar="GROUP",
                    help=f"write only these groups, of: {', '.join(GROUPS)}")
    ap.add_argument("--force", action="store_true", help="replace an existing synthetic dataset at --out")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    with errors.expected_errors(OSError):  # an existing --out, or a folder that cannot be written
        root = generate(args.out, args.preset, args.seed, args.groups, args.force, progress=not args.quiet)
    info = json.loads((root / "synthetic.json").read_text())
    print(f"wrote SYNTHETIC preset {args.preset!r} seed {args.seed} to {root}")
    for g, e in info["groups"].items():
        frac = e.get("vessel_fraction", e["true_vessel_fraction"])
        print(f"  {g:16s} {'x'.join(map(str, e['shape'])):>16s} @ {e['voxel_um']} um  vessel fraction {100 * frac:.3f}%"
              + (f"  (labels keep {100 * e['labelled_share_of_true_vessels']:.0f}% of true vessels)"
                 if e.get("labels") == "sparse" else ""))


if __name__ == "__main__":
    main()
