"""Helpers the notebooks share: paths relative to the project, the data root, figures shown and saved once."""
from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure

from lib import paths
from lib.paths import resolve_path


def ensure_data(data_dir: str | Path, preset: str = "tiny") -> Path:
    """The competition root `data_dir`; when it is missing and is the synthetic default, generate it there.

    Any other missing folder is an error: real data is never replaced by synthetic data silently.
    """
    root = resolve_path(data_dir)
    if root.is_dir():
        return root
    if root.resolve() == paths.synthetic_data_dir().resolve():
        from lib.dev import synthetic  # only needed here

        print(f"{root} does not exist: generating the SYNTHETIC '{preset}' preset there (not real HiP-CT data)")
        return synthetic.generate(root, preset=preset, seed=0, progress=False)
    raise FileNotFoundError(f"{root}: competition root not found (set data_dir, or SENNET_DATA_DIR)")


def live_frontend() -> bool:
    """True inside a Jupyter kernel driven by an interactive frontend (widgets can be used).

    Papermill, nbconvert and nbclient execute with `allow_stdin=False`; Jupyter Lab/Notebook and VS Code allow
    stdin. `SENNET_INTERACTIVE=0/1` overrides the guess.
    """
    forced = os.environ.get("SENNET_INTERACTIVE")
    if forced is not None:
        return forced.strip().lower() in {"1", "true", "yes"}
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    kernel = getattr(get_ipython(), "kernel", None)
    return bool(kernel is not None and getattr(kernel, "_allow_stdin", False))


def publish(fig: Figure, output_dir: str | Path, name: str, show: bool = True, dpi: int = 110) -> Path:
    """Save `fig` as `output_dir/name.png` and, under IPython, display that PNG (the figure is rendered once)."""
    path = Path(output_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    if show:
        try:
            from IPython import get_ipython
            from IPython.display import Image, display
        except ImportError:
            return path
        if get_ipython() is not None:
            display(Image(filename=str(path)))
    return path
