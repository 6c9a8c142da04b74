"""The metric losses: the soft surface Dice is the leaderboard metric on hard masks, its gradients are finite, skeleton
recall measures what it says, and both losses train through notebook 02 (nnU-Net's predictor still opens the model)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tubes
from scipy import ndimage

from lib.metric import surface_dice
from lib.training import losses
from lib.training.fine_tune import TrainSettings
from lib.training.trainer import FineTuneTrainer


def surface_loss(gt: np.ndarray, pred: np.ndarray) -> float:
    """1 - the soft surface Dice of one volume, zero-padded as the metric pads it."""
    pad = (1, 1) * 3
    p = torch.nn.functional.pad(torch.as_tensor(pred, dtype=torch.float64), pad)[None]
    g = torch.nn.functional.pad(torch.as_tensor(gt, dtype=torch.float64), pad)[None]
    return 1 - losses.soft_surface_dice(p, g).item()


@pytest.mark.parametrize("seed", range(8))
def test_surface_loss_is_one_minus_the_metric_on_vessel_like_volumes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(6, 36, size=3))
    gt = tubes(rng, shape, n=5, max_radius=2.0)
    pred = gt ^ (rng.random(shape) < 0.03) if seed % 2 else ndimage.binary_dilation(np.roll(gt, 1, axis=seed % 3))
    assert gt.any() and pred.any()
    assert surface_loss(gt, pred) == pytest.approx(1 - surface_dice(gt, pred), abs=1e-6)


@pytest.mark.parametrize("case", ["both empty", "one empty", "same single voxel", "single voxels apart",
                                  "voxel at corner", "full volume", "equal"])
def test_surface_loss_on_the_metrics_edge_cases(case: str) -> None:
    gt, pred = np.zeros((4, 5, 3), bool), np.zeros((4, 5, 3), bool)
    if case == "one empty":
        gt[1:3, 1:4, 0:2] = True
    elif case == "same single voxel":
        gt[2, 2, 2] = pred[2, 2, 2] = True
    elif case == "single voxels apart":
        gt[1, 1, 1], pred[2, 3, 1] = True, True
    elif case == "voxel at corner":
        gt[0, 0, 0] = pred[0, 0, 0] = pred[3, 4, 2] = True
    elif case == "full volume":
        gt[:], pred[1:] = True, True
    elif case == "equal":
        gt = pred = tubes(np.random.default_rng(1), (4, 5, 3), 2)
    expected = 1 - surface_dice(gt, pred)
    assert surface_loss(gt, pred) == pytest.approx(expected, abs=1e-6)
    assert case != "both empty" or expected == 0.0
    assert case != "one empty" or expected == 1.0


def test_surface_dice_gradients_are_finite_and_point_to_the_truth() -> None:
    rng = np.random.default_rng(3)
    gt = torch.as_tensor(tubes(rng, (12, 24, 24)), dtype=torch.float32)[None]
    for start in (torch.rand(1, 12, 24, 24), torch.full((1, 12, 24, 24), 0.5), gt.clone(), torch.zeros_like(gt)):
        p = start.clone().requires_grad_(True)
        losses.soft_surface_dice(p, gt).backward()
        assert torch.isfinite(p.grad).all()
    logits = torch.full((1, 12, 24, 24), -1.0, requires_grad=True)  # p = 0.27 everywhere
    optimiser = torch.optim.Adam([logits], lr=0.1)
    before = losses.soft_surface_dice(torch.sigmoid(logits), gt).item()
    for _ in range(30):  # gradient ascent on the score alone moves the prediction toward the truth
        optimiser.zero_grad()
        (-losses.soft_surface_dice(torch.sigmoid(logits), gt)).backward()
        optimiser.step()
    after = losses.soft_surface_dice(torch.sigmoid(logits), gt).item()
    assert after > before + 0.3
    hard = (torch.sigmoid(logits) > 0.5).float()
    assert losses.soft_surface_dice(hard, gt).item() > 0.5


def test_the_surface_gradient_vanishes_at_one_half() -> None:
    """The area table is symmetric under complement, so p = 0.5 everywhere is a stationary point: one reason the term
    is added to dice_ce (which moves an untrained network off it), not used alone."""
    gt = torch.as_tensor(tubes(np.random.default_rng(3), (12, 24, 24)), dtype=torch.float32)[None]
    p = torch.full((1, 12, 24, 24), 0.5, requires_grad=True)
    losses.soft_surface_dice(p, gt).backward()
    assert p.grad.abs().max() < 1e-8


def test_skeleton_recall_is_one_for_the_truth_and_zero_for_nothing() -> None:
    gt = tubes(np.random.default_rng(4), (16, 32, 32))
    skeleton = losses.tubed_skeleton(gt)
    assert skeleton.any() and not (skeleton & ~gt).any()  # the tube stays inside the vessel
    assert skeleton.sum() < gt.sum()
    s = torch.as_tensor(skeleton)[None]
    assert losses.skeleton_recall(torch.as_tensor(gt, dtype=torch.float32)[None], s).item() == pytest.approx(1.0)
    assert losses.skeleton_recall(torch.zeros(1, 16, 32, 32), s).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.as_tensor(gt, dtype=torch.float32)[None] * 0.5
    assert losses.skeleton_recall(half, s).item() == pytest.approx(0.5, abs=1e-6)
    assert not losses.tubed_skeleton(np.zeros((4, 4, 4))).any()  # no vessel: no skeleton, recall 1 (no penalty)
    assert losses.skeleton_recall(torch.zeros(1, 4, 4, 4), torch.zeros(1, 4, 4, 4)).item() == 1.0


def test_metric_loss_adds_its_term_in_training_and_not_in_validation() -> None:
    base = torch.nn.MSELoss()
    output = [torch.randn(2, 2, 8, 16, 16), torch.randn(2, 2, 4, 8, 8)]
    label = (torch.rand(2, 1, 8, 16, 16) < 0.2).float()
    skel = torch.as_tensor(losses.tubed_skeleton(label[0, 0].numpy()), dtype=torch.float32)[None, None].repeat(2, 1,
                                                                                                              1, 1, 1)
    target = [torch.cat([label, skel], 1), torch.zeros(2, 2, 4, 8, 8)]
    deep = lambda out, tgt: base(out[0][:, :1], tgt[0]) + base(out[1][:, :1], tgt[1])  # noqa: E731
    probability = torch.softmax(output[0], 1)[:, 1]
    for name, term in (("skeleton_recall", 1 - losses.skeleton_recall(probability, skel[:, 0])),
                       ("surface", 1 - losses.soft_surface_dice(probability, label[:, 0]))):
        loss = losses.MetricLoss(DeepLoss(deep), name, weight=0.7)
        assert loss(output, target).item() == pytest.approx((deep(output, [t[:, :1] for t in target]) + 0.7 * term)
                                                            .item(), rel=1e-6)
        loss.eval()  # validation: nnU-Net's loss alone, the label channel only
        assert loss(output, [t[:, :1] for t in target]).item() == pytest.approx(
            deep(output, [t[:, :1] for t in target]).item(), rel=1e-6)


class DeepLoss(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, output, target):
        return self.fn(output, target)


def test_bad_loss_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="loss must be one of 'dice_ce', 'skeleton_recall', 'surface'"):
        TrainSettings(loss="focal")
    with pytest.raises(ValueError, match="loss_weight must be a number > 0"):
        TrainSettings(loss="surface", loss_weight=0)


def test_the_skeleton_is_made_after_the_spatial_augmentation_at_full_resolution() -> None:
    trainer = object.__new__(FineTuneTrainer)  # only the transform-building methods are exercised
    trainer.scale_range, trainer.loss_name = (0.7, 1.4), "skeleton_recall"
    transforms = trainer.get_training_transforms([16, 32, 32], (-0.5, 0.5), [[1, 1, 1], [0.5, 0.5, 0.5]],
                                                 (0, 1, 2), False)
    names = [type(t).__name__ for t in transforms.transforms]
    assert names.index("SkeletonTransform") == names.index("DownsampleSegForDSTransform") - 1
    assert names.index("SkeletonTransform") > names.index("SpatialTransform")
    gt = tubes(np.random.default_rng(6), (24, 40, 40))
    torch.manual_seed(0)
    out = transforms(image=torch.rand(1, 24, 40, 40), segmentation=torch.as_tensor(gt[None], dtype=torch.int16))
    full = out["segmentation"][0]
    assert full.shape == (2, 16, 32, 32) and out["segmentation"][1].shape == (2, 8, 16, 16)
    np.testing.assert_array_equal(full[1].numpy() > 0, losses.tubed_skeleton(full[0].numpy() > 0))
    trainer.loss_name = "dice_ce"
    plain = trainer.get_training_transforms([16, 32, 32], (-0.5, 0.5), None, (0, 1, 2), False)
    assert "SkeletonTransform" not in [type(t).__name__ for t in plain.transforms]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["skeleton_recall", "surface"])
def test_each_loss_trains_through_notebook_02(loss: str, synthetic_tiny: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from test_training import assert_nnunet_predictor_opens

    from tools import pipeline

    data = tmp_path / "data"
    shutil.copytree(synthetic_tiny, data)
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path / "outputs"))
    overrides = {"epochs": 2, "iterations_per_epoch": 3, "val_iterations_per_epoch": 1, "device": "cpu",
                 "loss": loss, "loss_weight": 0.5}
    config = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"
    scores = pipeline.run(config, str(data), overrides=overrides, name=loss, notebooks=("02_train",))
    summary = json.loads((Path(scores["run_dir"]) / "02_train" / "train_summary.json").read_text())
    model_dir = Path(summary["model_dir"])
    record = json.loads((model_dir / "training.json").read_text())
    assert record["settings"]["loss"] == loss and record["settings"]["loss_weight"] == 0.5
    train_losses, val_losses = record["history"]["train_losses"], record["history"]["val_losses"]
    assert len(train_losses) == 2 and np.isfinite(train_losses).all() and np.isfinite(val_losses).all()
    assert 0 <= scores["validation"]["val_surface_dice"] <= 1
    assert_nnunet_predictor_opens(model_dir, monkeypatch)
