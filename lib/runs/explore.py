"""Serve the exploration as a page: notebook 01 as a standalone Voilà app, or JupyterLab on the notebooks.

`python -m lib.runs.explore [--data-dir DIR] [--port 8866] [--host 127.0.0.1] [--lab]` (`make explore`,
`make lab`). The data root is `--data-dir`, else `SENNET_DATA_DIR`, else the synthetic data (`make data`'s
`small` preset, generated on first use). Everything is checked before a server starts: a data root that does
not exist or holds no group, or a busy port, is a one-line error (exit 2). Voilà runs the notebook with the
project's kernel (`sennet-vessels`, from `make setup`) and the slice browser live (SENNET_INTERACTIVE=1).
"""
from __future__ import annotations

import argparse
import errno
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from lib import data, paths

NOTEBOOK = paths.PROJECT_ROOT / "notebooks" / "01_explore.ipynb"
KERNEL = "sennet-vessels"


class ExploreError(ValueError):
    """Bad input for the explorer: a missing or empty data root, a busy port, a missing tool."""


def check_data(data_dir: str | Path | None) -> Path:
    """The competition root to explore, checked to hold at least one group (the synthetic default is generated)."""
    root = paths.resolve_path(data_dir) if data_dir else paths.default_data_dir()
    if data_dir is None and not root.exists() and root.resolve() == paths.synthetic_data_dir().resolve():
        from lib.dev import synthetic

        print(f"{root} does not exist: generating the SYNTHETIC 'small' preset there (not real HiP-CT data)")
        synthetic.generate(root, preset="small", seed=0)
    try:
        data.discover(root, validate=False)
    except data.DataError as e:
        raise ExploreError(str(e)) from None
    return root


def check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on (bound for a moment, then released for the server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            busy = e.errno == errno.EADDRINUSE
            raise ExploreError(f"{host}:{port}: {'port already in use' if busy else e.strerror}"
                               f"{' (choose another with PORT=... or --port)' if busy else ''}") from None


def app_notebook(folder: Path, kernel: str = KERNEL) -> Path:
    """A copy of notebook 01 in `folder` that names `kernel` (Voilà starts the kernel a notebook names; the
    stored notebook names the generic `python3`)."""
    nb = json.loads(NOTEBOOK.read_text())
    nb["metadata"]["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    path = folder / NOTEBOOK.name
    path.write_text(json.dumps(nb, indent=1))
    return path


def server_env(root: Path) -> dict[str, str]:
    """The server's (and so the kernel's) environment: the data root, live widgets, this checkout's `lib`."""
    env = dict(os.environ, SENNET_DATA_DIR=str(root), SENNET_INTERACTIVE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(paths.PROJECT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def command(app: Path | None, host: str, port: int) -> list[str]:
    """The Voilà command for `app` (a notebook), or JupyterLab on notebooks/ when `app` is None."""
    if app is None:
        root_user = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # containers, CI
        return [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={host}", f"--port={port}",
                "--port-retries=0", f"--ServerApp.root_dir={paths.PROJECT_ROOT / 'notebooks'}", *root_user]
    return [sys.executable, "-m", "voila", str(app), "--no-browser", f"--Voila.ip={host}", f"--port={port}",
            "--show_tracebacks=True", "--Voila.log_level=WARN"]


def serve(data_dir: str | Path | None, host: str, port: int, lab: bool = False, kernel: str = KERNEL) -> int:
    """Check the inputs, print the URL and run the server until it stops (Ctrl-C); returns its exit code."""
    root = check_data(data_dir)
    check_port(host, port)
    tool = "jupyterlab" if lab else "voila"
    if importlib.util.find_spec(tool) is None:
        raise ExploreError(f"{tool}: not installed in {sys.prefix} (run `make setup`)")
    with tempfile.TemporaryDirectory(prefix="sennet-explore-") as folder:
        app = None if lab else app_notebook(Path(folder), kernel)
        what = "JupyterLab on notebooks/ (the URL with its token follows)" if lab else "notebook 01 (Voilà)"
        print(f"Exploring {root}\n{what}: http://{host}:{port}/\nCtrl-C stops the server.", flush=True)
        try:
            return subprocess.call(command(app, host, port), env=server_env(root))
        except KeyboardInterrupt:
            return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="competition root (default: SENNET_DATA_DIR, else the synthetic data)")
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    parser.add_argument("--lab", action="store_true", help="JupyterLab on the notebooks instead of the Voilà app")
    parser.add_argument("--kernel", default=KERNEL, help="Jupyter kernel for the app (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        code = serve(args.data_dir or None, args.host, args.port, args.lab, args.kernel)
    except ExploreError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
