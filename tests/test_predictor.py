"""Streaming sliding-window prediction: equal to nnU-Net's own predictor, bounded, resolution-aware."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    INTENSITY,
    half_as_float32,
    random_network,
    reference_probabilities,
    small_plans,
    write_model_dir,
)

from lib import data, normalisation, predictor

PATCH = (32, 64, 64)


@pytest.fixture(scope="module")
def model() -> predictor.Model:
    plans = small_plans(PATCH, spacing=(1.0, 1.0, 1.0))
    return predictor.from_network(random_network(plans), plans, "cpu")


def volume(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(100, 30, shape).clip(1, None).astype(np.float32)


def ours(model: predictor.Model | list[predictor.Model], vol: np.ndarray, tta: bool = False, **kw) -> np.ndarray:
    run = predictor.Predictor(model, tta=tta, **kw)
    slices = (normalisation.normalize(s, run.models[0].intensity) for s in vol)
    return torch.sigmoid(torch.from_numpy(np.stack(list(run.z_view_logits(slices, vol.shape))))).numpy()


def nnunet_predictor_probabilities(model: predictor.Model, vol: np.ndarray, tta: bool) -> np.ndarray:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(model.plans)
    nnunet = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                             perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    nnunet.manual_initialization(model.network, manager, manager.get_configuration("3d_fullres"),
                                 [model.network.state_dict()], {"channel_names": {"0": "CT"},
                                 "labels": {"background": 0, "vessel": 1}, "file_ending": ".tif"},
                                 "test", model.mirror_axes)
    _, probs = nnunet.predict_single_npy_array(vol[None], {"spacing": [1.0, 1.0, 1.0]}, None, None, True)
    return probs[1]


def test_equals_plain_float64_sliding_window(model: predictor.Model) -> None:
    vol = volume((45, 70, 90))
    expected = reference_probabilities(model.network, normalisation.normalize(vol, INTENSITY), PATCH)
    np.testing.assert_allclose(ours(model, vol), expected, atol=1e-5, rtol=0)


def test_matches_nnunet_predictor(model: predictor.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    vol = volume((45, 70, 90), seed=1)
    mine = ours(model, vol)
    shipped = nnunet_predictor_probabilities(model, vol, tta=False)
    # nnUNetPredictor accumulates tiles in float16; with float32 buffers it is the same computation as ours.
    half_as_float32(monkeypatch)
    fp32 = nnunet_predictor_probabilities(model, vol, tta=False)
    monkeypatch.undo()
    assert np.abs(mine - fp32).max() < 1e-4
    # The shipped predictor differs by its float16 rounding (largest where only tile corners, whose Gaussian
    # weights underflow in float16, cover a voxel); the typical voxel agrees far below 1e-3.
    diff = np.abs(mine - shipped)
    assert np.median(diff) < 1e-3 and np.abs(fp32 - shipped).max() == pytest.approx(diff.max(), abs=1e-4)


def test_mirroring_and_padding_match_nnunet_predictor(model: predictor.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    vol = volume((20, 64, 70), seed=2)  # thinner than the patch along z: zero-padded as nnU-Net pads
    mine = ours(model, vol, tta=True)
    half_as_float32(monkeypatch)
    theirs = nnunet_predictor_probabilities(model, vol, tta=True)
    assert mine.shape == vol.shape
    assert np.abs(mine - theirs).max() < 1e-4


def test_streams_with_bounded_lookahead(model: predictor.Model) -> None:
    vol = volume((150, 64, 64), seed=3)
    consumed = []

    def counted():
        for z, s in enumerate(vol):
            consumed.append(z)
            yield normalisation.normalize(s, model.intensity)

    lookahead = []
    for k, _ in enumerate(predictor.Predictor(model, tta=False).z_view_logits(counted(), vol.shape)):
        lookahead.append(len(consumed) - k)
    assert len(lookahead) == 150
    assert max(lookahead) <= PATCH[0] + 1  # at most one patch depth of slices is held, whatever the depth


def test_batched_tiles_give_the_same_result(model: predictor.Model) -> None:
    vol = volume((36, 64, 96), seed=4)
    np.testing.assert_allclose(ours(model, vol, batch_size=3), ours(model, vol), atol=1e-5)


def test_resample_slices_is_linear_in_z_and_identity_when_equal() -> None:
    ramp = np.repeat(np.arange(10, dtype=np.float32)[:, None, None], 6, 1).repeat(5, 2)
    same = np.stack(list(predictor.resample_slices(iter(ramp), ramp.shape, ramp.shape)))
    np.testing.assert_array_equal(same, ramp)
    up = np.stack(list(predictor.resample_slices(iter(ramp), ramp.shape, (20, 12, 10))))
    centres = np.clip((np.arange(20) + 0.5) / 2 - 0.5, 0, 9)  # align_corners=False
    np.testing.assert_allclose(up[:, 3, 4], centres, atol=1e-6)
    back = np.stack(list(predictor.resample_slices(iter(up), up.shape, ramp.shape)))
    np.testing.assert_allclose(back[1:-1], ramp[1:-1], atol=1e-5)


def test_predict_group_resamples_kidney_6_and_caches(synthetic_tiny: Path, tmp_path: Path) -> None:
    plans = small_plans(PATCH, spacing=(0.05, 0.05, 0.05), intensity={**INTENSITY, "mean": 20000.0, "std": 5000.0,
                                                                      "percentile_00_5": 5000.0, "percentile_99_5": 40000.0})
    model_dir = write_model_dir(tmp_path / "model", plans, random_network(plans))
    model = predictor.load_model(model_dir, device="cpu")
    k6, k5 = data.open_group("kidney_6", synthetic_tiny), data.open_group("kidney_5", synthetic_tiny)
    work = predictor.model_space_shape(k6.shape, k6.voxel_um, model, resample=True)
    assert work == tuple(int(round(n * 63.08 / 50)) for n in k6.shape)  # 63.08 µm -> 50 µm grid
    assert predictor.model_space_shape(k5.shape, k5.voxel_um, model, resample=True) == k5.shape  # 50.28: within 2%
    out = tmp_path / "probs" / "kidney_6.npy"
    plain = predictor.Predictor(model, tta=False, progress=False)
    probs = plain.predict_group(k6, out)
    assert probs.shape == k6.shape and probs.dtype == np.float16
    assert 0 <= float(probs.min()) and float(probs.max()) <= 1 and float(probs.std()) > 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["settings"]["model_space_shape"] == list(work)
    mtime = out.stat().st_mtime_ns
    plain.predict_group(k6, out)  # same settings: reused
    assert out.stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="kidney_6.npy: exists from other settings"):
        predictor.Predictor(model, tta=True, progress=False).predict_group(k6, out)
    native = predictor.Predictor(model, tta=False, resample=False, progress=False)
    as_uint8 = native.predict_group(k6, tmp_path / "plain.npy", dtype="uint8")
    assert as_uint8.dtype == np.uint8 and as_uint8.shape == k6.shape
    k5_out = tmp_path / "probs" / "kidney_5.npy"
    plain.predict_group(k5, k5_out)
    mtime = k5_out.stat().st_mtime_ns
    native.predict_group(k5, k5_out)  # resampling is a no-op either way: reused
    assert k5_out.stat().st_mtime_ns == mtime


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="plans.json: missing"):
        predictor.load_model(tmp_path)
    plans = small_plans()
    write_model_dir(tmp_path, plans, random_network(plans))
    (tmp_path / "fold_0" / "checkpoint_final.pth").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="checkpoint_final.pth: not a readable nnU-Net checkpoint"):
        predictor.load_model(tmp_path)


# ------------------------------------------------------------------ orientation TTA, ensembles, several devices


def logit(p: np.ndarray) -> np.ndarray:
    p = p.astype(np.float64)
    return np.log(p) - np.log1p(-p)


@pytest.mark.slow
def test_axes_equal_the_mean_logit_of_the_transposed_volumes(model: predictor.Model, tmp_path: Path) -> None:
    vol = volume((40, 70, 72), seed=5)  # thinner than the patch along y/x views' second axis: padded there
    # The y- and x-views read the normalised volume from a float16 memmap; the z-view of "axes" too.
    normalised = normalisation.normalize(vol, model.intensity).astype(np.float16).astype(np.float32)
    views = []
    for view in predictor.VIEWS.values():
        turned = normalised.transpose(view)
        logits = np.stack(list(predictor.Predictor(model, tta=False).z_view_logits(iter(turned), turned.shape)))
        views.append(logits.transpose(view))  # each view is a swap of axes: its own inverse
    expected = 1 / (1 + np.exp(-np.mean(views, axis=0)))
    axes = predictor.Predictor(model, tta="axes", progress=False, scratch=tmp_path)
    got = np.stack(list(axes.slices(predictor.ArrayGroup("k", vol))))
    assert got.shape == vol.shape
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(got - ours(model, vol)).max() > 1e-3  # the extra views change the prediction
    assert list(tmp_path.iterdir()) == []  # temporary memmaps removed


def test_ensemble_averages_logits(model: predictor.Model) -> None:
    vol = volume((36, 64, 70), seed=6)
    plans = small_plans(PATCH, spacing=(1.0, 1.0, 1.0))
    other = predictor.from_network(random_network(plans, seed=1), plans, "cpu")
    one, two = ours(model, vol), ours(other, vol)
    np.testing.assert_allclose(ours([model, model], vol), one, atol=1e-6)
    mean = 1 / (1 + np.exp(-(logit(one) + logit(two)) / 2))
    assert np.abs(ours([model, other], vol) - mean).max() < 1e-5
    assert np.abs(one - two).max() > 1e-2


def test_ensemble_of_disagreeing_plans_fails_before_predicting(tmp_path: Path) -> None:
    plans = small_plans(PATCH)
    a = write_model_dir(tmp_path / "a", plans, random_network(plans))
    b = write_model_dir(tmp_path / "b", small_plans((32, 64, 96)), random_network(small_plans((32, 64, 96))))
    assert len(predictor.load_models([a, a], "cpu")) == 2
    with pytest.raises(ValueError, match=r"b: patch \[32, 64, 96\] disagrees with .*a's \[32, 64, 64\]"):
        predictor.load_models([a, b], "cpu")
    c = write_model_dir(tmp_path / "c", small_plans(PATCH, spacing=(0.06, 0.05, 0.05)), random_network(plans))
    with pytest.raises(ValueError, match="c: spacing"):
        predictor.load_models([a, c], "cpu")


def test_bad_tta_and_devices_are_one_line_errors(model: predictor.Model) -> None:
    assert [predictor.parse_tta(t) for t in (True, False, "AXES+flips")] == ["flips", "none", "axes+flips"]
    with pytest.raises(ValueError, match="unknown tta 'rot90'"):
        predictor.Predictor(model, tta="rot90")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        predictor.Predictor(model, devices=["cpu", "tpu"])
    with pytest.raises(ValueError, match="unknown device 'cuda:7'"):
        predictor.resolve_devices(["cuda:7"])


@pytest.mark.slow
def test_two_cpu_workers_equal_one_device(model: predictor.Model, tmp_path: Path) -> None:
    vol = volume((50, 40, 44), seed=7)
    plans = small_plans(PATCH, spacing=(0.05, 0.05, 0.05))
    coarse = predictor.from_network(model.network, plans, "cpu")
    group = predictor.ArrayGroup("k6", vol, voxel_um=63.08)  # resampled to (63, 50, 56) and back: blocks read input ranges
    def run(**settings) -> np.ndarray:
        return np.stack(list(predictor.Predictor(coarse, progress=False, **settings).slices(group)))

    one = run(tta=False)
    two = run(tta=False, devices=["cpu", "cpu"], scratch=tmp_path)
    assert np.abs(one - two).max() < 1e-5
    axes_one = run(tta="axes", devices=["cpu"])
    axes_two = run(tta="axes", devices=["cpu", "cpu"])
    assert np.abs(axes_one - axes_two).max() < 1e-5
