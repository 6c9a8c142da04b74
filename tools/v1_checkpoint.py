"""Stand-in nnU-Net v1 archives: RANDOM weights in the real v1 file format, NOT the hepatic-vessel model.

The pretrained Task008_HepaticVessel model (zenodo record 3734294) cannot be downloaded from the machines
this project is developed and tested on. To keep the real conversion path honest (`lib.model.convert_v1` reads the
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

CLI: `python -m tools.v1_checkpoint OUT.zip [--variant task008|tiny|small|anisotropic] [--seed N] [--folds 0 1]`.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lib.model.architectures import TASK, VARIANTS, stage_plan, variant_plans
from lib.model.network import build_network

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

def _require_v1() -> None:
    """Import nnU-Net v1 or fail with an explanation of how to install it."""
    try:
        import nnunet.network_architecture.generic_UNet  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "nnU-Net v1 is needed to build v1 networks: install it with "
            "`pip install --no-deps nnunet==1.7.1` (the Makefile does this); "
            f"importing nnunet.network_architecture.generic_UNet failed: {exc}") from exc


def plans_2d(plans: dict) -> dict:
    """The matching v1 2D plans (`nnUNetPlansv2.1_plans_2D.pkl`): one stage, in-plane patch, pools and kernels."""
    p2 = copy.deepcopy(plans)
    full = plans["plans_per_stage"][max(plans["plans_per_stage"])]
    pools = [p[1:] for p in full["pool_op_kernel_sizes"]]
    kernels = [k[1:] for k in full["conv_kernel_sizes"]]
    stage = stage_plan(list(full["patch_size"][1:]), full["current_spacing"], full["median_patient_size_in_voxels"],
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
    for _name, p in network.named_parameters():
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


def random_network(plans: Mapping, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """The plans' network with seeded random weights (nnU-Net's init plus a perturbation, so outputs vary in
    space), deep supervision off, in eval mode: a stand-in for tests and benchmarks, whose speed and memory do not
    depend on the weights."""
    torch.manual_seed(seed)
    net = build_network(plans, deep_supervision=False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * scale)
    return net.eval()


def main(argv: Sequence[str] | None = None) -> Path:
    """CLI: write a stand-in v1 archive (random weights, real v1 format)."""
    ap = argparse.ArgumentParser(prog="python -m tools.v1_checkpoint", description=__doc__.split("\n\n")[0])
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
