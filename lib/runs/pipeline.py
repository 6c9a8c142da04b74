"""Run the notebooks 01 -> 02 -> 03 in order with papermill, parameters from one config file per scenario.

`python -m lib.runs.pipeline --config configs/demo.toml [--data-dir D] [--pretrained P] [-p key=value ...]
[--name N] [--force]` writes `outputs/<name>/`: the executed notebooks, each notebook's outputs (figures,
model, submission.csv) in a folder of its own, and `scores.json` (validation and test surface Dice, threshold,
minutes per notebook). An earlier run is never replaced unless `--force`: the next free `<name>-2`, `-3`, ... is
used instead. A failing notebook stops the pipeline, naming the cell and the error; its executed copy is kept.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import tomllib

from lib import paths

NOTEBOOKS = ("01_explore", "02_train", "03_infer")


class PipelineError(RuntimeError):
    """A notebook failed or the configuration is incomplete."""


def load_config(path: Path | str) -> dict:
    """A scenario config (TOML): name, data_dir, [notebooks.<name>] parameter tables."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: config file not found")
    with path.open("rb") as f:
        config = tomllib.load(f)
    unknown = set(config.get("notebooks", {})) - set(NOTEBOOKS)
    if unknown:
        raise PipelineError(f"{path}: unknown notebooks {sorted(unknown)}; known: {list(NOTEBOOKS)}")
    return config


def parse_overrides(items: list[str]) -> dict[str, object]:
    """`key=value` (or `notebook.key=value`) strings; values parsed as JSON when they are, else strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PipelineError(f"-p expects key=value, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def run_folder(root: Path, name: str, force: bool) -> Path:
    """`root/name`, or the next free `name-2`, `name-3`, ... when it holds an earlier run (unless `force`)."""
    folder = root / name
    if folder.exists() and any(folder.iterdir()):
        if force:
            shutil.rmtree(folder)
        else:
            n = 2
            while (root / f"{name}-{n}").exists():
                n += 1
            folder = root / f"{name}-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def notebook_parameters(config: dict, run_dir: Path, data_dir: Path, overrides: dict[str, object]) -> dict[str, dict]:
    """The parameters of each notebook: paths wired together, then the config, then command-line overrides."""
    from papermill.inspection import inspect_notebook

    params = {
        "01_explore": {"data_dir": str(data_dir), "output_dir": str(run_dir / "01_explore")},
        "02_train": {"data_dir": str(data_dir), "output_dir": str(run_dir / "02_train")},
        "03_infer": {"data_dir": str(data_dir), "output_dir": str(run_dir / "03_infer"),
                     "model_dir": str(_trained_model_dir(run_dir))},
    }
    for nb in NOTEBOOKS:
        params[nb].update(config.get("notebooks", {}).get(nb, {}))
        known = set(inspect_notebook(str(paths.PROJECT_ROOT / "notebooks" / f"{nb}.ipynb")))
        for key, value in overrides.items():
            target, _, name = key.rpartition(".")
            if (target == nb or not target) and name in known:
                params[nb][name] = value
            elif target == nb:
                raise PipelineError(f"notebook {nb} has no parameter {name!r}; it has {sorted(known)}")
    return params


def _trained_model_dir(run_dir: Path) -> Path:
    from lib.training.fine_tune import (
        default_model_dir,  # imports nnU-Net: only when a run starts
    )

    return default_model_dir(run_dir / "02_train")


def run(config_path: Path | str, data_dir: str | None = None, pretrained: str | None = None,
        overrides: dict[str, object] | None = None, name: str | None = None, force: bool = False,
        kernel: str = "python3", notebooks: tuple[str, ...] = NOTEBOOKS) -> dict:
    """Execute the notebooks in order; returns (and writes) the run's scores.json content."""
    import papermill

    config = load_config(config_path)
    overrides = dict(overrides or {})
    if pretrained is not None:
        overrides["02_train.pretrained"] = pretrained
    data = Path(data_dir or config.get("data_dir") or "")
    given = {"data_dir": data_dir, "pretrained": pretrained}
    missing = [k for k in config.get("required", []) if given.get(k) is None]
    if missing:
        raise PipelineError(f"{config_path}: needs {', '.join('--' + m.replace('_', '-') for m in missing)}")
    data = data if data.is_absolute() else paths.PROJECT_ROOT / data
    if config.get("synthetic_preset") and not (data / "train").is_dir():
        from lib.dev import synthetic

        print(f"generating the synthetic {config['synthetic_preset']} dataset into {data}")
        synthetic.generate(data, preset=config["synthetic_preset"], seed=0)
    root = Path(config.get("output_root") or paths.outputs_dir())
    run_dir = run_folder(root, name or config["name"], force)
    params = notebook_parameters(config, run_dir, data, overrides)
    print(f"run folder: {run_dir}")
    minutes = {}
    for nb in notebooks:
        executed = run_dir / f"{nb}.ipynb"
        start = time.perf_counter()
        print(f"--- {nb}: {json.dumps(params[nb])}")
        try:
            papermill.execute_notebook(str(paths.PROJECT_ROOT / "notebooks" / f"{nb}.ipynb"), str(executed),
                                       parameters=params[nb], kernel_name=kernel,
                                       cwd=str(paths.PROJECT_ROOT / "notebooks"), progress_bar=True)
        except papermill.PapermillExecutionError as e:
            raise PipelineError(f"notebook {nb} failed in cell {e.exec_count} ({e.ename}: {e.evalue}); "
                                f"the executed notebook is kept at {executed}") from None
        minutes[nb] = (time.perf_counter() - start) / 60
    scores = collect_scores(run_dir, minutes)
    (run_dir / "scores.json").write_text(json.dumps(scores, indent=2))
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
    parser.add_argument("--data-dir", help="competition root (overrides the config)")
    parser.add_argument("--pretrained", help="Task008_HepaticVessel.zip (or its folder) for notebook 02")
    parser.add_argument("-p", dest="overrides", action="append", default=[],
                        help="a notebook parameter: key=value (every notebook that has it) or 02_train.key=value")
    parser.add_argument("--name", help="run name (default: the config's); outputs go to outputs/<name>")
    parser.add_argument("--force", action="store_true", help="replace an earlier run of the same name")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel (default: this environment's python3)")
    args = parser.parse_args(argv)
    try:
        scores = run(args.config, args.data_dir, args.pretrained, parse_overrides(args.overrides), args.name,
                     args.force, args.kernel)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"\nDone. Outputs: {scores['run_dir']}")
    print(json.dumps({k: v for k, v in scores.items() if k != "run_dir"}, indent=2))


if __name__ == "__main__":
    main()
