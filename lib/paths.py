"""Where things live: the competition root, the project's outputs, all overridable from the environment."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
COMPETITION = "blood-vessel-segmentation"


def kaggle_input() -> Path:
    """Kaggle's input folder; `KAGGLE_INPUT_DIR` relocates it (tests lay out a fake `/kaggle/input`)."""
    return Path(os.environ.get("KAGGLE_INPUT_DIR", "/kaggle/input"))


def outputs_dir() -> Path:
    """Everything a run writes; `SENNET_OUTPUTS` overrides the project's `outputs/`."""
    return Path(os.environ.get("SENNET_OUTPUTS", PROJECT_ROOT / "outputs"))


def synthetic_data_dir() -> Path:
    """Where `make data` writes the synthetic competition root."""
    return outputs_dir() / "data" / "synthetic"


def default_data_dir() -> Path:
    """The competition root: `SENNET_DATA_DIR`, else the Kaggle input if present, else the synthetic data."""
    if "SENNET_DATA_DIR" in os.environ:
        return Path(os.environ["SENNET_DATA_DIR"])
    kaggle = kaggle_input() / COMPETITION
    return kaggle if kaggle.is_dir() else synthetic_data_dir()


def resolve_path(path: str | Path) -> Path:
    """`path` as given when absolute, else relative to the project root (the notebook runs from notebooks/)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path
