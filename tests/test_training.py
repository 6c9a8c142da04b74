"""Transfer-learning training on the CPU with the tiny configuration: from scratch, from a converted v1
archive, resuming after an interruption; plus the dataset conversion and plans it rests on."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import half_as_float32

from lib import data, normalisation, paths, predictor
from lib.model import architectures, convert_v1, network
from lib.training import fine_tune, nnunet_dataset, trainer
from lib.training.fine_tune import TrainSettings
from lib.training.trainer import FineTuneTrainer
from tools import v1_checkpoint

FAST = dict(configuration="tiny", epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1, device="cpu",
            train_groups=("kidney_1_dense", "kidney_3_sparse"), val_group="kidney_3_dense")


def test_cases_keep_validation_images_out_of_training(synthetic_tiny: Path) -> None:
    groups = data.discover(synthetic_tiny)
    cases = nnunet_dataset.plan_cases(groups, ["kidney_1_dense", "kidney_3_sparse"], "kidney_3_dense", slab_depth=8)
    dense = groups["kidney_3_dense"]
    sparse_slices = {groups["kidney_3_sparse"].slices[z] for c in cases if c.group == "kidney_3_sparse"
                     for z in range(c.start, c.stop)}
    assert sparse_slices.isdisjoint(dense.slices) and sparse_slices  # kidney_3_dense's images are held out
    assert all(c.stop - c.start <= 8 for c in cases)
    assert [c.role for c in cases if c.group == "kidney_3_dense"] == ["val"] * len([c for c in cases if c.role == "val"])
    with pytest.raises(data.DataError, match="kidney_5.*has no labels"):
        nnunet_dataset.plan_cases(groups, ["kidney_5"], None)


def test_raw_dataset_slabs_equal_the_source(synthetic_tiny: Path, tmp_path: Path) -> None:
    split = nnunet_dataset.Split(["kidney_1_dense"], "kidney_3_dense", slab_depth=7)
    table = nnunet_dataset.write_raw_dataset(synthetic_tiny, tmp_path, split, progress=False)
    raw = tmp_path / "raw" / nnunet_dataset.DATASET_NAME
    group = data.open_group("kidney_1_dense", synthetic_tiny)
    stacked = np.concatenate([tifffile.imread(raw / "imagesTr" / f"{n}_0000.tif") for n in table.index
                              if n.startswith("kidney_1_dense")])
    np.testing.assert_array_equal(stacked, group.read_images())
    assert list(table.loc[table["group"] == "kidney_1_dense", "slices"]) == [7, 6, 7]  # 20 slices, no thin rest
    label = tifffile.imread(raw / "labelsTr" / "kidney_1_dense_z0007.tif")
    np.testing.assert_array_equal(label, group.read_labels(7, 13) // 255)
    assert json.loads((raw / "imagesTr" / "kidney_1_dense_z0007.json").read_text())["spacing"] == [0.05] * 3
    assert json.loads((raw / "dataset.json").read_text())["overwrite_image_reader_writer"] == "Tiff3DIO"
    with pytest.raises(FileExistsError, match="converted with other settings"):
        nnunet_dataset.write_raw_dataset(synthetic_tiny, tmp_path, replace(split, slab_depth=5))
    with tifffile.TiffFile(raw / "imagesTr" / "kidney_1_dense_z0007_0000.tif") as tif:  # compressed pages
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE and len(tif.pages) == 6
    # Slabs of 3 or 4 slices are grey pages too (tifffile would take a (4, H, W) stack for planar RGBA).
    table = nnunet_dataset.write_raw_dataset(synthetic_tiny, tmp_path / "thin",
                                             nnunet_dataset.Split(["kidney_1_dense"], None, 4), progress=False)
    thin = tmp_path / "thin" / "raw" / nnunet_dataset.DATASET_NAME / "imagesTr"
    np.testing.assert_array_equal(np.concatenate([tifffile.imread(thin / f"{n}_0000.tif") for n in table.index]),
                                  group.read_images())


def test_training_groups_without_vessels_are_refused(tmp_path: Path) -> None:
    from helpers import write_group

    root = tmp_path / "root"
    write_group(root, "train", "kidney_1_dense", np.full((6, 8, 8), 100, np.uint16), np.zeros((6, 8, 8), np.uint8))
    with pytest.raises(data.DataError, match="no labelled vessel voxel in the training groups"):
        nnunet_dataset.write_raw_dataset(root, tmp_path / "work", nnunet_dataset.Split(["kidney_1_dense"], None),
                                         progress=False)


def test_plans_keep_the_architecture_and_take_kidney_statistics() -> None:
    arch = convert_v1.v2_plans_from_v1(architectures.variant_plans("task008"))
    fingerprint = {"spacings": [[0.05] * 3] * 3, "shapes_after_crop": [[100, 200, 300]] * 3,
                   "foreground_intensity_properties_per_channel": {"0": {"mean": 1.0, "std": 2.0}}}
    plans = fine_tune.kidney_plans(arch, fingerprint, [32, 64, 64], 2)
    config, hepatic = plans["configurations"]["3d_fullres"], arch["configurations"]["3d_fullres"]
    assert config["architecture"] == hepatic["architecture"]
    assert config["spacing"] == [0.05] * 3 and config["patch_size"] == [32, 64, 64]
    assert plans["foreground_intensity_properties_per_channel"]["0"]["mean"] == 1.0
    assert fine_tune.patch_size_for(arch, torch.device("cuda")) == [64, 192, 192]  # the hepatic patch on a GPU
    assert fine_tune.patch_size_for(arch, torch.device("cpu")) == [32, 64, 64]
    with pytest.raises(ValueError, match="not divisible"):
        fine_tune.patch_size_for(arch, torch.device("cpu"), [24, 64, 64])


def test_settings_from_notebook_parameters() -> None:
    params = {"epochs": 3, "patch_size": [32, 64, 64], "train_groups": None, "scratch_dir": "outputs/scratch",
              "validation_tta": True, "data_dir": "somewhere"}  # the last two are not settings
    settings = TrainSettings.from_parameters(params)
    assert settings.epochs == 3 and settings.patch_size == (32, 64, 64)
    assert settings.train_groups == nnunet_dataset.DEFAULT_TRAIN_GROUPS
    assert settings.scratch_dir == str(paths.PROJECT_ROOT / "outputs" / "scratch")
    assert TrainSettings.from_parameters({"train_groups": ["kidney_2"]}).train_groups == ("kidney_2",)
    assert TrainSettings.from_parameters({}) == TrainSettings()


def test_warmup_then_poly_schedule() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = trainer.WarmupPolyLR(opt, 0.01, max_steps=10, warmup=2)
    lrs = []
    for epoch in range(10):
        sched.step(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(0.01 / 3) and lrs[1] == pytest.approx(0.02 / 3)
    assert lrs[2] == pytest.approx(0.01 * 0.8 ** 0.9) and lrs[9] < lrs[5] < lrs[2]


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["kidney", "dataset"])
def test_fine_tunes_from_a_converted_v1_archive(synthetic_tiny: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    """The hepatic weights load, every tensor, under either normalisation; the model folder records the scheme and
    nnU-Net's own predictor opens it."""
    archive = v1_checkpoint.write_v1_archive(tmp_path / "Task008_HepaticVessel.zip",
                                             architectures.variant_plans("tiny"), seed=3)
    arch, weights_file = fine_tune.architecture_plans("tiny", archive, tmp_path / "work")
    net = network.build_network(arch)
    loaded = fine_tune.load_all_weights(net, weights_file)
    converted = torch.load(weights_file, weights_only=True)["network_weights"]
    for key, value in net.state_dict().items():  # every tensor, the vessel head included
        torch.testing.assert_close(value, converted[key], rtol=0, atol=0)
    assert loaded["tensors_loaded"] == len(converted) and loaded["heads_loaded"]

    result = fine_tune.train(synthetic_tiny, tmp_path / "run",
                             TrainSettings(pretrained=str(archive), normalisation=scheme, **FAST), progress=False)
    record = json.loads((result.model_dir / "training.json").read_text())
    assert record["settings"]["normalisation"] == scheme
    plans = json.loads((result.model_dir / "plans.json").read_text())
    assert normalisation.scheme_of(plans) == scheme and predictor.load_model(result.model_dir).normalisation == scheme
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == [
        {"kidney": "NoNormalization", "dataset": "CTNormalization"}[scheme]]
    assert record["from_scratch"] is False and record["pretrained"]["tensors_loaded"] == len(converted)
    assert (result.model_dir / "fold_0" / "checkpoint_final.pth").is_file()
    assert len(result.history["train_losses"]) == 2 and np.isfinite(result.history["train_losses"]).all()
    assert_nnunet_predictor_opens(result.model_dir, monkeypatch)


def assert_nnunet_predictor_opens(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nnU-Net's own predictor loads a trained model folder with no nnUNet_extTrainer set, and predicts what the
    project's predictor predicts (float32 accumulation on both sides, as in tests/test_predictor.py)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    monkeypatch.delenv("nnUNet_extTrainer", raising=False)
    half_as_float32(monkeypatch)
    nnunet = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                             perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    nnunet.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,))
    assert nnunet.trainer_name == "nnUNetTrainer"
    assert torch.load(model_dir / "fold_0" / "checkpoint_final.pth", weights_only=False)["fine_tuned_with"].endswith(
        "FineTuneTrainer")
    model = predictor.load_model(model_dir, "cpu")
    vol = np.random.default_rng(5).normal(20000, 5000, (40, 70, 80)).clip(1, None).astype(np.float32)
    run, _ = predictor.Predictor(model, tta=False).for_kidney(predictor.ArrayGroup("check", vol))
    bound = run.models[0]
    # A "kidney" model folder has nnU-Net's NoNormalization: its predictor expects the kidney already normalised.
    given = vol if model.normalisation == "dataset" else normalisation.normalize(vol, bound.intensity)
    _, theirs = nnunet.predict_single_npy_array(given[None], {"spacing": list(model.spacing_mm)}, None, None, True)
    slices = (normalisation.normalize(s, bound.intensity) for s in vol)
    mine = torch.sigmoid(torch.from_numpy(np.stack(list(run.z_view_logits(slices, vol.shape))))).numpy()
    assert np.abs(mine - theirs[1]).max() < 1e-4


@pytest.mark.slow
def test_from_scratch_resumes_after_an_interruption(synthetic_tiny: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    original = FineTuneTrainer.on_epoch_end

    def interrupted(self):
        original(self)
        raise KeyboardInterrupt("simulated interruption after the first epoch")

    monkeypatch.setattr(FineTuneTrainer, "on_epoch_end", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fine_tune.train(synthetic_tiny, tmp_path, TrainSettings(**FAST), progress=False)
    monkeypatch.undo()
    model_dir = tmp_path / "nnunet" / "results" / nnunet_dataset.DATASET_NAME / fine_tune.TRAINER_FOLDER
    assert (model_dir / "fold_0" / "checkpoint_latest.pth").is_file()
    result = fine_tune.train(synthetic_tiny, tmp_path, TrainSettings(**FAST), progress=False)
    assert result.resumed_from_epoch == 1 and result.pretrained is None
    assert len(result.history["train_losses"]) == 2  # epoch 0 from before the interruption, epoch 1 now
    fig = fine_tune.plot_history(result.history, path=tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and len(fig.axes) == 3
    with pytest.raises(FileExistsError, match="a finished model is already there"):
        fine_tune.train(synthetic_tiny, tmp_path, TrainSettings(**FAST), progress=False)


def test_scale_range_reaches_the_spatial_transform() -> None:
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    fine = object.__new__(FineTuneTrainer)  # only the transform-building methods are exercised
    fine.scale_range = (0.95, 1.8)
    transforms = fine.get_training_transforms([32, 64, 64], (-0.5, 0.5), None, (0, 1, 2), False)
    spatial = [t for t in transforms.transforms if isinstance(t, SpatialTransform)]
    assert len(spatial) == 1 and spatial[0].scaling == (0.95, 1.8) and spatial[0].p_scaling > 0
    plain = FineTuneTrainer.__mro__[1].get_training_transforms([32, 64, 64], (-0.5, 0.5), None, (0, 1, 2), False)
    assert [t.scaling for t in plain.transforms if isinstance(t, SpatialTransform)] == [trainer.NNUNET_SCALE_RANGE]


def trained_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_dir / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                      weights_only=False)["network_weights"]


@pytest.mark.slow
def test_same_seed_same_model_other_seed_other_model(synthetic_tiny: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # one seeded augmentation worker process, as on the CPU
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    reached = []  # the scaling of the SpatialTransform each training run really builds
    original = FineTuneTrainer.get_training_transforms

    def spy(self, *args, **kwargs):
        transforms = original(self, *args, **kwargs)
        reached.extend(t.scaling for t in transforms.transforms if isinstance(t, SpatialTransform))
        return transforms

    monkeypatch.setattr(FineTuneTrainer, "get_training_transforms", spy)
    scratch = str(tmp_path / "scratch")  # converted and preprocessed once, shared by the three runs
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        settings = TrainSettings(**{**FAST, "seed": seed, "scale_range": (0.8, 1.6), "scratch_dir": scratch})
        runs[name] = fine_tune.train(synthetic_tiny, tmp_path / name, settings, progress=False)
    a, b, c = (trained_weights(runs[n].model_dir) for n in "abc")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert runs["a"].history["train_losses"] == runs["b"].history["train_losses"]
    assert runs["a"].history["val_losses"] == runs["b"].history["val_losses"]
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert runs["a"].history["train_losses"] != runs["c"].history["train_losses"]
    assert reached == [(0.8, 1.6)] * 3  # it reached the SpatialTransform of every run
    record = json.loads((runs["a"].model_dir / "training.json").read_text())
    assert record["scale_range"] == [0.8, 1.6] and record["seed"] == 7
    raw = Path(scratch) / "raw" / nnunet_dataset.DATASET_NAME
    assert not list((raw / "imagesTr").glob("*.tif"))  # raw slabs deleted once preprocessed
