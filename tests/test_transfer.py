"""v1 -> v2 checkpoint conversion, checked against nnU-Net v1's own Generic_UNet.

The archives are stand-ins written by `tools.v1_checkpoint` (random weights in the real v1 format and layout,
built with v1's code); the v2 side is nnunetv2's own plans handling, network builder and
`load_pretrained_weights`. Equivalence = same logits on the same input, all deep-supervision outputs.
"""
from __future__ import annotations

import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from lib.model import architectures, convert_v1, network
from lib.model.convert_v1 import TransferError
from tools import convert_v1 as convert_v1_cli
from tools import v1_checkpoint

FULLRES = "3d_fullres/Task008_HepaticVessel/nnUNetTrainerV2__nnUNetPlansv2.1"
PREFIX = "download/nnUNet/"
TOL = 1e-4


def _v1_from_zip(zip_path: Path, fold: int = 0, prefix: str = PREFIX) -> torch.nn.Module:
    """The v1 network of a stand-in archive, read without lib.model.convert_v1: v1 builder + torch.load."""
    with zipfile.ZipFile(zip_path) as zf:
        plans = pickle.loads(zf.read(f"{prefix}{FULLRES}/plans.pkl"))
        ckpt = torch.load(io.BytesIO(zf.read(f"{prefix}{FULLRES}/fold_{fold}/model_final_checkpoint.model")),
                          map_location="cpu", weights_only=False)
    net = v1_checkpoint.build_v1_network(plans, max(plans["plans_per_stage"]))
    net.load_state_dict(ckpt["state_dict"])
    return net.eval()


def _max_diff(v1_net: torch.nn.Module, v2_net: torch.nn.Module, shape: tuple[int, ...], seed: int = 0) -> float:
    """Max |v2 logits - v1 logits[:, [0, 1]]| over all deep-supervision outputs (and their count matches)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a, b = v1_net.eval()(x), v2_net.eval()(x)
    assert len(a) == len(b) == len(v1_net.tu)
    diffs = []
    for aa, bb in zip(a, b):
        assert aa.shape[1] == 3 and bb.shape[1] == 2 and aa.shape[2:] == bb.shape[2:]
        diffs.append((aa[:, :2] - bb).abs().max().item())
    return max(diffs)


def _v2_from_out(out: Path) -> torch.nn.Module:
    plans = json.loads((out / "plans.json").read_text())
    net = network.build_network(plans, num_input_channels=1, num_outputs=2, deep_supervision=True)
    return convert_v1.load_converted_weights(net, out / "pretrained_weights.pth")


@pytest.fixture(scope="module")
def small_zip(tmp_path_factory) -> Path:
    """Task008-structured (6 stages, strides [[2,2,2]]*4 + [[1,2,2]]) archive with 4 base features, nested prefix,
    3d_lowres and 3d_cascade_fullres next to 3d_fullres, folds 0 and 1."""
    path = tmp_path_factory.mktemp("v1") / "Task008_HepaticVessel.zip"
    return v1_checkpoint.write_v1_archive(path, architectures.variant_plans("small"), seed=3, folds=(0, 1),
                                          prefix=PREFIX, configurations=("3d_lowres", "3d_cascade_fullres",
                                                                         "3d_fullres"))


@pytest.fixture(scope="module")
def converted(small_zip, tmp_path_factory) -> Path:
    return convert_v1.convert(small_zip, tmp_path_factory.mktemp("out") / "task008_v2")


@pytest.fixture(scope="module")
def extracted(small_zip, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    with zipfile.ZipFile(small_zip) as zf:
        zf.extractall(root)
    return root


# ------------------------------------------------------------------------------------ the stand-in


def test_stand_in_is_real_v1_format(small_zip: Path) -> None:
    with zipfile.ZipFile(small_zip) as zf:
        names = set(zf.namelist())
        base = f"{PREFIX}{FULLRES}"
        for member in ("plans.pkl", "postprocessing.json", "fold_0/model_final_checkpoint.model",
                       "fold_0/model_final_checkpoint.model.pkl", "fold_0/debug.json"):
            assert f"{base}/{member}" in names
        raw = zf.read(f"{base}/fold_0/model_final_checkpoint.model")
        info = pickle.loads(zf.read(f"{base}/fold_0/model_final_checkpoint.model.pkl"))
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(io.BytesIO(raw), weights_only=True)  # numpy scalars inside, like the real file
    ckpt = torch.load(io.BytesIO(raw), weights_only=False)
    assert set(ckpt) >= {"epoch", "state_dict", "optimizer_state_dict", "lr_scheduler_state_dict", "plot_stuff"}
    assert len(ckpt["state_dict"]) == 98  # 6 stages, as noted for the real Task008 network
    assert info["name"] == "nnUNetTrainerV2" and info["init"][5] == 1 and len(info["init"]) == 9


# ------------------------------------------------------------------------------------- equivalence


def test_zip_conversion_matches_v1_logits(small_zip: Path, converted: Path) -> None:
    diff = _max_diff(_v1_from_zip(small_zip), _v2_from_out(converted), (2, 1, 32, 64, 64))
    print(f"small variant, zip source: max |v2 - v1[:, :2]| = {diff:.3g}")
    assert diff < TOL


def test_written_keys_are_exactly_the_v2_network(converted: Path) -> None:
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    weights = torch.load(converted / "pretrained_weights.pth", weights_only=True)["network_weights"]
    net = network.build_network(json.loads((converted / "plans.json").read_text()))
    own = net.state_dict()
    assert set(weights) == set(own)
    assert all(weights[k].shape == own[k].shape for k in own)
    assert any(".all_modules." in k for k in weights) and any(k.startswith("decoder.encoder.") for k in weights)
    load_pretrained_weights(net, str(converted / "pretrained_weights.pth"))  # nnunetv2's own loader accepts it
    after = net.state_dict()
    assert all(torch.equal(after[k], weights[k]) for k in own if ".seg_layers." not in k)
    for k in own:  # biases v1 does not have are zeros
        if (".seg_layers." in k or ".transpconvs." in k) and k.endswith(".bias"):
            assert not weights[k].any()


def test_plans_json_is_a_v2_plans_file(converted: Path) -> None:
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((converted / "plans.json").read_text())
    assert list(plans) == ["dataset_name", "plans_name", "original_median_spacing_after_transp",
                           "original_median_shape_after_transp", "image_reader_writer", "transpose_forward",
                           "transpose_backward", "configurations", "experiment_planner_used", "label_manager",
                           "foreground_intensity_properties_per_channel"]
    pm = PlansManager(plans)
    cm = pm.get_configuration("3d_fullres")
    assert pm.dataset_name == "Dataset008_HepaticVessel"
    assert cm.patch_size == [32, 64, 64] and cm.spacing == [1.5, 0.8, 0.8] and cm.batch_size == 2
    assert cm.normalization_schemes == ["CTNormalization"] and cm.use_mask_for_norm == [False]
    assert cm.batch_dice is True
    assert all(callable(f) for f in (cm.resampling_fn_data, cm.resampling_fn_seg, cm.resampling_fn_probabilities))
    kw = cm.network_arch_init_kwargs
    assert cm.network_arch_class_name == "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    assert kw["features_per_stage"] == [4, 8, 16, 32, 64, 128]
    assert kw["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 4 + [[1, 2, 2]]
    fg = pm.foreground_intensity_properties_per_channel["0"]
    assert set(fg) == {"mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5"}
    assert fg["std"] == pytest.approx(56.2)
    net = network.build_network(plans, deep_supervision=False).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 32, 64, 64)).shape == (1, 2, 32, 64, 64)
    report = json.loads((converted / "conversion.json").read_text())
    assert report["fold"] == "fold_0" and report["configuration"] == "3d_fullres"
    assert report["keys"]["v1_state_dict"] == 98 and report["keys"]["v2_with_aliases"] == len(net.state_dict())
    assert report["v1_architecture"]["stages"] == 6


def test_fold_and_extracted_folder(small_zip: Path, extracted: Path, converted: Path, tmp_path: Path) -> None:
    ref = torch.load(converted / "pretrained_weights.pth", weights_only=True)["network_weights"]
    for i, src in enumerate((extracted, extracted / "download/nnUNet/3d_fullres/Task008_HepaticVessel")):
        out = convert_v1.convert(src, tmp_path / f"o{i}")
        got = torch.load(out / "pretrained_weights.pth", weights_only=True)["network_weights"]
        assert all(torch.equal(got[k], ref[k]) for k in ref)
        assert (out / "plans.json").read_text() == (converted / "plans.json").read_text()
    out1 = convert_v1.convert(small_zip, tmp_path / "fold1", fold=1)
    assert json.loads((out1 / "conversion.json").read_text())["fold"] == "fold_1"
    assert _max_diff(_v1_from_zip(small_zip, fold=1), _v2_from_out(out1), (1, 1, 32, 64, 64), seed=1) < TOL
    got1 = torch.load(out1 / "pretrained_weights.pth", weights_only=True)["network_weights"]
    first = "encoder.stages.0.0.convs.0.conv.weight"
    assert not torch.equal(got1[first], ref[first])


def test_plans_from_model_pkl_when_plans_pkl_absent(extracted: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(extracted / "download/nnUNet/3d_fullres", src / "3d_fullres")
    (src / "3d_fullres/Task008_HepaticVessel/nnUNetTrainerV2__nnUNetPlansv2.1/plans.pkl").unlink()
    out = convert_v1.convert(src, tmp_path / "out")
    assert json.loads((out / "conversion.json").read_text())["plans_from"].endswith(".model.pkl['plans']")


def test_numpy1_pickled_plans(extracted: Path, tmp_path: Path) -> None:
    """The real plans.pkl was pickled by numpy 1.x (`numpy.core.multiarray`); numpy 2 must still read it."""
    src = tmp_path / "src"
    shutil.copytree(extracted / "download/nnUNet/3d_fullres", src / "3d_fullres")
    plans_pkl = src / "3d_fullres/Task008_HepaticVessel/nnUNetTrainerV2__nnUNetPlansv2.1/plans.pkl"
    old = pickle.dumps(pickle.loads(plans_pkl.read_bytes()), protocol=2)
    assert b"numpy._core" in old
    plans_pkl.write_bytes(pickle.dumps(pickle.loads(plans_pkl.read_bytes()), protocol=0)
                          .replace(b"numpy._core", b"numpy.core"))
    out = convert_v1.convert(src, tmp_path / "out")
    assert json.loads((out / "plans.json").read_text())["configurations"]["3d_fullres"]["patch_size"] == [32, 64, 64]


def test_cli(tmp_path: Path, capsys) -> None:
    src = v1_checkpoint.main([str(tmp_path / "v1.zip"), "--variant", "small", "--seed", "5", "--folds", "0", "1"])
    assert "RANDOM weights" in capsys.readouterr().out
    out = tmp_path / "cli"
    assert convert_v1_cli.main([str(src), str(out), "--fold", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["conversion.json", "plans.json", "pretrained_weights.pth"]
    assert convert_v1_cli.main([str(src), str(out)]) == 2
    assert "already holds" in capsys.readouterr().err
    assert convert_v1_cli.main([str(src), str(out), "--force"]) == 0
    assert json.loads((out / "conversion.json").read_text())["fold"] == "fold_0"


def test_task008_full_size(tmp_path: Path) -> None:
    """The real Task008 plans (base 32, max 320, patch 64x192x192): 31 M parameters through the whole path."""
    plans = architectures.task008_like_plans()
    zip_path = v1_checkpoint.write_v1_archive(tmp_path / "t8.zip", plans, prefix="x/", configurations=("3d_fullres",),
                                              compression=zipfile.ZIP_STORED, optimizer_state=False,
                                              legacy_serialization=True)  # as torch < 1.6 wrote it
    out = convert_v1.convert(zip_path, tmp_path / "out")
    cm_kw = json.loads((out / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert cm_kw["patch_size"] == [64, 192, 192]
    assert cm_kw["architecture"]["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    diff = _max_diff(_v1_from_zip(zip_path, prefix="x/"), _v2_from_out(out), (1, 1, 16, 64, 64))
    print(f"Task008 size: max |v2 - v1[:, :2]| = {diff:.3g}")
    assert diff < TOL


def test_anisotropic_kernels(tmp_path: Path) -> None:
    zip_path = v1_checkpoint.write_v1_archive(tmp_path / "aniso.zip", architectures.variant_plans("anisotropic"),
                                              prefix=PREFIX, configurations=("3d_fullres",), optimizer_state=False)
    with pytest.raises(TransferError, match=r"not all equal.*kernel of level L\+1.*pad_kernels=True"):
        convert_v1.convert(zip_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    out = convert_v1.convert(zip_path, tmp_path / "out", pad_kernels=True)
    plans = json.loads((out / "plans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["kernel_sizes"][0] == [3, 3, 3]
    assert json.loads((out / "conversion.json").read_text())["kernels_zero_padded"] is True
    assert _max_diff(_v1_from_zip(zip_path), _v2_from_out(out), (1, 1, 32, 64, 64)) < TOL


# -------------------------------------------------------------------------------------------- errors


def test_missing_source_and_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match=r"nope\.zip: no such file or folder"):
        convert_v1.convert(tmp_path / "nope.zip", tmp_path / "out")
    (tmp_path / "notes.zip").write_text("not a zip")
    with pytest.raises(TransferError, match=r"notes\.zip: not a readable zip archive"):
        convert_v1.convert(tmp_path / "notes.zip", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TransferError, match="no 3d_fullres model .*no v1 .model files at all"):
        convert_v1.convert(tmp_path / "empty", tmp_path / "out")


@pytest.mark.parametrize("configurations, found", [(("3d_lowres",), "3d_lowres/fold_0"), (("2d",), "2d/fold_0")])
def test_archive_without_3d_fullres(tmp_path: Path, configurations, found) -> None:
    zip_path = v1_checkpoint.write_v1_archive(tmp_path / "a.zip", architectures.variant_plans("small"),
                                              configurations=configurations, optimizer_state=False)
    with pytest.raises(TransferError, match=rf"a\.zip: no 3d_fullres model in this archive; found: {found}"):
        convert_v1.convert(zip_path, tmp_path / "out")


def test_missing_fold(small_zip: Path, tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="3d_fullres has no fold_3; available folds: fold_0, fold_1"):
        convert_v1.convert(small_zip, tmp_path / "out", fold=3)


def test_corrupt_model(small_zip: Path, extracted: Path, tmp_path: Path) -> None:
    member = f"{PREFIX}{FULLRES}/fold_0/model_final_checkpoint.model"
    bad_zip = tmp_path / "bad.zip"
    with zipfile.ZipFile(small_zip) as src, zipfile.ZipFile(bad_zip, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info, data[: len(data) // 3] if info.filename == member else data)
    with pytest.raises(TransferError, match=rf"bad\.zip!{member}: not a readable torch checkpoint"):
        convert_v1.convert(bad_zip, tmp_path / "out")
    folder = tmp_path / "folder"
    shutil.copytree(extracted, folder)
    (folder / member).write_bytes(b"\x00garbage")
    with pytest.raises(TransferError, match="model_final_checkpoint.model: not a readable torch checkpoint"):
        convert_v1.convert(folder, tmp_path / "out")
    torch.save({"weights": 1}, folder / member)
    with pytest.raises(TransferError, match="not an nnU-Net v1 checkpoint"):
        convert_v1.convert(folder, tmp_path / "out")


def test_missing_or_mismatched_plans(extracted: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(extracted / "download/nnUNet/3d_fullres", src / "3d_fullres")
    trainer_dir = src / "3d_fullres/Task008_HepaticVessel/nnUNetTrainerV2__nnUNetPlansv2.1"
    (trainer_dir / "plans.pkl").unlink()
    (trainer_dir / "fold_0/model_final_checkpoint.model.pkl").unlink()
    with pytest.raises(TransferError, match=r"no v1 plans: neither .*plans\.pkl nor a 'plans' entry"):
        convert_v1.convert(src, tmp_path / "out")
    (trainer_dir / "plans.pkl").write_bytes(pickle.dumps(architectures.variant_plans("task008")))
    with pytest.raises(TransferError, match="state_dict is not the Generic_UNet its plans stage 1 describe"):
        convert_v1.convert(src, tmp_path / "out")


def test_existing_output_needs_force(small_zip: Path, converted: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in converted.iterdir()}
    with pytest.raises(TransferError, match="already holds conversion.json|already holds plans.json"):
        convert_v1.convert(small_zip, converted)
    assert {p.name: p.stat().st_mtime_ns for p in converted.iterdir()} == before
