"""`make explore` / `make lab` (tools.explore): bad input is a one-line error and nothing is started."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tools import explore

PROJECT = Path(__file__).resolve().parent.parent


def run_explorer(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(PROJECT))
    return subprocess.run([sys.executable, "-m", "tools.explore", *args], capture_output=True, text=True,
                          cwd=PROJECT, env=env, timeout=120)


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert "http://" not in result.stdout  # no URL printed: no server started


def test_missing_data_dir_is_refused(tmp_path: Path) -> None:
    assert_refused(run_explorer("--data-dir", str(tmp_path / "nowhere"), "--port", "1"), str(tmp_path / "nowhere"),
                   "not found")


def test_data_dir_without_groups_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    assert_refused(run_explorer("--data-dir", str(tmp_path), "--lab"), str(tmp_path), "no groups")


def test_busy_port_is_refused(mini_root: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_refused(run_explorer("--data-dir", str(mini_root), "--port", str(port)), f"127.0.0.1:{port}",
                       "already in use")


def test_app_notebook_names_the_project_kernel(tmp_path: Path) -> None:
    app = explore.app_notebook(tmp_path)
    nb, stored = json.loads(app.read_text()), json.loads(explore.NOTEBOOK.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "sennet-vessels"
    assert nb["cells"] == stored["cells"]


def test_server_environment_and_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = explore.server_env(tmp_path)
    assert env["SENNET_DATA_DIR"] == str(tmp_path) and env["SENNET_INTERACTIVE"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PROJECT), "/elsewhere"]  # this checkout's lib first
    voila = explore.command(tmp_path / "01_explore.ipynb", "127.0.0.1", 8999)
    assert voila[1:3] == ["-m", "voila"] and "--Voila.ip=127.0.0.1" in voila and "--port=8999" in voila
    lab = explore.command(None, "127.0.0.1", 8999)
    assert lab[1:3] == ["-m", "jupyterlab"] and "--ServerApp.ip=127.0.0.1" in lab and "--port-retries=0" in lab


def test_missing_synthetic_default_is_generated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                synthetic_tiny: Path) -> None:
    from tools import synthetic

    monkeypatch.setenv("SENNET_OUTPUTS", str(tmp_path))
    monkeypatch.delenv("SENNET_DATA_DIR", raising=False)
    monkeypatch.setenv("KAGGLE_INPUT_DIR", str(tmp_path / "no-kaggle"))
    made: list[tuple[Path, str]] = []

    def generate(out: Path, preset: str, seed: int) -> Path:  # the small preset takes a minute: copy tiny instead
        made.append((Path(out), preset))
        shutil.copytree(synthetic_tiny, out)
        return Path(out)

    monkeypatch.setattr(synthetic, "generate", generate)
    assert explore.check_data(None) == tmp_path / "data" / "synthetic"
    assert made == [(tmp_path / "data" / "synthetic", "small")]
    assert explore.check_data(None) == tmp_path / "data" / "synthetic" and len(made) == 1  # made once
    with pytest.raises(explore.ExploreError, match="not found"):  # an explicit root is never generated
        explore.check_data(tmp_path / "elsewhere")


def write_kernel_spec(folder: Path, name: str, python: str) -> None:
    spec = folder / "kernels" / name
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                  "display_name": name, "language": "python"}))


def test_a_stale_user_kernel_spec_is_shadowed_or_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another checkout's `make setup` left user-level specs pointing at its venv, since removed: the project's
    kernel still resolves to this venv's spec; a kernel only the stale spec provides is refused naming its python."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))  # the user-level kernel folder
    write_kernel_spec(tmp_path, explore.KERNEL, "/gone/checkout/.venv/bin/python")
    write_kernel_spec(tmp_path, "sennet-stale", "/gone/checkout/.venv/bin/python")
    explore.check_kernel(explore.KERNEL)  # `make setup` installed it in this venv, found first
    with pytest.raises(explore.ExploreError, match="its python /gone/checkout/.venv/bin/python does not exist"):
        explore.check_kernel("sennet-stale")
    with pytest.raises(explore.ExploreError, match="kernel sennet-nowhere: not installed"):
        explore.check_kernel("sennet-nowhere")
    assert os.environ.get("JUPYTER_PATH") is None or str(Path(sys.prefix)) not in os.environ["JUPYTER_PATH"]
    assert explore.server_env(tmp_path)["JUPYTER_PATH"].split(os.pathsep)[0] == str(Path(sys.prefix) / "share" / "jupyter")
