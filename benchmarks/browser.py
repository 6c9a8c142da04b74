"""Responsiveness of the slice browser on full-size slices: milliseconds and slices read per step.

A cropped `kidney_1_dense` of the synthetic `full` preset (1303 x 912 slices, the real size; `--slices` of them,
numbered as in the full group) is written once to `--data` with its true vessel mask as a prediction folder.
Then, for the view model (`lib.explore.browser.SliceBrowser`: reads + figure update + PNG render) and for the
widget layer (`lib.explore.widgets.BrowserWidgets`: a control's value set in-process, through the model, to
the PNG handed to the Image widget; the websocket and the browser's decoding are not included), one step of
each kind is timed: next xy slice, first xz view (reads the plane cache), next xz slice, label toggle.
With `--browser`, the same steps on the page `make explore` serves, in headless Chromium: from the key press or
click to the new image in the page (websocket, kernel, PNG, image element), notebook 01 run on the crop first.
Each step is repeated `--repeats` times on fresh positions (the first xz view on a fresh browser) and the median
is reported, against the goal of 300 ms per xy step.

Run: `.venv/bin/python benchmarks/browser.py [--browser]` (about 1.5 minutes on 2 cores, most of it writing the
data once; `--browser` adds about a minute).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import tifffile

from lib import data
from lib.explore.browser import SliceBrowser
from lib.explore.widgets import BrowserWidgets
from tools import explore, synthetic

GOAL_MS = 300.0
FIRST = 1120  # the cropped range sits in the middle of the 2279-slice kidney


def write_crop(root: Path, n: int, seed: int) -> Path:
    """train/kidney_1_dense/{images,labels} and prediction/kidney_1_dense/ (the true mask), `n` full-size slices."""
    images, labels = root / "train/kidney_1_dense/images", root / "train/kidney_1_dense/labels"
    prediction = root / "prediction/kidney_1_dense"
    if images.is_dir() and len(list(images.glob("*.tif"))) == n:
        return root
    for folder in (images, labels, prediction):
        folder.mkdir(parents=True, exist_ok=True)
    print(f"writing {n} slices of the synthetic full kidney_1_dense (1303 x 912) to {root} ...", flush=True)
    for s in synthetic.render_slices("full", seed, "kidney_1_dense", range(FIRST, FIRST + n)):
        tifffile.imwrite(images / f"{s.index:04d}.tif", s.image)
        tifffile.imwrite(labels / f"{s.index:04d}.tif", s.label)
        tifffile.imwrite(prediction / f"{s.index:04d}.tif", s.truth.astype(np.uint8) * 255)
    return root


def step(model: SliceBrowser, panel: BrowserWidgets | None, setter: str, control: str, value) -> tuple[float, int]:
    """(milliseconds, slices read) of one change: the model's setter and its PNG, or a control's value set
    (its observer calls the setter, renders the PNG and hands it to the Image widget)."""
    before, t = model.reads, time.perf_counter()
    if panel is None:
        getattr(model, setter)(value)
        model.png()
    else:
        getattr(panel, control).value = value
    return 1000 * (time.perf_counter() - t), model.reads - before


def measure(root: Path, repeats: int, widgets: bool) -> dict[str, list[tuple[float, int]]]:
    """Per step kind: (ms, slices read) of each repeat, driving the model directly or through the widgets."""
    groups = data.discover(root)
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in ("xy", "first xz", "xz", "toggle")}
    for r in range(repeats + 1):  # the first round warms up (fonts, imports, the OS file cache) and is dropped
        model = SliceBrowser(groups, root / "prediction", point=(5 + r, 600, 450))
        panel = BrowserWidgets(model) if widgets else None
        model.png()  # what the page shows first
        steps = {"xy": step(model, panel, "set_index", "index_w", model.index + 1),
                 "first xz": step(model, panel, "set_axis", "axis_w", "xz"),
                 "xz": step(model, panel, "set_index", "index_w", model.index + 1 + r),
                 "toggle": step(model, panel, "set_labels", "labels_w", False)}
        for kind, result in steps.items():
            if r:
                results[kind].append(result)
    return results


def reads_so_far(page: explore.ExplorerPage) -> int:
    return int(re.search(r"slices read so far: (\d+)", page.info()).group(1))


def measure_page(root: Path, repeats: int) -> dict[str, list[tuple[float, int]]]:
    """The same steps in headless Chromium on the page `make explore` serves (notebook 01 on `root`): from the
    key press or click to the new image in the page, through the websocket and the kernel."""
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in ("xy", "first xz", "xz", "toggle")}
    with tempfile.TemporaryDirectory(prefix="browser-bench-") as tmp:
        env = dict(os.environ, SENNET_OUTPUTS=tmp)
        with explore.running(root, explore.free_port(), Path(tmp) / "server.log", env) as url:
            chrome = explore.headless_chromium(Path(tmp) / "chromium-profile")
            try:
                page = explore.ExplorerPage(chrome, url, timeout=600)
                z = int(re.search(r"\(z, y, x\) = \((\d+)", page.info()).group(1))

                def timed(kind: str, act) -> None:
                    before = reads_so_far(page)
                    results[kind].append((1000 * page.change(act), reads_so_far(page) - before))

                for r in range(repeats + 1):  # round 0 warms up and is dropped
                    timed("xy", partial(page.type_into_readout, "index", str((z + 1 + r) % 40)))
                    if r == 0:
                        results["xy"].clear()
                timed("first xz", lambda: page.click_axis("xz"))
                for r in range(repeats):
                    timed("xz", partial(page.type_into_readout, "index", str(500 + r)))
                    timed("toggle", lambda: page.toggle("labels"))
                assert not page.errors(), page.errors()
            finally:
                chrome.quit()
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("outputs/benchmarks/browser"), help="where the crop is written")
    ap.add_argument("--slices", type=int, default=48, help="full-size slices in the cropped group")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--browser", action="store_true",
                    help="also time the page in headless Chromium (make explore's server; needs chromium)")
    args = ap.parse_args(argv)
    root = write_crop(args.data, args.slices, args.seed)
    print(f"\nkidney_1_dense crop: {args.slices} x 1303 x 912 (synthetic), with labels and a prediction folder; "
          f"median of {args.repeats}; goal {GOAL_MS:.0f} ms per xy step; {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start\n")
    print(f"{'step':<12} {'layer':<9} {'slices read':>11} {'ms':>8} {'x goal':>7}")
    layers = {"model": lambda: measure(root, args.repeats, False), "widgets": lambda: measure(root, args.repeats, True)}
    if args.browser:
        layers["page"] = lambda: measure_page(root, args.repeats)
    for layer, run in layers.items():
        for kind, runs in run().items():
            ms = statistics.median(m for m, _ in runs)
            reads = statistics.median(n for _, n in runs)
            print(f"{kind:<12} {layer:<9} {reads:>11.0f} {ms:>8.0f} {ms / GOAL_MS:>7.2f}")
    print("\nslices read: images + labels per slice (the prediction folder's TIFFs are read too, not counted here); "
          f"the first xz view reads every slice up to 128 ({args.slices} here; 127 on the whole 2279-slice kidney)."
          "\npage: notebook 01's browser (its prediction is the threshold demo, which reads the image slice again);"
          " its first xz view reads nothing: the notebook's static figure filled the plane cache when the page was built;"
          " page times include Selenium's own commands (the key presses, polling the image).")


if __name__ == "__main__":
    main()
