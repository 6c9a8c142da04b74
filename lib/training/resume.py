"""Training across Kaggle sessions (about 12 hours each): an unfinished run attached as input is copied into this
session's output folder, less nnU-Net's scratch data, and training resumes from its latest checkpoint (docs/kaggle.md).
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from lib import inputs
from lib.training import fine_tune

SCRATCH = ("raw", "preprocessed", "validation")  # under <run>/nnunet: large, rebuilt in the new session


def checkpoints(run: Path) -> list[Path]:
    """Every training checkpoint under a run folder (all rounds)."""
    return sorted(Path(run).rglob("fold_*/checkpoint_*.pth"))


def _ignore_scratch(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n in SCRATCH and Path(folder).name == "nnunet"]


def _copy_new(src: str, dst: str) -> None:
    """shutil.copy2, except that a file already at `dst` is kept (nothing written is overwritten)."""
    if not Path(dst).exists():
        shutil.copy2(src, dst)


def resume_attached_run(output_dir: Path | str, source: str | Path | None = "auto",
                        log: Callable[[str], None] = print) -> Path | None:
    """Copy an interrupted run (`source`: "auto", found under the Kaggle input; a run folder; None: never) into
    `output_dir` to resume it; returns the run copied from. Nothing is copied over checkpoints already in `output_dir`
    (this session's own run goes on) nor from a finished run."""
    if source is None:
        return None
    output_dir = Path(output_dir)
    if source == "auto":
        run = inputs.find_input("run", log=None)  # None without a Kaggle input folder too
        if run is None:
            return None
    else:
        run = Path(source)
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: run folder to resume from not found")
    held = checkpoints(output_dir)
    if held:
        log(f"not resuming from {run}: {output_dir} already holds a run ({held[-1].name}); it goes on from there")
        return None
    model = fine_tune.default_model_dir(run)  # the last round's
    if (model / "fold_0" / "checkpoint_final.pth").is_file():
        log(f"{run} holds a finished run (its model: {model}): nothing to resume; attach it to notebook 03 as the "
            "model, or remove it to train anew")
        return None
    found = checkpoints(run)
    if not found:
        log(f"{run} holds no checkpoint yet: nothing to resume, training starts afresh")
        return None
    shutil.copytree(run, output_dir, ignore=_ignore_scratch, copy_function=_copy_new, dirs_exist_ok=True)
    log(f"resuming from {run}: copied into {output_dir} ({len(found)} checkpoints, the latest "
        f"{max(found, key=lambda p: p.stat().st_mtime).relative_to(run)})")
    return run
