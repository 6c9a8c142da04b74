"""Where things live: the competition root, the project's outputs, all overridable from the environment."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lib.inputs import find_input, kaggle_input

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def outputs_dir() -> Path:
    """Everything a run writes; `SENNET_OUTPUTS` overrides the project's `outputs/`."""
    return Path(os.environ.get("SENNET_OUTPUTS", PROJECT_ROOT / "outputs"))


def synthetic_data_dir() -> Path:
    """Where `make data` writes the synthetic competition root."""
    return outputs_dir() / "data" / "synthetic"


def default_data_dir() -> Path:
    """The competition root: `SENNET_DATA_DIR`, else the competition found by content under the Kaggle input
    (`lib.inputs`, any mount layout), else the synthetic data."""
    if "SENNET_DATA_DIR" in os.environ:
        return Path(os.environ["SENNET_DATA_DIR"])
    found = find_input("competition") if kaggle_input().is_dir() else None
    return found or synthetic_data_dir()


def resolve_path(path: str | Path) -> Path:
    """`path` as given when absolute, else relative to the project root (the notebook runs from notebooks/)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


@contextmanager
def restored_environment(*names: str) -> Iterator[None]:
    """The environment variables `names` as they were once the block ends, whatever it set or removed (nnU-Net
    reads its folders and knobs from the environment)."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
