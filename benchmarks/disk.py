"""Disk use of every training stage, in bytes per training voxel, and the peak of a full real-size run.

Stages, measured on a SYNTHETIC dataset (preset `small` by default, seed 0): nnU-Net raw z-slabs (baseline: the
seed code's uncompressed pages, 3 B per voxel by construction plus headers; now: zlib-compressed), nnU-Net's
preprocessed copy, the float16 probabilities of a sparse group during refinement, refined labels (compressed masks;
here the synthetic whole tree stands for them, i.e. labels shaped like vessels), and one checkpoint of the hepatic
network (a fixed size, independent of the data). The figures are then scaled to the real training set (the `full`
preset shapes: the three training kidneys and kidney_3_dense for validation) for the seed recipe and for one
pseudo-label round (two training rounds).

Synthetic images compress differently from real HiP-CT scans (noise level, empty background): the image slab's
ratio is an estimate; the worst case (uncompressed, 2 B per voxel) is printed beside it and does not change the peak,
which is set by the preprocessed copy once raw slabs are deleted case by case.

Run: `.venv/bin/python benchmarks/disk.py [--preset small] [--seed 0]` (about a minute on 2 cores).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from lib import data, postprocess
from lib.model import architectures, network
from lib.training import fine_tune, nnunet_dataset
from tools import synthetic

GB = 1e9


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


def raw_and_preprocessed(root: Path, work: Path) -> tuple[int, int, int, int]:
    """Raw slab bytes, preprocessed bytes, training voxels and the largest slab's raw + preprocessed bytes."""
    table = nnunet_dataset.write_raw_dataset(root, work, progress=False)
    raw_dir = work / "raw" / nnunet_dataset.DATASET_NAME
    raw = folder_bytes(raw_dir, "*.tif")
    voxels = int((table["slices"] * table["height"] * table["width"]).sum())
    cases = nnunet_dataset.read_cases(work)
    arch, _ = fine_tune.architecture_plans("tiny", None, work)
    fine_tune.prepare(arch, [32, 64, 64], 2, cases, keep_raw=True, progress=False)
    pre_dir = work / "preprocessed" / nnunet_dataset.DATASET_NAME / f"{fine_tune.PLANS_NAME}_3d_fullres"
    largest = max(table.index, key=lambda n: table.loc[n, "slices"] * table.loc[n, "height"] * table.loc[n, "width"])
    slab = sum(p.stat().st_size for p in [*nnunet_dataset.raw_files(raw_dir, largest), *pre_dir.glob(f"{largest}*")])
    return raw, folder_bytes(pre_dir), voxels, slab


def refined_label_bytes(root: Path, out: Path) -> tuple[int, int]:
    """Bytes and voxels of refined-label masks of the sparse groups (the whole synthetic tree as the mask)."""
    total = voxels = 0
    for name in fine_tune.SPARSE_GROUPS:
        group = data.open_group(name, root)
        truth = np.stack(list(nnunet_dataset.read_mask_slices(root / synthetic.TRUTH_FOLDER / name, group.slices)))
        postprocess.write_refined_labels(truth.astype(np.float16), group, 0.5, out / name, group.slices, False)
        total += folder_bytes(out / name)
        voxels += int(np.prod(group.shape))
    return total, voxels


def checkpoint_bytes(out: Path) -> int:
    """One nnU-Net checkpoint of the hepatic (Task008) network: weights + SGD momentum + a small header."""
    net = network.build_network(architectures.v2_plans("task008"))
    optimizer = torch.optim.SGD(net.parameters(), 0.01, momentum=0.99, nesterov=True)
    for p in net.parameters():
        optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
    torch.save({"network_weights": net.state_dict(), "optimizer_state": optimizer.state_dict()}, out)
    return out.stat().st_size


def real_training_voxels() -> dict[str, int]:
    """Voxels of the real training set by role, as `plan_cases` cuts it (full preset shapes)."""
    shapes = synthetic.PRESETS["full"].shapes
    train = sum(int(np.prod(shapes[g])) for g in nnunet_dataset.DEFAULT_TRAIN_GROUPS)
    dense = int(np.prod(shapes["kidney_3_dense"]))
    sparse = max(int(np.prod(shapes[g])) for g in fine_tune.SPARSE_GROUPS)
    return {"train": train - dense, "val": dense, "largest_sparse_group": sparse}  # dense slices held out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(synthetic.PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    outputs = Path(__file__).resolve().parent.parent / "outputs"
    outputs.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outputs) as tmp:
        tmp = Path(tmp)
        root = synthetic.generate(tmp / "data", args.preset, args.seed, progress=False)
        raw1, pre1, voxels, slab = raw_and_preprocessed(root, tmp / "work")
        refined, sparse_voxels = refined_label_bytes(root, tmp / "refined")
        checkpoint = checkpoint_bytes(tmp / "checkpoint.pth")
    per = {"raw slabs, uncompressed (seed code; uint16 image + uint8 label)": 3.0, "raw slabs, zlib (now)": raw1 / voxels,
           "nnU-Net preprocessed": pre1 / voxels, "refined labels (zlib masks, per sparse-group voxel)":
           refined / sparse_voxels, "sparse-group probabilities during refinement (float16)": 2.0}
    print(f"SYNTHETIC preset {args.preset!r} seed {args.seed}: {voxels / 1e6:.1f} M training voxels "
          f"(train + validation cases)")
    for name, value in per.items():
        print(f"  {name:58s} {value:6.3f} B/voxel")
    print(f"  one hepatic-network checkpoint (latest, best and final are kept per round) {checkpoint / 1e6:8.1f} MB")

    real = real_training_voxels()
    n = real["train"] + real["val"]
    raw_b, pre_b = per["raw slabs, zlib (now)"], per["nnU-Net preprocessed"]
    ckpts = 3 * checkpoint
    validation = 3.0 * real["val"]  # notebook 02's validation: float16 probabilities + uint8 mask
    probs = 2.0 * real["largest_sparse_group"]
    refined_real = per["refined labels (zlib masks, per sparse-group voxel)"] * sum(
        int(np.prod(synthetic.PRESETS["full"].shapes[g])) for g in fine_tune.SPARSE_GROUPS)
    slab_real = 128 * 1706 * 1510 * (2.0 + pre_b)  # the largest real slab, raw uncompressed + preprocessed
    before = (3.0 + pre_b) * n + ckpts + validation
    one_round = max(raw_b, pre_b) * n + slab_real  # raw deleted case by case while preprocessing
    worst_images = max(2.0 + raw1 / voxels - raw_b, pre_b) * n + slab_real  # if real images did not compress
    between = pre_b * n + ckpts + probs + refined_real  # round 0's data still there while refining
    rounds = max(one_round, between) + ckpts + refined_real  # round 1 rebuilt after round 0's data is deleted
    print(f"\nReal training set: {n / 1e9:.2f} G voxels (train {real['train'] / 1e9:.2f} G + kidney_3_dense "
          f"{real['val'] / 1e9:.2f} G). Peak disk of notebook 02:")
    print(f"  baseline (seed code: uncompressed raw slabs kept beside the preprocessed copy): {before / GB:5.1f} GB")
    print(f"  now, seed recipe (0 pseudo-label rounds): {(one_round + ckpts + validation) / GB:5.1f} GB "
          f"(if real images did not compress at all: {(worst_images + ckpts + validation) / GB:5.1f} GB)")
    worst_pre = (4.0 * n + slab_real + ckpts + validation) / GB
    print(f"  now, if real preprocessed images did not compress at all (float32, 4 B/voxel): {worst_pre:5.1f} GB")
    print(f"  now, 1 pseudo-label round (both rounds): {(rounds + validation) / GB:5.1f} GB; while refining: "
          f"{(between + validation) / GB:5.1f} GB")
    print(f"  ratio baseline / now (seed recipe): {before / (one_round + ckpts + validation):.2f}x")


if __name__ == "__main__":
    main()
