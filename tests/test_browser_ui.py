"""`make explore` as a person uses it: notebook 01 served by Voilà, the slice browser driven in headless Chromium.

The server is started the way `make explore` starts it (`python -m tools.explore`) on 127.0.0.1 and a free
port, on the synthetic `tiny` data. After each control change the test waits for the browser's image to be
replaced, then checks the pixels of a screenshot: the overlay colours present or gone, the image geometry of
xy vs xz/yz planes, the slice content. Screenshots of each state are written to the test's tmp_path.
Skipped only where no Chromium can be found (`.ci/run` installs Debian's chromium and chromium-driver).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools import explore

PROJECT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture
def explore_server(synthetic_tiny: Path, tmp_path: Path):
    """`python -m tools.explore` on a free localhost port; yields its URL, stops it afterwards."""
    env = dict(os.environ, SENNET_OUTPUTS=str(tmp_path / "outputs"), PYTHONPATH=str(PROJECT))
    with explore.running(synthetic_tiny, explore.free_port(), tmp_path / "server.log", env) as url:
        yield url


@pytest.fixture
def driver(tmp_path: Path):
    try:
        chrome = explore.headless_chromium(tmp_path / "chromium-profile")
    except explore.ExploreError as e:
        pytest.skip(str(e))
    yield chrome
    chrome.quit()


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


class Page(explore.ExplorerPage):
    """The page, with screenshots of the browser's image as RGB arrays (saved to `out`) and an error check."""

    def __init__(self, driver, url: str, out: Path) -> None:
        super().__init__(driver, url)
        self.out = out

    def shot(self, name: str | None = None) -> np.ndarray:
        png = self.image.screenshot_as_png
        if name:
            (self.out / f"{name}.png").write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def step(self, act, name: str | None = None) -> np.ndarray:
        """Do `act`, wait for the new image, check that no error appeared; the screenshot."""
        self.change(act)
        self.driver.execute_script("return new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        assert not self.errors()
        return self.shot(name)

    def slider_name(self) -> str:
        return self.find(".sennet-index .widget-label").text.strip()


def test_explorer_in_chromium(driver, explore_server: str, tmp_path: Path) -> None:  # no browser: skip first
    page = Page(driver, explore_server, tmp_path)
    assert not page.errors()
    assert "kidney_1_dense" in page.info()
    page.find(".sennet-browser").screenshot(str(tmp_path / "00_panel.png"))  # controls and image, for docs/explorer.md
    start = page.shot("01_xy_start")
    colours = colour_counts(start)
    assert colours["red"] + colours["yellow"] > 200 and colours["cyan"] > 200, colours  # labels and prediction

    z0 = int(page.info().split("(z, y, x) = (")[1].split(",")[0])
    moved = page.step(lambda: page.type_into_readout("index", str((z0 + 7) % 20)), "02_xy_slice")
    assert f"= ({(z0 + 7) % 20}," in page.info()
    assert abs(image_rows(moved) - image_rows(start)) <= 2  # same plane geometry, other pixels
    assert np.abs(moved.astype(int) - start).mean() > 2

    no_labels = page.step(lambda: page.toggle("labels"), "03_labels_off")
    c = colour_counts(no_labels)
    assert c["red"] < 20 and c["yellow"] < 20 and c["cyan"] > 200, c  # labels gone, agreement now cyan

    page.step(lambda: page.toggle("labels"))
    only_labels = page.step(lambda: page.toggle("prediction"), "04_prediction_off")
    c = colour_counts(only_labels)
    assert c["cyan"] < 20 and c["yellow"] < 20 and c["red"] > 200, c

    opaque = page.step(lambda: page.type_into_readout("alpha", "1"), "05_opacity_1")
    assert saturation(opaque) > saturation(only_labels) + 20

    xy_rows = image_rows(opaque)
    xz = page.step(lambda: page.click_axis("xz"), "06_xz")
    assert page.slider_name() == "y"
    assert image_rows(xz) < 0.6 * xy_rows  # 20 slices by 56 pixels: a wide, short plane
    yz = page.step(lambda: page.click_axis("yz"), "07_yz")
    assert page.slider_name() == "x"
    assert image_rows(yz) < 0.6 * xy_rows and np.abs(yz.astype(int) - xz).mean() > 2
    yz_moved = page.step(lambda: page.type_into_readout("index", "10"), "08_yz_slice")
    assert np.abs(yz_moved.astype(int) - yz).mean() > 1

    test_kidney = page.step(lambda: page.select_group("kidney_5"), "09_kidney_5")
    assert "kidney_5" in page.info()
    assert colour_counts(test_kidney)["red"] < 20  # a test kidney has no labels
    assert not page.errors()
