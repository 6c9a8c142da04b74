"""Sliding-window prediction over whole kidneys in bounded memory, streamed along z.

The tile grid, Gaussian weighting and mirroring are nnU-Net's own (`compute_steps_for_sliding_window`,
`compute_gaussian`, all flip combinations), laid over the whole volume exactly as `nnUNetPredictor` does,
but tiles are visited one z-row at a time and a slice is written out as soon as no later tile touches it.
So the result equals nnUNetPredictor's (no seams: the grid is global) while memory holds three float32 buffers
of (patch_z + z-step) slices: peak ~ 12 * (patch_z + step_z) * H * W bytes, i.e. 18 * patch_z * H * W at the
default half-patch step (+ the network and one batch of patches), whatever the number of slices.

Two classes means softmax = sigmoid(logit_vessel - logit_background), and Gaussian averaging is linear, so
one channel (the logit difference) is accumulated instead of two.

Pipeline per kidney (each stage a generator of 2D slices): read -> CT-normalise -> resample to the training
spacing (optional) -> sliding window -> resample back -> float16/uint8 memmap on disk.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lib import data
from lib.model.network import CONFIGURATION, build_network, resolve_device
from lib.volume import chunks, save_slices

RESAMPLE_TOLERANCE = 0.02  # voxel sizes within 2% of the training spacing are not resampled


@dataclass
class Model:
    """A trained network and what inference needs from its plans."""

    network: torch.nn.Module
    plans: dict
    patch_size: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    intensity: dict  # CT normalisation statistics of the training data (channel 0)
    mirror_axes: tuple[int, ...]
    device: torch.device
    model_dir: Path | None = None
    checkpoint: dict = field(default_factory=dict)  # file, epoch, mtime: identifies the weights


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
    return Model(network, plans, tuple(config["patch_size"]), tuple(config["spacing"]),
                 plans["foreground_intensity_properties_per_channel"]["0"], tuple(mirror_axes), device,
                 model_dir, checkpoint)


def normalize(image: np.ndarray, intensity: dict) -> np.ndarray:
    """nnU-Net's CTNormalization: clip to the foreground 0.5/99.5 percentiles, z-score with foreground stats."""
    out = np.clip(image.astype(np.float32), intensity["percentile_00_5"], intensity["percentile_99_5"])
    out -= np.float32(intensity["mean"])
    out /= np.float32(max(intensity["std"], 1e-8))
    return out


def resample_slices(slices: Iterable[np.ndarray], shape_in: tuple[int, int, int],
                    shape_out: tuple[int, int, int]) -> Iterator[np.ndarray]:
    """Resample a stream of slices from `shape_in` to `shape_out`: linear along z, bilinear in-plane.

    Holds two input slices at a time. Coordinates follow `align_corners=False` (pixel centres).
    """
    (z_in, _, _), (z_out, h_out, w_out) = shape_in, shape_out

    def plane(s: np.ndarray) -> np.ndarray:
        if s.shape == (h_out, w_out):
            return s.astype(np.float32, copy=False)
        t = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))[None, None]
        return F.interpolate(t, size=(h_out, w_out), mode="bilinear", align_corners=False)[0, 0].numpy()

    source = iter(slices)
    held: dict[int, np.ndarray] = {}  # at most the two input slices around the current output slice
    for j in range(z_out):
        c = min(max((j + 0.5) * z_in / z_out - 0.5, 0.0), z_in - 1)
        k = int(math.floor(c))
        k1 = min(k + 1, z_in - 1)
        while len(held) == 0 or max(held) < k1:
            held[max(held, default=-1) + 1] = plane(next(source))
        for old in [i for i in held if i < k]:
            del held[old]
        w = c - k
        yield held[k] if w == 0 else (1 - w) * held[k] + w * held[k1]
    for _ in source:  # drain, so that a generator upstream runs to its end
        pass


def sliding_window(model: Model, slices: Iterable[np.ndarray], shape: tuple[int, int, int], tile_step: float = 0.5,
                   tta: bool = True, batch_size: int = 1, progress: tqdm | None = None) -> Iterator[np.ndarray]:
    """Vessel probabilities of a (Z, H, W) volume given as normalised slices, yielded slice by slice.

    Tiles and weights are nnUNetPredictor's; volumes smaller than the patch are zero-padded as nnU-Net pads them.
    `batch_size` patches (tiles and their mirrorings) go through the network at once.
    """
    from nnunetv2.inference.sliding_window_prediction import (
        compute_gaussian,
        compute_steps_for_sliding_window,
    )

    device, patch = model.device, model.patch_size
    padded = tuple(max(s, p) for s, p in zip(shape, patch))
    below = tuple((p - s) // 2 for s, p in zip(shape, padded))
    inside = (slice(below[1], below[1] + shape[1]), slice(below[2], below[2] + shape[2]))
    steps = compute_steps_for_sliding_window(padded, patch, tile_step)
    gaussian = compute_gaussian(tuple(patch), sigma_scale=1.0 / 8, value_scaling_factor=10, device=device).float()
    pz = patch[0]
    depth = pz + max(int(np.diff(steps[0]).max(initial=0)), 1)
    # Three rolling buffers over padded slices [base, base + depth): input, weighted logit sum, weight sum.
    image, value, weight = (torch.zeros((depth, *padded[1:]), device=device) for _ in range(3))
    base = loaded = 0
    source = iter(slices)
    tiles = [(y, x) for y in steps[1] for x in steps[2]]
    for i, z0 in enumerate(steps[0]):  # z0 == base: each z-row of tiles starts where the last flush ended
        while loaded < z0 + pz:
            row = image[loaded - base]
            row.zero_()
            if 0 <= loaded - below[0] < shape[0]:
                row[inside] = torch.from_numpy(np.ascontiguousarray(next(source), dtype=np.float32)).to(device)
            loaded += 1
        for b in range(0, len(tiles), batch_size):
            chunk = tiles[b:b + batch_size]
            x = torch.stack([image[:pz, y:y + patch[1], x:x + patch[2]] for y, x in chunk])[:, None]
            for (y, x_), d in zip(chunk, _predict_logit_difference(model, x, tta, batch_size)):
                value[:pz, y:y + patch[1], x_:x_ + patch[2]].addcmul_(d, gaussian)
                weight[:pz, y:y + patch[1], x_:x_ + patch[2]] += gaussian
        done_until = steps[0][i + 1] if i + 1 < len(steps[0]) else padded[0]
        for z in range(base, done_until):  # no later tile reaches these slices
            if 0 <= z - below[0] < shape[0]:
                yield torch.sigmoid(value[z - base][inside] / weight[z - base][inside]).cpu().numpy()
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


@torch.inference_mode()
def _predict_logit_difference(model: Model, x: torch.Tensor, tta: bool, batch_size: int = 1) -> torch.Tensor:
    """Vessel minus background logit of a batch of patches, averaged over mirrorings as nnU-Net does
    (the plain prediction plus every combination of flipped axes), `batch_size` patches per network call."""
    axes = [a + 2 for a in model.mirror_axes] if tta else []
    variants = [()] + [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]
    inputs = torch.cat([torch.flip(x, c) if c else x for c in variants])
    autocast = torch.autocast("cuda") if model.device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        outputs = torch.cat([model.network(inputs[i:i + batch_size]).float()
                             for i in range(0, len(inputs), batch_size)])
    n = x.shape[0]
    logits = outputs[:n].clone()
    for k, c in enumerate(variants[1:], start=1):
        logits += torch.flip(outputs[k * n:(k + 1) * n], c)
    logits /= len(variants)
    return logits[:, 1] - logits[:, 0]


def model_space_shape(shape: tuple[int, int, int], voxel_um: float | None, model: Model,
                      resample: bool) -> tuple[int, int, int]:
    """The shape a volume takes at the training spacing; unchanged when not resampling or sizes are close."""
    if not resample or voxel_um is None:
        return shape
    scale = [voxel_um / 1000 / s for s in model.spacing_mm]
    if all(abs(f - 1) <= RESAMPLE_TOLERANCE for f in scale):
        return shape
    return tuple(max(1, int(round(n * f))) for n, f in zip(shape, scale))


def predict_slices(model: Model, group: data.Group, tile_step: float = 0.5, tta: bool = True,
                   resample: bool = True, batch_size: int = 1, progress: bool = True) -> Iterator[np.ndarray]:
    """Vessel probability slices (float32, the group's H x W) of a whole group, in z order."""
    shape = group.shape
    work_shape = model_space_shape(shape, group.voxel_um, model, resample)
    slices: Iterable[np.ndarray] = (normalize(s, model.intensity) for s in _read_slices(group))
    if work_shape != shape:
        slices = resample_slices(slices, shape, work_shape)
    bar = tqdm(total=work_shape[0], desc=f"predict {group.name}", unit="slice", disable=not progress)
    probs = sliding_window(model, slices, work_shape, tile_step, tta, batch_size, bar)
    if work_shape != shape:
        probs = resample_slices(probs, work_shape, shape)
    yield from probs
    bar.close()


def predict_group(model: Model, group: data.Group, out_file: Path | str, tile_step: float = 0.5, tta: bool = True,
                  resample: bool = True, dtype: str = "float16", batch_size: int = 1, overwrite: bool = False,
                  progress: bool = True) -> np.memmap:
    """Predict a whole group into a (Z, H, W) `.npy` memmap of vessel probabilities (float16, or uint8 x255).

    A finished file made by the same model and settings is reused; another existing file is an error
    unless `overwrite`.
    """
    out_file = Path(out_file)
    record = out_file.with_suffix(".json")
    settings = {"group": group.name, "shape": list(group.shape), "model": model.checkpoint, "tile_step": tile_step,
                "tta": tta, "resample": resample, "dtype": dtype,
                "model_space_shape": list(model_space_shape(group.shape, group.voxel_um, model, resample))}
    if out_file.exists():
        if record.is_file() and json.loads(record.read_text()).get("settings") == settings:
            return np.load(out_file, mmap_mode="r")
        if not overwrite:
            raise FileExistsError(f"{out_file}: exists from other settings or an unfinished run; "
                                  "pass overwrite=True to replace it")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    start = time.perf_counter()
    probs = predict_slices(model, group, tile_step, tta, resample, batch_size, progress)
    save_slices(out_file, group.shape, dtype, (np.round(p * 255) if dtype == "uint8" else p for p in probs))
    record.write_text(json.dumps({"settings": settings, "seconds": time.perf_counter() - start}, indent=2))
    return np.load(out_file, mmap_mode="r")


def _read_slices(group: data.Group) -> Iterator[np.ndarray]:
    for start, stop in chunks(group.shape[0]):
        yield from group.read_images(start, stop)
