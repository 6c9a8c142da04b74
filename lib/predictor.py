"""Sliding-window prediction over whole kidneys in bounded memory, streamed along z.

The tile grid, Gaussian weighting and mirroring are nnU-Net's own (`compute_steps_for_sliding_window`,
`compute_gaussian`, all flip combinations), laid over the whole volume exactly as `nnUNetPredictor` does,
but tiles are visited one z-row at a time and a slice is written out as soon as no later tile touches it.
So the result equals nnUNetPredictor's (no seams: the grid is global) while memory holds three float32 buffers
of (patch_z + z-step) slices: peak ~ 12 * (patch_z + step_z) * H * W bytes, i.e. 18 * patch_z * H * W at the
default half-patch step (+ the network and one batch of patches), whatever the number of slices.

Two classes means softmax = sigmoid(logit_vessel - logit_background), and Gaussian averaging is linear, so
one channel (the logit difference) is accumulated instead of two.

Pipeline per kidney (each stage a generator of 2D slices): read -> normalise (`lib.normalisation`: the kidney's
own statistics, or the training set's) -> resample to the training spacing (optional) -> sliding window ->
resample back -> float16/uint8 memmap on disk.

Test-time augmentation (`tta`): "none", "flips" (nnU-Net's mirroring; True/False are aliases of flips/none),
"axes" (the network also sees the kidney with y and with x as the slicing axis, i.e. the volume transposed
z<->y and z<->x; the three views' logits are averaged) and "axes+flips". The y- and x-views need the whole z
extent under every tile, so they are not streamed in RAM but through disk: the normalised model-space volume is
written once to a float16 memmap (2 B per model-space voxel), each view reads its tiles from it and adds its
Gaussian-normalised logits (each tile divided by the overlapping tiles' Gaussian sum) into a float32 logit-sum
memmap (4 B per voxel); a last pass along z averages, applies the sigmoid and resamples back. Host RAM stays
O(patch + z-view buffers) = the z-view bound above plus one batch of tiles (a few patch volumes), whatever the
number of slices; disk 6 B per model-space voxel (kidney_5 at 50 um: ~13 GB, under `scratch`).

Ensembles: a list of models with the same plans (patch, classes, spacing, normalisation); every tile is read
once and the models' logit differences are averaged. Several devices: one spawned worker process per device
owns a contiguous z-block of the model-space volume, computes every tile that touches it (the halo the grid
needs, computed twice at block boundaries) and writes its block of the shared logit memmap, so the result
equals one device's; each worker's memory is the single-device bound.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lib import data, normalisation
from lib.model.network import CONFIGURATION, build_network, resolve_device
from lib.normalisation import normalize
from lib.volume import chunks, save_slices

RESAMPLE_TOLERANCE = 0.02  # voxel sizes within 2% of the training spacing are not resampled


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

    plans.json and dataset.json must be readable JSON with what inference needs, fold_k/<checkpoint> a readable
    nnU-Net checkpoint whose weights fit, key by key and shape by shape, the network the plans describe.
    A corrupt or truncated file is a ModelFolderError naming it.
    """
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
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items() if hasattr(v, "shape")}
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [f"{k} {found[k]} (plans: {expected[k]})" for k in expected if k in found and found[k] != expected[k]]
    problems = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in
                ((missing, "missing"), (extra, "unexpected"), (wrong, "of another shape")) if keys]
    if problems:
        raise ModelFolderError(f"{weights_file}: weights do not fit the network of {plans_file}: "
                               f"{', '.join(problems)} tensors")
    net.load_state_dict(weights)
    return plans, saved, net


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{path}: not valid JSON ({e})") from None


def load_model(model_dir: Path | str, device: str = "auto", checkpoint: str = "checkpoint_final.pth",
               fold: int = 0) -> Model:
    """Load the model folder notebook 02 writes (plans.json, dataset.json, fold_k/checkpoint_*.pth), checked
    first by `check_model_dir`."""
    model_dir = Path(model_dir)
    plans, saved, net = check_model_dir(model_dir, checkpoint, fold)
    weights_file = model_dir / f"fold_{fold}" / checkpoint
    mirror = saved.get("inference_allowed_mirroring_axes") or (0, 1, 2)
    info = {"file": str(weights_file), "epoch": saved.get("current_epoch"), "mtime": weights_file.stat().st_mtime}
    return from_network(net, plans, device, tuple(mirror), model_dir, info)


def checkpoint_model_dir(model_dir: Path | str, checkpoint: str = "checkpoint_best.pth", fold: int = 0) -> Path | None:
    """A second model folder `<model_dir>-<name>` holding another checkpoint of the same training (e.g. the best
    on validation patches) as its checkpoint_final.pth, so that an ensemble of the two exists. None when that
    checkpoint is missing or holds the same weights as the final one (nothing to ensemble)."""
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
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        checkpoint = {"weights_sha1": digest.hexdigest()}
    scheme = normalisation.scheme_of(plans)
    intensity = plans["foreground_intensity_properties_per_channel"]["0"] if scheme == "dataset" else None
    return Model(network, plans, tuple(config["patch_size"]), tuple(config["spacing"]), intensity,
                 tuple(mirror_axes), device, model_dir, checkpoint, scheme)


def for_kidney(models: Sequence[Model], group: normalisation.Volume, progress: bool = False
               ) -> tuple[list[Model], dict]:
    """The models ready to normalise `group`: "kidney" models get its own statistics (one streaming pass, cached);
    every model's normalisation is checked to leave the kidney some contrast (NoContrastError naming it otherwise).
    Returns the models and what records the normalisation with the kidney's outputs."""
    stats = normalisation.kidney_statistics(group, progress)
    for model in models:
        normalisation.check_contrast(group.name, stats, model.intensity)
    if models[0].normalisation == "dataset":
        return list(models), {"scheme": "dataset"}
    return [replace(m, intensity=stats) for m in models], {"scheme": "kidney", **stats}


def resample_input_range(z_in: int, z_out: int, start: int, stop: int) -> tuple[int, int]:
    """The input slices [first, last + 1) that output slices [start, stop) of `resample_slices` interpolate."""
    def centre(j: int) -> float:
        return min(max((j + 0.5) * z_in / z_out - 0.5, 0.0), z_in - 1)
    if start >= stop:
        return 0, 0
    return int(math.floor(centre(start))), min(int(math.floor(centre(stop - 1))) + 1, z_in - 1) + 1


def resample_slices(slices: Iterable[np.ndarray], shape_in: tuple[int, int, int], shape_out: tuple[int, int, int],
                    start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Resample a stream of slices from `shape_in` to `shape_out`: linear along z, bilinear in-plane.

    Yields output slices [start, stop) (default all) from input slices that begin at
    `resample_input_range(...)[0]`. Holds two input slices at a time. Coordinates follow `align_corners=False`.
    """
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
        c = min(max((j + 0.5) * z_in / z_out - 0.5, 0.0), z_in - 1)
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


# ------------------------------------------------------------------------------------------ settings checked early

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
        try:
            device = torch.device(str(name))
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {name!r}; expected 'cpu', 'cuda' or 'cuda:N'")
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
    """An ensemble's models must share patch, classes, spacing and normalisation: one line naming the first
    difference otherwise."""
    first = _plan_signature(models[0])
    for model in models[1:]:
        other = _plan_signature(model)
        for key in first:
            if first[key] != other[key]:
                raise ValueError(f"{model.model_dir or 'model'}: {key} {other[key]} disagrees with "
                                 f"{models[0].model_dir or 'the first model'}'s {first[key]}; an ensemble needs "
                                 "the same patch, classes, spacing and normalisation")


def _as_models(model: Model | Sequence[Model]) -> list[Model]:
    models = [model] if isinstance(model, Model) else list(model)
    check_compatible(models)
    return models


# ------------------------------------------------------------------------------------------------- the tile grid


@dataclass(frozen=True)
class Grid:
    """nnU-Net's tile grid over a volume: padded to at least the patch, tile starts per axis (padded coordinates)."""

    shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    padded: tuple[int, int, int]
    below: tuple[int, int, int]  # zero padding before the volume on each axis
    steps: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, shape: Sequence[int], patch: Sequence[int], tile_step: float) -> Grid:
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        shape, patch = tuple(int(s) for s in shape), tuple(int(p) for p in patch)
        padded = tuple(max(s, p) for s, p in zip(shape, patch))
        below = tuple((p - s) // 2 for s, p in zip(shape, padded))
        steps = compute_steps_for_sliding_window(padded, patch, tile_step)
        return cls(shape, patch, padded, below, tuple(tuple(int(v) for v in a) for a in steps))

    def rows_touching(self, start: int, stop: int) -> range:
        """The z-rows of tiles that touch volume slices [start, stop)."""
        s, p, b = self.steps[0], self.patch[0], self.below[0]
        rows = [i for i, z0 in enumerate(s) if z0 < stop + b and z0 + p > start + b]
        return range(rows[0], rows[-1] + 1) if rows else range(0)

    def input_range(self, start: int, stop: int) -> tuple[int, int]:
        """The volume slices the z-rows touching [start, stop) read."""
        rows = self.rows_touching(start, stop)
        if not rows:
            return 0, 0
        b = self.below[0]
        return max(0, self.steps[0][rows[0]] - b), min(self.shape[0], self.steps[0][rows[-1]] + self.patch[0] - b)


def _gaussian(patch: Sequence[int], device: torch.device) -> torch.Tensor:
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    return compute_gaussian(tuple(patch), sigma_scale=1.0 / 8, value_scaling_factor=10, device=device).float()


def _neighbour_offsets(grid: Grid, tile: tuple[int, int, int]) -> tuple[tuple[int, ...], ...]:
    """Per axis, the start offsets of the tiles that overlap `tile` (itself included): all its weight sum depends
    on, so tiles with the same offsets (every interior tile) share one."""
    return tuple(tuple(o - starts[tile[a]] for o in starts if abs(o - starts[tile[a]]) < p)
                 for a, (starts, p) in enumerate(zip(grid.steps, grid.patch)))


def _tile_weight_sum(offsets: tuple[tuple[int, ...], ...], gaussian: torch.Tensor) -> torch.Tensor:
    """The sum of every tile's Gaussian over one tile's box (what nnU-Net divides by there), so that each tile
    can be normalised on its own: only the tiles overlapping it (`_neighbour_offsets`) contribute."""
    overlaps = []  # per axis: (slice of the other tile's Gaussian, slice of this tile's box)
    for d, p in zip(offsets, gaussian.shape):
        overlaps.append([(slice(max(-o, 0), min(p - o, p)), slice(max(o, 0), min(o + p, p))) for o in d])
    total = torch.zeros_like(gaussian)
    for (g0, t0), (g1, t1), (g2, t2) in itertools.product(*overlaps):
        total[t0, t1, t2] += gaussian[g0, g1, g2]
    return total


# ----------------------------------------------------------------------------------------- the network on tiles


@torch.inference_mode()
def _predict_logit_difference(model: Model | Sequence[Model], x: torch.Tensor, tta: bool | str,
                              batch_size: int = 1) -> torch.Tensor:
    """Vessel minus background logit of a batch of patches, averaged over mirrorings as nnU-Net does
    (the plain prediction plus every combination of flipped axes) and over the models of an ensemble,
    `batch_size` patches per network call."""
    models = [model] if isinstance(model, Model) else list(model)
    flips = tta_flips(tta)
    n = x.shape[0]
    total = None
    for m in models:
        axes = [a + 2 for a in m.mirror_axes] if flips else []
        variants = [()] + [c for k in range(1, len(axes) + 1) for c in itertools.combinations(axes, k)]
        inputs = torch.cat([torch.flip(x, c) if c else x for c in variants]) if len(variants) > 1 else x
        autocast = torch.autocast("cuda") if m.device.type == "cuda" else contextlib.nullcontext()
        differences = []  # the logit difference is linear: average it, not the two logits
        with autocast:
            for i in range(0, len(inputs), batch_size):
                out = m.network(inputs[i:i + batch_size])
                differences.append(out[:, 1].float() - out[:, 0].float())
        d = torch.cat(differences) if len(differences) > 1 else differences[0]
        if len(variants) > 1:
            mean = d[:n].clone()
            for k, c in enumerate(variants[1:], start=1):
                mean += torch.flip(d[k * n:(k + 1) * n], [a - 1 for a in c])  # no channel axis in d
            d = mean / len(variants)
        total = d if total is None else total + d
    return total / len(models) if len(models) > 1 else total


# ------------------------------------------------------------------------------------------ the z-view, streamed


def sliding_window(model: Model | Sequence[Model], slices: Iterable[np.ndarray], shape: tuple[int, int, int],
                   tile_step: float = 0.5, tta: bool | str = True, batch_size: int = 1,
                   progress: tqdm | None = None) -> Iterator[np.ndarray]:
    """Vessel probabilities of a (Z, H, W) volume given as normalised slices, yielded slice by slice.

    Tiles and weights are nnUNetPredictor's; volumes smaller than the patch are zero-padded as nnU-Net pads them.
    `batch_size` patches (tiles and their mirrorings) go through the network at once. One view (z): `tta` is
    "none" or "flips" here; `predict_slices` adds the y- and x-views.
    """
    if len(tta_views(tta)) > 1:
        raise ValueError(f"sliding_window predicts the z-view only; tta={tta!r} needs predict_slices")
    for logit in z_view_logits(model, slices, shape, tile_step, tta, batch_size, progress):
        yield torch.sigmoid(torch.from_numpy(logit)).numpy()


def z_view_logits(model: Model | Sequence[Model], slices: Iterable[np.ndarray], shape: tuple[int, int, int],
                  tile_step: float = 0.5, tta: bool | str = True, batch_size: int = 1, progress: tqdm | None = None,
                  block: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """Vessel-minus-background logits (float32) of slices [block) (default all), yielded in z order.

    `slices` are the normalised volume slices from `Grid.input_range(*block)[0]` on: only the z-rows of tiles that
    touch the block are computed, so a block's logits equal the whole volume's there.
    """
    models = _as_models(model)
    device, patch = models[0].device, models[0].patch_size
    grid = Grid.of(shape, patch, tile_step)
    padded, below, steps = grid.padded, grid.below, grid.steps
    start, stop = block or (0, shape[0])
    rows = grid.rows_touching(start, stop)
    inside = (slice(below[1], below[1] + shape[1]), slice(below[2], below[2] + shape[2]))
    gaussian = _gaussian(patch, device)
    pz = patch[0]
    depth = pz + max(int(np.diff(steps[0]).max(initial=0)), 1)
    # Three rolling buffers over padded slices [base, base + depth): input, weighted logit sum, weight sum.
    image, value, weight = (torch.zeros((depth, *padded[1:]), device=device) for _ in range(3))
    base = loaded = steps[0][rows[0]] if rows else 0
    source = iter(slices)
    tiles = [(y, x) for y in steps[1] for x in steps[2]]
    for i in rows:  # steps[0][i] == base: each z-row of tiles starts where the last flush ended
        z0 = steps[0][i]
        while loaded < z0 + pz:
            row = image[loaded - base]
            row.zero_()
            if 0 <= loaded - below[0] < shape[0]:
                row[inside] = torch.from_numpy(np.ascontiguousarray(next(source), dtype=np.float32)).to(device)
            loaded += 1
        for b in range(0, len(tiles), batch_size):
            chunk = tiles[b:b + batch_size]
            x = torch.stack([image[:pz, y:y + patch[1], x:x + patch[2]] for y, x in chunk])[:, None]
            for (y, x_), d in zip(chunk, _predict_logit_difference(models, x, tta, batch_size)):
                value[:pz, y:y + patch[1], x_:x_ + patch[2]].addcmul_(d, gaussian)
                weight[:pz, y:y + patch[1], x_:x_ + patch[2]] += gaussian
        done_until = steps[0][i + 1] if i + 1 < len(steps[0]) else padded[0]
        for z in range(base, done_until):  # no later tile reaches these slices
            if start <= z - below[0] < stop:
                yield (value[z - base][inside] / weight[z - base][inside]).cpu().numpy()
                if progress is not None:
                    progress.update(1)
        for buffer in (image, value, weight):
            _shift_down(buffer, done_until - base)
        base = done_until


def _shift_down(buffer: torch.Tensor, rows: int) -> None:
    """Move rows [rows:] of a buffer to the front, one slice at a time (no whole-buffer copy), zero the rest."""
    for r in range(buffer.shape[0] - rows):
        buffer[r].copy_(buffer[r + rows])
    buffer[buffer.shape[0] - rows:].zero_()


# ------------------------------------------------------------------------------- the y- and x-views, through disk


def off_axis_view(model: Model | Sequence[Model], volume: np.ndarray, total: np.ndarray, view: Sequence[int],
                  tile_step: float = 0.5, tta: bool | str = False, batch_size: int = 1,
                  block: tuple[int, int] | None = None, progress: tqdm | None = None) -> None:
    """Add the logits of one transposed view of `volume` (normalised, (Z, H, W), e.g. a float16 memmap) to
    `total` (float32, same shape, e.g. a memmap), for z in [block) only (default all).

    The view is the volume transposed by `view` (a swap of axes), tiled with nnU-Net's grid over the transposed
    shape and Gaussian-weighted; each tile is read from `volume` and normalised on its own (divided by the
    overlapping tiles' Gaussian sum over its box), so memory holds one batch of tiles whatever the volume's size.
    """
    models = _as_models(model)
    device, patch = models[0].device, models[0].patch_size
    view = tuple(view)
    back = tuple(int(a) for a in np.argsort(view))
    grid = Grid.of([volume.shape[a] for a in view], patch, tile_step)
    gaussian = _gaussian(patch, device)
    z_axis = back[0]  # the view axis that holds the volume's z
    start, stop = block or (0, volume.shape[0])
    b_z, p_z = grid.below[z_axis], grid.patch[z_axis]
    tiles = [t for t in itertools.product(*(range(len(s)) for s in grid.steps))
             if grid.steps[z_axis][t[z_axis]] - b_z < stop and grid.steps[z_axis][t[z_axis]] + p_z - b_z > start]
    tiles.sort(key=lambda t: t[z_axis])  # move along the volume's z: the memmaps' pages are used in order
    tile_weights: dict[tuple, torch.Tensor] = {}  # Gaussian / weight sum, per neighbour pattern
    for b in range(0, len(tiles), batch_size):
        chunk = tiles[b:b + batch_size]
        boxes, x = [], torch.empty((len(chunk), 1, *patch), device=device)
        for n, t in enumerate(chunk):
            lo = [grid.steps[a][t[a]] - grid.below[a] for a in range(3)]  # view coordinates, may be < 0 (padding)
            src = [slice(max(lo[a], 0), min(lo[a] + patch[a], grid.shape[a])) for a in range(3)]
            dst = tuple(slice(s.start - lo[a], s.stop - lo[a]) for a, s in enumerate(src))
            if any(s.stop - s.start < p for s, p in zip(src, patch)):  # a tile over the padding: zeros there
                x[n, 0].zero_()
            region = volume[tuple(src[back[a]] for a in range(3))]  # volume axis a <- view axis back[a]
            x[n, 0][dst] = torch.from_numpy(np.ascontiguousarray(region.transpose(view), dtype=np.float32)).to(device)
            boxes.append((t, src, dst))
        d = _predict_logit_difference(models, x, tta, batch_size)
        for (t, src, dst), logit in zip(boxes, d):
            key = _neighbour_offsets(grid, t)
            if key not in tile_weights:
                tile_weights[key] = gaussian / _tile_weight_sum(key, gaussian)
            weighted = (logit * tile_weights[key])[dst]
            z_src = src[z_axis]
            keep = slice(max(start, z_src.start), min(stop, z_src.stop))
            cut = [slice(None)] * 3
            cut[z_axis] = slice(keep.start - z_src.start, keep.stop - z_src.start)
            part = weighted[tuple(cut)].permute(*back).cpu().numpy()  # back to volume axes
            target = [src[back[a]] for a in range(3)]
            target[0] = keep
            total[tuple(target)] += part
        if progress is not None:
            progress.update(len(chunk))


# ---------------------------------------------------------------------------------------------- whole kidneys


def model_space_shape(shape: tuple[int, int, int], voxel_um: float | None, model: Model | float | Sequence[float],
                      resample: bool) -> tuple[int, int, int]:
    """The shape a volume takes at the training spacing (a model's, or a spacing in mm: one number for all axes, or
    one per axis); unchanged when not resampling or sizes are close."""
    if not resample or voxel_um is None:
        return shape
    spacing = model.spacing_mm if isinstance(model, Model) else model
    spacing = (spacing,) * len(shape) if isinstance(spacing, (int, float)) else spacing
    scale = [voxel_um / 1000 / s for s in spacing]
    if all(abs(f - 1) <= RESAMPLE_TOLERANCE for f in scale):
        return shape
    return tuple(max(1, int(round(n * f))) for n, f in zip(shape, scale))


def model_space_slices(model: Model, group: data.Group, work_shape: tuple[int, int, int], start: int = 0,
                       stop: int | None = None) -> Iterator[np.ndarray]:
    """Normalised slices [start, stop) of a group at the model's spacing (`work_shape`), read as needed."""
    shape = group.shape
    stop = work_shape[0] if stop is None else stop
    if work_shape == shape:
        yield from (normalize(s, model.intensity) for s in _read_slices(group, start, stop))
        return
    first, last = resample_input_range(shape[0], work_shape[0], start, stop)
    slices = (normalize(s, model.intensity) for s in _read_slices(group, first, last))
    yield from resample_slices(slices, shape, work_shape, start, stop)


def predict_slices(model: Model | Sequence[Model], group: data.Group, tile_step: float = 0.5,
                   tta: bool | str = True, resample: bool = True, batch_size: int = 1, progress: bool = True,
                   devices: Sequence[str] | None = None, scratch: Path | str | None = None) -> Iterator[np.ndarray]:
    """Vessel probability slices (float32, the group's H x W) of a whole group, in z order.

    `model` may be a list (an ensemble, logits averaged). `devices` None: the models' own device, streamed as
    below; one device or several (one worker process each) and `tta` with "axes" go through memmaps under
    `scratch` (default: the system's temporary folder), removed at the end.
    """
    models = _as_models(model)
    parse_tta(tta)
    targets = resolve_devices(devices) if devices is not None else [models[0].device]
    shape = group.shape
    work_shape = model_space_shape(shape, group.voxel_um, models[0], resample)
    views = tta_views(tta)
    if len(targets) == 1 and len(views) == 1:
        if targets[0] != models[0].device:
            models = [_on_device(m, targets[0]) for m in models]
        bar = tqdm(total=work_shape[0], desc=f"predict {group.name}", unit="slice", disable=not progress)
        logits = z_view_logits(models, model_space_slices(models[0], group, work_shape), work_shape, tile_step, tta,
                               batch_size, bar)
        probs = (torch.sigmoid(torch.from_numpy(logit)).numpy() for logit in logits)
        yield from (resample_slices(probs, work_shape, shape) if work_shape != shape else probs)
        bar.close()
        return
    yield from _predict_through_disk(models, group, work_shape, tile_step, tta, batch_size, progress, targets,
                                     scratch)


def _predict_through_disk(models: list[Model], group: data.Group, work_shape: tuple[int, int, int],
                          tile_step: float, tta: bool | str, batch_size: int, progress: bool,
                          targets: list[torch.device], scratch: Path | str | None) -> Iterator[np.ndarray]:
    """Views and devices through memmaps: the normalised volume (float16, for the y/x-views) and the logit sum
    (float32); each device's worker writes its z-block; then averaged, sigmoid, resampled back slice by slice."""
    import tempfile

    if scratch is not None:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    views = tta_views(tta)
    with tempfile.TemporaryDirectory(prefix="sennet-predict-", dir=scratch) as tmp:
        tmp = Path(tmp)
        volume_file = None
        if len(views) > 1:
            volume_file = tmp / "volume.npy"
            save_slices(volume_file, work_shape, np.float16, tqdm(
                model_space_slices(models[0], group, work_shape), total=work_shape[0], unit="slice",
                desc=f"normalise {group.name}", disable=not progress))
        total_file = tmp / "logits.npy"
        np.lib.format.open_memmap(total_file, mode="w+", dtype=np.float32, shape=work_shape).flush()
        edges = np.linspace(0, work_shape[0], len(targets) + 1).round().astype(int)
        jobs = [dict(group=group, work_shape=work_shape, block=(int(a), int(b)), device=str(d),
                     volume_file=volume_file, total_file=total_file, tile_step=tile_step, tta=tta,
                     batch_size=batch_size, progress=progress, worker=k, workers=len(targets))
                for k, (a, b, d) in enumerate(zip(edges[:-1], edges[1:], targets)) if b > a]
        if len(jobs) == 1:
            predict_block([_on_device(m, targets[0]) for m in models], **jobs[0])
        else:
            _run_workers(models, jobs, tmp)
        total = np.load(total_file, mmap_mode="r")
        probs = (torch.sigmoid(torch.from_numpy(np.asarray(total[z], np.float32) / len(views))).numpy()
                 for z in range(work_shape[0]))
        yield from (resample_slices(probs, work_shape, group.shape) if work_shape != group.shape else probs)
        del total


def predict_block(models: list[Model], group: data.Group, work_shape: tuple[int, int, int], block: tuple[int, int],
                  volume_file: Path | None, total_file: Path, tile_step: float, tta: bool | str, batch_size: int,
                  progress: bool = False, worker: int = 0, workers: int = 1, **_) -> None:
    """One device's share: the logit sum of every view over model-space slices [block) into `total_file`."""
    views = tta_views(tta)
    start, stop = block
    total = np.load(total_file, mmap_mode="r+")
    volume = np.load(volume_file, mmap_mode="r") if volume_file is not None else None
    grid = Grid.of(work_shape, models[0].patch_size, tile_step)
    first, last = grid.input_range(start, stop)
    if volume is not None:  # every view reads the same float16 volume
        slices: Iterable[np.ndarray] = (np.asarray(volume[z], np.float32) for z in range(first, last))
    else:
        slices = model_space_slices(models[0], group, work_shape, first, last)
    label = f"predict {group.name}" + (f" [{worker + 1}/{workers} {models[0].device}]" if workers > 1 else "")
    with tqdm(total=stop - start, desc=label + " z-view", unit="slice", disable=not progress,
              position=worker) as bar:
        for z, logit in enumerate(z_view_logits(models, slices, work_shape, tile_step, tta, batch_size, bar, block),
                                  start=start):
            total[z] = logit
    for view in views[1:]:
        name = "yx"[views.index(view) - 1]
        with tqdm(desc=f"{label} {name}-view", unit="tile", disable=not progress, position=worker) as bar:
            off_axis_view(models, volume, total, view, tile_step, tta, batch_size, block, bar)
    total.flush()


def _on_device(model: Model, device: torch.device) -> Model:
    """The model on `device` (itself when already there)."""
    if model.device == device:
        return model
    network = copy.deepcopy(model.network).to("cpu")  # a copy: the caller's model stays where it is
    return from_network(network, model.plans, device, model.mirror_axes, model.model_dir, model.checkpoint)


def _run_workers(models: list[Model], jobs: list[dict], tmp: Path) -> None:
    """One spawned process per job (device), each with its own copy of the models; fails naming the device."""
    import multiprocessing

    cpu_models = [_on_device(m, torch.device("cpu")) for m in models]
    ctx = multiprocessing.get_context("spawn")
    cpu_workers = sum(job["device"] == "cpu" for job in jobs)
    threads = max(1, torch.get_num_threads() // max(cpu_workers, 1))
    processes = []
    for job in jobs:
        error_file = tmp / f"worker{job['worker']}.error"
        p = ctx.Process(target=_worker_main, args=(cpu_models, job, threads, error_file), daemon=True)
        p.start()
        processes.append((p, job, error_file))
    failures = []
    for p, job, error_file in processes:
        p.join()
        if p.exitcode != 0:
            reason = error_file.read_text().strip().splitlines()[-1] if error_file.is_file() else f"exit {p.exitcode}"
            failures.append(f"worker on {job['device']} (slices {job['block'][0]}-{job['block'][1]}): {reason}")
    if failures:
        raise RuntimeError("; ".join(failures))


def _worker_main(models: list[Model], job: dict, threads: int, error_file: Path) -> None:
    import traceback

    try:
        if job["device"] == "cpu":
            torch.set_num_threads(threads)
        device = torch.device(job["device"])
        predict_block([_on_device(m, device) for m in models], **job)
    except BaseException:
        error_file.write_text(traceback.format_exc())
        raise


def predict_group(model: Model | Sequence[Model], group: data.Group, out_file: Path | str, tile_step: float = 0.5,
                  tta: bool | str = True, resample: bool = True, dtype: str = "float16", batch_size: int = 1,
                  overwrite: bool = False, progress: bool = True, devices: Sequence[str] | None = None,
                  scratch: Path | str | None = None) -> np.memmap:
    """Predict a whole group into a (Z, H, W) `.npy` memmap of vessel probabilities (float16, or uint8 x255).

    A finished file made by the same model(s) and settings is reused; another existing file is an error
    unless `overwrite`. Temporary memmaps (axes TTA, several devices) go under `scratch` (default: beside
    `out_file`).
    """
    models = _as_models(model)
    tta = parse_tta(tta)
    if devices is not None:
        resolve_devices(devices)
    out_file = Path(out_file)
    record = out_file.with_suffix(".json")
    models, normalised = for_kidney(models, group, progress)
    settings = {"group": group.name, "shape": list(group.shape), "normalisation": normalised,
                "model": models[0].checkpoint if len(models) == 1 else [m.checkpoint for m in models],
                "tile_step": tile_step, "tta": tta, "dtype": dtype,  # resampling is in the shape: none == a no-op
                "model_space_shape": list(model_space_shape(group.shape, group.voxel_um, models[0], resample))}
    if out_file.exists():
        if record.is_file() and json.loads(record.read_text()).get("settings") == settings:
            return np.load(out_file, mmap_mode="r")
        if not overwrite:
            raise FileExistsError(f"{out_file}: exists from other settings or an unfinished run; "
                                  "pass overwrite=True to replace it")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    start = time.perf_counter()
    probs = predict_slices(models, group, tile_step, tta, resample, batch_size, progress, devices,
                           scratch if scratch is not None else out_file.parent)
    save_slices(out_file, group.shape, dtype, (np.round(p * 255) if dtype == "uint8" else p for p in probs))
    record.write_text(json.dumps({"settings": settings, "seconds": time.perf_counter() - start}, indent=2))
    return np.load(out_file, mmap_mode="r")


def _read_slices(group: data.Group, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    stop = group.shape[0] if stop is None else stop
    for a, b in chunks(stop - start):
        yield from group.read_images(start + a, start + b)
