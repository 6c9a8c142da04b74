"""One schema per notebook (lib/parameters.py): the notebooks' parameters cells are generated from it
(tools.kaggle.parameters_cell), the notebooks check their values with it before any work, and the pipeline and the
Kaggle bundle read it."""
from __future__ import annotations

import nbformat
import pytest

from lib import parameters, paths
from lib.parameters import Expression
from tools import kaggle


def notebook_cell(notebook: str) -> str:
    nb = nbformat.read(paths.PROJECT_ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return cell.source


@pytest.mark.parametrize("notebook", sorted(parameters.SCHEMAS))
def test_each_parameters_cell_is_generated_from_the_schema(notebook: str) -> None:
    generated = kaggle.parameters_cell(notebook)
    assert notebook_cell(notebook) == generated, f"paste into notebooks/{notebook}.ipynb:\n{generated}"


def defaults(notebook: str) -> dict[str, object]:
    return {p.name: "somewhere" if isinstance(p.default, Expression) else p.default
            for p in parameters.SCHEMAS[notebook].parameters}


@pytest.mark.parametrize("notebook", sorted(parameters.SCHEMAS))
def test_every_default_fits_its_own_kind(notebook: str) -> None:
    parameters.check(notebook, defaults(notebook))


def test_bad_values_are_named_with_what_the_parameter_takes() -> None:
    assert parameters.problem("02_train", "epochs", 3) is None
    assert "takes an integer >= 1 (default 15), got 2.5" in parameters.problem("02_train", "epochs", 2.5)
    assert "takes an integer" in parameters.problem("02_train", "epochs", True)  # a bool is not a count
    assert parameters.problem("02_train", "initial_lr", 1) is None  # an int is a number
    assert "did you mean 'kidney'" in parameters.problem("02_train", "normalisation", "kidny")
    assert "did you mean 'surface'" in parameters.problem("02_train", "loss", "surfce")
    assert "['hepatic', 'tiny']" in parameters.problem("02_train", "configuration", "huge")
    assert "three positive integers" in parameters.problem("02_train", "patch_size", [32, 64])
    assert "not a table" in parameters.problem("01_explore", "prediction_dir", {"a": 1})
    assert parameters.problem("02_train", "sparse_label_share", {"kidney_2": 0.5}) is None  # a table default
    assert "(0, 1]" in parameters.problem("03_infer", "tile_step", 0)
    assert parameters.problem("03_infer", "tta", "auto") is None
    assert "auto" not in parameters.problem("02_train", "validation_tta", "nope")  # no runtime plan in training
    assert parameters.problem("03_infer", "threshold", "top:2") == "top fraction must lie in (0, 1), got 'top:2'"
    assert "must be a number, 'tune', 'model' or 'top:<fraction>'" in parameters.problem("03_infer", "threshold", "x")
    assert "cuda:7" in parameters.problem("03_infer", "device", "cuda:7")  # no 8 GPUs here
    assert parameters.problem("03_infer", "model_dir", ["a", "b"]) is None  # an ensemble
    with pytest.raises(KeyError):
        parameters.problem("03_infer", "epochs", 3)


def test_a_notebook_refuses_every_bad_value_at_once() -> None:
    values = {**defaults("03_infer"), "tta": "sideways", "tile_step": 2}
    del values["devices"]
    with pytest.raises(ValueError) as e:
        parameters.check("03_infer", values)
    message = str(e.value)
    assert message.startswith("notebook 03_infer's parameters: ")
    assert "tta: takes one of none, flips, axes, axes+flips, auto" in message and "tile_step: " in message
    assert "not set: devices" in message


def test_the_schema_says_which_paths_must_exist_and_which_groups_are_named() -> None:
    must_exist = {(nb, p.name) for nb, s in parameters.SCHEMAS.items() for p in s.parameters if p.kind.path == "exists"}
    assert must_exist == {("01_explore", "prediction_dir"), ("02_train", "pretrained"), ("03_infer", "model_dir")}
    among = {(nb, p.name): p.kind.groups for nb, s in parameters.SCHEMAS.items() for p in s.parameters if p.kind.groups}
    assert among == {("01_explore", "groups"): "any", ("02_train", "train_groups"): "labelled",
                     ("02_train", "val_group"): "labelled", ("03_infer", "test_groups"): "test",
                     ("03_infer", "val_group"): "labelled"}


def test_the_kaggle_bundle_generates_its_cells_from_the_schema() -> None:
    source = kaggle.override_parameters("03_infer", kaggle.INFER_PARAMETERS)
    expected = [f"{name} = {code}  # Kaggle: {comment}" if name in kaggle.INFER_PARAMETERS else line
                for line in kaggle.parameters_cell("03_infer").splitlines()[1:]
                for name in [line.split(" = ")[0]] for code, comment in [kaggle.INFER_PARAMETERS.get(name, ("", ""))]]
    assert source.splitlines() == [*kaggle.KAGGLE_HEADER.splitlines(), *expected]
    assert 'data_dir = str(find_input("competition", required=True))  # Kaggle: ' in source
    with pytest.raises(kaggle.BundleError, match="no parameter 'epochs'"):
        kaggle.override_parameters("03_infer", {"epochs": ("3", "x")})
