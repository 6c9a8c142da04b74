"""`make explore` as a person uses it: notebook 01 served by Voilà, the slice browser driven in headless Chromium.

The server is started the way `make explore` starts it (`python -m lib.runs.explore`) on 127.0.0.1 and a free
port, on the synthetic `tiny` data. After each control change the test waits for the browser's image to be
replaced, then checks the pixels of a screenshot: the overlay colours present or gone, the image geometry of
xy vs xz/yz planes, the slice content. Screenshots of each state are written to the test's tmp_path.
Skipped only where no Chromium can be found (`.ci/run` installs Debian's chromium and chromium-driver).
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> tuple[str, str]:
    """Debian's chromium and its driver, or a skip saying how to install them."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no Chromium here (apt-get install chromium chromium-driver; .ci/run does it on CI)")
    return browser, driver


@pytest.fixture
def explore_server(synthetic_tiny: Path, tmp_path: Path):
    """`python -m lib.runs.explore` on a free localhost port; yields its URL, stops it afterwards."""
    port = free_port()
    env = dict(os.environ, SENNET_OUTPUTS=str(tmp_path / "outputs"), PYTHONPATH=str(PROJECT))
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "lib.runs.explore", "--data-dir", str(synthetic_tiny),
                               "--port", str(port)], cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "Voilà did not listen within 60 s"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def driver(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1600", "--force-device-scale-factor=1",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    d = webdriver.Chrome(service=Service(chromedriver), options=options)
    d.set_page_load_timeout(300)
    yield d
    d.quit()


# ----------------------------------------------------------------------------------------------------------
# Reading pixels
# ----------------------------------------------------------------------------------------------------------


def colour_counts(rgb: np.ndarray) -> dict[str, int]:
    """Pixels clearly of each overlay colour (red labels, cyan prediction, yellow agreement), any opacity > 0.2."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return {
        "red": int(((r - np.maximum(g, b)) > 40).sum()),
        "cyan": int(((np.minimum(g, b) - r) > 40).sum()),
        "yellow": int(((np.minimum(r, g) - b) > 40).sum()),
    }


def image_rows(rgb: np.ndarray) -> int:
    """Rows of the screenshot mostly covered by the plotted plane (neither white background nor text)."""
    grey = rgb[..., :3].astype(int)
    darkish = (grey.max(-1) < 235).mean(axis=1)
    return int((darkish > 0.4).sum())


def saturation(rgb: np.ndarray) -> float:
    """Mean (max - min channel) over coloured pixels: higher overlay opacity, more saturated overlay."""
    c = rgb[..., :3].astype(int)
    spread = c.max(-1) - c.min(-1)
    return float(spread[spread > 40].mean())


class Page:
    """The Voilà page of notebook 01: the browser panel's controls and a screenshot of its image."""

    def __init__(self, driver, out: Path) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.d, self.out = driver, out
        self.wait = WebDriverWait(driver, 60, poll_frequency=0.1)
        self.image = self.wait.until(lambda d: d.find_element("css selector", ".sennet-image"))
        self.wait.until(lambda d: self.image.get_attribute("src"))

    def find(self, selector: str):
        return self.d.find_element("css selector", selector)

    def shot(self, name: str | None = None) -> np.ndarray:
        png = self.image.screenshot_as_png
        if name:
            (self.out / f"{name}.png").write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def change(self, act, name: str | None = None) -> np.ndarray:
        """Do `act`, wait until the browser shows a new image (its blob URL changes), return the screenshot."""
        before = self.image.get_attribute("src")
        act()
        self.wait.until(lambda d: self.image.get_attribute("src") != before)
        self.d.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        self.check_no_error()
        return self.shot(name)

    def type_into_readout(self, widget: str, value: str) -> None:
        from selenium.webdriver.common.keys import Keys

        readout = self.find(f".sennet-{widget} .widget-readout")
        readout.click()
        readout.send_keys(Keys.CONTROL, "a")
        readout.send_keys(value, Keys.ENTER)

    def check_no_error(self) -> None:
        assert self.find(".sennet-error").text.strip() == ""
        errors = self.d.find_elements("css selector", '[data-mime-type="application/vnd.jupyter.stderr"], '
                                      '[data-mime-type="application/vnd.jupyter.error"]')
        assert not [e.text for e in errors if e.text.strip()]

    def info(self) -> str:
        return self.find(".sennet-info").text

    def click_axis(self, axis: str) -> None:
        self.d.find_element("xpath", f"//*[contains(@class, 'sennet-axis')]//button[normalize-space()='{axis}']").click()

    def slider_name(self) -> str:
        return self.find(".sennet-index .widget-label").text.strip()


def test_explorer_in_chromium(driver, explore_server: str, tmp_path: Path) -> None:  # no browser: skip first
    from selenium.webdriver.support.ui import Select

    driver.get(explore_server)
    page = Page(driver, tmp_path)
    page.check_no_error()
    assert "kidney_1_dense" in page.info()
    page.find(".sennet-browser").screenshot(str(tmp_path / "00_panel.png"))  # controls and image, for the README
    start = page.shot("01_xy_start")
    colours = colour_counts(start)
    assert colours["red"] + colours["yellow"] > 200 and colours["cyan"] > 200, colours  # labels and prediction

    z0 = int(page.info().split("(z, y, x) = (")[1].split(",")[0])
    moved = page.change(lambda: page.type_into_readout("index", str((z0 + 7) % 20)), "02_xy_slice")
    assert f"= ({(z0 + 7) % 20}," in page.info()
    assert abs(image_rows(moved) - image_rows(start)) <= 2  # same plane geometry, other pixels
    assert np.abs(moved.astype(int) - start).mean() > 2

    no_labels = page.change(lambda: page.find(".sennet-labels input").click(), "03_labels_off")
    c = colour_counts(no_labels)
    assert c["red"] < 20 and c["yellow"] < 20 and c["cyan"] > 200, c  # labels gone, agreement now cyan

    page.change(lambda: page.find(".sennet-labels input").click())
    only_labels = page.change(lambda: page.find(".sennet-prediction input").click(), "04_prediction_off")
    c = colour_counts(only_labels)
    assert c["cyan"] < 20 and c["yellow"] < 20 and c["red"] > 200, c

    opaque = page.change(lambda: page.type_into_readout("alpha", "1"), "05_opacity_1")
    assert saturation(opaque) > saturation(only_labels) + 20

    xy_rows = image_rows(opaque)
    xz = page.change(lambda: page.click_axis("xz"), "06_xz")
    assert page.slider_name() == "y"
    assert image_rows(xz) < 0.6 * xy_rows  # 20 slices by 56 pixels: a wide, short plane
    yz = page.change(lambda: page.click_axis("yz"), "07_yz")
    assert page.slider_name() == "x"
    assert image_rows(yz) < 0.6 * xy_rows and np.abs(yz.astype(int) - xz).mean() > 2
    yz_moved = page.change(lambda: page.type_into_readout("index", "10"), "08_yz_slice")
    assert np.abs(yz_moved.astype(int) - yz).mean() > 1

    test_kidney = page.change(lambda: Select(page.find(".sennet-group select")).select_by_visible_text("kidney_5"),
                              "09_kidney_5")
    assert "kidney_5" in page.info()
    assert colour_counts(test_kidney)["red"] < 20  # a test kidney has no labels
    page.check_no_error()
