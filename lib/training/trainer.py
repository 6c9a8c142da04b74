"""The nnU-Net trainer this project fine-tunes with: nnUNetTrainer with a warm-up, a checkpoint every epoch
and progress bars.

Its network is nnUNetTrainer's own (nothing here changes `build_network_architecture`), so the checkpoints that
nnU-Net's tools load (final, best) name `nnUNetTrainer` as their trainer: `nnUNetPredictor`,
`nnUNetv2_predict_from_modelfolder` and nnU-Net's ensembling then open a model folder written here without
`nnUNet_extTrainer` (they look the trainer up by that name only to build the network). `fine_tuned_with` in the
checkpoint and training.json beside it record the real trainer.
"""
from __future__ import annotations

from pathlib import Path

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from tqdm.auto import tqdm


class FineTuneTrainer(nnUNetTrainer):
    """nnUNetTrainer with a settable schedule, linear warm-up then poly decay, a checkpoint every epoch (for
    resuming), and progress bars over epochs and iterations."""

    warmup_epochs = 1
    NNUNET_TRAINER_NAME = "nnUNetTrainer"  # builds the same network; findable by nnU-Net's trainer lookup
    CHECKPOINTS_FOR_NNUNET = ("checkpoint_final.pth", "checkpoint_best.pth")

    def save_checkpoint(self, filename: str) -> None:
        super().save_checkpoint(filename)
        if Path(filename).name in self.CHECKPOINTS_FOR_NNUNET and Path(filename).is_file():
            checkpoint = torch.load(filename, map_location="cpu", weights_only=False)
            checkpoint["trainer_name"] = self.NNUNET_TRAINER_NAME
            checkpoint["fine_tuned_with"] = f"{type(self).__module__}.{type(self).__qualname__}"
            torch.save(checkpoint, filename)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.network.parameters(), self.initial_lr, weight_decay=self.weight_decay,
                                    momentum=0.99, nesterov=True)
        return optimizer, WarmupPolyLR(optimizer, self.initial_lr, self.num_epochs, self.warmup_epochs)

    def run_training(self):
        self.on_train_start()
        for _ in tqdm(range(self.current_epoch, self.num_epochs), desc="epochs", initial=self.current_epoch,
                      total=self.num_epochs, unit="epoch"):
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train))
                       for _ in tqdm(range(self.num_iterations_per_epoch), desc=f"epoch {self.current_epoch}",
                                     leave=False, unit="it")]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
        self.on_train_end()


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
