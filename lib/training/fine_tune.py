"""Fine-tune nnU-Net v2 on the kidney data from the converted v1 hepatic-vessel model: convert, plan (the hepatic
architecture unchanged), preprocess, train `FineTuneTrainer` through the Python API, resume. Configuration "hepatic"
is the seed's recipe; "tiny" a small network of the same structure for CPU demos and tests.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm.auto import tqdm

from lib import data, paths
from lib.model import architectures, convert_v1
from lib.model.convert_v1 import PLANS_NAME  # the plans the converter writes are the ones fine-tuned
from lib.model.network import CONFIGURATION, resolve_device
from lib.normalisation import NNUNET_SCHEMES, PLANS_KEY, check_scheme, plans_record
from lib.training import nnunet_dataset
from lib.training.losses import check_loss
from lib.training.nnunet_dataset import DATASET_ID, DATASET_NAME
from lib.training.trainer import NNUNET_SCALE_RANGE, FineTuneTrainer, seed_everything

TRAINER_FOLDER = f"FineTuneTrainer__{PLANS_NAME}__{CONFIGURATION}"
CPU_PATCH = (32, 64, 64)  # the smallest useful patch; rounded up to what the strides need
ARCHITECTURES = {"hepatic": "task008", "tiny": "tiny"}  # configuration -> lib.model.architectures variant
# Share of the true vessels the sparse groups' labels hold (the 3rd-place team's figures, competition.md).
SPARSE_LABEL_SHARE = {"kidney_2": 0.65, "kidney_3_sparse": 0.85}
SPARSE_GROUPS = tuple(g for g, kind in data.LABEL_KIND.items() if kind == "sparse")


@dataclass
class TrainSettings:
    """What `train` needs beyond the data; defaults are the seed's recipe (15 epochs from the hepatic model)."""

    configuration: str = "hepatic"  # "hepatic" (seed recipe) or "tiny" (CPU demo, not the seed recipe)
    pretrained: str | None = None  # converted folder (lib.model.convert_v1 output) or v1 zip/folder; None: from scratch
    epochs: int = 15
    iterations_per_epoch: int = 250
    val_iterations_per_epoch: int = 50
    initial_lr: float = 1e-2
    warmup_epochs: int = 1  # linear warm-up, so the first large updates do not wreck pretrained features
    patch_size: tuple[int, int, int] | None = None  # None: the hepatic patch on a GPU, a small one on the CPU
    batch_size: int = 2
    device: str = "auto"
    train_groups: tuple[str, ...] = nnunet_dataset.DEFAULT_TRAIN_GROUPS
    val_group: str | None = nnunet_dataset.DEFAULT_VAL_GROUP
    slab_depth: int = 128
    scratch_dir: str | None = None  # nnU-Net raw + preprocessed data (large); None: <output_dir>/nnunet
    seed: int = 0  # python, numpy, torch and the augmentation workers: same seed, same run (on the same machine)
    scale_range: tuple[float, float] = NNUNET_SCALE_RANGE  # SpatialTransform scaling; larger = smaller objects
    pseudo_label_rounds: int = 0  # fine-tuning rounds on refined sparse labels after the first (0: the seed recipe)
    sparse_label_share: dict[str, float] = field(default_factory=lambda: dict(SPARSE_LABEL_SHARE))
    keep_raw_slabs: bool = False  # False: each raw slab is deleted once nnU-Net has preprocessed it (disk)
    normalisation: str = "kidney"  # "kidney": each kidney by its own statistics; "dataset": the seed's CTNormalization
    loss: str = "dice_ce"  # "dice_ce" (nnU-Net's, the seed recipe), "skeleton_recall" or "surface" (lib.training.losses)
    loss_weight: float = 1.0  # weight of the skeleton-recall or surface term added to dice_ce

    def __post_init__(self) -> None:
        """One-line errors for settings that cannot work, before anything is written or trained."""
        check_scheme(self.normalisation)
        check_loss(self.loss, self.loss_weight)
        if isinstance(self.pseudo_label_rounds, bool) or not isinstance(self.pseudo_label_rounds, int) \
                or self.pseudo_label_rounds < 0:
            raise ValueError(f"pseudo_label_rounds must be a whole number >= 0, got {self.pseudo_label_rounds!r}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {list(self.scale_range)}")
        self.scale_range = (float(self.scale_range[0]), float(self.scale_range[1]))
        for group, share in self.sparse_label_share.items():
            if group not in SPARSE_GROUPS:
                raise ValueError(f"sparse_label_share names {group!r}, which is not a sparse group "
                                 f"(sparse: {', '.join(SPARSE_GROUPS)})")
            if not isinstance(share, (int, float)) or not 0 < share <= 1:
                raise ValueError(f"sparse_label_share[{group!r}] must lie in (0, 1], got {share!r}")

    @property
    def split(self) -> nnunet_dataset.Split:
        """The training and validation groups and the slab depth nnU-Net's cases are cut to."""
        return nnunet_dataset.Split(self.train_groups, self.val_group, self.slab_depth)

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any]) -> TrainSettings:
        """Settings from notebook 02's parameters (or any mapping) by field name: lists become tuples, paths strings,
        `train_groups=None` the default groups; `scratch_dir` is relative to the project root."""
        values = {f.name: params[f.name] for f in fields(cls) if f.name in params}
        for name in ("patch_size", "scale_range"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        if values.get("sparse_label_share") is not None:
            values["sparse_label_share"] = dict(values["sparse_label_share"])
        if "train_groups" in values:
            values["train_groups"] = tuple(values["train_groups"] or nnunet_dataset.DEFAULT_TRAIN_GROUPS)
        if values.get("scratch_dir"):
            values["scratch_dir"] = str(paths.resolve_path(values["scratch_dir"]))
        if values.get("pretrained") is not None:  # a Path where lib.inputs found it
            values["pretrained"] = str(values["pretrained"])
        return cls(**values)

    def work_dir(self, output_dir: Path | str) -> Path:
        """Where nnU-Net's raw and preprocessed folders go (the model always goes under `output_dir`)."""
        return Path(self.scratch_dir) if self.scratch_dir else Path(output_dir) / "nnunet"


def architecture_plans(configuration: str, pretrained: str | Path | None, work_dir: Path) -> tuple[dict, Path | None]:
    """v2 plans carrying the network architecture, and the weights file (None from scratch). `pretrained`: a v1
    archive/folder (converted into `work_dir/pretrained`), `lib.model.convert_v1`'s output, or a trained model folder
    (an earlier round: its plans and final weights)."""
    if configuration not in ARCHITECTURES:
        raise ValueError(f"configuration must be one of {sorted(ARCHITECTURES)}, got {configuration!r}")
    if pretrained is None:
        return architectures.v2_plans(ARCHITECTURES[configuration]), None
    pretrained = Path(pretrained)
    if not pretrained.exists():
        raise FileNotFoundError(f"{pretrained}: pretrained checkpoint not found")
    converted, trained = work_dir / "pretrained", pretrained / "fold_0" / "checkpoint_final.pth"
    if trained.is_file():  # an earlier round: its weights alone (convert_v1 loads them with weights_only=True)
        converted.mkdir(parents=True, exist_ok=True)
        weights = torch.load(trained, map_location="cpu", weights_only=False)["network_weights"]
        torch.save({"network_weights": weights}, converted / "pretrained_weights.pth")
        shutil.copyfile(pretrained / "plans.json", converted / "plans.json")
    elif (pretrained / "pretrained_weights.pth").is_file():
        converted = pretrained  # already lib.model.convert_v1's output
    elif not (converted / "pretrained_weights.pth").is_file():
        convert_v1.convert(pretrained, converted)
    return json.loads((converted / "plans.json").read_text()), converted / "pretrained_weights.pth"


def patch_size_for(arch_plans: dict, device: torch.device, requested: Sequence[int] | None = None) -> list[int]:
    """The hepatic patch on a GPU, a small valid one on the CPU; every patch a multiple of the strides' product."""
    config = arch_plans["configurations"][CONFIGURATION]
    strides = np.array(config["architecture"]["arch_kwargs"]["strides"])
    divisor = np.prod(strides, axis=0)
    if requested is not None:
        patch = np.array(requested)
        if (patch % divisor).any():
            raise ValueError(f"patch size {list(requested)} is not divisible by the strides' product {divisor.tolist()}")
        return patch.tolist()
    if device.type == "cuda":
        return list(config["patch_size"])
    patch = np.maximum(np.ceil(np.array(CPU_PATCH) / divisor) * divisor, divisor).astype(int)
    return np.minimum(patch, config["patch_size"]).tolist()


def kidney_plans(arch_plans: dict, fingerprint: dict, patch_size: Sequence[int], batch_size: int,
                 normalisation: str = "dataset") -> dict:
    """Kidney plans: the architecture of `arch_plans` unchanged (every weight loads), spacing, size and intensity
    statistics from the fingerprint, and the normalisation scheme (recorded under `lib.normalisation.PLANS_KEY`)."""
    plans = copy.deepcopy(arch_plans)
    config = plans["configurations"][CONFIGURATION]
    spacing = np.median(np.array(fingerprint["spacings"]), 0).tolist()
    shape = np.median(np.array(fingerprint["shapes_after_crop"]), 0).round().astype(int).tolist()
    plans.update({
        "dataset_name": DATASET_NAME, "plans_name": PLANS_NAME,
        "original_median_spacing_after_transp": spacing, "original_median_shape_after_transp": shape,
        "image_reader_writer": "Tiff3DIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "foreground_intensity_properties_per_channel": fingerprint["foreground_intensity_properties_per_channel"],
        PLANS_KEY: plans_record(normalisation),
    })
    config.update({
        "data_identifier": f"{PLANS_NAME}_{CONFIGURATION}", "preprocessor_name": "DefaultPreprocessor",
        "spacing": spacing, "median_image_size_in_voxels": shape, "patch_size": list(patch_size),
        "batch_size": int(batch_size), "normalization_schemes": [NNUNET_SCHEMES[normalisation]],
        "use_mask_for_norm": [False],
    })
    return plans


def prepare(arch_plans: dict, patch_size: Sequence[int], batch_size: int, cases: Sequence[nnunet_dataset.Case],
            keep_raw: bool = True, fingerprint_file: Path | None = None, progress: bool = True) -> tuple[dict, dict]:
    """Fingerprint (or reuse `fingerprint_file`, an earlier round's) and preprocess the raw dataset under nnUNet_raw with
    nnU-Net's code, case by case (a rerun continues), deleting each raw slab once preprocessed unless `keep_raw`;
    write plans and the split. Returns the plans and dataset.json, as nnU-Net's trainer takes them."""
    folder = Path(os.environ["nnUNet_preprocessed"]) / DATASET_NAME
    folder.mkdir(parents=True, exist_ok=True)
    own_fingerprint = folder / "dataset_fingerprint.json"
    if fingerprint_file is not None and not own_fingerprint.is_file():
        shutil.copyfile(fingerprint_file, own_fingerprint)
    if not own_fingerprint.is_file():
        DatasetFingerprintExtractor(DATASET_ID, num_processes=1).run(overwrite_existing=True)
    fingerprint = json.loads(own_fingerprint.read_text())
    raw = Path(os.environ["nnUNet_raw"]) / DATASET_NAME
    scheme = json.loads((raw / "conversion.json").read_text()).get("normalisation", "dataset")
    plans = kidney_plans(arch_plans, fingerprint, patch_size, batch_size, scheme)
    plans_file = folder / f"{PLANS_NAME}.json"
    done = folder / f"{PLANS_NAME}_{CONFIGURATION}"
    if plans_file.is_file() and json.loads(plans_file.read_text()) != plans and done.exists():
        shutil.rmtree(done)  # preprocessed with other plans: stale
    plans_file.write_text(json.dumps(plans, indent=2))
    dataset_json = json.loads((raw / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))  # nnU-Net's trainer reads it here
    (folder / "splits_final.json").write_text(json.dumps(nnunet_dataset.splits(cases), indent=2))
    manager = PlansManager(plans)
    configuration = manager.get_configuration(CONFIGURATION)
    preprocessor = configuration.preprocessor_class(verbose=False)
    done.mkdir(exist_ok=True)
    todo = [c for c in cases if not (done / f"{c.name}.pkl").is_file()]
    for case in tqdm(todo, desc="nnU-Net preprocessing", unit="case", disable=not progress or not todo):
        image, label = nnunet_dataset.raw_files(raw, case.name)
        if not (image.is_file() and label.is_file()):
            raise FileNotFoundError(f"{image}: raw slab missing (deleted after an earlier preprocessing with other "
                                    f"plans?); delete {raw.parent.parent} to convert the data again")
        preprocessor.run_case_save(str(done / case.name), [str(image)], str(label), manager, configuration,
                                   dataset_json)
        if not keep_raw:  # the spacing sidecars and the manifest stay
            image.unlink()
            label.unlink()
    return plans, dataset_json


def load_all_weights(network: torch.nn.Module, weights_file: Path) -> dict:
    """Load every converted weight, segmentation heads included (nnU-Net's own loader skips the heads);
    returns what was loaded, for the notebook to show."""
    convert_v1.load_converted_weights(network, weights_file)
    keys = list(network.state_dict())
    return {"file": str(weights_file), "tensors_loaded": len(keys),
            "parameters_loaded": int(sum(p.numel() for p in network.parameters())),
            "heads_loaded": [k for k in keys if ".seg_layers." in k and "decoder.encoder" not in k]}


@dataclass
class TrainResult:
    """What a training run produced: the model folder notebook 03 loads, and what happened."""

    model_dir: Path
    settings: dict
    pretrained: dict | None
    cases: list[dict]
    resumed_from_epoch: int
    seconds: float
    history: dict


def train(data_dir: Path | str, output_dir: Path | str, settings: TrainSettings | None = None,
          progress: bool = True, label_dirs: Mapping[str, Path] | None = None,
          fingerprint_file: Path | None = None) -> TrainResult:
    """Convert, plan, preprocess and fine-tune; resume if an unfinished run of the same settings exists. One round:
    `label_dirs` (group -> folder of NNNN.tif masks, e.g. refined pseudo-labels) and an earlier round's
    `fingerprint_file` come from `lib.refine`."""
    settings = settings or TrainSettings()
    work_dir = settings.work_dir(output_dir)
    model_dir = default_model_dir(output_dir)
    nnunet_dataset.nnunet_env(work_dir, results=model_dir.parents[1])  # under output_dir, whatever the scratch
    device = resolve_device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        os.environ.setdefault("nnUNet_n_proc_DA", "1")  # 2 cores: one augmentation worker beside training
    os.environ.setdefault("nnUNet_compile", "false")
    seed_everything(settings.seed)

    table = nnunet_dataset.write_raw_dataset(data_dir, work_dir, settings.split, label_dirs, settings.normalisation,
                                             progress)
    cases = nnunet_dataset.read_cases(work_dir)
    arch, weights = architecture_plans(settings.configuration, settings.pretrained, work_dir)
    patch = patch_size_for(arch, device, settings.patch_size)
    plans, dataset_json = prepare(arch, patch, settings.batch_size, cases, settings.keep_raw_slabs, fingerprint_file,
                                  progress)

    latest = model_dir / "fold_0" / "checkpoint_latest.pth"
    final = model_dir / "fold_0" / "checkpoint_final.pth"
    if final.is_file():
        raise FileExistsError(f"{final}: a finished model is already there; use another output_dir "
                              "(earlier results are never overwritten)")
    trainer = new_trainer(plans, dataset_json, device, settings, continue_training=latest.is_file())
    loaded, resumed = None, 0
    if latest.is_file():
        trainer.load_checkpoint(str(latest))
        resumed = trainer.current_epoch
    elif weights is not None:
        loaded = load_all_weights(trainer.network, weights)
    start = time.perf_counter()
    with matplotlib.rc_context():  # nnU-Net's progress plot calls seaborn.set(font_scale=2.5) globally
        trainer.run_training()
    history = {k: [float(np.mean(v)) if isinstance(v, list) else float(v) for v in values]
               for k, values in trainer.logger.local_logger.my_fantastic_logging.items()}
    result = TrainResult(model_dir, asdict(settings), loaded, table.reset_index().to_dict("records"), resumed,
                         time.perf_counter() - start, history)
    (model_dir / "training.json").write_text(json.dumps(
        {**asdict(result), "model_dir": str(model_dir), "device": str(device),
         "from_scratch": settings.pretrained is None, "patch_size": patch, "scale_range": list(settings.scale_range),
         "seed": settings.seed, "label_dirs": {g: str(d) for g, d in (label_dirs or {}).items()}},
        indent=2, default=str))
    return result


def new_trainer(plans: dict, dataset_json: dict, device: torch.device, settings: TrainSettings,
                continue_training: bool = False) -> FineTuneTrainer:
    """The initialised trainer of a run: nnU-Net's constructor, then the settings' schedule, augmentation, seed and
    loss (`train` and the training plan's timing build it here, so both time and train the same thing)."""
    trainer = FineTuneTrainer({**plans, "continue_training": continue_training}, CONFIGURATION, 0, dataset_json,
                              device)
    trainer.apply(settings)
    seed_everything(settings.seed)  # the network's initial weights do not depend on what ran before
    trainer.initialize()
    return trainer


def default_model_dir(output_dir: Path | str) -> Path:
    """Where `train(data_dir, output_dir)` writes its model folder (the folder notebook 03 loads)."""
    return Path(output_dir) / "nnunet" / "results" / DATASET_NAME / TRAINER_FOLDER


def plot_history(history: dict, loss: str = "dice_ce", path: Path | str | None = None):
    """Loss, pseudo-Dice and learning-rate curves per epoch as one figure (saved to `path` when given); `loss` names
    the training loss (validation loss is always Dice + cross-entropy)."""
    import matplotlib.pyplot as plt

    epochs = np.arange(len(history["train_losses"]))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(epochs, history["train_losses"], "o-", label="train")
    axes[0].plot(epochs, history["val_losses"], "s-", label="validation")
    title = "Loss (Dice + cross-entropy)" if loss == "dice_ce" else f"Loss (train: dice_ce + {loss}; val: dice_ce)"
    axes[0].set(title=title, xlabel="epoch", ylabel="loss")
    axes[1].plot(epochs, history["mean_fg_dice"], "o-", label="pseudo Dice (patches)")
    axes[1].plot(epochs, history["ema_fg_dice"], "-", label="EMA")
    axes[1].set(title="Validation pseudo Dice", xlabel="epoch", ylabel="Dice", ylim=(0, 1))
    axes[2].plot(epochs, history["lrs"], "o-")
    axes[2].set(title="Learning rate (warm-up + poly)", xlabel="epoch", ylabel="lr")
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
