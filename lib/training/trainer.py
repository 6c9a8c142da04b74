"""The nnU-Net trainer this project fine-tunes with: nnUNetTrainer through its overrides, with a warm-up, a
checkpoint every epoch, progress bars, a settable augmentation scaling, seeded workers (docs/training.md) and a
choice of loss. Its network is nnUNetTrainer's own, so the checkpoints name `nnUNetTrainer` and nnU-Net's tools open
the model folder without `nnUNet_extTrainer`; `fine_tuned_with` records the real trainer.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from tqdm.auto import tqdm

from lib import paths
from lib.training import losses

NNUNET_SCALE_RANGE = (0.7, 1.4)  # nnUNetTrainer's SpatialTransform scaling (larger = smaller objects)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch; cuDNN picks fixed (not the fastest) algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


class FineTuneTrainer(nnUNetTrainer):
    """nnUNetTrainer with the run's schedule (warm-up, then poly), augmentation scaling, seed and loss (`apply`)."""

    warmup_epochs = 1
    scale_range: tuple[float, float] = NNUNET_SCALE_RANGE
    seed = 0
    loss_name = "dice_ce"  # lib.training.losses.LOSSES
    loss_weight = 1.0

    def apply(self, settings) -> None:
        """Take a run's schedule, augmentation, seed and loss from `settings` (a `fine_tune.TrainSettings`) before
        `initialize` (nnU-Net's constructor records its own signature to rebuild trainers: it cannot take them)."""
        self.num_epochs = settings.epochs
        self.num_iterations_per_epoch = settings.iterations_per_epoch
        self.num_val_iterations_per_epoch = settings.val_iterations_per_epoch
        self.initial_lr, self.warmup_epochs = settings.initial_lr, settings.warmup_epochs
        self.scale_range, self.seed = settings.scale_range, settings.seed
        self.loss_name, self.loss_weight = settings.loss, settings.loss_weight
        self.save_every = 1

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if Path(filename).name in ("checkpoint_final.pth", "checkpoint_best.pth") and Path(filename).is_file():
            checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
            checkpoint["trainer_name"] = "nnUNetTrainer"  # the same network, found by nnU-Net's trainer lookup
            checkpoint["fine_tuned_with"] = f"{type(self).__module__}.{type(self).__qualname__}"
            torch.save(checkpoint, filename)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's choice, with the region read before augmentation widened when `scale_range` zooms out further
        than nnU-Net plans for (so scaled patches see image, not padding)."""
        rotation, dummy_2d, initial, mirror = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        widest = self.scale_range[1]
        if not dummy_2d and widest > 1 / 0.85:  # nnU-Net's own margin divides by 0.85
            initial = get_patch_size(self.configuration_manager.patch_size, rotation, rotation, rotation,
                                     (1 / widest, 1.25))
        return rotation, dummy_2d, initial, mirror

    def get_training_transforms(self, *args, **kwargs):
        """nnU-Net's training transforms with `scale_range` as the SpatialTransform's scaling (and, for the
        skeleton recall loss, the tubed skeleton made after the spatial augmentation)."""
        transforms = nnUNetTrainer.get_training_transforms(*args, **kwargs)
        for spatial in (t for t in transforms.transforms if isinstance(t, SpatialTransform)):
            spatial.scaling = self.scale_range
        if self.loss_name == "skeleton_recall":
            losses.add_skeleton_transform(transforms)
        return transforms

    def _build_loss(self):
        """nnU-Net's Dice + cross-entropy (deep supervision included), plus `loss_weight` x the `loss_name` term."""
        base = super()._build_loss()
        return base if self.loss_name == "dice_ce" else losses.MetricLoss(base, self.loss_name, self.loss_weight)

    def on_validation_epoch_start(self):
        """Validation loss is dice_ce alone, whatever the training loss: curves compare across losses."""
        super().on_validation_epoch_start()
        self.loss.eval()

    def get_dataloaders(self):
        """nnU-Net's loaders built single-threaded (no unseeded worker starts), served by `MultiThreadedAugmenter`
        with seeded workers in a fixed order, sized as nnU-Net sizes its own."""
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            return super().get_dataloaders()
        with paths.restored_environment("nnUNet_n_proc_DA"):
            os.environ["nnUNet_n_proc_DA"] = "0"
            single_train, single_val = super().get_dataloaders()  # nnU-Net draws one batch from each: main process
        pin = self.device.type == "cuda"
        train = self._seeded(single_train.data_loader, 0, processes, max(6, processes // 2), pin)
        val = self._seeded(single_val.data_loader, 1, max(1, processes // 2), max(3, processes // 4), pin)
        next(train), next(val)  # as nnU-Net does: workers started, the first batches drawn
        return train, val

    def _seeded(self, loader, which: int, processes: int, cached: int, pin: bool) -> MultiThreadedAugmenter:
        base = self.seed * 1000 + 500 * which  # training loader, then validation loader
        return MultiThreadedAugmenter(WorkerLoader(loader, base), None, processes, cached,
                                      seeds=[base + i for i in range(processes)], pin_memory=pin, wait_time=0.002)

    def configure_optimizers(self):
        optimizer, _ = super().configure_optimizers()  # nnU-Net's SGD; its poly schedule replaced
        return optimizer, WarmupPolyLR(optimizer, self.initial_lr, self.num_epochs, self.warmup_epochs)

    # Progress bars through nnU-Net's hooks (its run_training is used as it is).
    _epochs_bar = _iterations_bar = None

    def on_train_start(self):
        super().on_train_start()
        self._epochs_bar = tqdm(total=self.num_epochs, initial=self.current_epoch, desc="epochs", unit="epoch")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.loss.train()
        self._iterations_bar = tqdm(total=self.num_iterations_per_epoch, desc=f"epoch {self.current_epoch}",
                                    leave=False, unit="it")

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        if self._iterations_bar is not None:  # None when timed outside an epoch (lib.training_budget)
            self._iterations_bar.update()
        return result

    def on_train_epoch_end(self, train_outputs):
        self._iterations_bar.close()
        self._iterations_bar = None
        super().on_train_epoch_end(train_outputs)

    def on_epoch_end(self):
        super().on_epoch_end()
        self._epochs_bar.update()

    def on_train_end(self):
        self._epochs_bar.close()
        super().on_train_end()


class WorkerLoader:
    """A data loader as one augmentation worker process sees it: torch single-threaded and seeded from the worker's
    thread id (batchgenerators' MultiThreadedAugmenter seeds only numpy), the batches those of `loader`."""

    def __init__(self, loader, seed: int) -> None:
        self.loader, self.seed = loader, seed

    def set_thread_id(self, thread_id: int) -> None:
        torch.set_num_threads(1)  # as nnU-Net's workers: forked after the parent's OpenMP pool ran, it would deadlock
        torch.manual_seed(self.seed + thread_id)
        self.loader.set_thread_id(thread_id)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.loader)


class WarmupPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up over `warmup` epochs, then nnU-Net's poly decay (exponent 0.9) to zero at `max_steps`."""

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, max_steps: int, warmup: int = 0):
        self.initial_lr, self.max_steps, self.warmup = initial_lr, max_steps, warmup
        super().__init__(optimizer)

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.initial_lr * (step + 1) / (self.warmup + 1)
        return self.initial_lr * (1 - step / self.max_steps) ** 0.9

    def step(self, current_step: int | None = None) -> None:  # nnU-Net calls step(epoch)
        step = self.last_epoch + 1 if current_step is None else current_step
        self.last_epoch = step
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]
