"""Sliding-window prediction over whole kidneys in bounded memory, streamed along z: a `Predictor` sweeps a `Tiler`
into `RollingSum` or `MemmapSum`. The design, memory bounds and disk use: docs/design.md ("The predictor")."""
from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import math
import multiprocessing
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lib import data, normalisation
from lib.model.network import CONFIGURATION, build_network, resolve_device, weights_mismatch
from lib.volume import chunks, save_slices

RESAMPLE_TOLERANCE = 0.02  # voxel sizes within 2% of the training spacing are not resampled
WEIGHT_CACHE = 16  # tile weights kept (one patch of float32 each)


@dataclass(frozen=True)
class ArrayGroup:
    """An in-memory volume that reads like a `data.Group` to the predictor (calibration blocks, tests)."""

    name: str
    volume: np.ndarray
    voxel_um: float | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.shape)

    def read_images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.volume[start:stop]


@dataclass
class Model:
    """A trained network and what inference needs from its plans."""

    network: torch.nn.Module
    plans: dict
    patch_size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    intensity: dict | None  # what `normalize` uses: the training set's statistics, or (None) each kidney's own
    mirror_axes: tuple[int, ...]
    device: torch.device
    model_dir: Path | None = None
    checkpoint: dict = field(default_factory=dict)  # file, epoch, mtime: identifies the weights
    normalisation: str = "dataset"  # lib.normalisation.SCHEMES, as the plans record it


class ModelFolderError(RuntimeError):
    """A model folder that cannot be predicted with; the message names the file and the problem."""


class MissingModelFileError(ModelFolderError, FileNotFoundError):
    """A file of the model folder is missing."""


def check_model_dir(model_dir: Path | str, checkpoint: str = "checkpoint_final.pth",
                    fold: int = 0) -> tuple[dict, dict, torch.nn.Module]:
    """Check a model folder before any prediction; returns (plans, checkpoint dict, network with its weights).
    Missing, damaged or mismatched files (plans vs weights, key by key) are a ModelFolderError naming the file."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MissingModelFileError(f"{model_dir}: model folder not found")
    plans_file, dataset_file = model_dir / "plans.json", model_dir / "dataset.json"
    weights_file = model_dir / f"fold_{fold}" / checkpoint
    for path in (plans_file, dataset_file, weights_file):
        if not path.is_file():
            raise MissingModelFileError(f"{path}: missing; is {model_dir} a model folder written by training?")
    plans, dataset = _read_json(plans_file), _read_json(dataset_file)
    try:
        config = plans["configurations"][CONFIGURATION]
        needed = (config["patch_size"], config["spacing"], plans["foreground_intensity_properties_per_channel"]["0"])
        intensity = needed[2]
        for key in ("mean", "std", "percentile_00_5", "percentile_99_5"):
            float(intensity[key])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFolderError(f"{plans_file}: not nnU-Net v2 plans for {CONFIGURATION} "
                               f"({type(e).__name__}: {e})") from None
    labels = dataset.get("labels") if isinstance(dataset, dict) else None
    if not isinstance(labels, dict) or len(labels) != 2:
        raise ModelFolderError(f"{dataset_file}: expected 'labels' with two classes (background, vessel), "
                               f"found {labels!r}")
    try:
        saved = torch.load(weights_file, map_location="cpu", weights_only=False)
        weights = saved["network_weights"]
    except Exception as e:  # torch raises many types for damaged archives
        raise ModelFolderError(f"{weights_file}: not a readable nnU-Net checkpoint, corrupt or truncated? "
                               f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    try:
        net = build_network(plans, CONFIGURATION, deep_supervision=False)
    except Exception as e:  # nnU-Net's builder raises KeyError/TypeError/ValueError on bad plans
        raise ModelFolderError(f"{plans_file}: cannot build the {CONFIGURATION} network "
                               f"({type(e).__name__}: {e})") from None
    problems = weights_mismatch({k: v.shape for k, v in net.state_dict().items()}, weights)
    if problems:
        raise ModelFolderError(f"{weights_file}: weights do not fit the network of {plans_file}: {problems} tensors")
    net.load_state_dict(weights)
    return plans, saved, net


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None


def load_model(model_dir: Path | str, device: str = "auto", checkpoint: str = "checkpoint_final.pth",
               fold: int = 0) -> Model:
    """Load a model folder (plans.json, dataset.json, fold_k/checkpoint_*.pth), checked first by `check_model_dir`."""
    model_dir = Path(model_dir)
    plans, saved, net = check_model_dir(model_dir, checkpoint, fold)
    weights_file = model_dir / f"fold_{fold}" / checkpoint
    mirror = saved.get("inference_allowed_mirroring_axes") or (0, 1, 2)
    info = {"file": str(weights_file), "epoch": saved.get("current_epoch"), "mtime": weights_file.stat().st_mtime}
    return from_network(net, plans, device, tuple(mirror), model_dir, info)


def checkpoint_model_dir(model_dir: Path | str, checkpoint: str = "checkpoint_best.pth", fold: int = 0) -> Path | None:
    """A second model folder `<model_dir>-<name>` holding another checkpoint of the same training (e.g. the best) as
    its checkpoint_final.pth, to ensemble with the final one; None when it is missing or holds the same weights."""
    model_dir = Path(model_dir)
    source, final = model_dir / f"fold_{fold}" / checkpoint, model_dir / f"fold_{fold}" / "checkpoint_final.pth"
    if not source.is_file() or not final.is_file():
        return None
    a, b = (torch.load(f, map_location="cpu", weights_only=False)["network_weights"] for f in (source, final))
    if a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a):
        return None
    target = model_dir.with_name(f"{model_dir.name}-{checkpoint.removeprefix('checkpoint_').removesuffix('.pth')}")
    (target / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json"):
        if (model_dir / name).is_file():
            (target / name).write_bytes((model_dir / name).read_bytes())
    (target / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(source.read_bytes())
    return target


def from_network(network: torch.nn.Module, plans: dict, device: str | torch.device = "auto",
                 mirror_axes: tuple[int, ...] = (0, 1, 2), model_dir: Path | None = None,
                 checkpoint: dict | None = None) -> Model:
    """Wrap an in-memory network (deep supervision off) and its plans for prediction."""
    device = resolve_device(device) if isinstance(device, str) else device
    config = plans["configurations"][CONFIGURATION]
    network = network.to(device).eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: let cuDNN pick its fastest kernels once
    if checkpoint is None:  # identify in-memory weights by content, so cached predictions are never mixed up
        digest = hashlib.sha1()
        for key, tensor in network.state_dict().items():
            digest.update(key.encode() + tensor.detach().cpu().numpy().tobytes())
        checkpoint = {"weights_sha1": digest.hexdigest()}
    scheme = normalisation.scheme_of(plans)
    intensity = plans["foreground_intensity_properties_per_channel"]["0"] if scheme == "dataset" else None
    return Model(network, plans, tuple(config["patch_size"]), tuple(config["spacing"]), intensity,
                 tuple(mirror_axes), device, model_dir, checkpoint, scheme)


def _source_z(j: int, z_in: int, z_out: int) -> float:
    """Where output slice j of `resample_slices` lies among the input slices (`align_corners=False`)."""
    return min(max((j + 0.5) * z_in / z_out - 0.5, 0.0), z_in - 1)


def resample_input_range(z_in: int, z_out: int, start: int, stop: int) -> tuple[int, int]:
    """The input slices [first, last + 1) that output slices [start, stop) of `resample_slices` interpolate."""
    if start >= stop:
        return 0, 0
    first, last = _source_z(start, z_in, z_out), _source_z(stop - 1, z_in, z_out)
    return int(math.floor(first)), min(int(math.floor(last)) + 1, z_in - 1) + 1


def resample_slices(slices: Iterable[np.ndarray], shape_in: tuple[int, int, int], shape_out: tuple[int, int, int],
                    start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Resample a stream of slices from `shape_in` to `shape_out` (trilinear, `align_corners=False`), holding two
    input slices: output slices [start, stop) (default all) from input slices from `resample_input_range(...)[0]` on."""
    (z_in, _, _), (z_out, h_out, w_out) = shape_in, shape_out
    stop = z_out if stop is None else stop

    def plane(s: np.ndarray) -> np.ndarray:
        if s.shape == (h_out, w_out):
            return s.astype(np.float32, copy=False)
        t = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))[None, None]
        return F.interpolate(t, size=(h_out, w_out), mode="bilinear", align_corners=False)[0, 0].numpy()

    source = iter(slices)
    held: dict[int, np.ndarray] = {}  # at most the two input slices around the current output slice
    next_in = resample_input_range(z_in, z_out, start, stop)[0]
    for j in range(start, stop):
        c = _source_z(j, z_in, z_out)
        k = int(math.floor(c))
        k1 = min(k + 1, z_in - 1)
        while next_in <= k1:
            held[next_in] = plane(next(source))
            next_in += 1
        for old in [i for i in held if i < k]:
            del held[old]
        w = c - k
        yield held[k] if w == 0 else (1 - w) * held[k] + w * held[k1]
    for _ in source:  # drain, so that a generator upstream runs to its end
        pass


TTA_MODES = ("none", "flips", "axes", "axes+flips")
# Each view is the volume with one axis first (the slicing axis); the swaps are their own inverses.
VIEWS = {"z": (0, 1, 2), "y": (1, 0, 2), "x": (2, 1, 0)}


def parse_tta(tta: bool | str) -> str:
    """One of TTA_MODES; True/False are aliases of "flips"/"none"."""
    if isinstance(tta, bool):
        return "flips" if tta else "none"
    text = str(tta).strip().lower()
    if text not in TTA_MODES:
        raise ValueError(f"unknown tta {tta!r}; expected one of {', '.join(TTA_MODES)} (or True/False)")
    return text


def tta_views(tta: bool | str) -> list[tuple[int, int, int]]:
    """The views a TTA mode predicts: z only, or z, y and x."""
    return [VIEWS[v] for v in ("zyx" if parse_tta(tta).startswith("axes") else "z")]


def tta_flips(tta: bool | str) -> bool:
    return parse_tta(tta).endswith("flips")


def resolve_devices(devices: str | Sequence[str] | None = None) -> list[torch.device]:
    """None or "auto": every visible GPU, else the CPU; otherwise each of "cpu", "cuda", "cuda:N" checked."""
    if devices is None or devices == "auto":
        n = torch.cuda.device_count()
        return [torch.device(f"cuda:{i}") for i in range(n)] if n else [torch.device("cpu")]
    out = []
    for name in [devices] if isinstance(devices, str) else devices:
        if not re.fullmatch(r"(cpu|cuda)(:\d+)?", str(name)):
            raise ValueError(f"unknown device {name!r}; expected 'cpu', 'cuda' or 'cuda:N'")
        device = torch.device(str(name))
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"unknown device {name!r}: {torch.cuda.device_count()} CUDA device(s) visible")
        out.append(device)
    if not out:
        raise ValueError("devices: empty list; give at least one device or None")
    return out


def load_models(model_dirs: str | Path | Sequence[str | Path], device: str = "auto",
                checkpoint: str = "checkpoint_final.pth", fold: int = 0) -> list[Model]:
    """One model folder or a list of them (an ensemble), checked to agree on their plans before any prediction."""
    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    if not dirs:
        raise ValueError("model_dir: empty list; give at least one model folder")
    models = [load_model(d, device, checkpoint, fold) for d in dirs]
    check_compatible(models)
    return models


def _plan_signature(model: Model) -> dict:
    labels = None
    if model.model_dir is not None and (Path(model.model_dir) / "dataset.json").is_file():
        labels = json.loads((Path(model.model_dir) / "dataset.json").read_text()).get("labels")
    return {"patch": list(model.patch_size), "spacing": [round(s, 9) for s in model.spacing_mm],
            "normalisation": model.normalisation if model.normalisation == "kidney"  # each kidney's own
            else {k: model.intensity.get(k) for k in ("mean", "std", "percentile_00_5", "percentile_99_5")},
            "classes": labels}


def check_compatible(models: Sequence[Model]) -> None:
    """An ensemble's models must share patch, classes, spacing and normalisation (else one line naming a difference)."""
    first = _plan_signature(models[0])
    for model in models[1:]:
        other = _plan_signature(model)
        for key in first:
            if first[key] != other[key]:
                raise ValueError(f"{model.model_dir or 'model'}: {key} {other[key]} disagrees with "
                                 f"{models[0].model_dir or 'the first model'}'s {first[key]}; an ensemble needs "
                                 "the same patch, classes, spacing and normalisation")


@dataclass(frozen=True)
class Grid:
    """nnU-Net's tile grid over a volume: padded to at least the patch, tile starts per axis (padded coordinates)."""

    shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    below: tuple[int, int, int]  # zero padding before the volume on each axis
    steps: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, shape: Sequence[int], patch: Sequence[int], tile_step: float) -> Grid:
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        shape, patch = tuple(int(s) for s in shape), tuple(int(p) for p in patch)
        padded = tuple(max(s, p) for s, p in zip(shape, patch))
        below = tuple((p - s) // 2 for s, p in zip(shape, padded))
        steps = compute_steps_for_sliding_window(padded, patch, tile_step)
        return cls(shape, patch, below, tuple(tuple(int(v) for v in a) for a in steps))


Predict = Callable[[torch.Tensor], torch.Tensor]  # patches (N, 1, *patch) -> vessel-minus-background logits (N, *patch)


def network_logits(model: Model, batch_size: int = 1) -> Predict:
    """The model's vessel minus background logit (linear, so averaging it averages the prediction), `batch_size`
    patches per network call, under autocast on CUDA."""
    @torch.inference_mode()
    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", enabled=model.device.type == "cuda"):
            outs = [model.network(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return torch.cat([out[:, 1].float() - out[:, 0].float() for out in outs])
    return predict


def with_flips(predict: Predict, mirror_axes: Sequence[int]) -> Predict:
    """`predict` averaged over nnU-Net's mirrorings: the plain patch plus every combination of flipped axes."""
    axes = [a + 2 for a in mirror_axes]
    variants = [()] + [c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        d = predict(torch.cat([torch.flip(x, c) if c else x for c in variants]))  # d has no channel axis
        return sum(torch.flip(d[k * n:(k + 1) * n], [a - 1 for a in c]) for k, c in enumerate(variants)) / len(variants)
    return mirrored if len(variants) > 1 else predict


def ensemble(predicts: Sequence[Predict]) -> Predict:
    """The mean logit of several predictors on the same patches (each tile read once for all models)."""
    if len(predicts) == 1:
        return predicts[0]

    def mean(x: torch.Tensor) -> torch.Tensor:
        return sum((p(x) for p in predicts[1:]), predicts[0](x)) / len(predicts)
    return mean


@dataclass(frozen=True)
class Tile:
    """One tile of a view: where it lies in the volume (volume axes, clipped to it) and in the patch (view axes)."""

    volume_box: tuple[slice, slice, slice]
    patch_box: tuple[slice, slice, slice]
    # per axis, the offsets of the tiles overlapping it (itself included): tiles with equal ones share a weight
    neighbours: tuple[tuple[int, ...], ...]


class Tiler:
    """nnU-Net's sliding window over one view of a volume (axes swapped by `view`), its tiles in rows along z."""

    def __init__(self, shape: Sequence[int], patch: Sequence[int], tile_step: float,
                 view: Sequence[int] = (0, 1, 2), device: str | torch.device = "cpu") -> None:
        self.view = tuple(view)
        self.back = tuple(int(a) for a in np.argsort(self.view))  # volume axis a is view axis back[a]
        self.grid = Grid.of([shape[a] for a in self.view], patch, tile_step)
        self.z_axis, self.depth = self.back[0], self.grid.patch[self.back[0]]  # rows' depth along the volume's z
        self.z_starts = [z0 - self.grid.below[self.z_axis] for z0 in self.grid.steps[self.z_axis]]  # < 0: padding
        self.device = torch.device(device)
        # nnU-Net's rounded steps give many neighbour patterns over a kidney: only the recent weights are kept
        self.weight = functools.lru_cache(maxsize=WEIGHT_CACHE)(self._weight)

    @functools.cached_property
    def gaussian(self) -> torch.Tensor:
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        return compute_gaussian(self.grid.patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device=self.device).float()

    def _touching(self, start: int, stop: int) -> list[int]:
        """The rows (indices of tile starts along the volume's z) whose tiles touch volume slices [start, stop)."""
        return [i for i, z0 in enumerate(self.z_starts) if z0 < stop and z0 + self.depth > start]

    def input_range(self, start: int, stop: int) -> tuple[int, int]:
        """The volume slices that the rows touching slices [start, stop) read (the z-view's input)."""
        rows = self._touching(start, stop)
        if not rows:
            return 0, 0
        return max(0, self.z_starts[rows[0]]), min(self.grid.shape[self.z_axis], self.z_starts[rows[-1]] + self.depth)

    def rows(self, start: int, stop: int) -> Iterator[tuple[list[Tile], int]]:
        """The tiles touching volume slices [start, stop), a row (same start along z) at a time, each row with the
        volume slice (at most `stop`) below which no later row adds anything."""
        for i in self._touching(start, stop):
            done = min(self.z_starts[i + 1], stop) if i + 1 < len(self.z_starts) else stop
            others = [range(len(s)) if a != self.z_axis else (i,) for a, s in enumerate(self.grid.steps)]
            yield [self._tile(t) for t in itertools.product(*others)], done

    def count(self, start: int, stop: int) -> int:
        """How many tiles `rows` gives (for progress bars), without building them."""
        per_row = math.prod(len(s) for a, s in enumerate(self.grid.steps) if a != self.z_axis)
        return len(self._touching(start, stop)) * per_row

    def _tile(self, t: tuple[int, int, int]) -> Tile:
        grid = self.grid
        lo = [grid.steps[a][t[a]] - grid.below[a] for a in range(3)]  # view coordinates, < 0 in the padding
        src = [slice(max(lo[a], 0), min(lo[a] + grid.patch[a], grid.shape[a])) for a in range(3)]
        dst = tuple(slice(s.start - lo[a], s.stop - lo[a]) for a, s in enumerate(src))
        near = tuple(tuple(o - starts[t[a]] for o in starts if abs(o - starts[t[a]]) < p)
                     for a, (starts, p) in enumerate(zip(grid.steps, grid.patch)))
        return Tile(tuple(src[self.back[a]] for a in range(3)), dst, near)

    def _weight(self, neighbours: tuple[tuple[int, ...], ...]) -> torch.Tensor:
        """A tile's Gaussian over the sum of every tile's Gaussian over its box (what nnU-Net divides by there), so an
        accumulator just adds: only the tiles overlapping it (its `neighbours`) contribute. Cached as `weight`."""
        g = self.gaussian
        overlaps = [[(slice(max(-o, 0), min(p - o, p)), slice(max(o, 0), min(o + p, p))) for o in d]
                    for d, p in zip(neighbours, g.shape)]  # per axis: (the other tile's Gaussian, this tile's box)
        total = torch.zeros_like(g)
        for (g0, t0), (g1, t1), (g2, t2) in itertools.product(*overlaps):
            total[t0, t1, t2] += g[g0, g1, g2]
        return g / total


class SliceWindow:
    """Tiles' input from a stream of volume slices (from slice `first` on), holding one patch depth of them."""

    def __init__(self, slices: Iterable[np.ndarray], first: int, shape: Sequence[int], depth: int,
                 device: torch.device) -> None:
        self.source, self.lo, self.hi = iter(slices), first, first
        self.buffer = torch.zeros((depth, *shape[1:]), device=device)

    def __call__(self, box: tuple[slice, slice, slice]) -> torch.Tensor:
        z = box[0]
        if z.start > self.lo:
            _shift_down(self.buffer, z.start - self.lo)
            self.lo = z.start
        while self.hi < z.stop:
            plane = np.ascontiguousarray(next(self.source), dtype=np.float32)
            self.buffer[self.hi - self.lo] = torch.from_numpy(plane).to(self.buffer.device)
            self.hi += 1
        return self.buffer[z.start - self.lo:z.stop - self.lo, box[1], box[2]]


class RollingSum:
    """Normalised tiles summed in memory over one row's slices, each handed out (float32) once no row adds to it."""

    def __init__(self, start: int, shape: Sequence[int], depth: int, device: torch.device) -> None:
        self.base = start
        self.buffer = torch.zeros((depth, *shape[1:]), device=device)

    def add(self, box: tuple[slice, slice, slice], values: torch.Tensor) -> None:
        self.buffer[box[0].start - self.base:box[0].stop - self.base, box[1], box[2]] += values

    def finished(self, until: int) -> Iterator[np.ndarray]:
        if until <= self.base:
            return
        for z in range(self.base, until):
            yield self.buffer[z - self.base].to("cpu", copy=True).numpy()  # the buffer is reused
        _shift_down(self.buffer, until - self.base)
        self.base = until


class MemmapSum:
    """Normalised tiles summed into a float32 (Z, H, W) array on disk (the off-axis views' logit sum)."""

    def __init__(self, total: np.ndarray) -> None:
        self.total = total

    def add(self, box: tuple[slice, slice, slice], values: torch.Tensor) -> None:
        self.total[box] += values.cpu().numpy()

    def finished(self, until: int) -> Iterator[np.ndarray]:
        return iter(())


def sweep(predict: Predict, tiler: Tiler, read: Callable, accumulator: RollingSum | MemmapSum,
          block: tuple[int, int], batch_size: int = 1, progress: tqdm | None = None) -> Iterator[np.ndarray]:
    """Every tile of `tiler` that touches volume slices [block): read, predicted, weighted and added to
    `accumulator`, row by row along z. Yields what the accumulator finishes (the z-view's logit slices)."""
    start, stop = block
    for row, done in tiler.rows(start, stop):
        for b in range(0, len(row), batch_size):
            chunk = row[b:b + batch_size]
            x = torch.zeros((len(chunk), 1, *tiler.grid.patch), device=tiler.device)
            for n, tile in enumerate(chunk):
                x[n, 0][tile.patch_box] = read(tile.volume_box).permute(*tiler.view)
            for tile, logit in zip(chunk, predict(x)):
                z = tile.volume_box[0]
                keep = slice(max(start, z.start), min(stop, z.stop))
                cut = list(tile.patch_box)
                cut[tiler.z_axis] = slice(cut[tiler.z_axis].start + keep.start - z.start,
                                          cut[tiler.z_axis].start + keep.stop - z.start)
                values = (logit * tiler.weight(tile.neighbours))[tuple(cut)].permute(*tiler.back)  # back to volume axes
                accumulator.add((keep, *tile.volume_box[1:]), values)
            if progress is not None:
                progress.update(len(chunk))
        yield from accumulator.finished(done)


def _shift_down(buffer: torch.Tensor, rows: int) -> None:
    """Move rows [rows:] of a buffer to the front, one slice at a time (no whole-buffer copy), zero the rest."""
    for r in range(buffer.shape[0] - rows):
        buffer[r].copy_(buffer[r + rows])
    buffer[max(buffer.shape[0] - rows, 0):].zero_()


def model_space_shape(shape: tuple[int, int, int], voxel_um: float | None, model: Model | float | Sequence[float],
                      resample: bool) -> tuple[int, int, int]:
    """The shape a volume takes at the training spacing (a model's, or a spacing in mm: one number for all axes, or
    one per axis); unchanged when not resampling or sizes are close."""
    if not resample or voxel_um is None:
        return shape
    spacing = model.spacing_mm if isinstance(model, Model) else model
    scale = [voxel_um / 1000 / s for s in np.broadcast_to(spacing, len(shape))]  # one spacing for all axes, or each
    if all(abs(f - 1) <= RESAMPLE_TOLERANCE for f in scale):
        return shape
    return tuple(max(1, int(round(n * f))) for n, f in zip(shape, scale))


def model_space_slices(model: Model, group: data.Group, work_shape: tuple[int, int, int], start: int = 0,
                       stop: int | None = None) -> Iterator[np.ndarray]:
    """Normalised slices [start, stop) of a group at the model's spacing (`work_shape`), read as needed."""
    stop = work_shape[0] if stop is None else stop
    resampled = work_shape != group.shape
    first, last = resample_input_range(group.shape[0], work_shape[0], start, stop) if resampled else (start, stop)
    slices = (normalisation.normalize(s, model.intensity)
              for a, b in chunks(last - first) for s in group.read_images(first + a, first + b))
    return resample_slices(slices, group.shape, work_shape, start, stop) if resampled else slices


@dataclass(frozen=True)
class Block:
    """One device's share of a kidney: model-space slices [start, stop), written to the logit-sum memmap."""

    group: data.Group
    work_shape: tuple[int, int, int]
    start: int
    stop: int
    device: str
    folder: Path  # the memmaps: logits.npy, and volume.npy (float16, normalised) when the y- and x-views read it
    worker: int = 0
    workers: int = 1


@dataclass(frozen=True)
class Predictor:
    """The model(s) (an ensemble when several) and how they run. `tta`: TTA_MODES (True/False: flips/none); `devices`
    None: the models' own, else one worker each when several; `scratch`: memmaps (default: beside the output, or temp)."""

    models: Sequence[Model]
    tile_step: float = 0.5
    tta: bool | str = "flips"
    resample: bool = True
    batch_size: int = 1
    devices: Sequence[str] | None = None
    scratch: Path | str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        models = (self.models,) if isinstance(self.models, Model) else tuple(self.models)
        check_compatible(models)
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "tta", parse_tta(self.tta))
        if self.devices is not None:
            object.__setattr__(self, "devices", tuple(str(d) for d in resolve_devices(self.devices)))

    def settings(self) -> dict:
        """The settings as JSON, the models named by their checkpoints."""
        return {"models": [m.checkpoint for m in self.models], "tile_step": self.tile_step, "tta": self.tta,
                "resample": self.resample, "batch_size": self.batch_size,
                "devices": list(self.devices or [str(self.models[0].device)]),
                "normalisation": self.models[0].normalisation}

    @property
    def views(self) -> list[tuple[int, int, int]]:
        return tta_views(self.tta)

    def tile_logits(self) -> Predict:
        """The logit of a batch of patches: each model (with nnU-Net's mirrorings for flips TTA), averaged."""
        flips = tta_flips(self.tta)
        return ensemble([with_flips(network_logits(m, self.batch_size), m.mirror_axes if flips else ())
                         for m in self.models])

    def for_kidney(self, group: normalisation.Volume) -> tuple[Predictor, dict]:
        """The predictor ready to normalise `group` ("kidney" models get its statistics; NoContrastError if a model
        leaves it no contrast) and what records the normalisation with the kidney's outputs."""
        stats = normalisation.kidney_statistics(group, self.progress)
        for model in self.models:
            normalisation.check_contrast(group.name, stats, model.intensity)
        if self.models[0].normalisation == "dataset":
            return self, {"scheme": "dataset"}
        return replace(self, models=[replace(m, intensity=stats) for m in self.models]), {"scheme": "kidney", **stats}

    def z_view_logits(self, slices: Iterable[np.ndarray], shape: tuple[int, int, int],
                      block: tuple[int, int] | None = None, progress: tqdm | None = None) -> Iterator[np.ndarray]:
        """Logits (float32) of the z-view of a (Z, H, W) volume, slices [block) (default all, equal to the whole
        volume's there), in z order, from its normalised slices given from `Tiler.input_range(*block)[0]` on."""
        model = self.models[0]
        tiler = Tiler(shape, model.patch_size, self.tile_step, device=model.device)
        start, stop = block or (0, shape[0])
        depth = min(model.patch_size[0], shape[0])
        window = SliceWindow(slices, tiler.input_range(start, stop)[0], shape, depth, model.device)
        rolling = RollingSum(start, shape, depth, model.device)
        yield from sweep(self.tile_logits(), tiler, window, rolling, (start, stop), self.batch_size, progress)

    def slices(self, group: data.Group) -> Iterator[np.ndarray]:
        """Vessel probability slices (float32, the group's H x W) of a whole group, in z order: streamed from its
        files for one device and the z-view; through memmaps under `scratch` for several views or devices."""
        work_shape = model_space_shape(group.shape, group.voxel_um, self.models[0], self.resample)
        devices = self.devices or (str(self.models[0].device),)
        if len(devices) == 1 and len(self.views) == 1:
            here = self.on_device(devices[0])
            tiles = Tiler(work_shape, here.models[0].patch_size, self.tile_step).count(0, work_shape[0])
            with tqdm(total=tiles, desc=f"predict {group.name}", unit="tile", disable=not self.progress) as bar:
                logits = here.z_view_logits(model_space_slices(here.models[0], group, work_shape), work_shape, progress=bar)
                yield from self._probabilities(logits, work_shape, group.shape, 1)
            return
        # through memmaps: the normalised volume (float16, for the y/x-views) and the logit sum (float32), each device
        # writing its z-block (a spawned worker each when several); then averaged, sigmoid, resampled back
        if self.scratch is not None:
            Path(self.scratch).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="sennet-predict-", dir=self.scratch) as tmp:
            tmp = Path(tmp)
            if len(self.views) > 1:
                save_slices(tmp / "volume.npy", work_shape, np.float16, tqdm(
                    model_space_slices(self.models[0], group, work_shape), total=work_shape[0], unit="slice",
                    desc=f"normalise {group.name}", disable=not self.progress))
            np.lib.format.open_memmap(tmp / "logits.npy", mode="w+", dtype=np.float32, shape=work_shape).flush()
            edges = np.linspace(0, work_shape[0], len(devices) + 1).round().astype(int)
            blocks = [Block(group, work_shape, int(a), int(b), d, tmp, k, len(devices))
                      for k, (a, b, d) in enumerate(zip(edges[:-1], edges[1:], devices)) if b > a]
            if len(blocks) == 1:
                self.on_device(blocks[0].device).predict_block(blocks[0])
            else:
                _run_workers(self.on_device("cpu"), blocks)
            total = np.load(tmp / "logits.npy", mmap_mode="r")
            yield from self._probabilities(total, work_shape, group.shape, len(self.views))
            del total

    def _probabilities(self, logits: Iterable[np.ndarray], work_shape: tuple[int, int, int],
                       shape: tuple[int, int, int], views: int) -> Iterator[np.ndarray]:
        probs = (torch.sigmoid(torch.from_numpy(np.asarray(logit, np.float32) / views)).numpy() for logit in logits)
        return resample_slices(probs, work_shape, shape) if work_shape != shape else probs

    def predict_block(self, block: Block) -> None:
        """One device's share: the logit sum of every view over its model-space slices into the block's memmap."""
        total = np.load(block.folder / "logits.npy", mmap_mode="r+")
        volume = np.load(block.folder / "volume.npy", mmap_mode="r") if len(self.views) > 1 else None
        model, span = self.models[0], (block.start, block.stop)
        first, last = Tiler(block.work_shape, model.patch_size, self.tile_step).input_range(*span)
        slices = (model_space_slices(model, block.group, block.work_shape, first, last) if volume is None
                  else volume[first:last])  # every view reads the same float16 volume (SliceWindow makes it float32)
        label = f"predict {block.group.name}" + (f" [{block.worker + 1}/{block.workers} {model.device}]"
                                                 if block.workers > 1 else "")

        def read(box: tuple[slice, slice, slice]) -> torch.Tensor:  # the y- and x-views' tiles, from the whole volume
            return torch.from_numpy(np.ascontiguousarray(volume[box], dtype=np.float32)).to(model.device)

        for name, view in zip("zyx", self.views):
            tiler = Tiler(block.work_shape, model.patch_size, self.tile_step, view, model.device)
            with tqdm(total=tiler.count(*span), desc=f"{label} {name}-view", unit="tile", disable=not self.progress,
                      position=block.worker) as bar:
                # the z-view yields its slices; y and x add into `total` (one batch of tiles in memory)
                logits = (self.z_view_logits(slices, block.work_shape, span, bar) if name == "z" else
                          sweep(self.tile_logits(), tiler, read, MemmapSum(total), span, self.batch_size, bar))
                for z, logit in enumerate(logits, start=block.start):
                    total[z] = logit
        total.flush()

    def on_device(self, device: str | torch.device) -> Predictor:
        """The predictor with its models on `device` (itself when they are already there)."""
        device = torch.device(device)
        if all(m.device == device for m in self.models):
            return self
        # copies: the caller's models stay where they are
        return replace(self, models=[from_network(copy.deepcopy(m.network).to("cpu"), m.plans, device, m.mirror_axes,
                                                  m.model_dir, m.checkpoint) for m in self.models])

    def predict_group(self, group: data.Group, out_file: Path | str, dtype: str = "float16",
                      overwrite: bool = False) -> np.memmap:
        """Predict a whole group into a (Z, H, W) `.npy` memmap of vessel probabilities (float16, or uint8 x255); a
        finished file of the same settings is reused, another is an error unless `overwrite`. `scratch`: beside it."""
        out_file = Path(out_file)
        record = out_file.with_suffix(".json")
        ready, normalised = self.for_kidney(group)
        models = ready.models
        settings = {"group": group.name, "shape": list(group.shape), "normalisation": normalised,
                    "model": models[0].checkpoint if len(models) == 1 else [m.checkpoint for m in models],
                    "tile_step": self.tile_step, "tta": self.tta, "dtype": dtype,  # resampling: in the shape
                    "model_space_shape": list(model_space_shape(group.shape, group.voxel_um, models[0],
                                                                self.resample))}
        if out_file.exists():
            if record.is_file() and json.loads(record.read_text()).get("settings") == settings:
                return np.load(out_file, mmap_mode="r")
            if not overwrite:
                raise FileExistsError(f"{out_file}: exists from other settings or an unfinished run; "
                                      "pass overwrite=True to replace it")
        out_file.parent.mkdir(parents=True, exist_ok=True)
        record.unlink(missing_ok=True)
        start = time.perf_counter()
        probs = replace(ready, scratch=out_file.parent if self.scratch is None else self.scratch).slices(group)
        save_slices(out_file, group.shape, dtype, (np.round(p * 255) if dtype == "uint8" else p for p in probs))
        record.write_text(json.dumps({"settings": settings, "seconds": time.perf_counter() - start}, indent=2))
        return np.load(out_file, mmap_mode="r")


def _run_workers(predictor: Predictor, blocks: list[Block]) -> None:
    """One spawned process per block (device), each with its own copy of the models; fails naming the device."""
    threads = max(1, torch.get_num_threads() // max(sum(block.device == "cpu" for block in blocks), 1))
    failures = []
    with ProcessPoolExecutor(len(blocks), multiprocessing.get_context("spawn")) as pool:
        for job, block in [(pool.submit(_worker_main, predictor, block, threads), block) for block in blocks]:
            try:
                job.result()
            except Exception as e:  # the worker's own exception, or BrokenProcessPool when one was killed
                failures.append(f"worker on {block.device} (slices {block.start}-{block.stop}): {type(e).__name__}: {e}")
    if failures:
        raise RuntimeError("; ".join(failures))


def _worker_main(predictor: Predictor, block: Block, threads: int) -> None:
    if block.device == "cpu":
        torch.set_num_threads(threads)
    predictor.on_device(block.device).predict_block(block)
