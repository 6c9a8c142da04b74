"""The papermill pipeline: parameters wired between notebooks, runs never overwritten, failures named, and
the three notebooks end to end on the tiny synthetic dataset."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lib import parameters
from tools import pipeline
from tools.pipeline import PipelineError

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
    first, previous = pipeline.claim_run_folder(tmp_path, "demo", force=False)
    assert previous is None and (first / pipeline.RUNNING).is_file()
    (first / "submission.csv").write_text("id,rle\n")
    pipeline.finish_run(first, previous)
    assert not (first / pipeline.RUNNING).exists()
    second, _ = pipeline.claim_run_folder(tmp_path, "demo", force=False)
    assert second.name == "demo-2" and (first / "submission.csv").is_file()
    # --force: the earlier run waits aside until the new one has finished, and comes back when it fails
    again, previous = pipeline.claim_run_folder(tmp_path, "demo", force=True)
    assert again == first and previous == tmp_path / "demo.previous" and (previous / "submission.csv").is_file()
    (again / "scores.json").write_text("{}")
    kept = pipeline.abandon_run(again, previous)
    assert (first / "submission.csv").is_file() and not previous.exists()
    assert kept.name == "demo-3" and (kept / "scores.json").is_file() and not (kept / pipeline.RUNNING).exists()
    again, previous = pipeline.claim_run_folder(tmp_path, "demo", force=True)
    pipeline.finish_run(again, previous)
    assert not previous.exists() and list(again.iterdir()) == []


def _interrupted_force_run(root: Path, pid: int) -> None:
    """What a --force run killed outright leaves: the earlier run aside, the new one marked as running."""
    (root / "demo.previous").mkdir(parents=True)
    (root / "demo.previous" / "submission.csv").write_text("id,rle\nearlier\n")
    (root / "demo").mkdir()
    (root / "demo" / "01_explore.ipynb").write_text("{}")
    (root / "demo" / pipeline.RUNNING).write_text(json.dumps({"pid": pid, "host": os.uname().nodename}))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_call_recovers_a_killed_force_run(tmp_path: Path) -> None:
    _interrupted_force_run(tmp_path, _dead_pid())
    message = pipeline.recover(tmp_path, "demo")
    assert "restored the earlier run" in message and "demo-2" in message
    assert (tmp_path / "demo" / "submission.csv").read_text() == "id,rle\nearlier\n"
    assert (tmp_path / "demo-2" / "01_explore.ipynb").is_file() and not (tmp_path / "demo-2" / pipeline.RUNNING).exists()
    assert not (tmp_path / "demo.previous").exists()
    assert pipeline.recover(tmp_path, "demo") is None  # nothing left to do


def test_a_finished_run_whose_cleanup_was_cut_short_loses_the_replaced_run(tmp_path: Path) -> None:
    _interrupted_force_run(tmp_path, _dead_pid())
    (tmp_path / "demo" / pipeline.RUNNING).unlink()  # the new run had finished
    assert "removed" in pipeline.recover(tmp_path, "demo")
    assert (tmp_path / "demo" / "01_explore.ipynb").is_file() and not (tmp_path / "demo.previous").exists()


def test_a_live_run_is_neither_recovered_nor_replaced(tmp_path: Path) -> None:
    _interrupted_force_run(tmp_path, os.getpid())  # this process: alive
    assert pipeline.recover(tmp_path, "demo") is None
    with pytest.raises(PipelineError, match=r"demo: a run is in progress there \(pid \d+\)"):
        pipeline.claim_run_folder(tmp_path, "demo", force=True)
    other, _ = pipeline.claim_run_folder(tmp_path, "demo", force=False)  # a run of its own is fine
    assert other.name == "demo-2" and (tmp_path / "demo.previous" / "submission.csv").is_file()


def test_run_recovers_before_it_claims_a_folder(synthetic_tiny: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path))
    _interrupted_force_run(tmp_path, _dead_pid())
    scores = pipeline.run(CONFIG, str(synthetic_tiny), name="demo", notebooks=())  # no notebook: checks and folders
    assert (tmp_path / "demo" / "submission.csv").read_text() == "id,rle\nearlier\n"
    assert scores["run_dir"] == str(tmp_path / "demo-3") and (tmp_path / "demo-2" / "01_explore.ipynb").is_file()


def test_parameters_come_from_the_schema() -> None:
    declared = pipeline.declared_parameters("02_train")
    assert declared["epochs"].default == 15 and declared["pretrained"].default is None
    assert isinstance(declared["data_dir"].default, parameters.Expression)  # code, not a literal: any path
    assert pipeline.parse_overrides(["tta=False", "val_group=None"]) == {"tta": False, "val_group": None}


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
def test_a_failing_notebook_is_named_and_kept_and_a_forced_run_puts_the_earlier_one_back(
        synthetic_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path))
    earlier = tmp_path / "demo"
    earlier.mkdir()
    (earlier / "scores.json").write_text('{"earlier": true}')
    junk = tmp_path / "junk.zip"
    junk.write_text("exists, so the checks pass, but is no archive")
    with pytest.raises(pipeline.NotebookFailed, match=r"notebook 02_train failed in cell \d+ \(TransferError: "
                       r".*junk.zip: not a readable zip archive.*kept at .*demo-2/02_train.ipynb; the earlier run is "
                       r"back in .*demo, this run's files are in .*demo-2"):
        pipeline.run(CONFIG, str(synthetic_tiny), pretrained=str(junk), notebooks=("02_train",), force=True)
    assert (earlier / "scores.json").read_text() == '{"earlier": true}'
    assert (tmp_path / "demo-2" / "02_train.ipynb").is_file() and not (tmp_path / "demo.previous").exists()


def _start_forced_run(data: Path, outputs: Path) -> subprocess.Popen:
    fast = ["-p", "epochs=1", "-p", "iterations_per_epoch=2", "-p", "val_iterations_per_epoch=1", "-p", "device=cpu",
            "-p", "max_slices_sampled=4"]
    env = {**os.environ, "SENNET_OUTPUTS": str(outputs)}
    return subprocess.Popen([sys.executable, "-m", "tools.pipeline", "--config", str(CONFIG), "--data-dir", str(data),
                             "--name", "demo", "--force", *fast], env=env, cwd=CONFIG.parent.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_forced_run_killed_half_way_loses_nothing(sig: signal.Signals, synthetic_tiny: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = tmp_path / "outputs"
    earlier = outputs / "demo"
    earlier.mkdir(parents=True)
    (earlier / "scores.json").write_text('{"earlier": true}')
    (earlier / "submission.csv").write_text("id,rle\nkidney_5_0000,1 0\n")
    proc = _start_forced_run(synthetic_tiny, outputs)
    try:
        deadline = time.monotonic() + 300
        while not (outputs / "demo" / "02_train.ipynb").is_file():  # notebook 02 has started
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        assert (outputs / "demo.previous" / "scores.json").is_file()  # moved aside, not deleted
        time.sleep(2)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGTERM:  # put back at once
        assert proc.returncode == 130 and "the earlier run is back in" in err
    else:  # killed outright: put back by the next call
        assert proc.returncode == -signal.SIGKILL and (outputs / "demo.previous").is_dir()
        monkeypatch.setenv("SENNET_OUTPUTS", str(outputs))
        pipeline.run(CONFIG, str(synthetic_tiny), name="demo", notebooks=())
    assert json.loads((earlier / "scores.json").read_text()) == {"earlier": True}
    assert (earlier / "submission.csv").read_text() == "id,rle\nkidney_5_0000,1 0\n"
    assert sorted(p.name for p in earlier.iterdir()) == ["scores.json", "submission.csv"]
    assert not (outputs / "demo.previous").exists()
    assert (outputs / "demo-2" / "02_train.ipynb").is_file()  # the stopped run's files are kept aside


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
