"""Per-kidney normalisation (lib.normalisation): exact statistics from a streamed histogram, invariance to a
kidney's scanner look under "kidney", the refusal of kidneys without contrast, and the scheme carried from training
to the model folder and prediction."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import random_network, small_plans, write_group

from lib import data, inference, normalisation, predictor
from lib.normalisation import NoContrastError
from lib.training import fine_tune, nnunet_dataset

PATCH = (32, 64, 64)
WINDOW = {"mean": 15000.0, "std": 4000.0, "percentile_00_5": 8000.0, "percentile_99_5": 26000.0, "median": 15000.0,
          "min": 0.0, "max": 65535.0}  # a "dataset" model's training statistics, overlapping _volume's values


def _volume(shape=(36, 68, 70), seed: int = 0) -> np.ndarray:
    """A uint16 kidney-like volume: a noisy bright blob with a few brighter tubes."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    blob = np.exp(-((y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2) / (2 * (shape[1] / 3) ** 2))
    tubes = ((y % 11 < 2) & (x % 13 < 2)).astype(float)
    return (9000 + 6000 * blob + 4000 * tubes + rng.normal(0, 500, shape)).clip(0, 65535).astype(np.uint16)


def _model(scheme: str, seed: int = 0) -> predictor.Model:
    plans = small_plans(patch=PATCH, intensity=WINDOW)
    if scheme == "kidney":
        plans[normalisation.PLANS_KEY] = {"scheme": "kidney", "percentiles": list(normalisation.PERCENTILES)}
    return predictor.from_network(random_network(plans, seed=seed), plans, "cpu")


def test_histogram_statistics_are_exact() -> None:
    values = np.random.default_rng(1).gamma(3.0, 800.0, 10_001).astype(np.uint16)
    stats = normalisation.statistics_from_histogram(np.bincount(values, minlength=65536))
    low, high = np.percentile(values, normalisation.PERCENTILES)
    assert stats["percentile_00_5"] == low and stats["percentile_99_5"] == high  # np.percentile's linear rule
    clipped = np.clip(values.astype(np.float64), low, high)
    assert stats["mean"] == pytest.approx(clipped.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(clipped.std(), rel=1e-12)
    assert (stats["min"], stats["max"], stats["voxels"]) == (values.min(), values.max(), values.size)


def test_kidney_statistics_stream_a_group_and_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    volume = _volume()
    write_group(tmp_path / "root", "test", "kidney_5", volume)
    (tmp_path / "root" / "sample_submission.csv").write_text("id,rle\n")
    group = data.discover(tmp_path / "root")["kidney_5"]
    stats = normalisation.kidney_statistics(group)
    direct = normalisation.statistics_from_histogram(np.bincount(volume.ravel(), minlength=65536))
    assert stats == direct
    monkeypatch.setattr(type(group), "read_images", lambda *a, **k: pytest.fail("read again"))
    assert normalisation.kidney_statistics(group) is stats


def test_kidney_scheme_is_blind_to_an_affine_re_exposure_and_dataset_is_not(tmp_path: Path) -> None:
    """raw' = 2 raw + 3000: under "kidney" the same probabilities (float16 output); under "dataset" other ones."""
    raw = _volume()
    exposed = (2 * raw.astype(np.int64) + 3000).astype(np.uint16)
    results = {}
    for scheme in ("kidney", "dataset"):
        model = _model(scheme)
        run = predictor.Predictor(model, tta=False, progress=False)
        results[scheme] = [np.asarray(run.predict_group(predictor.ArrayGroup("kidney_5", v),
                                                        tmp_path / f"{scheme}_{k}.npy"), dtype=np.float32)
                           for k, v in enumerate((raw, exposed))]
    same, other = results["kidney"], results["dataset"]
    np.testing.assert_allclose(same[0], same[1], atol=1e-3, rtol=0)  # float16 rounding of the stored output
    assert np.abs(other[0] - other[1]).max() > 0.01
    record = json.loads((tmp_path / "kidney_0.json").read_text())["settings"]["normalisation"]
    assert record["scheme"] == "kidney" and record["std"] > 0  # recorded with the kidney's outputs


def test_a_kidney_without_contrast_is_refused_before_any_prediction(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    flat = predictor.ArrayGroup("kidney_6", np.full((6, 40, 44), 12345, np.uint16))
    kidney = _model("kidney")
    monkeypatch.setattr(predictor.Predictor, "slices", lambda *a, **k: pytest.fail("predicted"))
    with pytest.raises(NoContrastError) as info:
        predictor.Predictor(kidney, tta=False, progress=False).predict_group(flat, tmp_path / "p.npy")
    message = str(info.value)
    assert message.startswith("kidney_6: no contrast") and "12345" in message and "\n" not in message
    with pytest.raises(NoContrastError, match="^kidney_6: no contrast"):
        inference.intensity_table(predictor.Predictor(kidney), {"kidney_6": flat}, progress=False)
    # Under "dataset" a kidney wholly above the training window clips to one value: refused too.
    dataset = _model("dataset")
    bright = predictor.ArrayGroup("kidney_5", _volume() // 2 + 50_000)
    assert bright.volume.min() > dataset.intensity["percentile_99_5"]
    with pytest.raises(NoContrastError, match="^kidney_5: no contrast under the model's dataset normalisation"):
        inference.intensity_table(predictor.Predictor(dataset), {"kidney_5": bright}, progress=False)
    table = inference.intensity_table(predictor.Predictor(kidney), {"kidney_5": bright}, progress=False)
    assert table.loc["kidney_5", "std"] > 0
    assert not (tmp_path / "p.npy").exists()


def test_unbound_kidney_model_cannot_normalise() -> None:
    with pytest.raises(ValueError, match="normalises each kidney by its own statistics"):
        normalisation.normalize(np.zeros((4, 4), np.uint16), _model("kidney").intensity)
    with pytest.raises(ValueError, match="normalisation must be one of 'kidney', 'dataset', got 'volume'"):
        fine_tune.TrainSettings(normalisation="volume")


def test_kidney_slabs_are_written_normalised_by_their_group(synthetic_tiny: Path, tmp_path: Path) -> None:
    groups = ["kidney_1_dense", "kidney_3_sparse"]
    nnunet_dataset.write_raw_dataset(synthetic_tiny, tmp_path / "work", nnunet_dataset.Split(groups, "kidney_3_dense", 8),
                                     normalisation="kidney", progress=False)
    raw = tmp_path / "work" / "raw" / nnunet_dataset.DATASET_NAME
    manifest = json.loads((raw / "conversion.json").read_text())
    assert manifest["normalisation"] == "kidney" and set(manifest["statistics"]) == {*groups, "kidney_3_dense"}
    import tifffile

    case = nnunet_dataset.read_cases(tmp_path / "work")[0]
    slab = tifffile.imread(nnunet_dataset.raw_files(raw, case.name)[0])
    group = data.open_group(case.group, synthetic_tiny)
    expected = normalisation.normalize(group.read_images(case.start, case.stop), manifest["statistics"][case.group])
    assert slab.dtype == np.float16
    np.testing.assert_allclose(slab.astype(np.float32), expected, atol=5e-3, rtol=1e-3)
    plans = fine_tune.kidney_plans(small_plans(), {"spacings": [[0.05] * 3], "shapes_after_crop": [[8, 64, 64]],
                                                   "foreground_intensity_properties_per_channel": {}},
                                   PATCH, 2, "kidney")
    assert plans["configurations"]["3d_fullres"]["normalization_schemes"] == ["NoNormalization"]
    assert normalisation.scheme_of(plans) == "kidney" and normalisation.scheme_of(small_plans()) == "dataset"
