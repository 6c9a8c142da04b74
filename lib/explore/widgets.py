"""The slice browser's widgets: each control calls one `SliceBrowser` setter, then an `ipywidgets.Image` shows the
new PNG (no ipympl: Jupyter and Voilà alike). Each widget has a CSS class `sennet-<name>` for the browser test."""
from __future__ import annotations

import html
from typing import Any

import ipywidgets as W

from lib.explore.browser import SliceBrowser
from lib.explore.figures import AXES


class BrowserWidgets:
    """Controls for a `SliceBrowser` and the image it renders; `panel` is what a notebook displays."""

    def __init__(self, model: SliceBrowser) -> None:
        self.model = model
        self._hold = False  # set while controls are adjusted to the model (their observers must not fire back)
        self.group_w = W.Dropdown(options=list(model.groups), value=model.group_name, description="group")
        self.axis_w = W.ToggleButtons(options=list(AXES), value=model.axis, description="axis",
                                      style={"button_width": "48px"})
        self.index_w = W.IntSlider(0, 0, 1, description="slice", continuous_update=False,
                                   layout=W.Layout(width="95%"))
        self.labels_w = W.Checkbox(model.show_labels, description="labels (red)", indent=False)
        self.prediction_w = W.Checkbox(model.show_prediction, description="prediction (cyan)", indent=False,
                                       disabled=model.prediction is None)
        self.alpha_w = W.FloatSlider(model.alpha, min=0.0, max=1.0, step=0.05, description="opacity",
                                     continuous_update=False)
        self.window_w = W.FloatRangeSlider(value=(0, 1), min=0, max=1, step=1, description="window",
                                           continuous_update=False, layout=W.Layout(width="95%"))
        self.info_w = W.HTML()
        self.error_w = W.HTML()
        width = round(model.fig.get_figwidth() * model.DPI)  # shown pixel for pixel, not stretched by the page
        self.image_w = W.Image(format="png", layout=W.Layout(width=f"{width}px", max_width="100%"))
        for name in ("group", "axis", "index", "labels", "prediction", "alpha", "window", "info", "error", "image"):
            getattr(self, f"{name}_w").add_class(f"sennet-{name}")

        for widget, setter in ((self.group_w, model.set_group), (self.axis_w, model.set_axis),
                               (self.index_w, model.set_index), (self.labels_w, model.set_labels),
                               (self.prediction_w, model.set_prediction), (self.alpha_w, model.set_alpha),
                               (self.window_w, lambda v: model.set_window(*v))):
            self._bind(widget, setter)
        self.panel = W.VBox([
            W.HBox([self.group_w, self.axis_w]), self.index_w,
            W.HBox([self.labels_w, self.prediction_w, self.alpha_w]), self.window_w, self.info_w, self.error_w,
            self.image_w,
        ])
        self.panel.add_class("sennet-browser")
        self._show()

    def _bind(self, widget: W.ValueWidget, setter: Any) -> None:
        """On a user change of `widget`: the model's setter, then the controls and the image follow the model."""
        def changed(change: dict) -> None:
            if self._hold:
                return
            try:
                setter(change["new"])
                self._show()
                self.error_w.value = ""
            except Exception as e:  # shown in the panel: a widget callback's traceback reaches no output area
                self.error_w.value = f"<pre>error: {html.escape(f'{type(e).__name__}: {e}')}</pre>"
                raise
        widget.observe(changed, "value")

    def _show(self) -> None:
        """Controls from the model's state (slider range per group and axis, window), then the image."""
        m = self.model
        self._hold = True
        try:
            self.group_w.value, self.axis_w.value = m.group_name, m.axis
            self.index_w.max = max(m.index_max, 1)
            self.index_w.value = m.index
            self.index_w.description = m.index_name
            self.index_w.disabled = m.index_max == 0
            lo, hi = min(m.window_range[0], m.window[0]), max(m.window_range[1], m.window[1])
            if (self.window_w.min, self.window_w.max, self.window_w.value) != (lo, hi, m.window):
                self.window_w.min, self.window_w.max = -1e12, 1e12  # widen first: min must stay below max
                self.window_w.value = m.window
                self.window_w.min, self.window_w.max = lo, hi
                self.window_w.step = max(1.0, (hi - lo) / 1000)
        finally:
            self._hold = False
        self.info_w.value = f"<code>{m.info()}</code>"
        self.image_w.value = m.png()
