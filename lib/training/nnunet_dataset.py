"""Turn a competition root into an nnU-Net v2 raw dataset: compressed 3D TIFF z-slabs with spacing sidecars.

Slabs of at most `slab_depth` slices are written page by page (conversion holds one slice); nnU-Net's preprocessing
then holds one slab at a time, which is what makes a whole kidney fit a 29 GB Kaggle machine (docs/disk.md).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from tqdm.auto import tqdm

from lib import data
from lib.normalisation import check_kidneys, check_scheme, normalize
from lib.volume import CHUNK, runs

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID}_SenNetKidney"
DEFAULT_TRAIN_GROUPS = ("kidney_1_dense", "kidney_2", "kidney_3_sparse")
DEFAULT_VAL_GROUP = "kidney_3_dense"
# nnU-Net preprocessing's peak memory per slab, measured by benchmarks/preprocess_memory.py (the one place the
# figure lives; the notebook and docs/disk.md show what this gives).
PREPROCESS_BASE_GIB, PREPROCESS_BYTES_PER_VOXEL = 1.9, 11.2
SLAB_COMPRESSION, SLAB_COMPRESSION_LEVEL = "zlib", 1  # fast: most of the gain on masks, some on images
MIN_SLAB = 4  # runs of fewer slices are left out (nnU-Net's 3D TIFF reader needs >1; such slivers teach little)


def nnunet_env(work_dir: Path | str, results: Path | str | None = None) -> dict[str, Path]:
    """Point nnU-Net's three folders into `work_dir` (raw, preprocessed; results too unless given elsewhere)
    via the environment."""
    work_dir = Path(work_dir)
    folders = {"nnUNet_raw": work_dir / "raw", "nnUNet_preprocessed": work_dir / "preprocessed",
               "nnUNet_results": Path(results) if results is not None else work_dir / "results"}
    for name, path in folders.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)
    return folders


@dataclass(frozen=True)
class Case:
    """One nnU-Net training case: slices [start, stop) of a group."""

    name: str
    group: str
    start: int
    stop: int
    spacing_mm: float
    role: str  # "train" or "val"


def plan_cases(groups: dict[str, data.Group], train_groups: Sequence[str], val_group: str | None,
               slab_depth: int = 128) -> list[Case]:
    """Cut the chosen groups into slabs; slices the validation group shares with a training group are left out
    of training (kidney_3_sparse holds kidney_3_dense's images), so validation never sees trained-on images."""
    chosen = list(train_groups) + ([val_group] if val_group else [])
    for name in chosen:
        if name not in groups:
            raise data.DataError(f"no group {name!r} in the competition root; found {sorted(groups)}")
        if not groups[name].has_labels:
            raise data.DataError(f"group {name!r} has no labels and cannot be used for training or validation")
    if val_group in train_groups:
        raise ValueError(f"{val_group!r} is both a training and the validation group")
    val_files = set(groups[val_group].image_files) if val_group else set()
    cases = []
    for name in chosen:
        group, role = groups[name], "val" if name == val_group else "train"
        # mm, rounded to whole µm (50.16 µm -> 0.050) so near-equal sizes resample not; 50 µm when unknown
        spacing = round(group.voxel_um if group.voxel_um is not None else 50.0) / 1000
        keep = np.array([role == "val" or f not in val_files for f in group.image_files])
        for start, stop in runs(keep):
            if stop - start < MIN_SLAB:  # e.g. a sliver of kidney_3_sparse beside kidney_3_dense: too thin to use
                continue
            n = -(-(stop - start) // slab_depth)  # slabs of near-equal depth, none a thin remainder
            edges = np.linspace(start, stop, n + 1).round().astype(int)
            for s, e in zip(edges[:-1].tolist(), edges[1:].tolist()):
                cases.append(Case(f"{name}_z{group.slices[s]:04d}", name, s, e, spacing, role))
    return cases


@dataclass(frozen=True)
class Split:
    """Which groups train and which validates, cut into z-slabs of at most `slab_depth` slices (`plan_cases`)."""

    train_groups: Sequence[str] = DEFAULT_TRAIN_GROUPS
    val_group: str | None = DEFAULT_VAL_GROUP
    slab_depth: int = 128


def write_raw_dataset(data_dir: Path | str, work_dir: Path | str, split: Split = Split(),
                      label_dirs: Mapping[str, Path | str] | None = None, normalisation: str = "dataset",
                      progress: bool = True) -> pd.DataFrame:
    """Write the nnU-Net raw dataset of a split under `work_dir/raw`; one row per case. `normalisation` "kidney": images
    normalised by each group's statistics (float16; then NoNormalization), "dataset": raw (CTNormalization).
    `label_dirs`: group -> folder of NNNN.tif masks replacing its labels. The same request reuses the dataset."""
    train_groups = list(split.train_groups)
    label_dirs = {g: Path(d).resolve() for g, d in (label_dirs or {}).items()}
    folders = nnunet_env(work_dir, results=os.environ.get("nnUNet_results"))  # a run's results folder stays put
    groups = data.discover(data_dir)
    cases = plan_cases(groups, train_groups, split.val_group, split.slab_depth)
    root = folders["nnUNet_raw"] / DATASET_NAME
    request = {"data_dir": str(Path(data_dir).resolve()), "train_groups": train_groups,
               "val_group": split.val_group, "slab_depth": split.slab_depth, "cases": [asdict(c) for c in cases],
               "normalisation": check_scheme(normalisation)}
    if label_dirs:
        request["label_dirs"] = {g: str(d) for g, d in sorted(label_dirs.items())}
    manifest = root / "conversion.json"
    if manifest.is_file():
        if {k: v for k, v in json.loads(manifest.read_text()).items() if k != "statistics"} == request:
            return _case_table(cases, groups)
        raise FileExistsError(f"{root}: holds a dataset converted with other settings (see {manifest.name}); "
                              "remove it or use another work folder")
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    used = [groups[g] for g in dict.fromkeys(c.group for c in cases)]
    statistics = check_kidneys(used, progress=progress) if normalisation == "kidney" else {}
    total = sum(c.stop - c.start for c in cases)
    with tqdm(total=total, desc="nnU-Net raw dataset", unit="slice", disable=not progress) as bar:
        vessels = {case.name: _write_case(groups[case.group], case, root, bar, label_dirs.get(case.group),
                                          statistics.get(case.group))
                   for case in cases}
    if not any(vessels[c.name] for c in cases if c.role == "train"):
        raise data.DataError(f"{root}: no labelled vessel voxel in the training groups {train_groups}; "
                             "nnU-Net cannot fingerprint or learn from that")
    dataset_json = {
        "channel_names": {"0": "CT"},  # the plans name the scheme (CTNormalization, or NoNormalization: "kidney")
        "labels": {"background": 0, "vessel": 1},
        "numTraining": len(cases),
        "file_ending": ".tif",
        "overwrite_image_reader_writer": "Tiff3DIO",
        "description": "SenNet + HOA kidney vessels, z-slabs of the competition groups",
    }
    (root / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    manifest.write_text(json.dumps({**request, "statistics": statistics}, indent=2))
    return _case_table(cases, groups)


def splits(cases: Sequence[Case]) -> list[dict[str, list[str]]]:
    """nnU-Net's splits_final.json content: one fold, training cases vs the validation group's cases."""
    train = [c.name for c in cases if c.role == "train"]
    val = [c.name for c in cases if c.role == "val"] or train[-1:]  # nnU-Net needs a non-empty validation set
    return [{"train": train, "val": val}]


def read_cases(work_dir: Path | str) -> list[Case]:
    """The cases of the raw dataset written under `work_dir` (from its conversion.json)."""
    manifest = Path(work_dir) / "raw" / DATASET_NAME / "conversion.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no converted dataset; run write_raw_dataset first")
    return [Case(**c) for c in json.loads(manifest.read_text())["cases"]]


def raw_files(root: Path, name: str) -> tuple[Path, Path]:
    """The image and label slab files of case `name` in the raw dataset folder `root`."""
    return root / "imagesTr" / f"{name}_0000.tif", root / "labelsTr" / f"{name}.tif"


def read_mask_slices(folder: Path, slices: Sequence[int]) -> Iterator[np.ndarray]:
    """Masks NNNN.tif of the given slice numbers from a label folder, as 0/1 uint8, one slice at a time."""
    for z in slices:
        yield (data.read_slice(folder / f"{z:04d}.tif") > 0).astype(np.uint8)


def _write_case(group: data.Group, case: Case, root: Path, bar: tqdm, label_dir: Path | None,
                statistics: dict | None) -> int:
    """Write one slab's image and label 3D TIFFs (compressed, page by page) and spacing sidecars; returns its
    vessel voxel count. With `statistics`, the images are written normalised by them (float16)."""
    vessel = 0
    image_path, label_path = raw_files(root, case.name)
    sidecar = json.dumps({"spacing": [case.spacing_mm] * 3})
    shape = (case.stop - case.start, group.height, group.width)

    def images() -> Iterator[np.ndarray]:
        for s, e in _chunks(case):
            block = group.read_images(s, e)
            yield from (block if statistics is None else normalize(block, statistics).astype(np.float16))
            bar.update(e - s)

    def labels() -> Iterator[np.ndarray]:
        nonlocal vessel
        if label_dir is not None:
            source: Iterator[np.ndarray] = read_mask_slices(label_dir, group.slices[case.start:case.stop])
        else:
            source = (label for s, e in _chunks(case) for label in group.read_labels(s, e))
        for label in source:
            binary = (label > 0).astype(np.uint8)
            vessel += int(binary.sum())
            yield binary

    image_dtype = group.dtype if statistics is None else np.float16
    for path, pages, dtype in ((image_path, images(), image_dtype), (label_path, labels(), np.uint8)):
        tifffile.imwrite(path, pages, shape=shape, dtype=dtype, photometric="minisblack", metadata=None,
                         compression=SLAB_COMPRESSION, compressionargs={"level": SLAB_COMPRESSION_LEVEL})
    (root / "imagesTr" / f"{case.name}.json").write_text(sidecar)
    (root / "labelsTr" / f"{case.name}.json").write_text(sidecar)
    return vessel


def _chunks(case: Case) -> list[tuple[int, int]]:
    return [(s, min(s + CHUNK, case.stop)) for s in range(case.start, case.stop, CHUNK)]


def _case_table(cases: Sequence[Case], groups: dict[str, data.Group]) -> pd.DataFrame:
    """One row per case, with the peak memory (GiB) nnU-Net's preprocessing of its slab takes."""
    rows = []
    for c in cases:
        slices, height, width = c.stop - c.start, groups[c.group].height, groups[c.group].width
        peak = PREPROCESS_BASE_GIB + PREPROCESS_BYTES_PER_VOXEL * slices * height * width / 2**30
        rows.append({**asdict(c), "slices": slices, "first_slice": groups[c.group].slices[c.start],
                     "height": height, "width": width, "preprocess_peak_gib": round(peak, 2)})
    return pd.DataFrame(rows).set_index("name")
