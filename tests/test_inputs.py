"""Kaggle inputs found by content (lib.inputs) under each mount layout Kaggle has used, and the resume of an
interrupted training run attached as input (lib.training.resume)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lib import inputs, paths
from lib.training import fine_tune, resume

SLUG = inputs.COMPETITION_SLUG


def _competition(folder: Path) -> Path:
    (folder / "test" / "kidney_5" / "images").mkdir(parents=True)
    (folder / "train" / "kidney_1_dense" / "labels").mkdir(parents=True)
    (folder / "sample_submission.csv").write_text("id,rle\n")
    return folder


def _model(folder: Path) -> Path:
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text("{}")
    (folder / "fold_0" / "checkpoint_final.pth").write_bytes(b"")
    return folder


def _file(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _layout_2026(root: Path) -> dict[str, Path]:
    """Kaggle today: competitions/, datasets/<owner>/, models/<owner>/<model>/<framework>/<variation>/<version>/."""
    return {
        "competition": _competition(root / "competitions" / SLUG),
        "wheels": _file(root / "datasets" / "someone" / "sennet-vessels-wheels" / inputs.WHEELS_MANIFEST).parent,
        "model": _model(root / "models" / "someone" / "sennet-vessels" / "pytorch" / "default" / "1" / "model"),
        "pretrained": _file(root / "models" / "someone" / "task008" / "pytorch" / "default" / "2"
                            / f"{inputs.HEPATIC}.zip"),
    }


def _layout_legacy(root: Path) -> dict[str, Path]:
    """Kaggle before: every input one folder below /kaggle/input."""
    return {
        "competition": _competition(root / SLUG),
        "wheels": _file(root / "sennet-vessels-wheels" / inputs.WHEELS_MANIFEST).parent,
        "model": _model(root / "sennet-vessels-model" / "model"),
        "pretrained": _file(root / "task008-hepaticvessel" / f"{inputs.HEPATIC}.zip"),
    }


@pytest.mark.parametrize("layout", [_layout_2026, _layout_legacy])
def test_every_input_is_found_by_content_in_each_layout(tmp_path: Path, layout) -> None:
    expected = layout(tmp_path / "input")
    found = inputs.scan_inputs(tmp_path / "input")
    for kind, path in expected.items():
        assert found[kind] == [path], kind
    assert found["run"] == []


def test_the_walk_never_enters_image_folders_and_stops_at_the_depth_bound(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "input"
    _layout_2026(root)
    _model(root / "datasets" / "x" / "y" / "images" / "hidden")  # under a pruned name: never looked at
    _model(root / "datasets" / "o" / "stray" / "labels" / "m")
    deep = root.joinpath(*[f"d{i}" for i in range(inputs.MAX_DEPTH + 1)])
    _model(deep)
    walked = []
    original = inputs._entries
    monkeypatch.setattr(inputs, "_entries", lambda folder: walked.append(folder) or original(folder))
    found = inputs.scan_inputs(root)
    assert len(found["model"]) == 1
    assert not [p for p in walked if {"images", "labels", "train", "test"} & set(p.relative_to(root).parts)]
    assert max(len(p.relative_to(root).parts) for p in walked) == inputs.MAX_DEPTH


def test_symlinked_folders_are_followed_once(tmp_path: Path) -> None:
    root = tmp_path / "input"
    real = _competition(tmp_path / "mounts" / SLUG)
    (root / "competitions").mkdir(parents=True)
    (root / "competitions" / SLUG).symlink_to(real, target_is_directory=True)
    (root / "alias").symlink_to(root / "competitions", target_is_directory=True)  # an aliased mount
    (root / "loop").mkdir()
    (root / "loop" / "back").symlink_to(root, target_is_directory=True)  # a cycle ends
    assert inputs.scan_inputs(root)["competition"] == [root / "alias" / SLUG]  # walked first (by name), once


def test_several_candidates_follow_the_documented_order_and_the_choice_is_printed(tmp_path: Path) -> None:
    root = tmp_path / "input"
    other = _competition(root / "a-copy")  # shallower, but not named after the competition
    named = _competition(root / "competitions" / SLUG)
    shallow = _model(root / "m" / "model")
    deep = _model(root / "notebooks" / "me" / "train" / "out" / "model")
    lines = []
    assert inputs.find_input("competition", root, log=lines.append) == named
    assert lines == [f"competition: {named} (first of 2: also {other})"]
    assert inputs.scan_inputs(root)["model"] == [shallow, deep]


def test_nothing_found_is_one_line_listing_two_levels(tmp_path: Path) -> None:
    root = tmp_path / "input"
    _file(root / "datasets" / "someone" / "readme.txt")
    _file(root / "notes.txt")
    with pytest.raises(FileNotFoundError) as info:
        inputs.find_input("competition", root, required=True)
    message = str(info.value)
    assert "\n" not in message and "sample_submission.csv" in message
    assert f"{root} holds: datasets/{{someone/}}; notes.txt" in message
    lines = []
    assert inputs.find_input("wheels", root, log=lines.append) is None and "holds: datasets/" in lines[0]
    with pytest.raises(ValueError, match="unknown input kind 'competitions'"):
        inputs.find_input("competitions", root)


def test_hepatic_archive_in_every_form(tmp_path: Path) -> None:
    root = tmp_path / "input"
    extracted = root / "datasets" / "a" / "task008" / inputs.HEPATIC  # a zip Kaggle extracted into a folder
    (extracted / "3d_fullres" / inputs.HEPATIC / "nnUNetTrainerV2__nnUNetPlansv2.1" / "fold_0").mkdir(parents=True)
    contents = root / "models" / "b" / "task008" / "other" / "default" / "1"  # the archive's contents as a Model
    (contents / "3d_fullres" / inputs.HEPATIC).mkdir(parents=True)
    (contents / "2d" / inputs.HEPATIC).mkdir(parents=True)
    assert inputs.scan_inputs(root)["pretrained"] == [extracted, contents]


def test_kaggle_input_dir_relocates_and_default_data_dir_finds_the_competition(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENNET_DATA_DIR", raising=False)
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path / "out"))
    assert paths.kaggle_input() == inputs.kaggle_input() == tmp_path / "input"
    assert paths.default_data_dir() == tmp_path / "out" / "data" / "synthetic"
    root = _competition(tmp_path / "input" / "competitions" / SLUG)
    assert paths.default_data_dir() == root


# ----------------------------------------------------------------------------------------------------------
# Resuming an interrupted run attached as input
# ----------------------------------------------------------------------------------------------------------

def _interrupted_run(folder: Path) -> Path:
    """A run folder as notebook 02 leaves it mid-training: the latest checkpoint, nnU-Net scratch data beside."""
    model = fine_tune.default_model_dir(folder)
    _file(model / "fold_0" / "checkpoint_latest.pth", "epoch 3")
    _file(model / "plans.json", "{}")
    _file(folder / "nnunet" / "preprocessed" / "Dataset" / "case.b2nd", "big")
    _file(folder / "nnunet" / "raw" / "Dataset" / "case.tif", "big")
    _file(folder / "training_curves.png", "png")
    return folder


def test_an_interrupted_run_attached_as_input_is_copied_without_scratch(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path / "input"))
    out = tmp_path / "working" / "train"
    assert resume.resume_attached_run(out) is None  # nothing attached
    run = _interrupted_run(tmp_path / "input" / "notebooks" / "me" / "sennet-vessels-train" / "train")
    lines = []
    assert resume.resume_attached_run(out, log=lines.append) == run
    copied = fine_tune.default_model_dir(out) / "fold_0" / "checkpoint_latest.pth"
    assert copied.read_text() == "epoch 3" and (out / "training_curves.png").is_file()
    assert not (out / "nnunet" / "preprocessed").exists() and not (out / "nnunet" / "raw").exists()
    assert "resuming from" in lines[0] and "checkpoint_latest.pth" in lines[0]
    copied.write_text("epoch 4")  # this session trained on: a second call never overwrites it
    assert resume.resume_attached_run(out, log=lines.append) is None and "already holds a run" in lines[-1]
    assert copied.read_text() == "epoch 4"
    assert resume.resume_attached_run(tmp_path / "elsewhere", source=None) is None


def test_a_finished_or_empty_run_is_not_resumed(tmp_path: Path) -> None:
    finished = _interrupted_run(tmp_path / "finished")
    _file(fine_tune.default_model_dir(finished) / "fold_0" / "checkpoint_final.pth")
    lines = []
    assert resume.resume_attached_run(tmp_path / "out", finished, log=lines.append) is None
    assert "finished run" in lines[0] and not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    (empty / "nnunet" / "results").mkdir(parents=True)
    assert resume.resume_attached_run(tmp_path / "out", empty, log=lines.append) is None
    assert "no checkpoint" in lines[-1]
    with pytest.raises(FileNotFoundError, match="nope: run folder to resume from not found"):
        resume.resume_attached_run(tmp_path / "out", tmp_path / "nope")


def test_a_run_with_rounds_is_one_run(tmp_path: Path) -> None:
    """A pseudo-label run holds earlier rounds' runs and model folders: the outer run is the one to resume, and
    its finished rounds' models count as model folders too."""
    run = tmp_path / "input" / "notebooks" / "me" / "slug" / "train"
    round0 = _model(fine_tune.default_model_dir(run / "rounds" / "round_0"))
    _file(fine_tune.default_model_dir(run) / "fold_0" / "checkpoint_latest.pth")
    found = inputs.scan_inputs(tmp_path / "input")
    assert found["run"] == [run] and found["model"] == [round0]
    assert os.path.commonpath([round0, run]) == str(run)
