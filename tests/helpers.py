"""Builders shared by tests: competition groups written slice by slice, small random nnU-Net models in the format
training writes, and nnU-Net's sliding window written out plainly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from lib.model import architectures, convert_v1
from tools import v1_checkpoint

INTENSITY = {"mean": 100.0, "std": 20.0, "percentile_00_5": 50.0, "percentile_99_5": 160.0,
             "median": 100.0, "min": 0.0, "max": 200.0}


def small_plans(patch=(32, 64, 64), spacing=(0.05, 0.05, 0.05), intensity: dict | None = None) -> dict:
    """v2 plans of the 'small' v1 variant (6 stages, base 4 features) with kidney-like spacing."""
    plans = convert_v1.v2_plans_from_v1(architectures.variant_plans("small"))
    config = plans["configurations"]["3d_fullres"]
    config["patch_size"], config["spacing"] = list(patch), list(spacing)
    plans["foreground_intensity_properties_per_channel"] = {"0": dict(intensity or INTENSITY)}
    return plans


random_network = v1_checkpoint.random_network


def write_model_dir(folder: Path, plans: dict, network: torch.nn.Module) -> Path:
    """A model folder laid out as training writes it: plans.json, dataset.json, fold_0/checkpoint_final.pth."""
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                     "labels": {"background": 0, "vessel": 1}, "file_ending": ".tif"}))
    torch.save({"network_weights": network.state_dict(), "current_epoch": 1,
                "inference_allowed_mirroring_axes": (0, 1, 2)}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def reference_probabilities(network: torch.nn.Module, volume: np.ndarray, patch, tile_step: float = 0.5) -> np.ndarray:
    """nnU-Net's sliding window written out plainly in float64 on the whole volume (no padding needed)."""
    from nnunetv2.inference.sliding_window_prediction import (
        compute_gaussian,
        compute_steps_for_sliding_window,
    )

    g = compute_gaussian(tuple(patch), 1 / 8, 10, device=torch.device("cpu")).float().numpy().astype(np.float64)
    steps = compute_steps_for_sliding_window(volume.shape, tuple(patch), tile_step)
    value, weight = np.zeros((2, *volume.shape)), np.zeros(volume.shape)
    with torch.no_grad():
        for z in steps[0]:
            for y in steps[1]:
                for x in steps[2]:
                    sl = np.s_[z:z + patch[0], y:y + patch[1], x:x + patch[2]]
                    out = network(torch.from_numpy(np.ascontiguousarray(volume[sl])[None, None])).double().numpy()[0]
                    value[(slice(None), *sl)] += out * g
                    weight[sl] += g
    logits = value / weight
    return 1 / (1 + np.exp(-(logits[1] - logits[0])))


def write_group(root: Path, split: str, name: str, images: np.ndarray | None, labels: np.ndarray | None = None,
                first: int = 0) -> None:
    """Write a group's slices as the competition does: images/NNNN.tif (uint16), labels/NNNN.tif (0/255)."""
    for kind, vol in (("images", images), ("labels", labels)):
        if vol is None:
            continue
        folder = root / split / name / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i, sl in enumerate(vol):
            tifffile.imwrite(folder / f"{first + i:04d}.tif", sl)


def random_volume(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 image volume and a 0/255 uint8 label volume of `shape`."""
    labels = (rng.random(shape) > 0.9).astype(np.uint8) * 255
    images = rng.integers(0, 60000, shape, dtype=np.uint16)
    return images, labels


def tubes(rng: np.random.Generator, shape: tuple[int, ...], n: int = 4, max_radius: float = 1.8) -> np.ndarray:
    """Thin straight tubes (radius 0.5 to `max_radius`) between random points: vessel-like masks."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    out = np.zeros(shape, bool)
    for _ in range(n):
        a, b = rng.random(3) * shape, rng.random(3) * shape
        d = b - a
        t = np.clip(((grid - a) @ d) / (d @ d), 0, 1)
        out |= np.linalg.norm(grid - (a + t[..., None] * d), axis=-1) <= rng.uniform(0.5, max_radius)
    return out


def half_as_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """nnUNetPredictor's float16 tile buffers as float32 (torch.half patched), for exact comparisons. torch's
    dtype -> storage-type map is built first: built under the patch it would lack FloatStorage, and every later
    torch.load in the process would fail with 'pickle storage type "FloatStorage" is not recognized'."""
    torch.storage._dtype_to_storage_type_map()
    monkeypatch.setattr(torch, "half", torch.float32)
