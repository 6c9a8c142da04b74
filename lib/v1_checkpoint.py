"""Stand-in nnU-Net v1 archives: RANDOM weights in the real v1 file format, NOT the hepatic-vessel model.

The pretrained Task008_HepaticVessel model (zenodo record 3734294) cannot be downloaded from the machines
this project is developed and tested on. To keep the real conversion path honest (`lib.transfer` reads the
real archive layout and the real file formats), this module writes archives that look like that download,
built with nnU-Net v1's own code:

- the network is v1's `Generic_UNet`, constructed exactly as `nnUNetTrainerV2.initialize_network` does,
  from a plans dict shaped like Task008's `nnUNetPlansv2.1` (`task008_like_plans`);
- `model_final_checkpoint.model` is what `NetworkTrainer.save_checkpoint` writes (a `torch.save` dict with
  `epoch`, `state_dict`, `optimizer_state_dict`, `lr_scheduler_state_dict`, `plot_stuff`, `best_stuff`,
  `amp_grad_scaler`; numpy scalars inside, so `torch.load(weights_only=True)` refuses it, as it refuses
  the real file); `model_final_checkpoint.model.pkl` is what `nnUNetTrainer.save_checkpoint` writes;
- the zip is laid out `<prefix>{3d_fullres,3d_lowres,...}/Task008_HepaticVessel/<trainer>__nnUNetPlansv2.1/
  {plans.pkl, postprocessing.json, fold_k/{model_final_checkpoint.model(.pkl), debug.json}}`.

The weights are random (He init, then every parameter, biases and norm affines included, perturbed so that
a wrong mapping cannot hide behind zeros and ones). The plans numbers (spacing, patch size, intensity
statistics, ...) are plausible for liver CT but made up, except where they follow from the published
Task008 configuration (patch 64x192x192, spacing about 1.5x0.8x0.8 mm). Nothing here predicts vessels.

CLI: `python -m lib.v1_checkpoint OUT.zip [--variant task008|tiny|small|anisotropic] [--seed N] [--folds 0 1]`.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

TASK = "Task008_HepaticVessel"
PLANS_IDENTIFIER = "nnUNetPlansv2.1"
TRAINERS = {
    "2d": "nnUNetTrainerV2",
    "3d_lowres": "nnUNetTrainerV2",
    "3d_fullres": "nnUNetTrainerV2",
    "3d_cascade_fullres": "nnUNetTrainerV2CascadeFullRes",
}
TRAINER_MODULES = {
    "nnUNetTrainerV2": "nnunet.training.network_training.nnUNetTrainerV2",
    "nnUNetTrainerV2CascadeFullRes": "nnunet.training.network_training.nnUNetTrainerV2_CascadeFullRes",
}

# Task008 3d_fullres as published / derived (see /work/shared/nnunet.md): 6 resolution stages.
TASK008_POOLS = [[2, 2, 2]] * 4 + [[1, 2, 2]]
TASK008_KERNELS = [[3, 3, 3]] * 6
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


def _require_v1() -> None:
    """Import nnU-Net v1 or fail with an explanation of how to install it."""
    try:
        import nnunet.network_architecture.generic_UNet  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "nnU-Net v1 is needed to build v1 networks: install it with "
            "`pip install --no-deps nnunet==1.7.1` (the Makefile does this); "
            f"importing nnunet.network_architecture.generic_UNet failed: {exc}") from exc


def _num_pool_per_axis(pools: Sequence[Sequence[int]]) -> list[int]:
    return [int(sum(int(np.log2(p[a])) for p in pools)) for a in range(len(pools[0]))]


def _stage_plan(patch_size: Sequence[int], spacing: Sequence[float], median_shape: Sequence[float],
                pools: Sequence[Sequence[int]], kernels: Sequence[Sequence[int]], batch_size: int,
                original_spacing: Sequence[float]) -> dict:
    """One `plans_per_stage` entry with the keys and value types v1's planner writes."""
    patch = np.array(patch_size, dtype=np.int64)
    return {
        "batch_size": int(batch_size),
        "num_pool_per_axis": _num_pool_per_axis(pools),
        "patch_size": patch,
        "median_patient_size_in_voxels": np.array(median_shape, dtype=np.int64),
        "current_spacing": np.array(spacing, dtype=np.float64),
        "original_spacing": np.array(original_spacing, dtype=np.float64),
        "do_dummy_2D_data_aug": bool((max(patch) / patch[0]) > 3),
        "pool_op_kernel_sizes": [list(map(int, p)) for p in pools],
        "conv_kernel_sizes": [list(map(int, k)) for k in kernels],
    }


def task008_like_plans(base_num_features: int = 32, patch_size: Sequence[int] = (64, 192, 192),
                       pool_op_kernel_sizes: Sequence[Sequence[int]] | None = None,
                       conv_kernel_sizes: Sequence[Sequence[int]] | None = None,
                       spacing: Sequence[float] = (1.5, 0.8, 0.8), batch_size: int = 2,
                       with_lowres: bool = True, num_cases: int = 303) -> dict:
    """A v1 `nnUNetPlansv2.1` plans dict shaped like Task008_HepaticVessel's (stage 0 lowres, 1 fullres).

    Defaults give the Task008 3d_fullres configuration; smaller `base_num_features`/`patch_size` give a fast
    variant with the same structure, `conv_kernel_sizes` an anisotropic one. Numbers that are not published
    (dataset sizes, intensity statistics) are plausible for contrast-enhanced liver CT, not the real ones.
    """
    pools = [list(p) for p in (pool_op_kernel_sizes or TASK008_POOLS)]
    kernels = [list(k) for k in (conv_kernel_sizes or TASK008_KERNELS)]
    if len(kernels) != len(pools) + 1:
        raise ValueError(f"need len(pools) + 1 conv kernels, got {len(kernels)} kernels for {len(pools)} pools")
    divisor = np.prod(np.array(pools), axis=0)
    if any(int(s) % int(d) for s, d in zip(patch_size, divisor)):
        raise ValueError(f"patch size {list(patch_size)} is not divisible by the pooling product {divisor.tolist()}")

    # Per-case spacings/sizes whose median is exactly `spacing` / the median shape (odd count, symmetric jitter).
    rng = np.random.default_rng(8)
    n = num_cases if num_cases % 2 else num_cases + 1
    factors = np.exp(np.linspace(-0.4, 0.4, n))
    spacings = [np.array(spacing, dtype=np.float64) * np.array([f, 1.0, 1.0]) for f in rng.permutation(factors)]
    median_shape = np.array([150, 512, 512])
    sizes = [np.round(median_shape * np.array([1 / f, 1.0, 1.0])).astype(int) for f in rng.permutation(factors)]
    cases = [f"hepaticvessel_{i:03d}" for i in range(n)]

    fullres = _stage_plan(patch_size, spacing, median_shape, pools, kernels, batch_size, spacing)
    plans_per_stage: dict[int, dict] = {}
    if with_lowres:
        factor = 1.9
        low_shape = np.round(median_shape / factor).astype(int)
        plans_per_stage[0] = _stage_plan(patch_size, np.array(spacing) * factor, low_shape, pools, kernels,
                                         batch_size, spacing)
    plans_per_stage[len(plans_per_stage)] = fullres

    intensity = OrderedDict({0: OrderedDict([
        ("local_props", OrderedDict()),
        ("median", np.float64(147.0)), ("mean", np.float64(143.6)), ("sd", np.float64(56.2)),
        ("mn", np.float64(-386.0)), ("mx", np.float64(1326.0)),
        ("percentile_99_5", np.float64(276.0)), ("percentile_00_5", np.float64(-6.0)),
    ])})
    dataset_properties = {
        "all_sizes": sizes,
        "all_spacings": spacings,
        "all_classes": [1, 2],
        "modalities": {0: "CT"},
        "intensityproperties": intensity,
        "size_reductions": OrderedDict((c, np.float64(1.0)) for c in cases),
    }
    return {
        "num_stages": len(plans_per_stage),
        "num_modalities": 1,
        "modalities": {0: "CT"},
        "normalization_schemes": OrderedDict({0: "CT"}),
        "dataset_properties": dataset_properties,
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
    """Plans for one of `VARIANTS` ("task008", "small", "anisotropic")."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return task008_like_plans(**VARIANTS[variant])


def plans_2d(plans: dict) -> dict:
    """The matching v1 2D plans (`nnUNetPlansv2.1_plans_2D.pkl`): one stage, in-plane patch, pools and kernels."""
    p2 = copy.deepcopy(plans)
    full = plans["plans_per_stage"][max(plans["plans_per_stage"])]
    pools = [p[1:] for p in full["pool_op_kernel_sizes"]]
    kernels = [k[1:] for k in full["conv_kernel_sizes"]]
    stage = _stage_plan(list(full["patch_size"][1:]), full["current_spacing"], full["median_patient_size_in_voxels"],
                        pools, kernels, 12, full["original_spacing"])
    stage["do_dummy_2D_data_aug"] = False
    p2["plans_per_stage"] = {0: stage}
    p2["num_stages"] = 1
    p2["data_identifier"] = "nnUNetData_plans_v2.1_2D"
    p2["base_num_features"] = plans["base_num_features"]
    return p2


def build_v1_network(plans: dict, stage: int, num_input_channels: int | None = None) -> nn.Module:
    """A v1 `Generic_UNet` exactly as `nnUNetTrainerV2.process_plans` + `initialize_network` build it.

    `num_input_channels` defaults to `plans['num_modalities']` (the cascade's full-resolution stage adds one
    channel per foreground class). Output channels: `num_classes + 1` (background first).
    """
    _require_v1()
    from nnunet.network_architecture.generic_UNet import Generic_UNet
    from nnunet.network_architecture.initialization import InitWeights_He
    from nnunet.utilities.nd_softmax import softmax_helper

    stage_plans = plans["plans_per_stage"][stage]
    patch_size = np.array(stage_plans["patch_size"]).astype(int)
    pools = stage_plans["pool_op_kernel_sizes"]
    kernels = stage_plans["conv_kernel_sizes"]
    conv_per_stage = plans.get("conv_per_stage", 2)
    in_channels = plans["num_modalities"] if num_input_channels is None else num_input_channels
    num_classes = plans["num_classes"] + 1
    if len(patch_size) == 3:
        conv_op, dropout_op, norm_op = nn.Conv3d, nn.Dropout3d, nn.InstanceNorm3d
    elif len(patch_size) == 2:
        conv_op, dropout_op, norm_op = nn.Conv2d, nn.Dropout2d, nn.InstanceNorm2d
    else:
        raise ValueError(f"invalid patch size in plans: {patch_size}")
    norm_op_kwargs = {"eps": 1e-5, "affine": True}
    dropout_op_kwargs = {"p": 0, "inplace": True}
    net_nonlin = nn.LeakyReLU
    net_nonlin_kwargs = {"negative_slope": 1e-2, "inplace": True}
    network = Generic_UNet(in_channels, plans["base_num_features"], num_classes, len(pools),
                           conv_per_stage, 2, conv_op, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs,
                           net_nonlin, net_nonlin_kwargs, True, False, lambda x: x, InitWeights_He(1e-2),
                           pools, kernels, False, True, True)
    network.inference_apply_nonlin = softmax_helper
    return network


@torch.no_grad()
def perturb_(network: nn.Module, seed: int, scale: float = 0.1) -> nn.Module:
    """Stand in for training: give every bias and norm affine non-trivial values (init leaves 0s and 1s)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in network.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if p.ndim == 1:  # conv biases, norm weights/biases
            p.add_(noise * scale)
        else:
            p.mul_(1 + noise * scale)
    return network


def _checkpoint_dict(network: nn.Module, seed: int, epoch: int, fp16: bool, optimizer_state: bool) -> dict:
    """What v1's `NetworkTrainer.save_checkpoint` writes for a trained nnUNetTrainerV2."""
    state_dict = network.state_dict()
    for key in state_dict:
        state_dict[key] = state_dict[key].cpu()
    optimizer = torch.optim.SGD(network.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True)
    if optimizer_state:
        gen = torch.Generator().manual_seed(seed + 1)
        for p in network.parameters():
            optimizer.state[p] = {"momentum_buffer": torch.randn(p.shape, generator=gen) * 1e-4}
    optimizer.param_groups[0]["lr"] = float(1e-2 * (1 - (epoch - 1) / 1000) ** 0.9)
    rng = np.random.default_rng(seed)
    tr = [np.float64(v) for v in np.linspace(-0.1, -0.6, epoch) + rng.normal(0, 0.01, epoch)]
    val = [np.float64(v) for v in np.linspace(-0.1, -0.5, epoch) + rng.normal(0, 0.02, epoch)]
    metric = [np.float64(v) for v in np.linspace(0.3, 0.65, epoch) + rng.normal(0, 0.02, epoch)]
    save_this = {
        "epoch": epoch,
        "state_dict": state_dict,
        "optimizer_state_dict": optimizer.state_dict(),
        "lr_scheduler_state_dict": None,
        "plot_stuff": (tr, val, [], metric),
        "best_stuff": (epoch - 13, np.float64(tr[-13]), np.float64(np.mean(metric[-20:]))),
    }
    if fp16:
        save_this["amp_grad_scaler"] = {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                        "growth_interval": 2000, "_growth_tracker": 417}
    return save_this


def _torch_bytes(obj: Any, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def write_v1_archive(out_zip: str | Path, plans: dict, seed: int = 0, folds: Iterable[int] = (0,),
                     trained_network: nn.Module | None = None, prefix: str = "",
                     configurations: Sequence[str] = ("3d_fullres", "3d_lowres"),
                     task: str = TASK, compression: int = zipfile.ZIP_DEFLATED,
                     optimizer_state: bool = True, epoch: int = 1000,
                     legacy_serialization: bool = False) -> Path:
    """Write a zip laid out like the Task008 download, with v1 checkpoints of RANDOM weights.

    `configurations` picks the model folders ("2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres");
    `trained_network` (a v1 Generic_UNet for the full-resolution stage) replaces the random 3d_fullres
    network in every fold. `prefix` is prepended to every member (e.g. "nnUNet/"). `legacy_serialization`
    writes the `.model` in torch's pre-1.6 (non-zip) format, which files from 2019/2020 may use.
    Returns the zip's path.
    """
    _require_v1()
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    folds = list(folds)
    num_stages = len(plans["plans_per_stage"])
    written_dirs: set[str] = set()

    def add_dirs(zf: zipfile.ZipFile, member: str) -> None:
        parts = member.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i]) + "/"
            if d not in written_dirs:
                written_dirs.add(d)
                zf.writestr(d, b"")

    def add(zf: zipfile.ZipFile, member: str, data: bytes | str) -> None:
        add_dirs(zf, member)
        zf.writestr(member, data)

    with zipfile.ZipFile(out_zip, "w", compression=compression, compresslevel=1, allowZip64=True) as zf:
        for ci, config in enumerate(configurations):
            if config not in TRAINERS:
                raise ValueError(f"unknown configuration {config!r}; choose from {sorted(TRAINERS)}")
            trainer = TRAINERS[config]
            if config == "2d":
                cfg_plans, stage = plans_2d(plans), 0
                plans_file = f"/nnUNet_preprocessed/{task}/{PLANS_IDENTIFIER}_plans_2D.pkl"
            else:
                if config in ("3d_lowres", "3d_cascade_fullres") and num_stages < 2:
                    raise ValueError(f"{config} needs plans with two stages (a cascade); these have one")
                cfg_plans = plans
                stage = 0 if config == "3d_lowres" else max(plans["plans_per_stage"])
                plans_file = f"/nnUNet_preprocessed/{task}/{PLANS_IDENTIFIER}_plans_3D.pkl"
            in_channels = plans["num_modalities"] + (plans["num_classes"] if config == "3d_cascade_fullres" else 0)
            batch_dice = config != "3d_lowres" and (config == "2d" or num_stages > 1)
            base = f"{prefix}{config}/{task}/{trainer}__{PLANS_IDENTIFIER}"
            add(zf, f"{base}/plans.pkl", pickle.dumps(cfg_plans))
            add(zf, f"{base}/postprocessing.json", json.dumps(_postprocessing(seed + ci), indent=4))
            for fold in folds:
                net_seed = seed * 1000 + ci * 10 + fold
                if config == "3d_fullres" and trained_network is not None:
                    network = trained_network
                else:
                    torch.manual_seed(net_seed)
                    network = perturb_(build_v1_network(cfg_plans, stage, in_channels), net_seed)
                fold_dir = f"{base}/fold_{fold}"
                output_folder = f"/nnUNet_trained_models/nnUNet/{config}/{task}/{trainer}__{PLANS_IDENTIFIER}"
                init = (plans_file, fold, output_folder, f"/nnUNet_preprocessed/{task}", batch_dice, stage,
                        True, False, True)
                ckpt = _checkpoint_dict(network, net_seed, epoch, fp16=True, optimizer_state=optimizer_state)
                add(zf, f"{fold_dir}/model_final_checkpoint.model", _torch_bytes(ckpt, legacy_serialization))
                info = OrderedDict([("init", init), ("name", trainer),
                                    ("class", f"<class '{TRAINER_MODULES[trainer]}.{trainer}'>"),
                                    ("plans", cfg_plans)])
                add(zf, f"{fold_dir}/model_final_checkpoint.model.pkl", pickle.dumps(info))
                add(zf, f"{fold_dir}/debug.json", json.dumps(_debug_info(cfg_plans, stage, init), indent=4))
    return out_zip


def _postprocessing(seed: int) -> dict:
    """A `postprocessing.json` as v1's `determine_postprocessing` writes it (made-up Dice values)."""
    rng = np.random.default_rng(seed)
    raw = {"1": float(0.62 + rng.normal(0, 0.01)), "2": float(0.70 + rng.normal(0, 0.01))}
    return {"dc_per_class_raw": raw, "dc_per_class_pp_all": {k: v - 0.01 for k, v in raw.items()},
            "dc_per_class_pp_per_class": {}, "for_which_classes": [], "min_valid_object_sizes": None,
            "num_samples": 61}


def _debug_info(plans: dict, stage: int, init: tuple) -> dict:
    """A `debug.json` like v1's `save_debug_information` (every non-callable attribute as a string)."""
    sp = plans["plans_per_stage"][stage]
    return {k: str(v) for k, v in {
        "plans_file": init[0], "fold": init[1], "output_folder": f"{init[2]}/fold_{init[1]}",
        "dataset_directory": init[3], "batch_dice": init[4], "stage": stage, "unpack_data": init[6],
        "deterministic": init[7], "fp16": init[8], "max_num_epochs": 1000, "initial_lr": 0.01,
        "weight_decay": 3e-05, "batch_size": sp["batch_size"], "patch_size": np.array(sp["patch_size"]),
        "net_num_pool_op_kernel_sizes": sp["pool_op_kernel_sizes"], "net_conv_kernel_sizes": sp["conv_kernel_sizes"],
        "num_input_channels": plans["num_modalities"], "num_classes": plans["num_classes"] + 1,
        "base_num_features": plans["base_num_features"], "classes": plans["all_classes"],
        "normalization_schemes": plans["normalization_schemes"], "use_mask_for_norm": plans["use_mask_for_norm"],
        "transpose_forward": plans["transpose_forward"], "transpose_backward": plans["transpose_backward"],
        "conv_per_stage": plans.get("conv_per_stage", 2), "threeD": len(sp["patch_size"]) == 3,
    }.items()}


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI: write a stand-in v1 archive (random weights, real v1 format)."""
    ap = argparse.ArgumentParser(prog="python -m lib.v1_checkpoint", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="zip file to write")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="task008")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, nargs="+", default=[0])
    ap.add_argument("--prefix", default="", help="member prefix inside the zip, e.g. 'nnUNet/'")
    ap.add_argument("--configurations", nargs="+", default=["3d_fullres", "3d_lowres"], choices=sorted(TRAINERS))
    args = ap.parse_args(argv)
    out = write_v1_archive(args.out, variant_plans(args.variant), seed=args.seed, folds=args.folds,
                           prefix=args.prefix, configurations=args.configurations)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): RANDOM weights in nnU-Net v1 format "
          f"(variant {args.variant}), a stand-in for {TASK}, not the pretrained model")
    return out


if __name__ == "__main__":
    main()
