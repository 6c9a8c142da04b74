"""Bad input, one row of the docs/bad_input.md "Bad input and what you see" table at a time: each entry point refuses it
early with one line naming the file, row or id and the problem (exit code 2 on the command line), and writes
nothing. Tests of the pipeline's --force and kill recovery are in test_pipeline.py."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import random_network, small_plans, write_model_dir

from lib import data, metric, predictor, submission
from lib.data import DataError
from tools import convert_v1, errors, pipeline, synthetic, v1_checkpoint
from tools import metric as metric_cli

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.toml"


def one_line_exit_2(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a CLI's main; it must exit with code 2 and print exactly one line, `error: ...`, on stderr."""
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert err.startswith("error: ") or ": error: " in err
    assert len(err.splitlines()) == 1 or "usage:" in err, err
    return err


def test_one_line_helper() -> None:
    assert errors.one_line(ValueError("a\n  b")) == "a b"
    assert errors.one_line(FileNotFoundError(2, "No such file or directory", "/x/y")) == "/x/y: No such file or directory"
    assert errors.one_line(KeyError("k")) == "k"
    with pytest.raises(SystemExit) as exc, errors.expected_errors(ValueError):
        raise ValueError("bad")
    assert exc.value.code == 2
    with pytest.raises(ZeroDivisionError), errors.expected_errors(ValueError):  # a bug keeps its traceback
        raise ZeroDivisionError


# --- the pipeline: nothing runs and no output folder is created ------------------------------------------

def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


PIPELINE_CASES = {
    "config not found": (lambda t: ["--config", str(t / "nope.toml")], r"nope.toml: config file not found"),
    "broken TOML": (lambda t: ["--config", _config(t, 'name = "x"\n[notebooks.02_train\n')],
                    r"config.toml: not valid TOML \(.*at line 2, column 20\)"),
    "config without name": (lambda t: ["--config", _config(t, 'data_dir = "x"\n')],
                            r"config.toml: needs a name"),
    "unknown config key": (lambda t: ["--config", _config(t, 'name = "x"\ndata_dri = "x"\n')],
                           r"unknown key 'data_dri'; did you mean 'data_dir'\?"),
    "mistyped parameter in a config": (
        lambda t: ["--config", _config(t, 'name = "x"\n[notebooks.02_train]\nepoch = 3\n')],
        r"\[notebooks.02_train\] epoch: notebook 02_train has no parameter 'epoch'; did you mean 'epochs'\?"),
    "wrong type in a config": (lambda t: ["--config", _config(t, 'name = "x"\n[notebooks.02_train]\nepochs = "3"\n')],
                               r"\[notebooks.02_train\] epochs: takes an integer >= 1 \(default 15\), got '3'"),
    "unknown notebook in a config": (lambda t: ["--config", _config(t, 'name = "x"\n[notebooks.02_trian]\n')],
                                     r"unknown notebook \[notebooks.02_trian\]; did you mean '02_train'\?"),
    "-p unknown name": (lambda t: ["-p", "epoch=3"], r"-p epoch=3: no notebook has a parameter 'epoch'; did you mean"),
    "-p unknown notebook": (lambda t: ["-p", "02_trian.epochs=3"], r"no notebook '02_trian'; did you mean '02_train'"),
    "-p name not in that notebook": (lambda t: ["-p", "03_infer.epochs=3"],
                                     r"-p 03_infer.epochs=3: notebook 03_infer has no parameter 'epochs'"),
    "-p without =": (lambda t: ["-p", "epochs"], r"-p epochs: expects key=value"),
    "-p wrong type": (lambda t: ["-p", "epochs=abc"], r"-p epochs=abc \(02_train\): takes an integer >= 1"),
    "-p negative count": (lambda t: ["-p", "min_component_size=-5"], r"takes an integer >= 0 .*got -5"),
    "-p not a bool": (lambda t: ["-p", "resample=yes"], r"-p resample=yes \(03_infer\): takes true or false, got 'yes'"),
    "-p validation_tta unknown": (lambda t: ["-p", "validation_tta=3"],
                                  r"validation_tta=3 \(02_train\): takes one of none, flips, axes, axes\+flips \(or"),
    "-p unknown tta": (lambda t: ["-p", "tta=yes"], r"-p tta=yes \(03_infer\): takes one of none, flips, axes, "
                                                   r"axes\+flips, auto \(or true/false\), got 'yes'"),
    "-p devices not a list": (lambda t: ["-p", "devices=gpu"], r"devices=gpu \(03_infer\): takes a list of devices"),
    "-p threshold out of range": (lambda t: ["-p", "threshold=1.5"],
                                  r"threshold=1.5 \(03_infer\): a fixed threshold must lie in \(0, 1\), got 1.5"),
    "-p threshold top:abc": (lambda t: ["-p", "threshold=top:abc"], r"top:<fraction> needs a number"),
    "-p tile_step": (lambda t: ["-p", "tile_step=0"], r"tile_step=0 \(03_infer\): takes a number in \(0, 1\]"),
    "-p unknown device": (lambda t: ["-p", "device=gpu"], r"takes 'auto', 'cpu', 'cuda', 'cuda:<n>' or 'mps'"),
    "-p GPU that is not there": (lambda t: ["-p", "device=cuda:99"], r"asks for 'cuda:99', but torch sees \d+ GPU"),
    "-p unknown configuration": (lambda t: ["-p", "configuration=tiyn"], r"did you mean 'tiny'"),
    "-p unknown loss": (lambda t: ["-p", "loss=skeleton"], r"-p loss=skeleton \(02_train\): takes one of 'dice_ce', "
                        r"'skeleton_recall', 'surface', got 'skeleton'; did you mean 'skeleton_recall'\?"),
    "-p loss_weight not positive": (lambda t: ["-p", "loss_weight=0"], r"loss_weight=0 \(02_train\): takes a positive"),
    "-p patch_size": (lambda t: ["-p", "patch_size=[32,64]"], r"takes three positive integers"),
    "-p a path the pipeline sets": (lambda t: ["-p", "output_dir=x"], r"set by the pipeline; use --name instead"),
    "-p unknown group": (lambda t: ["-p", "val_group=kidney_9"],
                         r"02_train's val_group: 'kidney_9' is not a group with labels in .*; did you mean"),
    "-p unknown test group": (lambda t: ["-p", "test_groups=[\"kidney_7\"]"], r"test_groups: 'kidney_7' is not a group"),
    "tune without a validation group": (lambda t: ["-p", "threshold=tune", "-p", "val_group=null"],
                                        r"threshold 'tune' needs a val_group"),
    "stored threshold without a validation group": (lambda t: ["-p", "val_group=null"],
                                                    r"threshold 'model' reads the threshold notebook 02 tunes"),
    "--pretrained not found": (lambda t: ["--pretrained", str(t / "Task008.zip")],
                               r"Task008.zip: not found \(02_train's pretrained\)"),
    "model_dir that is not a model folder": (lambda t: ["-p", f"03_infer.model_dir={t}"],
                                             r"03_infer's model_dir: .*plans.json: missing"),
    "--kernel unknown": (lambda t: ["--kernel", "pyhton3"], r"--kernel pyhton3: no such Jupyter kernel; did you mean"),
    "--name with a slash": (lambda t: ["--name", "../x"], r"--name: a run name must be a plain folder name"),
}


@pytest.mark.parametrize("case", list(PIPELINE_CASES))
def test_pipeline_refuses_before_running(case: str, synthetic_tiny: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    outputs = tmp_path / "outputs"
    monkeypatch.setenv("SENNET_OUTPUTS", str(outputs))
    argv_of, message = PIPELINE_CASES[case]
    argv = argv_of(tmp_path)
    if "--config" not in argv:
        argv = ["--config", str(CONFIG), *argv]
    err = one_line_exit_2(pipeline.main, [*argv, "--data-dir", str(synthetic_tiny)], capsys)
    assert re.search(message, err), err
    assert not outputs.exists()  # no run folder, not even an empty one


def test_pipeline_never_fills_a_mistyped_data_dir_with_synthetic_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path / "outputs"))
    typo = tmp_path / "syntehtic"
    err = one_line_exit_2(pipeline.main, ["--config", str(CONFIG), "--data-dir", str(typo)], capsys)
    assert f"{typo}: competition root not found" in err
    assert not typo.exists() and not (tmp_path / "outputs").exists()
    (tmp_path / "afile").write_text("x")
    err = one_line_exit_2(pipeline.main, ["--config", str(CONFIG), "--data-dir", str(tmp_path / "afile")], capsys)
    assert f"{tmp_path / 'afile'}: not a folder" in err and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("damage, message", [
    ("sample_submission.csv", r"sample_submission.csv: missing; it lists the ids"),
    ("test", r"test: no test slices"),
    ("train", r"02_train's val_group: 'kidney_3_dense' is not a group with labels"),
])
def test_pipeline_checks_the_data_root(damage: str, message: str, synthetic_tiny: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path / "outputs"))
    root = tmp_path / "data"
    shutil.copytree(synthetic_tiny, root)
    target = root / damage
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    err = one_line_exit_2(pipeline.main, ["--config", str(CONFIG), "--data-dir", str(root)], capsys)
    assert re.search(message, err), err
    assert not (tmp_path / "outputs").exists()


# --- the metric CLI and the CSV files it reads -------------------------------------------------------------

def _solution_pair(root: Path, tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    solution = pd.read_csv(root / "solution.csv", dtype=str, keep_default_na=False)
    return solution, solution[["id", "rle"]].copy()


def _swap(frame: pd.DataFrame, row: int) -> pd.DataFrame:
    frame.loc[row, ["width", "height"]] = frame.loc[row, ["height", "width"]].to_numpy()
    return frame


METRIC_CASES = {
    "empty file": (lambda sol, sub: (sol, ""), r"submission.csv: empty file \(expected the header id,rle\)"),
    "binary file": (lambda sol, sub: (sol, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), r"submission.csv: binary file"),
    "not UTF-8": (lambda sol, sub: (sol, b"id,rle\n\xff\xfe,1 0\n"), r"submission.csv: not a UTF-8 text CSV"),
    "broken CSV line": (lambda sol, sub: (sol, "id,rle\nkidney_5_0000,1 0,7\n"),
                        r"submission.csv: broken CSV \(.*line 2"),
    "no header": (lambda sol, sub: (sol, sub.to_csv(index=False, header=False)),
                  r"submission.csv: line 1 should be a header with columns id,rle"),
    "header only": (lambda sol, sub: (sol, "id,rle\n"), r"submission.csv: no rows after the header"),
    "duplicated id": (lambda sol, sub: (sol, pd.concat([sub, sub.iloc[[3]]])),
                      r"submission.csv: id 'kidney_5_0003' appears 2 times \(lines 5, \d+\)"),
    "empty id": (lambda sol, sub: (sol, sub.assign(id=sub["id"].where(sub.index != 2, ""))),
                 r"submission.csv: line 4 has an empty id"),
    "missing id": (lambda sol, sub: (sol, sub.drop(index=4)), r"1 ids of the solution are missing, e.g. 'kidney_5_0004'"),
    "malformed RLE": (lambda sol, sub: (sol, sub.assign(rle=sub["rle"].where(sub.index != 5, "1 2 3"))),
                      r"submission.csv: id 'kidney_5_0005' \(slice 60x68\): RLE has an odd number of values"),
    "RLE past the slice": (lambda sol, sub: (sol, sub.assign(rle=sub["rle"].where(sub.index != 5, "4000 200"))),
                           r"id 'kidney_5_0005' \(slice 60x68\): RLE run ends at pixel 4199, past the slice's 4080"),
    "non-numeric width": (lambda sol, sub: (sol.assign(width=sol["width"].where(sol.index != 3, "abc")), sub),
                          r"solution.csv: id 'kidney_5_0003': width 'abc' is not an integer >= 1"),
    "swapped width and height": (lambda sol, sub: (_swap(sol, 6), sub),
                                 r"solution.csv: id 'kidney_5_0006' is width 60 x height 68, .*swapped\?\)"),
    "solution missing a column": (lambda sol, sub: (sol.drop(columns="image"), sub),
                                  r"solution.csv: line 1 should be a header .*\(missing image\)"),
}


@pytest.mark.parametrize("case", list(METRIC_CASES))
def test_metric_cli_names_the_file_and_the_id(case: str, synthetic_tiny: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    solution, sub = METRIC_CASES[case][0](*_solution_pair(synthetic_tiny, tmp_path))
    files = []
    for name, content in (("solution.csv", solution), ("submission.csv", sub)):
        path = tmp_path / name
        if isinstance(content, pd.DataFrame):
            content.to_csv(path, index=False)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        files.append(str(path))
    err = one_line_exit_2(metric_cli.main, files, capsys)
    assert re.search(METRIC_CASES[case][1], err), err


def test_metric_cli_missing_file_a_folder_and_a_bad_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "nope.csv: file not found" in one_line_exit_2(metric_cli.main, [str(tmp_path / "nope.csv"), "x.csv"], capsys)
    assert f"{tmp_path}: not a file" in one_line_exit_2(metric_cli.main, [str(tmp_path), "x.csv"], capsys)
    assert "--device gpu: not usable here (Expected one of cpu, cuda" in one_line_exit_2(
        metric_cli.main, ["x.csv", "y.csv", "--device", "gpu"], capsys)


# --- train_rles.csv and the data layer ----------------------------------------------------------------------

def _rles_only(root: Path) -> Path:
    """kidney_1_dense's labels come from train_rles.csv (its label TIFFs removed)."""
    shutil.rmtree(root / "train" / "kidney_1_dense" / "labels")
    return root / "train_rles.csv"


def test_train_rles_duplicated_id_is_refused(mini_root: Path) -> None:
    path = _rles_only(mini_root)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:4], lines[3], *lines[4:]]) + "\n")  # kidney_1_dense_0002 twice
    with pytest.raises(DataError, match=r"train_rles.csv: id 'kidney_1_dense_0002' appears 2 times \(lines 4, 5\)"):
        data.discover(mini_root)


def test_train_rles_broken_line_and_header(mini_root: Path) -> None:
    path = _rles_only(mini_root)
    text = path.read_text()
    path.write_text(text + "kidney_9_0000,1 0,oops\n")
    with pytest.raises(DataError, match=r"train_rles.csv: broken CSV \(.*Expected 2 fields in line \d+, saw 3"):
        data.discover(mini_root)
    path.write_text(text.replace("id,rle", "slice,mask", 1))
    with pytest.raises(DataError, match=r"train_rles.csv: line 1 should be a header with columns id,rle"):
        data.discover(mini_root)


def test_train_rles_malformed_rle_names_id_and_file(mini_root: Path) -> None:
    path = _rles_only(mini_root)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[frame["id"] == "kidney_1_dense_0004", "rle"] = "5 2 1 1"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"train_rles.csv: id kidney_1_dense_0004 \(slice 9x7\): RLE runs overlap"):
        data.discover(mini_root)
    group = data.open_group("kidney_1_dense", mini_root, validate=False)  # and again when read lazily
    group.read_labels(0, 4)
    with pytest.raises(DataError, match=r"train_rles.csv: id kidney_1_dense_0004: RLE runs overlap"):
        group.read_labels(2, 6)


def test_csv_saved_with_a_byte_order_mark_reads_as_any_other(tmp_path: Path) -> None:
    """Spreadsheet programs write a UTF-8 byte order mark; it must not turn the header into '\\ufeffid'."""
    path = tmp_path / "sample_submission.csv"
    path.write_bytes(b"\xef\xbb\xbfid,rle\nkidney_5_0000,1 0\n")
    assert data.read_table(path, ("id", "rle"))["id"].tolist() == ["kidney_5_0000"]


def test_test_group_must_start_at_slice_0000(mini_root: Path) -> None:
    (mini_root / "test" / "kidney_5" / "images" / "0000.tif").unlink()
    with pytest.raises(DataError, match=r"kidney_5/images: first slice is 0001.tif, but test slices are numbered from 0000"):
        data.discover(mini_root)


# --- sample_submission.csv and the submission --------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (None, r"sample_submission.csv: missing"),
    ("", r"sample_submission.csv: empty file"),
    ("image,mask\nkidney_5_0000,1 0\n", r"sample_submission.csv: line 1 should be a header with columns id,rle"),
    ("id,rle\n", r"sample_submission.csv: no rows after the header"),
    ("id,rle\nkidney_5_0000,1 0\nkidney_5_0000,1 0\n", r"id 'kidney_5_0000' appears 2 times \(lines 2, 3\)"),
    ("id,rle\nkidney_5_0000,1 0\nkidney_5_0001,1 0\n", r"ids differ from the test slices \(kidney_5\): 0 missing .* "
                                                        r"1 not expected \(e.g. \['kidney_5_0002'\]\)"),
])
def test_expected_ids_checks_sample_submission(content: str | None, message: str, mini_root: Path) -> None:
    path = mini_root / "sample_submission.csv"
    if content is not None:
        path.write_text(content)
    tests = {n: g for n, g in data.discover(mini_root).items() if g.split == "test"}
    with pytest.raises(submission.SubmissionError, match=message):
        submission.expected_ids(mini_root, tests)


def test_expected_ids_refuses_no_test_slice_and_returns_the_sample_order(mini_root: Path) -> None:
    with pytest.raises(submission.SubmissionError, match=r"test: no test slices"):
        submission.expected_ids(mini_root, {})
    ids = ["kidney_5_0002", "kidney_5_0000", "kidney_5_0001"]
    pd.DataFrame({"id": ids, "rle": "1 0"}).to_csv(mini_root / "sample_submission.csv", index=False)
    tests = {"kidney_5": data.open_group("kidney_5", mini_root)}
    assert submission.expected_ids(mini_root, tests) == ids


def test_a_submission_is_never_written_without_rows(tmp_path: Path) -> None:
    with pytest.raises(submission.SubmissionError, match=r"submission.csv: no rows to write"):
        submission.write_submission([], tmp_path / "submission.csv")
    with pytest.raises(submission.SubmissionError, match=r"sample.csv: file not found"):
        submission.write_submission([("k_0000", "1 0")], tmp_path / "submission.csv", tmp_path / "sample.csv")
    assert list(tmp_path.iterdir()) == []


# --- the model folder ----------------------------------------------------------------------------------------

@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    plans = small_plans()
    return write_model_dir(tmp_path / "model", plans, random_network(plans))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _other_network(model: Path) -> None:
    plans = small_plans()
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] += 2
    torch.save({"network_weights": random_network(plans).state_dict()}, model / "fold_0" / "checkpoint_final.pth")


@pytest.mark.parametrize("damage, error, message", [
    (lambda m: (m / "dataset.json").unlink(), FileNotFoundError, r"dataset.json: missing; is .* a model folder"),
    (lambda m: (m / "fold_0" / "checkpoint_final.pth").unlink(), FileNotFoundError, r"checkpoint_final.pth: missing"),
    (lambda m: (m / "plans.json").write_text("{oops"), predictor.ModelFolderError, r"plans.json: not valid JSON"),
    (lambda m: (m / "plans.json").write_text("{}"), predictor.ModelFolderError,
     r"plans.json: not nnU-Net v2 plans for 3d_fullres"),
    (lambda m: (m / "dataset.json").write_text('{"labels": {"background": 0}}'), predictor.ModelFolderError,
     r"dataset.json: expected 'labels' with two classes"),
    (lambda m: _truncate(m / "fold_0" / "checkpoint_final.pth"), predictor.ModelFolderError,
     r"checkpoint_final.pth: not a readable nnU-Net checkpoint, corrupt or truncated\?"),
    (lambda m: torch.save({"weights": 1}, m / "fold_0" / "checkpoint_final.pth"), predictor.ModelFolderError,
     r"checkpoint_final.pth: not a readable nnU-Net checkpoint.*KeyError: 'network_weights'"),
    (_other_network, predictor.ModelFolderError,
     r"checkpoint_final.pth: weights do not fit the network of .*plans.json: [1-9]\d* of another shape "
     r"\(e.g. encoder.stages.0.0.convs.0.conv.weight \(6, 1, 3, 3, 3\) \(plans: \(4, 1, 3, 3, 3\)\)\) tensors"),
])
def test_model_folder_is_checked_before_prediction(damage, error, message, model_dir: Path) -> None:
    assert predictor.check_model_dir(model_dir)[0]["configurations"]  # intact: fine
    damage(model_dir)
    with pytest.raises(error, match=message) as exc:
        predictor.load_model(model_dir, device="cpu")
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, predictor.ModelFolderError)


# --- the other command lines ----------------------------------------------------------------------------------

def test_convert_v1_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.zip").write_text("not a zip")
    (tmp_path / "afile").write_text("x")
    assert "nope.zip: no such file or folder" in one_line_exit_2(
        convert_v1.main, [str(tmp_path / "nope.zip"), str(tmp_path / "out")], capsys)
    assert "junk.zip: not a readable zip archive" in one_line_exit_2(
        convert_v1.main, [str(tmp_path / "junk.zip"), str(tmp_path / "out")], capsys)
    source = v1_checkpoint.main([str(tmp_path / "v1.zip"), "--variant", "small", "--seed", "1", "--folds", "0"])
    capsys.readouterr()
    assert "invalid fold 'abc'" in one_line_exit_2(convert_v1.main, [str(source), str(tmp_path / "out"), "--fold", "abc"],
                                                   capsys)
    err = one_line_exit_2(convert_v1.main, [str(source), str(tmp_path / "afile" / "out")], capsys)
    assert f"{tmp_path / 'afile' / 'out'}: " in err  # cannot be made under a file: one line, no traceback
    assert not (tmp_path / "out").exists()


def test_synthetic_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "precious.txt").write_text("real data")
    base = ["--preset", "tiny", "--groups", "kidney_6", "--quiet"]
    assert "afile exists and is not a folder" in one_line_exit_2(synthetic.main, ["--out", str(tmp_path / "afile"),
                                                                                  *base], capsys)
    assert "full exists and is not empty" in one_line_exit_2(synthetic.main, ["--out", str(tmp_path / "full"), *base],
                                                             capsys)
    assert "afile: " in one_line_exit_2(synthetic.main, ["--out", str(tmp_path / "afile" / "sub"), *base], capsys)
    assert "--seed: expected a non-negative integer, got '-1'" in one_line_exit_2(
        synthetic.main, ["--out", str(tmp_path / "new"), "--seed", "-1", *base], capsys)
    assert (tmp_path / "full" / "precious.txt").read_text() == "real data" and not (tmp_path / "new").exists()


def test_rle_column_of_numbers_is_still_checked() -> None:
    """A solution read by pandas with its default types (numbers) is still scored or refused by id."""
    solution = pd.DataFrame({"id": ["k_0000", "k_0001"], "rle": ["1 1", "1 0"], "width": [2, 2], "height": [2, 3],
                             "image": "k", "slice": [0, 1]})
    with pytest.raises(metric.SubmissionError, match=r"id 'k_0001' is width 2 x height 3, but 'k_0000'"):
        metric.score_submission(solution, solution[["id", "rle"]])
    solution["height"] = 2
    assert metric.score_submission(solution, solution[["id", "rle"]])["score"] == pytest.approx(1.0)
    assert np.isfinite(metric.score_submission(solution, solution[["id", "rle"]])["per_image"]["k"])
