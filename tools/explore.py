"""Serve the exploration as a page: notebook 01 as a standalone Voilà app, or JupyterLab on the notebooks.

`python -m tools.explore [--data-dir DIR] [--port 8866] [--host 127.0.0.1] [--lab]` (`make explore`,
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
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lib import data, paths

NOTEBOOK = paths.PROJECT_ROOT / "notebooks" / "01_explore.ipynb"
KERNEL = "sennet-vessels"


class ExploreError(ValueError):
    """Bad input for the explorer: a missing or empty data root, a busy port, a missing tool."""


def check_data(data_dir: str | Path | None) -> Path:
    """The competition root to explore, checked to hold at least one group (the synthetic default is generated)."""
    root = paths.resolve_path(data_dir) if data_dir else paths.default_data_dir()
    if data_dir is None and not root.exists() and root.resolve() == paths.synthetic_data_dir().resolve():
        from tools import synthetic

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


VENV_JUPYTER = Path(sys.prefix) / "share" / "jupyter"  # where `make setup` installs the kernel spec


def venv_jupyter_path() -> str:
    """JUPYTER_PATH with this environment's own `share/jupyter` first: a user-level spec of the same name left by
    another checkout (whose venv may be gone) cannot shadow it."""
    own = str(VENV_JUPYTER)
    rest = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != own]
    return os.pathsep.join([own, *rest])


def check_kernel(kernel: str) -> None:
    """Refuse a kernel that is not installed, or whose python no longer exists, before any server starts."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_core.paths import jupyter_path

    try:  # the search the server will make (venv_jupyter_path)
        spec = KernelSpecManager(kernel_dirs=[str(VENV_JUPYTER / "kernels"), *jupyter_path("kernels")]) \
            .get_kernel_spec(kernel)
    except NoSuchKernel:
        raise ExploreError(f"kernel {kernel}: not installed (run `make setup`)") from None
    python = spec.argv[0] if spec.argv else ""
    if not (Path(python).is_file() or shutil.which(python)):
        raise ExploreError(f"kernel {kernel} ({spec.resource_dir}): its python {python} does not exist (a spec left "
                           "by a removed checkout?); run `make setup`")


def server_env(root: Path) -> dict[str, str]:
    """The server's (and so the kernel's) environment: the data root, live widgets, this checkout's `lib` and
    kernel spec."""
    env = dict(os.environ, SENNET_DATA_DIR=str(root), SENNET_INTERACTIVE="1", JUPYTER_PATH=venv_jupyter_path())
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
    if not lab:
        check_kernel(kernel)
    with tempfile.TemporaryDirectory(prefix="sennet-explore-") as folder:
        app = None if lab else app_notebook(Path(folder), kernel)
        what = "JupyterLab on notebooks/ (the URL with its token follows)" if lab else "notebook 01 (Voilà)"
        print(f"Exploring {root}\n{what}: http://{host}:{port}/\nCtrl-C stops the server.", flush=True)
        server = subprocess.Popen(command(app, host, port), env=server_env(root))
        # `kill` of this launcher (tests, process managers) stops the server and its kernels too, not orphaning them
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        try:
            return server.wait()
        except KeyboardInterrupt:  # Ctrl-C: no "shut down?" prompt, a clean stop (kernels shut down)
            server.terminate()
            server.wait()
            return 0


CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1600", "--force-device-scale-factor=1")


def headless_chromium(profile: Path) -> Any:
    """A Selenium driver on the distribution's headless Chromium with a fresh profile in `profile`, to open the
    page as a person would (the browser test, benchmarks/browser.py --browser). ExploreError when there is none."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise ExploreError("no Chromium here (apt-get install chromium chromium-driver; .ci/run does it on CI)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)  # a given driver: nothing downloaded
    chrome.set_page_load_timeout(300)
    return chrome


@contextmanager
def running(data_dir: Path, port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`python -m tools.explore` in a subprocess on 127.0.0.1:`port` (output to `log`); yields its URL once it
    listens, stops it on exit (tests, benchmarks)."""
    with log.open("w") as out:
        server = subprocess.Popen([sys.executable, "-m", "tools.explore", "--data-dir", str(data_dir),
                                   "--port", str(port)], cwd=paths.PROJECT_ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while not _listening(port):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise ExploreError(f"{log}: the explorer did not start:\n{log.read_text()}")
                time.sleep(0.2)
            yield f"http://127.0.0.1:{port}/"
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExplorerPage:
    """The served notebook 01 in a Selenium driver: the slice browser's controls (found by their `sennet-*` CSS
    classes) and its image, with a wait for the image the kernel sends back after a change."""

    def __init__(self, driver: Any, url: str, timeout: float = 120) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        driver.get(url)  # returns once the notebook has run and the page has loaded
        self.wait = WebDriverWait(driver, timeout, poll_frequency=0.02)
        self.image = self.wait.until(lambda d: d.find_element("css selector", ".sennet-image"))
        self.wait.until(lambda d: self.image.get_attribute("src"))

    def find(self, selector: str) -> Any:
        return self.driver.find_element("css selector", selector)

    def change(self, act: Callable[[], None]) -> float:
        """Do `act` (a click, a key press), wait until the page shows a new image; returns the seconds it took."""
        before = self.image.get_attribute("src")
        start = time.perf_counter()
        act()
        self.wait.until(lambda d: self.image.get_attribute("src") != before)  # a new blob URL: a new PNG
        return time.perf_counter() - start

    def type_into_readout(self, control: str, value: str) -> None:
        """Type `value` into a slider's number (the way to set it exactly), then Enter."""
        from selenium.webdriver.common.keys import Keys

        readout = self.find(f".sennet-{control} .widget-readout")
        readout.click()
        readout.send_keys(Keys.CONTROL, "a")
        readout.send_keys(value, Keys.ENTER)

    def click_axis(self, axis: str) -> None:
        self.driver.find_element("xpath", "//*[contains(@class, 'sennet-axis')]"
                                          f"//button[normalize-space()='{axis}']").click()

    def toggle(self, control: str) -> None:
        self.find(f".sennet-{control} input").click()

    def select_group(self, name: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.find(".sennet-group select")).select_by_visible_text(name)

    def info(self) -> str:
        return self.find(".sennet-info").text

    def errors(self) -> list[str]:
        """Error text anywhere on the page: the browser panel's error line and any error or stderr output."""
        shown = self.driver.find_elements("css selector", '.sennet-error, '
                                          '[data-mime-type="application/vnd.jupyter.stderr"], '
                                          '[data-mime-type="application/vnd.jupyter.error"]')
        return [e.text for e in shown if e.text.strip()]


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
