"""Losses that train for the leaderboard metric (notebook 02's `loss`): nnU-Net's Dice + cross-entropy ("dice_ce"),
plus a weighted skeleton-recall (Kirchhoff et al., ECCV 2024) or soft surface-Dice term on the full-resolution output.

What each term is and why, validation, sparse labels and cost: docs/losses.md.
"""
from __future__ import annotations

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import SegOnlyTransform
from scipy import ndimage
from skimage.morphology import skeletonize

from lib.metric import CUBE_AREA

LOSSES = ("dice_ce", "skeleton_recall", "surface")
_CUBE_AREA_BY_TOP_BOTTOM = torch.as_tensor(CUBE_AREA).reshape(16, 16)  # [top square code, bottom square code]


def check_loss(loss: str, weight: float) -> None:
    """One-line errors for a loss name or weight that cannot work."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ValueError(f"loss_weight must be a number > 0, got {weight!r}")


def tubed_skeleton(mask: np.ndarray) -> np.ndarray:
    """The skeleton of a 3D mask thickened by two 6-connected dilations, kept inside the mask (Skeleton Recall's
    tube: a thin vessel's skeleton is most of it, a thick one's a core line)."""
    mask = np.asarray(mask) > 0
    if not mask.any():
        return np.zeros(mask.shape, bool)
    tube = ndimage.binary_dilation(skeletonize(mask), ndimage.generate_binary_structure(3, 1), iterations=2)
    return tube & mask


class SkeletonTransform(SegOnlyTransform):
    """Appends the tubed skeleton of the segmentation (C=1, Z, Y, X, after spatial augmentation) as a second channel."""

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        skeleton = torch.from_numpy(tubed_skeleton(segmentation[0].numpy() > 0)).to(segmentation.dtype)
        return torch.cat([segmentation, skeleton[None]])


def add_skeleton_transform(transforms) -> None:
    """Insert `SkeletonTransform` into nnU-Net's training pipeline just before deep supervision's downsampling (or
    last), so the skeleton is of the augmented label at full resolution."""
    names = [type(t).__name__ for t in transforms.transforms]
    at = names.index("DownsampleSegForDSTransform") if "DownsampleSegForDSTransform" in names else len(names)
    transforms.transforms.insert(at, SkeletonTransform())


def skeleton_recall(probability: torch.Tensor, skeleton: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """Soft recall of a skeleton over a batch: sum(p x skeleton) / sum(skeleton); 1 when there is no skeleton."""
    skeleton = skeleton.to(probability.dtype)
    return ((probability * skeleton).sum() + smooth) / (skeleton.sum() + smooth)


def square_probabilities(probability: torch.Tensor) -> torch.Tensor:
    """(16, ..., Y-1, X-1): the probability of each 4-bit code (`lib.metric`'s bit order) of every 2x2 square of the
    last two axes, voxels independent with foreground probability `probability`."""
    q = torch.stack([1 - probability, probability])
    left, right = q[..., :-1], q[..., 1:]
    pairs = (right[:, None] * left[None]).flatten(0, 1)  # code = left + 2 x right
    upper, lower = pairs[..., :-1, :], pairs[..., 1:, :]
    return (lower[:, None] * upper[None]).flatten(0, 1)  # code = upper pair + 4 x lower pair


def _cube_area_and_border(probability: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected marching-cubes area and probability of being a border cube, per 2x2x2 cube of (B, Z, Y, X)."""
    squares = square_probabilities(probability)
    bottom, top = squares[:, :, :-1], squares[:, :, 1:]
    table = _CUBE_AREA_BY_TOP_BOTTOM.to(probability.device, probability.dtype)
    area = (torch.einsum("ba,a...->b...", table, bottom) * top).sum(0)
    border = 1 - bottom[0] * top[0] - bottom[15] * top[15]
    return area, border


def soft_surface_dice(probability: torch.Tensor, target: torch.Tensor, smooth: float = 1e-6) -> torch.Tensor:
    """Surface Dice at tolerance 0 of foreground probabilities against a 0/1 target, both (B, Z, Y, X), over the
    batch and the cubes inside the arrays (zero-pad both to score as `lib.metric` does): the metric on 0/1 inputs,
    1 when both are empty. The formula: docs/losses.md, "Surface Dice"."""
    target = target.to(probability.dtype)
    area_pred, border_pred = _cube_area_and_border(probability)
    with torch.no_grad():
        area_gt, _ = _cube_area_and_border(target)
    matched = (area_gt * border_pred).sum() + (area_pred * (area_gt > 0)).sum()
    return (matched + smooth) / (area_gt.sum() + area_pred.sum() + smooth)


class MetricLoss(torch.nn.Module):
    """nnU-Net's loss `base` plus `weight` x a metric term on the full-resolution output; `base` alone in eval mode
    (validation). "skeleton_recall" targets carry the tubed skeleton as channel 1 (`SkeletonTransform`)."""

    def __init__(self, base: torch.nn.Module, loss: str, weight: float = 1.0) -> None:
        super().__init__()
        check_loss(loss, weight)
        self.base, self.loss, self.weight = base, loss, float(weight)

    def forward(self, output: list, target: list) -> torch.Tensor:  # deep supervision: full resolution first
        labels = [t[:, :1] for t in target]
        value = self.base(output, labels)
        if not self.training or self.loss == "dice_ce":
            return value
        if self.loss == "skeleton_recall" and target[0].shape[1] < 2:
            raise ValueError("the skeleton recall loss needs the tubed skeleton as channel 1 of the target "
                             "(SkeletonTransform in the training transforms)")
        with torch.autocast(output[0].device.type, enabled=False):  # float32: sums over millions of cubes
            probability = torch.softmax(output[0].float(), 1)[:, 1]
            if self.loss == "skeleton_recall":
                term = skeleton_recall(probability, target[0][:, 1])
            else:
                term = soft_surface_dice(probability, labels[0][:, 0])
        return value + self.weight * (1 - term)
