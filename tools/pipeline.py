"""Run the notebooks 01 -> 02 -> 03 in order with papermill, parameters from one config file per scenario.

`python -m tools.pipeline --config configs/demo.toml [--data-dir D] [--pretrained P] [-p key=value ...]
[--name N] [--force]` writes `outputs/<name>/`: the executed notebooks, each notebook's outputs (figures,
model, submission.csv) in a folder of its own, and `scores.json` (validation and test surface Dice, threshold,
minutes per notebook).

Everything that can be checked is checked before the first notebook runs and before any output folder is
created (the config, every parameter's name, type and range against the notebooks' schemas in lib/parameters.py,
paths, the data root, the kernel): bad input is one line and exit code 2. An earlier run is never replaced unless
`--force`, and even then only once the new run has finished: until then it waits in `<name>.previous` and is
put back when the new run fails or is stopped (a run killed outright is recovered by the next call).
A failing notebook stops the pipeline, naming the cell and the error (exit code 1); its executed copy is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tomllib

from lib import parameters, paths
from lib.parameters import suggestion
from tools import errors

NOTEBOOKS = ("01_explore", "02_train", "03_infer")
CONFIG_KEYS = ("name", "data_dir", "synthetic_preset", "output_root", "required", "notebooks",
               "bundle")  # [bundle]: the Kaggle upload bundle's settings (tools.kaggle), not the pipeline's
REQUIRABLE = ("data_dir", "pretrained")  # what a config may require on the command line
WIRED = {"data_dir": "--data-dir", "output_dir": "--name"}  # parameters the pipeline sets itself
RUNNING = ".running"  # inside a run folder while its notebooks execute: {"pid", "host", "replaces"}
PREVIOUS = ".previous"  # suffix of the earlier run's folder while a --force run replaces it


class PipelineError(RuntimeError):
    """Bad input to the pipeline (config, parameters, paths, data root, kernel); nothing was run or created."""


class NotebookFailed(PipelineError):
    """A notebook failed while running; its executed copy is kept."""


def declared_parameters(notebook: str) -> dict[str, parameters.Parameter]:
    """A notebook's parameters by name, from its schema (lib/parameters.py; its parameters cell is generated from it)."""
    return parameters.SCHEMAS[notebook].by_name


def _check_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or value in {".", ".."} or "/" in value or "\\" in value \
            or value.endswith(PREVIOUS) or value.startswith("."):
        raise PipelineError(f"{where}: a run name must be a plain folder name (no '/', not starting with '.'), "
                            f"got {value!r}")
    return value


def load_config(path: Path | str) -> dict:
    """A scenario config (TOML): name, data_dir, [notebooks.<name>] parameter tables, checked key by key."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: config file not found")
    try:
        with path.open("rb") as f:
            config = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not valid TOML ({e})") from None
    for key in config:
        if key not in CONFIG_KEYS:
            raise PipelineError(f"{path}: unknown key {key!r}{suggestion(key, CONFIG_KEYS)} "
                                f"(known: {', '.join(CONFIG_KEYS)})")
    if "name" not in config:
        raise PipelineError(f"{path}: needs a name = \"...\" (the run folder under outputs/)")
    _check_name(config["name"], f"{path}: name")
    for key in ("data_dir", "output_root"):
        if key in config and (not isinstance(config[key], str) or not config[key]):
            raise PipelineError(f"{path}: {key} must be a path string, got {config[key]!r}")
    if "synthetic_preset" in config:
        from tools.synthetic import PRESETS

        if config["synthetic_preset"] not in PRESETS:
            raise PipelineError(f"{path}: synthetic_preset {config['synthetic_preset']!r} is not one of "
                                f"{sorted(PRESETS)}{suggestion(str(config['synthetic_preset']), PRESETS)}")
    required = config.get("required", [])
    if not isinstance(required, list) or any(r not in REQUIRABLE for r in required):
        raise PipelineError(f"{path}: required must be a list of {list(REQUIRABLE)}, got {required!r}")
    tables = config.get("notebooks", {})
    if not isinstance(tables, dict):
        raise PipelineError(f"{path}: notebooks must be tables [notebooks.<name>], got {tables!r}")
    for nb, table in tables.items():
        if nb not in NOTEBOOKS:
            raise PipelineError(f"{path}: unknown notebook [notebooks.{nb}]{suggestion(nb, NOTEBOOKS)} "
                                f"(known: {', '.join(NOTEBOOKS)})")
        if not isinstance(table, dict):
            raise PipelineError(f"{path}: notebooks.{nb} must be a table of parameters, got {table!r}")
        for key, value in table.items():
            _check_one(nb, key, value, f"{path}: [notebooks.{nb}] {key}")
    return config


def _check_one(nb: str, key: str, value: object, where: str) -> None:
    """One parameter of one notebook: known, not wired by the pipeline, of the right type and range."""
    declared = declared_parameters(nb)
    if key not in declared:
        raise PipelineError(f"{where}: notebook {nb} has no parameter {key!r}{suggestion(key, declared)} "
                            f"(it has {', '.join(declared)})")
    if key in WIRED:
        raise PipelineError(f"{where}: set by the pipeline; use {WIRED[key]} instead")
    problem = parameters.problem(nb, key, value)
    if problem:
        raise PipelineError(f"{where}: {problem}")


def parse_overrides(items: list[str]) -> dict[str, object]:
    """`key=value` (or `notebook.key=value`) strings; values parsed as JSON when they are (Python's True, False
    and None too), else strings. Names are checked by `check_overrides`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PipelineError(f"-p {item}: expects key=value (e.g. -p epochs=3 or -p 03_infer.tta=false)")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = {"True": True, "False": False, "None": None}.get(value.strip(), value)
    return out


def check_overrides(overrides: dict[str, object]) -> None:
    """Every `-p` name exists in the notebook it names (or in at least one notebook) and its value fits there."""
    every = {name for nb in NOTEBOOKS for name in declared_parameters(nb)}
    for key, value in overrides.items():
        target, _, name = key.rpartition(".")
        where = f"-p {key}={json.dumps(value) if not isinstance(value, str) else value}"
        if target and target not in NOTEBOOKS:
            raise PipelineError(f"{where}: no notebook {target!r}{suggestion(target, NOTEBOOKS)} "
                                f"(known: {', '.join(NOTEBOOKS)})")
        if not target and name not in every:
            raise PipelineError(f"{where}: no notebook has a parameter {name!r}{suggestion(name, every)}")
        for nb in [target] if target else [nb for nb in NOTEBOOKS if name in declared_parameters(nb)]:
            _check_one(nb, name, value, where + (f" ({nb})" if not target else ""))


def merged_parameters(config: dict, overrides: dict[str, object]) -> dict[str, dict]:
    """Each notebook's parameters from the config, then the command-line overrides (not yet wired)."""
    params: dict[str, dict] = {nb: dict(config.get("notebooks", {}).get(nb, {})) for nb in NOTEBOOKS}
    for key, value in overrides.items():
        target, _, name = key.rpartition(".")
        for nb in NOTEBOOKS:
            if (target == nb or not target) and name in declared_parameters(nb):
                params[nb][name] = value
            elif target == nb:
                raise PipelineError(f"notebook {nb} has no parameter {name!r}{suggestion(name, declared_parameters(nb))}"
                                    f"; it has {sorted(declared_parameters(nb))}")
    return params


def notebook_parameters(config: dict, run_dir: Path, data_dir: Path, overrides: dict[str, object]) -> dict[str, dict]:
    """The parameters of each notebook: paths wired together, then the config, then command-line overrides."""
    merged = merged_parameters(config, overrides)
    params = {
        "01_explore": {"data_dir": str(data_dir), "output_dir": str(run_dir / "01_explore")},
        "02_train": {"data_dir": str(data_dir), "output_dir": str(run_dir / "02_train")},
        "03_infer": {"data_dir": str(data_dir), "output_dir": str(run_dir / "03_infer"),
                     "model_dir": str(_trained_model_dir(run_dir))},
    }
    for nb in NOTEBOOKS:
        params[nb].update(merged[nb])
    return params


def _trained_model_dir(run_dir: Path) -> Path:
    from lib.training.fine_tune import (
        default_model_dir,  # imports nnU-Net: only when a run starts
    )

    return default_model_dir(run_dir / "02_train")


@dataclass
class CheckedRun:
    """A checked run: what `run` executes."""

    config: dict
    name: str
    output_root: Path
    data_dir: Path
    overrides: dict[str, object]
    kernel: str
    notebooks: tuple[str, ...]


def prepare(config_path: Path | str, data_dir: str | None = None, pretrained: str | None = None,
            overrides: dict[str, object] | None = None, name: str | None = None, kernel: str = "python3",
            notebooks: tuple[str, ...] = NOTEBOOKS) -> CheckedRun:
    """Check everything a run needs before any notebook runs; raises PipelineError with one line naming the input.

    Creates nothing under the outputs; the only thing it may write is the synthetic dataset, and only at the
    config's own data_dir or the synthetic default (never at a mistyped --data-dir).
    """
    config = load_config(config_path)
    overrides = dict(overrides or {})
    unknown = [nb for nb in notebooks if nb not in NOTEBOOKS]
    if unknown:
        raise PipelineError(f"unknown notebooks {unknown}; known: {list(NOTEBOOKS)}")
    if pretrained is not None:  # a command-line path: relative to the current folder
        overrides["02_train.pretrained"] = str(Path(pretrained).expanduser().absolute())
    given = {"data_dir": data_dir, "pretrained": pretrained}
    missing = [k for k in config.get("required", []) if given.get(k) is None]
    if missing:
        raise PipelineError(f"{config_path}: needs {', '.join('--' + m.replace('_', '-') for m in missing)}")
    check_overrides(overrides)
    name = _check_name(name, "--name") if name is not None else config["name"]
    _check_kernel(kernel)
    params = merged_parameters(config, overrides)
    for nb in notebooks:
        for key in [p.name for p in parameters.SCHEMAS[nb].parameters if p.kind.path == "exists"]:
            if params[nb].get(key) is not None:
                given = params[nb][key]  # model_dir may list several folders (an ensemble)
                found = [paths.resolve_path(v) for v in (given if isinstance(given, list) else [given])]
                for path in found:  # the notebooks' convention: project-relative
                    if not path.exists():
                        raise PipelineError(f"{path}: not found ({nb}'s {key})")
                absolute = [str(f) for f in found] if isinstance(given, list) else str(found[0])
                params[nb][key] = absolute
                overrides[f"{nb}.{key}"] = absolute  # absolute: the notebooks run from notebooks/
    if "03_infer" in notebooks and "model_dir" in params["03_infer"]:
        _check_model_dir(params["03_infer"]["model_dir"])
    root = Path(config.get("output_root") or paths.outputs_dir())
    _check_output_root(root)
    data = _data_root(config, data_dir)
    _check_data(data, params, notebooks)
    return CheckedRun(config, name, root, data, overrides, kernel, notebooks)


def _check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import find_kernel_specs

    known = find_kernel_specs()
    if kernel not in known:
        raise PipelineError(f"--kernel {kernel}: no such Jupyter kernel{suggestion(kernel, known)} "
                            f"(installed: {', '.join(sorted(known))})")


def _check_model_dir(model_dir: str | list[str]) -> None:
    from lib import predictor  # torch and nnU-Net: only when a model folder is given

    for folder in model_dir if isinstance(model_dir, list) else [model_dir]:
        try:
            predictor.check_model_dir(folder)
        except predictor.ModelFolderError as e:
            raise PipelineError(f"03_infer's model_dir: {e}") from None


def _check_output_root(root: Path) -> None:
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise PipelineError(f"{root}: cannot write the run folder there ({existing} is not a writable folder)")


def _data_root(config: dict, data_dir: str | None) -> Path:
    """The competition root: --data-dir (relative to the current folder), else the config's (relative to the
    project). A missing root is generated only when it is the config's own synthetic root or the synthetic
    default; any other missing root is an error, so a mistyped --data-dir never becomes synthetic data."""
    if data_dir is not None:
        data = Path(data_dir).expanduser().absolute()
    elif config.get("data_dir"):
        data = paths.resolve_path(config["data_dir"])
    else:
        data = paths.default_data_dir()
    if data.is_dir():
        return data
    synthetic_ok = config.get("synthetic_preset") and (
        data_dir is None or data.resolve() == paths.synthetic_data_dir().resolve())
    if data.exists():
        raise PipelineError(f"{data}: not a folder; the competition root is a folder (--data-dir)")
    if not synthetic_ok:
        raise PipelineError(f"{data}: competition root not found (--data-dir, or data_dir in the config)")
    from tools import synthetic

    print(f"generating the SYNTHETIC {config['synthetic_preset']} dataset into {data}")
    try:
        synthetic.generate(data, preset=config["synthetic_preset"], seed=0)
    except OSError as e:
        raise PipelineError(f"cannot generate the synthetic dataset: {errors.one_line(e)}") from None
    return data


def _check_data(root: Path, params: dict[str, dict], notebooks: tuple[str, ...]) -> None:
    """The data root is a competition root, and the groups the notebooks name are in it."""
    from lib import data, submission

    try:
        groups = data.discover(root, validate=False)
    except data.DataError as e:
        raise PipelineError(str(e)) from None
    labelled = [n for n, g in groups.items() if g.has_labels]
    tests = {n: g for n, g in groups.items() if g.split == "test"}
    for nb in notebooks:
        p = params[nb]
        among = {"any": list(groups), "labelled": labelled, "test": list(tests)}
        for parameter in parameters.SCHEMAS[nb].parameters:
            value = p.get(parameter.name, parameter.default)
            if parameter.kind.groups is None or value is None:
                continue
            allowed = among[parameter.kind.groups]
            for group in [value] if isinstance(value, str) else value:
                if group not in allowed:
                    raise PipelineError(f"{nb}'s {parameter.name}: {group!r} is not a group with "
                                        f"{'labels' if allowed is labelled else 'slices'} in {root}"
                                        f"{suggestion(group, allowed)} (there: {', '.join(allowed) or 'none'})")
    if "03_infer" in notebooks:
        p = params["03_infer"]
        threshold, val_group = p.get("threshold", _default("03_infer", "threshold")), p.get(
            "val_group", _default("03_infer", "val_group"))
        if str(threshold).strip().lower() == "tune" and val_group is None:
            raise PipelineError("03_infer: threshold 'tune' needs a val_group with labels (or a fixed threshold)")
        trains_here = "02_train" in notebooks and p.get("model_dir") is None  # 03 then loads 02's model
        if str(threshold).strip().lower() == "model" and trains_here and \
                params["02_train"].get("val_group", _default("02_train", "val_group")) is None:
            raise PipelineError("03_infer: threshold 'model' reads the threshold notebook 02 tunes on its val_group, "
                                "but 02_train's val_group is null (give one, or a fixed threshold)")
        chosen = p.get("test_groups")
        selected = {n: tests[n] for n in ([chosen] if isinstance(chosen, str) else chosen)} if chosen else tests
        try:
            submission.expected_ids(root, selected)
        except submission.SubmissionError as e:
            raise PipelineError(str(e)) from None


def _default(nb: str, key: str) -> object:
    return declared_parameters(nb)[key].default


# --- the run folder: never replaced before the new run has finished --------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _next_free(root: Path, name: str) -> Path:
    n = 2
    while (root / f"{name}-{n}").exists():
        n += 1
    return root / f"{name}-{n}"


def running_pid(folder: Path) -> int | None:
    """The process id of the run still executing in `folder` (on this machine), or None."""
    try:
        info = json.loads((folder / RUNNING).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    pid = info.get("pid") if isinstance(info, dict) else None
    alive = info.get("host") == socket.gethostname() and isinstance(pid, int) and _alive(pid)
    return pid if alive else None


def recover(root: Path, name: str) -> str | None:
    """Undo what an interrupted `--force` run of `name` left behind; returns what was done, if anything.

    A run folder holding `.running` whose process is gone never finished: when it was replacing an earlier run
    (`<name>.previous` exists), the earlier run goes back to `<name>` and the unfinished one is kept as the next
    free `<name>-N`. A `<name>.previous` next to a finished run is the replaced run whose removal was cut short.
    """
    folder, previous = root / name, root / f"{name}{PREVIOUS}"
    marker = folder / RUNNING
    if running_pid(folder) is not None or not previous.is_dir():
        return None
    if folder.exists() and not marker.is_file():
        shutil.rmtree(previous)
        return f"removed {previous}: the run that replaced it had finished"
    kept = None
    if folder.exists():
        kept = _next_free(root, name)
        folder.rename(kept)
        (kept / RUNNING).unlink(missing_ok=True)
    previous.rename(folder)
    return (f"restored the earlier run {folder}: the --force run replacing it was interrupted"
            + (f" (its partial outputs are in {kept})" if kept else ""))


def claim_run_folder(root: Path, name: str, force: bool) -> tuple[Path, Path | None]:
    """The folder for a new run, marked as running, and where the earlier run waits when `force` replaces it.

    Without `force` an earlier run keeps its folder and the next free `<name>-2`, `-3`, ... is used; with
    `force` the earlier run is moved to `<name>.previous` until `finish_run` or `abandon_run`.
    """
    message = recover(root, name)
    if message:
        print(message)
    folder, previous = root / name, None
    if folder.exists() and any(folder.iterdir()):
        if force and running_pid(folder) is not None:
            raise PipelineError(f"{folder}: a run is in progress there (pid {running_pid(folder)}); "
                                "wait for it or stop it before replacing it")
        if force:
            previous = root / f"{name}{PREVIOUS}"
            folder.rename(previous)
        else:
            folder = _next_free(root, name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUNNING).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                              "replaces": str(previous) if previous else None}))
    return folder, previous


def finish_run(folder: Path, previous: Path | None) -> None:
    """The run finished: it is no longer running, and the run it replaced goes."""
    (folder / RUNNING).unlink(missing_ok=True)
    if previous is not None:
        shutil.rmtree(previous)


def abandon_run(folder: Path, previous: Path | None) -> Path:
    """The run failed or was stopped: the earlier run it was replacing goes back; returns where this run is."""
    (folder / RUNNING).unlink(missing_ok=True)
    if previous is None:
        return folder
    kept = _next_free(folder.parent, folder.name)
    folder.rename(kept)
    previous.rename(folder)
    return kept


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def run(config_path: Path | str, data_dir: str | None = None, pretrained: str | None = None,
        overrides: dict[str, object] | None = None, name: str | None = None, force: bool = False,
        kernel: str = "python3", notebooks: tuple[str, ...] = NOTEBOOKS) -> dict:
    """Check the inputs, then execute the notebooks in order; returns (and writes) the run's scores.json content."""
    import papermill

    checked = prepare(config_path, data_dir, pretrained, overrides, name, kernel, notebooks)
    run_dir, previous = claim_run_folder(checked.output_root, checked.name, force)
    try:
        params = notebook_parameters(checked.config, run_dir, checked.data_dir, checked.overrides)
        print(f"run folder: {run_dir}" + (f" (replacing the earlier run, kept in {previous} until this one "
                                          f"finishes)" if previous else ""))
        minutes = {}
        for nb in checked.notebooks:
            executed = run_dir / f"{nb}.ipynb"
            start = time.perf_counter()
            print(f"--- {nb}: {json.dumps(params[nb])}")
            try:
                papermill.execute_notebook(str(paths.PROJECT_ROOT / "notebooks" / f"{nb}.ipynb"), str(executed),
                                           parameters=params[nb], kernel_name=checked.kernel,
                                           cwd=str(paths.PROJECT_ROOT / "notebooks"), progress_bar=True)
            except papermill.PapermillExecutionError as e:
                raise NotebookFailed(f"notebook {nb} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                                     f"the executed notebook is kept at {executed}") from None
            minutes[nb] = (time.perf_counter() - start) / 60
        scores = collect_scores(run_dir, minutes)
        (run_dir / "scores.json").write_text(json.dumps(scores, indent=2))
    except BaseException as e:
        kept = abandon_run(run_dir, previous)
        if previous is not None:
            note = f"; the earlier run is back in {run_dir}, this run's files are in {kept}"
            if isinstance(e, PipelineError):
                raise type(e)(str(e).replace(str(run_dir), str(kept)) + note) from None
            print(f"stopped{note}", file=sys.stderr)
        raise
    finish_run(run_dir, previous)
    return scores


def collect_scores(run_dir: Path, minutes: dict[str, float]) -> dict:
    """Validation (02) and test (03) scores and timings of a run folder."""
    scores: dict = {"run_dir": str(run_dir), "minutes": minutes}
    train = run_dir / "02_train" / "train_summary.json"
    if train.is_file():
        summary = json.loads(train.read_text())
        scores["validation"] = {k: summary.get(k) for k in ("val_group", "val_surface_dice", "val_dice",
                                                          "val_threshold", "from_scratch", "configuration")}
    infer = run_dir / "03_infer" / "scores.json"
    if infer.is_file():
        result = json.loads(infer.read_text())
        curve = {row["threshold"]: row["surface_dice"] for row in result.get("validation_curve", [])}
        scores["threshold"] = result.get("threshold")
        if result.get("threshold") in curve:
            scores["validation_at_threshold"] = curve[result["threshold"]]
            scores["validation_at_0.5"] = curve.get(0.5)
        scores["test"] = result.get("test_score")
        scores["submission"] = result.get("submission")
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/demo.toml, configs/kaggle.toml or configs/full.toml")
    parser.add_argument("--data-dir", help="competition root (overrides the config; relative to the current folder)")
    parser.add_argument("--pretrained", help="Task008_HepaticVessel.zip (or its folder) for notebook 02")
    parser.add_argument("-p", dest="overrides", action="append", default=[],
                        help="a notebook parameter: key=value (every notebook that has it) or 02_train.key=value")
    parser.add_argument("--name", help="run name (default: the config's); outputs go to outputs/<name>")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier run of the same name (only once the new run has finished)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel (default: this environment's python3)")
    args = parser.parse_args(argv)
    earlier_handler = signal.signal(signal.SIGTERM, _stop_on_sigterm)  # a stopped run puts back the one it replaced
    try:
        scores = run(args.config, args.data_dir, args.pretrained, parse_overrides(args.overrides), args.name,
                     args.force, args.kernel)
    except NotebookFailed as e:  # the input was fine, the run failed: exit code 1
        print(f"error: {errors.one_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None
    except PipelineError as e:
        errors.fail(e)
    except KeyboardInterrupt:
        print("error: stopped before the run finished", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, earlier_handler)
    print(f"\nDone. Outputs: {scores['run_dir']}")
    print(json.dumps({k: v for k, v in scores.items() if k != "run_dir"}, indent=2))


if __name__ == "__main__":
    main()
