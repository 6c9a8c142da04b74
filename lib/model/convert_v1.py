"""Convert an nnU-Net v1 3d_fullres checkpoint (e.g. Task008_HepaticVessel) into nnU-Net v2 files.

The source is the downloaded zip or its extracted folder, any member prefix: the checkpoint is found as
`**/3d_fullres/**/fold_<k>/model_final_checkpoint.model`, the v1 plans in `plans.pkl` beside the fold folder, else in
the `plans` entry of `model_final_checkpoint.model.pkl`. `convert` writes `plans.json` (v2 plans whose one `3d_fullres`
PlainConvUNet has the v1 network's shapes, with v1's patch, spacing, batch size and CT normalisation),
`pretrained_weights.pth` (`{"network_weights": ...}` with every key of that network, aliases included, so nnunetv2's
`load_pretrained_weights` accepts it; 2 outputs: v1's channels 0 and 1, background and vessel) and `conversion.json`
(where it came from, what was mapped). Both networks give the same logits (tested against v1's own `Generic_UNet`).
Command line: `python -m tools.convert_v1`. v1 checkpoints are pickles: only convert files from a trusted source.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import posixpath
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lib.model.network import CONFIGURATION, build_network, weights_mismatch

CONFIG_NAMES = ("2d", "3d_lowres", "3d_fullres", "3d_cascade_fullres")
MODEL_NAME = "model_final_checkpoint.model"
OUTPUT_FILES = ("plans.json", "pretrained_weights.pth", "conversion.json")
KEEP_CHANNELS = (0, 1)  # v1 Task008 outputs: 0 background, 1 vessel, 2 tumour
V1_MAX_NUM_FEATURES_3D = 320  # Generic_UNet.MAX_NUM_FILTERS_3D, used by nnUNetTrainerV2
PLANS_NAME = "nnUNetPlans"
PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
V1_NORMALIZATION = {"CT": "CTNormalization", "nonCT": "ZScoreNormalization", "noNorm": "NoNormalization"}


class TransferError(RuntimeError):
    """A v1 checkpoint that cannot be converted; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------- locating


@dataclass(frozen=True)
class V1Location:
    """Where a v1 checkpoint lives: `source` (zip or folder) and member paths relative to it (posix;
    for a folder they may climb above it with '..' when `source` is the trainer or fold folder itself)."""

    source: Path
    is_zip: bool
    model: str
    fold: str
    task: str
    trainer: str

    def describe(self, member: str) -> str:
        """A human-readable path: `archive.zip!member` or the file path."""
        return f"{self.source}!{member}" if self.is_zip else os.path.normpath(self.source / member)

    def read(self, member: str) -> bytes | None:
        """The bytes of one member/file; None when there is none."""
        if self.is_zip:
            with zipfile.ZipFile(self.source) as zf:
                return zf.read(member) if member in zf.NameToInfo else None
        path = self.source / member
        return path.read_bytes() if path.is_file() else None


def _fold_dir_name(fold: int | str) -> str:
    text = str(fold)
    if text == "all" or text.startswith("fold_"):
        return text
    if text.isdigit():
        return f"fold_{int(text)}"
    raise TransferError(f"invalid fold {fold!r}: use an integer (0-4), 'fold_k' or 'all'")


def _list_source(source: Path) -> tuple[bool, list[str], tuple[str, ...]]:
    """(is_zip, file members relative to source, path parts above the members that count for the search)."""
    if not source.exists():
        raise TransferError(f"{source}: no such file or folder (expected the v1 model zip or its extracted folder)")
    if source.is_dir():
        names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
        return False, names, source.resolve().parts
    try:
        with zipfile.ZipFile(source) as zf:
            names = sorted(n for n in zf.namelist() if not n.endswith("/"))
    except (zipfile.BadZipFile, OSError) as exc:
        raise TransferError(f"{source}: not a readable zip archive ({exc}); pass the v1 model zip "
                            "or the folder it was extracted to") from exc
    return True, names, ()


def find_v1_checkpoint(source: str | Path, fold: int | str = 0) -> V1Location:
    """Find `**/3d_fullres/**/<fold>/model_final_checkpoint.model` in a zip or folder; a `TransferError` lists
    what was found when the configuration or fold is absent."""
    source = Path(source)
    fold_name = _fold_dir_name(fold)
    is_zip, names, context = _list_source(source)
    models = []  # (member, nearest enclosing v1 configuration folder, fold folder)
    for name in (n for n in names if n.endswith(".model")):
        full = ("",) + context + PurePosixPath(name).parts  # absolute for folders: names above `source` count too
        models.append((name, next((part for part in reversed(full[:-1]) if part in CONFIG_NAMES), None), full[-2]))
    in_config = [m for m in models if m[1] == CONFIGURATION]
    if not in_config:
        found = sorted({f"{c or '(no configuration folder)'}/{f}" for _, c, f in models})
        what = ", ".join(found) if found else "no v1 .model files at all"
        zips = [n for n in names if n.lower().endswith(".zip")] if not is_zip else []
        if zips and not found:
            what += f" (the folder holds {', '.join(zips[:3])}: pass the zip itself)"
        raise TransferError(f"{source}: no {CONFIGURATION} model in this "
                            f"{'archive' if is_zip else 'folder'}; found: {what}")
    in_fold = [m for m in in_config if m[2] == fold_name]
    if not in_fold:
        folds = sorted({f for _, _, f in in_config})
        raise TransferError(f"{source}: {CONFIGURATION} has no {fold_name}; available folds: {', '.join(folds)}")
    final = [m[0] for m in in_fold if PurePosixPath(m[0]).name == MODEL_NAME]
    if not final:
        raise TransferError(f"{source}: {CONFIGURATION}/{fold_name} holds "
                            f"{', '.join(PurePosixPath(m[0]).name for m in in_fold)} but no {MODEL_NAME}")
    if len(final) > 1:
        raise TransferError(f"{source}: several {CONFIGURATION} {fold_name} checkpoints, cannot choose: "
                            + ", ".join(final))
    task, trainer_dir = (("", "", "") + context + PurePosixPath(final[0]).parts)[-4:-2]  # .../task/trainer/fold/model
    return V1Location(source=source, is_zip=is_zip, model=final[0], fold=fold_name,
                      task=task if task.startswith("Task") else "", trainer=trainer_dir.split("__")[0])


# ------------------------------------------------------------------------------------------------ loading


@dataclass
class V1Checkpoint:
    """A loaded v1 checkpoint: weights (no `module.` prefix), plans, the plans stage it was trained on."""

    location: V1Location
    state_dict: OrderedDict[str, torch.Tensor]
    plans: dict
    stage: int
    batch_dice: bool
    about: dict[str, Any]  # where it came from: conversion.json's first entries, in order
    notes: list[str]  # what could not be read but was not needed


def _unpickle(loc: V1Location, member: str) -> Any:
    """The object pickled in `member`; None when there is no such file."""
    try:
        raw = loc.read(member)
        return None if raw is None else pickle.loads(raw)
    except Exception as exc:  # any unpickling/IO failure is a broken file
        raise TransferError(f"{loc.describe(member)}: cannot read this pickle ({type(exc).__name__}: {exc})") from exc


def load_v1_checkpoint(source: str | Path, fold: int | str = 0) -> V1Checkpoint:
    """Load a v1 3d_fullres checkpoint and its plans from a zip or folder (`torch.load(weights_only=False)`:
    v1 files hold numpy scalars, which torch >= 2.6's default `weights_only=True` refuses)."""
    loc = find_v1_checkpoint(source, fold)
    desc = loc.describe(loc.model)
    try:
        raw = loc.read(loc.model)
    except Exception as exc:
        raise TransferError(f"{desc}: cannot read the file ({type(exc).__name__}: {exc})") from exc
    try:
        ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise TransferError(f"{desc}: not a readable torch checkpoint, the file may be corrupt or truncated "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        got = sorted(ckpt.keys()) if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise TransferError(f"{desc}: not an nnU-Net v1 checkpoint (expected a dict with 'state_dict'; got {got})")
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in ckpt["state_dict"].items():
        if not isinstance(value, torch.Tensor):
            raise TransferError(f"{desc}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        state_dict[key.removeprefix("module.")] = value

    model_pkl, notes = loc.model + ".pkl", []
    try:
        info = _unpickle(loc, model_pkl)
    except TransferError as exc:  # only needed without plans.pkl
        info = None
        notes.append(str(exc))
    info = info if isinstance(info, Mapping) else {}
    plans_pkl = posixpath.normpath(posixpath.join(loc.model, "..", "..", "plans.pkl"))  # beside the fold folder
    plans, plans_source = _unpickle(loc, plans_pkl), loc.describe(plans_pkl)  # plans_pkl may be ../plans.pkl
    if plans is None:
        if not isinstance(info.get("plans"), Mapping):
            raise TransferError(f"{desc}: no v1 plans: neither {plans_source} nor a 'plans' entry in "
                                f"{loc.describe(model_pkl)}{f' ({notes[0]})' if notes else ''}")
        plans, plans_source = info["plans"], f"{loc.describe(model_pkl)}['plans']"
    if not isinstance(plans, Mapping) or "plans_per_stage" not in plans:
        raise TransferError(f"{plans_source}: not v1 nnU-Net plans (no 'plans_per_stage')")
    # The trainer's constructor arguments: (plans_file, fold, output_folder, dataset_directory, batch_dice, stage, ...)
    init = info["init"] if isinstance(info.get("init"), (tuple, list)) else ()
    stages = sorted(plans["plans_per_stage"])
    # v1 trains 3d_fullres on the last stage (stage 1 when a cascade exists); init[5] records it.
    stage = init[5] if len(init) > 5 and init[5] is not None else stages[-1]
    if stage not in plans["plans_per_stage"]:
        raise TransferError(f"{desc}: trained on plans stage {stage}, but {plans_source} has stages {stages}")
    about = {"source": str(loc.source.resolve()), "checkpoint": loc.model,
             "checkpoint_sha256": hashlib.sha256(raw).hexdigest(), "plans_from": plans_source,
             "configuration": CONFIGURATION, "fold": loc.fold, "task": loc.task, "trainer": loc.trainer,
             "trainer_class": info.get("class"), "plans_stage": int(stage), "epoch": ckpt.get("epoch")}
    return V1Checkpoint(location=loc, state_dict=state_dict, plans=dict(plans), stage=int(stage),
                        batch_dice=bool(init[4]) if len(init) > 4 else True, about=about, notes=notes)


# ----------------------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class V1Architecture:
    """The shapes of a v1 nnUNetTrainerV2 Generic_UNet (3D, convolutional pooling/upsampling)."""

    num_input_channels: int
    num_outputs: int
    features_per_stage: list[int]  # [0] is the plans' base_num_features
    conv_kernel_sizes: list[list[int]]
    pool_op_kernel_sizes: list[list[int]]
    conv_per_stage: int
    patch_size: list[int]
    spacing: list[float]
    batch_size: int

    @property
    def num_pool(self) -> int:
        return len(self.pool_op_kernel_sizes)


def v1_architecture(plans: Mapping, stage: int, state_dict: Mapping[str, torch.Tensor] | None = None,
                    where: str = "checkpoint") -> V1Architecture:
    """Read the v1 network shapes from the plans stage; cross-check them against `state_dict` if given."""
    sp = plans["plans_per_stage"][stage]
    patch = [int(i) for i in np.asarray(sp["patch_size"]).tolist()]
    if len(patch) != 3:
        raise TransferError(f"{where}: plans stage {stage} is {len(patch)}D (patch {patch}); only 3D converts")
    pools = [[int(i) for i in p] for p in sp["pool_op_kernel_sizes"]]
    kernels = [[int(i) for i in k] for k in sp["conv_kernel_sizes"]]
    cps = int(plans.get("conv_per_stage") or 2)
    if cps < 2:
        raise TransferError(f"{where}: conv_per_stage {cps} < 2 is not supported (v1 then builds an extra conv)")
    if len(kernels) != len(pools) + 1:
        raise TransferError(f"{where}: {len(kernels)} conv kernels for {len(pools)} pooling steps in the plans")
    bad = sorted({i for k in kernels for i in k if i not in (1, 3)})
    if bad:
        raise TransferError(f"{where}: conv kernel sizes {bad} in {kernels}: v1 pads only size-3 kernels "
                            "(padding 1 if k == 3 else 0), v2 pads (k - 1) // 2; only 1 and 3 convert exactly")
    base = int(plans["base_num_features"])
    # As Generic_UNet: doubled per stage, capped at 320 from the second stage on.
    feats = [base] + [min(base * 2**d, V1_MAX_NUM_FEATURES_3D) for d in range(1, len(pools) + 1)]
    arch = V1Architecture(num_input_channels=int(plans.get("num_modalities", 1)),
                          num_outputs=int(plans["num_classes"]) + 1, features_per_stage=feats,
                          conv_kernel_sizes=kernels, pool_op_kernel_sizes=pools, conv_per_stage=cps,
                          patch_size=patch, spacing=[float(s) for s in np.asarray(sp["current_spacing"]).tolist()],
                          batch_size=int(sp["batch_size"]))
    detail = weights_mismatch(_v1_expected_shapes(arch), state_dict) if state_dict is not None else ""
    if detail:
        raise TransferError(f"{where}: the state_dict is not the Generic_UNet its plans stage {stage} describe "
                            f"(stages {len(pools) + 1}, features {feats}, kernels {kernels}); {detail}")
    return arch


def _v1_conv_keys(arch: V1Architecture) -> list[tuple[str, str, int, tuple[int, ...]]]:
    """(v2 canonical conv prefix, v1 prefix, resolution level, v1 weight shape) for every conv, in v2 order."""
    P, c, f, k = arch.num_pool, arch.conv_per_stage, arch.features_per_stage, arch.conv_kernel_sizes
    out = []
    for d in range(P + 1):
        if d < P:
            v1 = [f"conv_blocks_context.{d}.blocks.{j}" for j in range(c)]
        else:  # the bottleneck: c - 1 convs, then one in a block of its own
            v1 = [f"conv_blocks_context.{P}.0.blocks.{j}" for j in range(c - 1)] + [f"conv_blocks_context.{P}.1.blocks.0"]
        cin = [arch.num_input_channels if d == 0 else f[d - 1]] + [f[d]] * (c - 1)
        out += [(f"encoder.stages.{d}.0.convs.{j}", v1[j], d, (f[d], cin[j], *k[d])) for j in range(c)]
    for u in range(P):
        level = P - 1 - u  # v1 uses conv_kernel_sizes[-(u + 1)] = the kernel of level + 1 here
        v1 = [f"conv_blocks_localization.{u}.0.blocks.{j}" for j in range(c - 1)]
        v1.append(f"conv_blocks_localization.{u}.1.blocks.0")
        cin = [2 * f[level]] + [f[level]] * (c - 1)  # upsampled + skip connection, then the stage's own
        out += [(f"decoder.stages.{u}.convs.{j}", v1[j], level, (f[level], cin[j], *k[level + 1])) for j in range(c)]
    return out


def _v1_expected_shapes(arch: V1Architecture) -> dict[str, tuple[int, ...]]:
    """Every key of the v1 Generic_UNet state_dict with its shape (for validating a loaded checkpoint)."""
    f, P = arch.features_per_stage, arch.num_pool
    shapes: dict[str, tuple[int, ...]] = {}
    for _, v1, _, shape in _v1_conv_keys(arch):
        shapes[f"{v1}.conv.weight"] = shape
        for key in ("conv.bias", "instnorm.weight", "instnorm.bias"):
            shapes[f"{v1}.{key}"] = shape[:1]
    for u in range(P):
        level = P - 1 - u
        shapes[f"tu.{u}.weight"] = (f[level + 1], f[level], *arch.pool_op_kernel_sizes[level])
        shapes[f"seg_outputs.{u}.weight"] = (arch.num_outputs, f[level], 1, 1, 1)
    return shapes


def v2_kernel_sizes(v1_kernels: Sequence[Sequence[int]], pad_kernels: bool = False) -> list[list[int]]:
    """PlainConvUNet `kernel_sizes` reproducing v1's network, or `TransferError` (its message says why) if none does.

    With `pad_kernels`, level L gets the per-axis maximum of v1's kernels L and L + 1 (`convert_state_dict`
    zero-pads the smaller ones: exact, but a few more weights to fine-tune)."""
    kernels = [[int(i) for i in k] for k in v1_kernels]
    if all(k == kernels[0] for k in kernels):
        return kernels
    if not pad_kernels:
        raise TransferError(
            f"v1 conv_kernel_sizes {kernels} are not all equal. v1's Generic_UNet gives the decoder at resolution "
            "level L the kernel of level L+1 (conv_kernel_sizes[-(u+1)]) while v2's PlainConvUNet gives it the "
            "encoder's kernel of level L (kernel_sizes[-(u+2)]), so no PlainConvUNet has this network's decoder "
            "shapes and converting would write wrong weights. Use pad_kernels=True (CLI --pad-kernels) for an "
            "equivalent PlainConvUNet with the larger kernel per level and zero-padded v1 kernels.")
    P = len(kernels) - 1
    return [[max(a, b) for a, b in zip(kernels[L], kernels[L + 1])] for L in range(P)] + [kernels[P]]


# ---------------------------------------------------------------------------------------------- plans


def _median(values: Any, transpose: Sequence[int]) -> list[float] | None:
    """The per-axis median of v1's per-case spacings or sizes (3-vectors), transposed; None without any."""
    arr = np.asarray(values, dtype=np.float64)
    return np.median(arr, 0)[list(transpose)].tolist() if arr.ndim == 2 and len(arr) else None


def _v2_normalisation(v1_plans: Mapping, where: str) -> tuple[list[str], list[bool], dict[str, dict[str, float]]]:
    """v2's normalization schemes, use_mask_for_norm and foreground intensity properties per channel from v1's."""
    mask_for_norm = v1_plans.get("use_mask_for_norm") or {}
    props = (v1_plans.get("dataset_properties") or {}).get("intensityproperties") or {}
    schemes, use_mask, intensity = [], [], {}
    for ch in sorted(v1_plans["normalization_schemes"]):
        scheme = v1_plans["normalization_schemes"][ch]
        if scheme not in V1_NORMALIZATION:
            raise TransferError(f"{where}: v1 normalization scheme {scheme!r} (channel {ch}) has no v2 equivalent; "
                                f"known: {sorted(V1_NORMALIZATION)}")
        schemes.append(V1_NORMALIZATION[scheme])
        use_mask.append(bool(mask_for_norm.get(ch, False)))
        p = props.get(ch)
        if p is None:
            if scheme == "CT":
                raise TransferError(f"{where}: CT normalization needs dataset_properties['intensityproperties']"
                                    f"[{ch}], which these plans lack")
            continue
        intensity[str(ch)] = {"mean": float(p["mean"]), "median": float(p["median"]), "std": float(p["sd"]),
                              "min": float(p["mn"]), "max": float(p["mx"]),
                              "percentile_99_5": float(p["percentile_99_5"]),
                              "percentile_00_5": float(p["percentile_00_5"])}
    return schemes, use_mask, intensity


def _v2_architecture(arch: V1Architecture, pad_kernels: bool) -> dict:
    """v2's PlainConvUNet description of the v1 Generic_UNet `arch`."""
    n = arch.num_pool + 1
    return {
        "network_class_name": PLAIN_CONV_UNET,
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": arch.features_per_stage,
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": v2_kernel_sizes(arch.conv_kernel_sizes, pad_kernels),
            "strides": [[1, 1, 1]] + arch.pool_op_kernel_sizes,
            "n_conv_per_stage": [arch.conv_per_stage] * n,
            "n_conv_per_stage_decoder": [arch.conv_per_stage] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def v2_plans_from_v1(v1_plans: Mapping, stage: int | None = None, *, task: str = "", pad_kernels: bool = False,
                     batch_dice: bool = True) -> dict:
    """nnU-Net v2 plans (2.8.1 planner format) with one `3d_fullres` configuration equal to the v1 stage.

    `stage` defaults to the last plans stage (v1's 3d_fullres); the v1 `task` names the dataset (Task008_X ->
    Dataset008_X, else Dataset999_V1Converted); unequal kernels: see `v2_kernel_sizes`."""
    stage = max(v1_plans["plans_per_stage"]) if stage is None else stage
    where = f"v1 plans stage {stage}"
    arch = v1_architecture(v1_plans, stage, where=where)
    sp = v1_plans["plans_per_stage"][stage]
    tf, tb = ([int(i) for i in (v1_plans.get(f"transpose_{way}") or [0, 1, 2])] for way in ("forward", "backward"))
    schemes, use_mask, intensity = _v2_normalisation(v1_plans, where)
    task_match = re.fullmatch(r"Task(\d+)_(.+)", task)

    spacing = _median(v1_plans.get("original_spacings", []), tf) or arch.spacing
    shape = _median(v1_plans.get("original_sizes", []), tf) or np.asarray(sp["median_patient_size_in_voxels"]).tolist()
    configuration = {
        "data_identifier": f"{PLANS_NAME}_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": arch.batch_size,
        "patch_size": arch.patch_size,
        "median_image_size_in_voxels": [int(round(float(i))) for i in np.asarray(sp["median_patient_size_in_voxels"])],
        "spacing": arch.spacing,
        "normalization_schemes": schemes,
        "use_mask_for_norm": use_mask,
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": _v2_architecture(arch, pad_kernels),
        "batch_dice": bool(batch_dice),
    }
    return {
        "dataset_name": f"Dataset{int(task_match[1]):03d}_{task_match[2]}" if task_match else "Dataset999_V1Converted",
        "plans_name": PLANS_NAME,
        "original_median_spacing_after_transp": [float(i) for i in spacing],
        "original_median_shape_after_transp": [int(round(float(i))) for i in shape],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": tf,
        "transpose_backward": tb,
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": intensity,
    }


# -------------------------------------------------------------------------------------------- weights


def _embed_kernel(weight: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Zero-pad a conv weight (out, in, *k) to the centred larger `kernel` (sizes 1 and 3: even padding)."""
    half = [(int(want) - int(have)) // 2 for have, want in zip(weight.shape[2:], kernel)]
    pad = [p for h in reversed(half) for p in (h, h)]  # F.pad: (left, right) per axis, last axis first
    return F.pad(weight, pad) if any(pad) else weight


def convert_state_dict(v1_state_dict: Mapping[str, torch.Tensor], arch: V1Architecture, *,
                       pad_kernels: bool = False) -> OrderedDict[str, torch.Tensor]:
    """Map a v1 Generic_UNet state_dict (checked against `arch` by `v1_architecture`) onto PlainConvUNet keys.

    v1's `tu` and `seg_outputs` have no bias: v2's are zeros; seg_layers keep v1 output channels `KEEP_CHANNELS`.
    The aliases PlainConvUNet also lists (`all_modules.0/1`, `decoder.encoder`) are the same tensors: one copy on disk.
    """
    v2_kernels = v2_kernel_sizes(arch.conv_kernel_sizes, pad_kernels)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in v1_state_dict.items()}
    encoder, decoder = OrderedDict(), OrderedDict()  # v2 conv prefix + conv/norm/all_modules -> tensor
    for v2, v1, level, _ in _v1_conv_keys(arch):
        conv = (_embed_kernel(sd[f"{v1}.conv.weight"], v2_kernels[level]).contiguous(), sd[f"{v1}.conv.bias"])
        norm = (sd[f"{v1}.instnorm.weight"], sd[f"{v1}.instnorm.bias"])
        target = encoder if v2.startswith("encoder.") else decoder
        for names in (("conv", "norm"), ("all_modules.0", "all_modules.1")):
            for name, (weight, bias) in zip(names, (conv, norm)):
                target[f"{v2}.{name}.weight"] = weight
                target[f"{v2}.{name}.bias"] = bias
    out = OrderedDict(encoder)
    out.update((f"decoder.{k}", v) for k, v in encoder.items())
    out.update(decoder)
    for u in range(arch.num_pool):
        out[f"decoder.transpconvs.{u}.weight"] = sd[f"tu.{u}.weight"]
        out[f"decoder.transpconvs.{u}.bias"] = torch.zeros(sd[f"tu.{u}.weight"].shape[1])
    for u in range(arch.num_pool):
        out[f"decoder.seg_layers.{u}.weight"] = sd[f"seg_outputs.{u}.weight"][list(KEEP_CHANNELS)].contiguous()
        out[f"decoder.seg_layers.{u}.bias"] = torch.zeros(len(KEEP_CHANNELS))
    return out


def load_converted_weights(network: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load `pretrained_weights.pth` with nnunetv2's `load_pretrained_weights`, then also the segmentation
    heads, which that function deliberately skips (here they carry v1's background/vessel)."""
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    load_pretrained_weights(network, str(path))
    weights = torch.load(path, map_location="cpu", weights_only=True)["network_weights"]
    seg = {k: v for k, v in weights.items() if ".seg_layers." in k}
    detail = weights_mismatch({k: v.shape for k, v in network.state_dict().items() if ".seg_layers." in k}, seg)
    if detail:
        raise TransferError(f"{path}: segmentation heads do not fit this network ({detail}); "
                            "build it with num_outputs=2, or load without the heads with nnunetv2's "
                            "load_pretrained_weights")
    network.load_state_dict(seg, strict=False)
    return network


# ------------------------------------------------------------------------------------------ convert


def convert(source: str | Path, out_dir: str | Path, fold: int | str = 0, force: bool = False, *,
            pad_kernels: bool = False) -> Path:
    """Convert the v1 3d_fullres checkpoint of `fold` in `source` into OUT_DIR/{plans.json,
    pretrained_weights.pth, conversion.json}. Existing files there are only replaced with `force`."""
    out_dir = Path(out_dir)
    existing = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if existing and not force:
        raise TransferError(f"{out_dir}: already holds {', '.join(existing)}; pass force=True (CLI --force) "
                            "to overwrite")
    if out_dir.exists() and not out_dir.is_dir():
        raise TransferError(f"{out_dir}: exists and is not a folder")

    ckpt = load_v1_checkpoint(source, fold)
    loc = ckpt.location
    arch = v1_architecture(ckpt.plans, ckpt.stage, ckpt.state_dict, where=loc.describe(loc.model))
    plans = v2_plans_from_v1(ckpt.plans, ckpt.stage, task=loc.task, pad_kernels=pad_kernels, batch_dice=ckpt.batch_dice)
    weights = convert_state_dict(ckpt.state_dict, arch, pad_kernels=pad_kernels)
    net = build_network(plans, num_input_channels=arch.num_input_channels, num_outputs=len(KEEP_CHANNELS),
                        allow_init=False)
    detail = weights_mismatch({k: v.shape for k, v in net.state_dict().items()}, weights)
    if detail:
        raise TransferError(f"converted weights do not fit the v2 network built from the plans ({detail}); "
                            "dynamic_network_architectures may have changed its module layout")

    v2_kernels = plans["configurations"][CONFIGURATION]["architecture"]["arch_kwargs"]["kernel_sizes"]
    report = {
        **ckpt.about,
        "v1_architecture": {"stages": arch.num_pool + 1, **asdict(arch)},
        "v2_network": PLAIN_CONV_UNET,
        "v2_kernel_sizes": v2_kernels,
        "kernels_zero_padded": v2_kernels != arch.conv_kernel_sizes,
        "kept_v1_output_channels": {"0": "background (v1 channel 0)", "1": "vessel (v1 channel 1)"},
        "keys": {"v1_state_dict": len(ckpt.state_dict),
                 "v2_canonical": sum(1 for k in weights if ".all_modules." not in k
                                     and not k.startswith("decoder.encoder.")),
                 "v2_with_aliases": len(weights)},
        "notes": ckpt.notes,
        "versions": {"torch": torch.__version__, "nnunetv2": _version("nnunetv2"),
                     "dynamic_network_architectures": _version("dynamic-network-architectures")},
    }

    buf = io.BytesIO()
    torch.save({"network_weights": weights}, buf)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in zip(OUTPUT_FILES, (json.dumps(plans, indent=4).encode(), buf.getvalue(),
                                         json.dumps(report, indent=4).encode())):
        tmp = out_dir / f"{name}.tmp"  # written whole, then renamed: no half-written output file
        tmp.write_bytes(data)
        os.replace(tmp, out_dir / name)
    return out_dir


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
