"""The frame every explorer shares.

``render()`` is one template: ``settings()`` says what the controls hold, ``compute(state)`` checks it and
computes (or takes from the cache) what the figure shows, ``draw(result, state)`` makes the figure (the
last one updated in place when the layout is the same), ``show(result, state)`` fills in what stands
beside it and the status line. Around it: browser changes debounced, the busy state while a render is
due, a failed render shown in place of the figure, the record of renders (``last``, ``history``) and
``export``.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

from .controls import ipywidgets, split_prompts
from .markup import STYLE, busy_html, error_html, settings_text

#: seconds a browser change waits for the next one before the redraw (a burst draws once)
DEBOUNCE_SECONDS = 0.3
#: the width (pixels) the figures wrap their panels to
DEFAULT_WIDTH = 960
#: explanations kept per explorer (settings -> result), so that going back to a setting is instant
CACHE_SIZE = 32


def figure_png(fig, dpi: int | None = None) -> bytes:
    """A figure as PNG bytes at its own size (``dpi``: the figure's own by default)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or fig.dpi, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def pixel_width(fig) -> int:
    """A figure's width in pixels at its own resolution."""
    return int(round(fig.get_size_inches()[0] * fig.dpi))


def from_browser(change: Any) -> bool:
    """Whether a traitlets change came from the browser: while ipywidgets applies a browser message it
    holds a lock on the properties being set, and the observers run inside it (a selection widget's
    browser sends ``index``; its ``value`` follows within the same lock)."""
    return bool(getattr(change.get("owner"), "_property_lock", None))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Cache:
    """The last ``size`` results by key."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.items: OrderedDict = OrderedDict()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = make()
        self.items[key] = value
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value

    def clear(self) -> None:
        self.items.clear()


class BaseExplorer:
    """Shared state, the render frame, debouncing, busy state and bookkeeping of the explorers.

    A subclass makes its controls and its ``widget`` (``controls.panel``), then calls ``_connect``; it
    defines ``settings``, ``compute``, ``draw`` and ``show``, and ``_clear_outputs`` when it shows more
    than the figure and the status line.
    """

    apply = None  # the apply button, for explorers that have one
    timed = True  # a render records its time in ``state["seconds"]``

    def __init__(self, model: Any, *, width: int, debounce: float) -> None:
        w = ipywidgets()
        if width < 200:
            raise ValueError(f"width is in pixels and must be at least 200, got {width}")
        if debounce < 0:
            raise ValueError(f"debounce must be >= 0 seconds, got {debounce}")
        self.model = model
        self.precision = model.describe().get("precision")
        self.width = int(width)
        self.debounce = float(debounce)
        self.last: dict[str, Any] | None = None
        self.figure = None
        self.history: list[dict[str, Any]] = []
        self.error: str | None = None
        self.cache = Cache()
        self._drawn = None  # the last figure drawn, updated in place when the next one has its layout
        self._rendering = False
        self._pending: asyncio.TimerHandle | None = None
        self.style = w.HTML(STYLE)
        self.status = w.HTML()
        self.status.add_class("gradeclip-status")
        self.view = w.Image(format="png", layout=w.Layout(max_width="none"))

    # --------------------------------------------------------------- the render frame
    def render(self) -> dict[str, Any]:
        """Draw now with the controls' current values; a failure replaces the figure and what stands
        beside it by the error (the notebook keeps running). Returns the render's state (``last``)."""
        state = self._begin()
        fig = png = error = None
        try:
            started = time.perf_counter()
            result = self.compute(state)
            fig = self._drawn = self.draw(result, state)
            png = figure_png(fig)
            if self.timed:
                state["seconds"] = round(time.perf_counter() - started, 3)
            self.show(result, state)
        except Exception as caught:  # shown in the widget; the notebook keeps running
            error = caught
        return self._finish(state, fig, png, error)

    def settings(self) -> dict[str, Any]:  # pragma: no cover - implemented by each explorer
        """What the next render will use (the controls' values)."""
        raise NotImplementedError

    def compute(self, state: dict[str, Any]) -> Any:  # pragma: no cover - implemented by each explorer
        """Check ``state``, compute what the figure shows and add what it found to ``state``; returns
        what ``draw`` and ``show`` take."""
        raise NotImplementedError

    def draw(self, result: Any, state: Mapping[str, Any]):  # pragma: no cover - implemented by each explorer
        """The figure of one render (made with ``reuse=self._drawn``, to update the last one in place)."""
        raise NotImplementedError

    def show(self, result: Any, state: dict[str, Any]) -> None:  # pragma: no cover - implemented by each explorer
        """Fill in what stands beside the figure and the status line."""
        raise NotImplementedError

    def _describe(self, state: Mapping[str, Any]) -> str:
        return settings_text(state, self.precision)

    def _begin(self) -> dict[str, Any]:
        self._cancel_pending()
        state = self.settings()
        self._set_busy(state)
        self._rendering = True
        return state

    def _clear_outputs(self) -> None:
        """Empty what the explorer shows beside the figure (on a failed render)."""

    def _finish(self, state: dict[str, Any], fig, png: bytes | None, error: Exception | None) -> dict[str, Any]:
        self._rendering = False
        if error is None and png is not None:
            self.view.value = png
            self.view.layout.width = f"{pixel_width(fig)}px"
            self.view.layout.display = None
            self.figure, self.error = fig, None
        else:
            self.error = f"{type(error).__name__}: {error}" if error is not None else "nothing drawn"
            state["error"] = self.error
            self.figure = None
            self.view.value = b""
            self.view.layout.display = "none"
            self._clear_outputs()
            self.status.value = error_html(self.error, self._describe(state))
        self._set_idle()
        self.last = state
        self.history.append(state)
        return state

    # --------------------------------------------------------------- redraw requests
    def _connect(self, controls: Sequence[Any], auto_render: bool) -> None:
        """Redraw when a control's value changes or the apply button is clicked; draw the first figure
        now unless ``auto_render`` is False."""
        for control in controls:
            control.observe(self._changed, names="value")
        if self.apply is not None:
            self.apply.on_click(lambda _button: self.render())
        if auto_render:
            self.render()

    def _changed(self, change: Any = None) -> None:
        if self._rendering:
            return
        if change is not None and from_browser(change):
            self.schedule()
        else:
            self.render()

    def schedule(self) -> None:
        """Redraw ``debounce`` seconds after the last call: a burst of calls draws once, with the state
        after the last one. Marks the figure stale at once. Without a running event loop (plain Python,
        no kernel) it draws at once."""
        loop = _running_loop()
        if loop is None or self.debounce == 0:
            self.render()
            return
        self._cancel_pending()
        self._set_busy(self.settings())
        self._pending = loop.call_later(self.debounce, self._fire)

    @property
    def pending(self) -> bool:
        """Whether a debounced redraw is waiting."""
        return self._pending is not None

    def _fire(self) -> None:
        self._pending = None
        self.render()

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def current_prompts(self) -> list[str]:
        """The prompts in the box (split at ";" and newlines, blanks dropped)."""
        return split_prompts(self.prompts.value)

    # --------------------------------------------------------------- busy state
    def _set_busy(self, state: Mapping[str, Any]) -> None:
        self.widget.add_class("gradeclip-busy")
        self.view.add_class("gradeclip-stale")
        self.status.value = busy_html(self._describe(state))
        if self.apply is not None:
            self.apply.description, self.apply.icon = "rendering\u2026", "hourglass"

    def _set_idle(self) -> None:
        self.widget.remove_class("gradeclip-busy")
        self.view.remove_class("gradeclip-stale")
        if self.apply is not None:
            self.apply.description, self.apply.icon = "apply", "check"

    # --------------------------------------------------------------- cache and export
    def clear_cache(self, *, words: bool = True) -> None:
        """Forget the cached explanations (after changing ``method_options``, say); with ``words=False``
        keep the word importance (which does not depend on the block or the image method)."""
        if words:
            self.cache.clear()
        else:
            self.cache.items = OrderedDict((k, v) for k, v in self.cache.items.items() if k[0] == "text")

    def export(self, exporter: Any, name: str, *, show: bool = False, **manifest: Any) -> dict[str, Any]:
        """Save the current figure (PNG, PDF, manifest) with ``exporter`` (an export.FigureExporter);
        with ``show`` also display it (in a notebook)."""
        if self.last is None:
            raise RuntimeError("nothing rendered yet: call render() first")
        if self.figure is None:
            raise RuntimeError(f"nothing to export: the last render failed ({self.error})")
        settings = {k: v for k, v in self.last.items() if k not in ("prompts", "scores", "image")}
        manifest.setdefault("prompts", self.last.get("prompts") or [self.last.get("prompt")])
        manifest.setdefault("images", [self.images[self.last["image"]]])
        manifest.setdefault("image_names", [self.last["image"]])
        manifest.setdefault("method", self.last.get("method"))
        manifest.setdefault("data", {"scores": self.last.get("scores")})
        manifest.setdefault("title", self.figure.get_suptitle())
        saved = exporter.save(self.figure, name, settings=settings, **manifest)
        if show:  # as a PNG at the figure's own pixel size (the figure is not a pyplot one)
            from IPython.display import Image, display

            display(Image(data=figure_png(self.figure), width=pixel_width(self.figure)))
        return saved
