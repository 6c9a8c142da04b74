"""The networks this project trains: the Task008_HepaticVessel 3d_fullres architecture and smaller variants.

Each architecture is written as the v1 `nnUNetPlansv2.1` plans dict that nnU-Net v1 made for Task008, so the
same converter (`lib.model.convert_v1.v2_plans_from_v1`) turns it into v2 plans whether the weights come from
the real hepatic checkpoint or training starts from scratch.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from lib.model.convert_v1 import v2_plans_from_v1

TASK = "Task008_HepaticVessel"
VARIANTS: dict[str, dict[str, Any]] = {
    # The real Task008 shape: base 32 features (max 320), patch 64x192x192, about 31 M parameters.
    "task008": {},
    # Same structure (6 stages, same strides and kernels), 4 base features and a 32x64x64 patch: fast on CPU.
    "small": {"base_num_features": 4, "patch_size": (32, 64, 64)},
    # The `tiny` training configuration (CPU demos): as "small" with 8 base features. Base 4 does not learn
    # thin vessels within a CPU demo's few hundred iterations (pseudo Dice stayed 0); base 8 reached 0.5-0.7.
    "tiny": {"base_num_features": 8, "patch_size": (32, 64, 64)},
    # As "small" but with a first kernel of [1, 3, 3] (as v1 plans for strongly anisotropic data).
    "anisotropic": {"base_num_features": 4, "patch_size": (32, 64, 64),
                    "conv_kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5},
}


def stage_plan(patch_size: Sequence[int], spacing: Sequence[float], median_shape: Sequence[float],
                pools: Sequence[Sequence[int]], kernels: Sequence[Sequence[int]], batch_size: int,
                original_spacing: Sequence[float]) -> dict:
    """One `plans_per_stage` entry with the keys and value types v1's planner writes."""
    patch = np.array(patch_size, dtype=np.int64)
    return {
        "batch_size": int(batch_size),
        "num_pool_per_axis": [int(sum(int(np.log2(p[a])) for p in pools)) for a in range(len(pools[0]))],
        "patch_size": patch,
        "median_patient_size_in_voxels": np.array(median_shape, dtype=np.int64),
        "current_spacing": np.array(spacing, dtype=np.float64),
        "original_spacing": np.array(original_spacing, dtype=np.float64),
        "do_dummy_2D_data_aug": bool((max(patch) / patch[0]) > 3),
        "pool_op_kernel_sizes": [list(map(int, p)) for p in pools],
        "conv_kernel_sizes": [list(map(int, k)) for k in kernels],
    }


def _task008_dataset_properties(sizes: list, spacings: list, cases: list[str]) -> dict:
    """v1 `dataset_properties` with plausible liver-CT intensity statistics (not the real, unpublished ones)."""
    stats = {"median": 147.0, "mean": 143.6, "sd": 56.2, "mn": -386.0, "mx": 1326.0, "percentile_99_5": 276.0,
             "percentile_00_5": -6.0}
    intensity = OrderedDict({0: OrderedDict([("local_props", OrderedDict())]
                                            + [(k, np.float64(v)) for k, v in stats.items()])})
    return {
        "all_sizes": sizes,
        "all_spacings": spacings,
        "all_classes": [1, 2],
        "modalities": {0: "CT"},
        "intensityproperties": intensity,
        "size_reductions": OrderedDict((c, np.float64(1.0)) for c in cases),
    }


def task008_like_plans(base_num_features: int = 32, patch_size: Sequence[int] = (64, 192, 192),
                       conv_kernel_sizes: Sequence[Sequence[int]] | None = None) -> dict:
    """A v1 `nnUNetPlansv2.1` plans dict shaped like Task008_HepaticVessel's (stage 0 lowres, 1 fullres; 303
    cases at 1.5 x 0.8 x 0.8 mm, batch 2); defaults give Task008's 3d_fullres, see `VARIANTS` for the others.
    Unpublished numbers (dataset sizes, intensity statistics) are plausible for liver CT, not the real ones."""
    spacing, batch_size = (1.5, 0.8, 0.8), 2
    # Task008 3d_fullres as published / derived (see /work/shared/nnunet.md): 6 resolution stages.
    pools = [[2, 2, 2]] * 4 + [[1, 2, 2]]
    kernels = conv_kernel_sizes or [[3, 3, 3]] * 6
    median_shape = np.array([150, 512, 512])
    # 303 cases whose median spacing and size are exactly `spacing` and `median_shape` (symmetric jitter along z)
    rng = np.random.default_rng(8)
    factors = np.exp(np.linspace(-0.4, 0.4, 303))
    spacings = [np.array(spacing, dtype=np.float64) * np.array([f, 1.0, 1.0]) for f in rng.permutation(factors)]
    sizes = [np.round(median_shape * np.array([1 / f, 1.0, 1.0])).astype(int) for f in rng.permutation(factors)]
    cases = [f"hepaticvessel_{i:03d}" for i in range(303)]
    low_shape = np.round(median_shape / 1.9).astype(int)
    plans_per_stage = {
        0: stage_plan(patch_size, np.array(spacing) * 1.9, low_shape, pools, kernels, batch_size, spacing),
        1: stage_plan(patch_size, spacing, median_shape, pools, kernels, batch_size, spacing),
    }
    return {
        "num_stages": len(plans_per_stage),
        "num_modalities": 1,
        "modalities": {0: "CT"},
        "normalization_schemes": OrderedDict({0: "CT"}),
        "dataset_properties": _task008_dataset_properties(sizes, spacings, cases),
        "list_of_npz_files": [f"/nnUNet_raw/nnUNet_cropped_data/{TASK}/{c}.npz" for c in cases],
        "original_spacings": spacings,
        "original_sizes": sizes,
        "preprocessed_data_folder": f"/nnUNet_preprocessed/{TASK}",
        "num_classes": 2,
        "all_classes": [1, 2],
        "base_num_features": int(base_num_features),
        "use_mask_for_norm": OrderedDict({0: False}),
        "keep_only_largest_region": None,
        "min_region_size_per_class": None,
        "min_size_per_class": None,
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "data_identifier": "nnUNetData_plans_v2.1",
        "plans_per_stage": plans_per_stage,
        "preprocessor_name": "GenericPreprocessor",
        "conv_per_stage": 2,
    }


def variant_plans(variant: str) -> dict:
    """Plans for one of `VARIANTS`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return task008_like_plans(**VARIANTS[variant])


def v2_plans(variant: str) -> dict:
    """v2 plans (one `3d_fullres` configuration) of an architecture variant, for training from scratch."""
    return v2_plans_from_v1(variant_plans(variant))
