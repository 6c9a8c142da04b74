"""The papermill pipeline: parameters wired between notebooks, runs never overwritten, failures named, and
the three notebooks end to end on the tiny synthetic dataset."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from lib.runs import pipeline
from lib.runs.pipeline import PipelineError

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"


def test_configs_load_and_name_only_known_notebooks() -> None:
    for path in CONFIG.parent.glob("*.toml"):
        config = pipeline.load_config(path)
        assert config["name"] == path.stem
    assert pipeline.load_config(CONFIG)["notebooks"]["02_train"]["configuration"] == "tiny"


def test_overrides_parse_as_json_else_string() -> None:
    assert pipeline.parse_overrides(["epochs=3", "threshold=top:0.002", "02_train.pretrained=null", "tta=false"]) == {
        "epochs": 3, "threshold": "top:0.002", "02_train.pretrained": None, "tta": False}
    with pytest.raises(PipelineError, match="key=value"):
        pipeline.parse_overrides(["epochs"])


def test_an_earlier_run_is_never_replaced_unless_forced(tmp_path: Path) -> None:
    first = pipeline.run_folder(tmp_path, "demo", force=False)
    (first / "submission.csv").write_text("id,rle\n")
    second = pipeline.run_folder(tmp_path, "demo", force=False)
    assert second.name == "demo-2" and (first / "submission.csv").is_file()
    again = pipeline.run_folder(tmp_path, "demo", force=True)
    assert again == first and not (first / "submission.csv").exists()


def test_parameters_are_wired_and_overridden(tmp_path: Path) -> None:
    config = pipeline.load_config(CONFIG)
    params = pipeline.notebook_parameters(config, tmp_path / "run", tmp_path / "data",
                                          {"epochs": 2, "03_infer.tta": True, "device": "cpu"})
    assert params["02_train"]["epochs"] == 2 and "epochs" not in params["03_infer"]
    assert params["03_infer"]["tta"] is True and params["03_infer"]["device"] == "cpu"
    assert params["02_train"]["device"] == "cpu" and "device" not in params["01_explore"]
    assert params["03_infer"]["model_dir"].startswith(params["02_train"]["output_dir"])
    with pytest.raises(PipelineError, match="notebook 03_infer has no parameter 'epochs'"):
        pipeline.notebook_parameters(config, tmp_path / "run", tmp_path / "data", {"03_infer.epochs": 1})


def test_missing_required_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="needs --data-dir, --pretrained"):
        pipeline.run(CONFIG.parent / "full.toml")


@pytest.mark.slow
def test_a_failing_notebook_is_named_and_kept(synthetic_tiny: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path))
    with pytest.raises(PipelineError, match=r"notebook 02_train failed in cell \d+ \(DataError: no group 'kidney_9'"):
        pipeline.run(CONFIG, str(synthetic_tiny), overrides={"val_group": "kidney_9"}, notebooks=("02_train",))
    assert (tmp_path / "demo" / "02_train.ipynb").is_file()


@pytest.mark.slow
def test_three_notebooks_end_to_end_on_tiny(synthetic_tiny: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(synthetic_tiny, data)
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path / "outputs"))
    fast = {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "device": "cpu",
            "max_slices_sampled": 4}
    scores = pipeline.run(CONFIG, str(data), overrides=fast, name="e2e")
    run_dir = tmp_path / "outputs" / "e2e"
    assert json.loads((run_dir / "scores.json").read_text()) == scores
    assert 0 <= scores["validation"]["val_surface_dice"] <= 1 and scores["validation"]["from_scratch"] is True
    assert set(scores["test"]["per_image"]) == {"kidney_5", "kidney_6"}
    assert scores["threshold"] is not None and set(scores["minutes"]) == set(pipeline.NOTEBOOKS)
    submission = pd.read_csv(run_dir / "03_infer" / "submission.csv")
    assert list(submission["id"]) == list(pd.read_csv(data / "sample_submission.csv")["id"])
    for nb in pipeline.NOTEBOOKS:
        assert (run_dir / f"{nb}.ipynb").is_file()
    for png in ("01_explore/vessel_fraction.png", "02_train/training_curves.png", "03_infer/threshold_curve.png",
                "03_infer/prediction_kidney_6.png"):
        assert (run_dir / png).stat().st_size > 10_000
