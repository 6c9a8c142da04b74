"""Pseudo-label refinement: the share cut, the refined-label writer, the report against synthetic truth, and
training rounds on the tiny synthetic preset (tiny network, a few iterations)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from lib import data, paths, postprocess, refine
from lib.training import fine_tune, nnunet_dataset
from lib.training.fine_tune import TrainSettings

FAST = dict(configuration="tiny", epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1, device="cpu",
            train_groups=("kidney_1_dense", "kidney_2", "kidney_3_sparse"), val_group="kidney_3_dense")


def labels_and_probs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((20, 16, 12)) > 0.9).astype(np.uint8) * 255
    probs = rng.random(labels.shape).astype(np.float16)
    return labels, probs


@pytest.mark.parametrize("share", [0.65, 0.85, 0.5])
def test_share_cut_makes_the_given_labels_that_share_of_the_refined(share: float, tmp_path: Path) -> None:
    labels, probs = labels_and_probs()
    t = postprocess.share_threshold(probs, labels, share)
    given = labels > 0
    refined = given | (probs.astype(np.float32) >= t)
    # Never more than the share allows; short of it only by the voxels tied at the next lower stored value.
    added_wanted = round(given.sum() * (1 / share - 1))
    added = (refined & ~given).sum()
    below = probs.astype(np.float32)[~given & (probs.astype(np.float32) < t)].max()
    assert added <= added_wanted < added + ((probs.astype(np.float32) == below) & ~given).sum()
    assert given.sum() / refined.sum() == pytest.approx(share, abs=0.01)
    counts = postprocess.write_refined_labels(probs, labels, t, tmp_path / "k", range(5, 25), progress=False)
    files = sorted((tmp_path / "k").iterdir())
    assert [f.name for f in files] == [f"{z:04d}.tif" for z in range(5, 25)]
    written = np.stack([tifffile.imread(f) for f in files])
    np.testing.assert_array_equal(written, refined.astype(np.uint8) * 255)
    assert not (given & (written == 0)).any()  # a given vessel voxel is never removed
    assert counts == {"given": int(given.sum()), "refined": int(refined.sum()), "added": int((refined & ~given).sum())}
    with tifffile.TiffFile(files[0]) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    with pytest.raises(FileExistsError, match="never overwritten"):
        postprocess.write_refined_labels(probs, labels, t, tmp_path / "k", range(5, 25), progress=False)


def test_share_of_one_adds_nothing_ties_are_left_out_and_bad_shares_are_refused() -> None:
    labels, probs = labels_and_probs(1)
    unlabelled = labels == 0
    assert not (probs[unlabelled] >= postprocess.share_threshold(probs, labels, 1.0)).any()
    flat = np.full_like(probs, 0.75)  # every unlabelled voxel tied: adding any would add them all
    assert not (flat[unlabelled] >= postprocess.share_threshold(flat, labels, 0.5)).any()
    with pytest.raises(ValueError, match=r"share must lie in \(0, 1\]"):
        postprocess.share_threshold(probs, labels, 0.0)


def test_truth_report_counts_labelled_and_added_true_voxels(synthetic_tiny: Path, tmp_path: Path) -> None:
    group = data.open_group("kidney_2", synthetic_tiny)
    truth_dir = synthetic_tiny / refine.TRUTH_FOLDER / "kidney_2"
    truth = np.stack(list(nnunet_dataset.read_mask_slices(truth_dir, group.slices))).astype(bool)
    given = group.read_labels() > 0
    # Refined = the whole tree plus one false voxel per slice far from it.
    false = np.zeros_like(truth)
    false[:, 0, 0] = True
    assert not (truth & false).any()
    probs = (truth | false).astype(np.float16)
    postprocess.write_refined_labels(probs, group, 0.5, tmp_path / "kidney_2", group.slices, progress=False)
    report = refine.truth_report(synthetic_tiny, group, tmp_path / "kidney_2")
    assert report["true_labelled_before"] == pytest.approx(given.sum() / truth.sum())
    assert 0.5 < report["true_labelled_before"] < 0.9 and report["true_labelled_after"] == 1.0
    added = (truth & ~given).sum()
    assert report["added_that_is_true"] == pytest.approx(added / (added + false.sum()))
    assert refine.truth_report(synthetic_tiny, data.open_group("kidney_1_dense", synthetic_tiny), tmp_path) is None


def test_bad_refinement_settings_fail_before_training() -> None:
    for bad, message in [({"sparse_label_share": {"kidney_2": 1.5}}, r"kidney_2'\] must lie in \(0, 1\]"),
                         ({"sparse_label_share": {"kidney_2": 0}}, r"must lie in \(0, 1\]"),
                         ({"sparse_label_share": {"kidney_1_dense": 0.5}}, "'kidney_1_dense', which is not a sparse"),
                         ({"pseudo_label_rounds": -1}, "pseudo_label_rounds must be a whole number >= 0"),
                         ({"scale_range": [1.4, 0.7]}, r"scale_range must be \(low, high\) with 0 < low <= high")]:
        with pytest.raises(ValueError, match=message) as info:
            TrainSettings.from_parameters(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="no training group is in sparse_label_share"):
        refine.train_with_pseudo_labels("nowhere", "nowhere", TrainSettings(pseudo_label_rounds=1,
                                                                            train_groups=("kidney_1_dense",)))


@pytest.mark.slow
def test_one_pseudo_label_round_refines_the_sparse_groups(synthetic_tiny: Path, tmp_path: Path) -> None:
    settings = TrainSettings(pseudo_label_rounds=1, **FAST)
    result, rounds = refine.train_with_pseudo_labels(synthetic_tiny, tmp_path, settings, progress=False)
    assert result.model_dir == fine_tune.default_model_dir(tmp_path)  # where notebook 03 looks
    assert (result.model_dir / "fold_0" / "checkpoint_final.pth").is_file()
    record = json.loads((result.model_dir / "training.json").read_text())
    assert record["from_scratch"] is False  # fine-tuned from round 0's model
    assert record["pretrained"]["tensors_loaded"] > 0
    assert set(record["label_dirs"]) == {"kidney_2", "kidney_3_sparse"}
    assert list(rounds["group"]) == ["kidney_2", "kidney_3_sparse"] and (rounds["round"] == 1).all()
    for row in rounds.to_dict("records"):
        group = data.open_group(row["group"], synthetic_tiny)
        folder = refine.round_dir(tmp_path, 1) / "labels" / row["group"]
        refined = np.stack(list(nnunet_dataset.read_mask_slices(folder, group.slices))).astype(bool)
        given = group.read_labels() > 0
        assert not (given & ~refined).any()
        assert row["given"] == given.sum() and row["refined"] == refined.sum() >= row["given"]
        assert row["given_share_of_refined"] >= row["target_share"]  # never more added than the share allows
        assert row["true_labelled_after"] >= row["true_labelled_before"] > 0
    pd.testing.assert_frame_equal(pd.DataFrame(json.loads((tmp_path / "refinement.json").read_text())), rounds)
    assert not (refine.round_dir(tmp_path, 0) / "nnunet" / "preprocessed").exists()  # round 0's data deleted
    assert (synthetic_tiny / "train" / "kidney_2" / "labels").is_dir()  # the competition root untouched


@pytest.mark.slow
def test_notebook_02_runs_a_pseudo_label_round_and_refuses_bad_settings_first(
        synthetic_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tools import pipeline

    config = paths.PROJECT_ROOT / "configs" / "demo.toml"
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path))
    # The pipeline refuses it before notebook 02 starts (TrainSettings too: test_bad_refinement_settings_...).
    with pytest.raises(pipeline.PipelineError, match=r"pseudo_label_rounds=-1 \(02_train\): takes an integer >= 0"):
        pipeline.run(config, str(synthetic_tiny), overrides={"pseudo_label_rounds": -1}, notebooks=("02_train",),
                     name="bad")
    assert not (tmp_path / "bad" / "02_train" / "nnunet").exists()  # stopped before any data was written
    fast = {**{k: v for k, v in FAST.items() if k != "train_groups"}, "pseudo_label_rounds": 1,
            "scale_range": [0.9, 1.5], "seed": 3}
    pipeline.run(config, str(synthetic_tiny), overrides=fast, notebooks=("02_train",), name="rounds")
    out = tmp_path / "rounds" / "02_train"
    rounds = json.loads((out / "refinement.json").read_text())
    assert {r["group"] for r in rounds} == {"kidney_2", "kidney_3_sparse"}
    record = json.loads((fine_tune.default_model_dir(out) / "training.json").read_text())
    assert record["scale_range"] == [0.9, 1.5] and record["seed"] == 3 and record["settings"]["pseudo_label_rounds"] == 1
    assert json.loads((out / "train_summary.json").read_text())["val_surface_dice"] >= 0
