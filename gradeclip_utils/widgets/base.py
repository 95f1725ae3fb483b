"""The frame every explorer shares.

``render()`` is one template: ``settings()`` says what the controls hold, ``compute(state)`` checks it and
computes (or takes from the cache) what the figure shows, ``draw(result, state)`` makes the figure (the
last one updated in place when the layout is the same), ``show(result, state)`` fills in what stands
beside it and the status line. Around it: browser changes debounced and computed off the event loop (so
that changes made meanwhile are seen: they make the result outdated, and one more render follows with the
last state), the busy state until the new figure is in, a failed render shown in place of the figure, the
record of renders (``last``, ``history``), ``export`` and the export button, and the static snapshot a
saved notebook shows without a kernel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import io
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import controls
from .controls import ipywidgets, split_prompts
from .markup import STYLE, busy_html, error_html, settings_text, snapshot_html, status_html
from .policy import class_labels

#: seconds a browser change waits for the next one before the redraw (a burst draws once)
DEBOUNCE_SECONDS = 0.3
#: the width (pixels) the figures wrap their panels to: four panels and the colour bar (a narrower output
#: area shows the figure scaled down to its width)
DEFAULT_WIDTH = 980
#: explanations kept per explorer (settings -> result), so that going back to a setting is instant
CACHE_SIZE = 32

_worker: concurrent.futures.ThreadPoolExecutor | None = None


def _render_worker() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that computes the explorers' browser renders, one at a time (explanations of one
    model wait for each other anyway: ``guard.explaining`` holds the model's lock)."""
    global _worker
    if _worker is None:
        _worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradeclip-explorer")
    return _worker


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


def _deliver(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Call ``callback(*args)`` on ``loop``'s thread (from the render thread)."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop has closed (an asyncio.run that ended): nothing is left to draw into
        pass


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

    A subclass makes its controls, then its ``widget`` with ``_layout`` and calls ``_connect``; it defines
    ``settings``, ``compute``, ``draw`` and ``show``, and ``_clear_outputs`` when it shows more than the
    figure and the status line. ``compute`` may run on the render thread: it reads the state it is given
    and the explorer's data, never the controls.
    """

    apply = None  # the apply button, for explorers that have one
    timed = True  # a render records its time in ``state["seconds"]``
    kind = "explorer"  # the start of the export button's file names

    def __init__(self, model: Any, *, width: int, debounce: float) -> None:
        w = ipywidgets()
        if width < 200:
            raise ValueError(f"width is in pixels and must be at least 200, got {width}")
        if debounce < 0:
            raise ValueError(f"debounce must be >= 0 seconds, got {debounce}")
        from ..methods.scores import default_score

        self.model = model
        self.precision = model.describe().get("precision")
        # what the model's targets are, asked of it: an image classifier's classes (named by its labels) or texts
        self.labels = class_labels(model)
        self.targets = "classes" if self.labels else "prompts"
        self.default_score = default_score(model.adapter)  # a CLIP's cosine, a classifier's logit
        self.width = int(width)
        self.debounce = float(debounce)
        self.last: dict[str, Any] | None = None
        self.figure = None
        self.history: list[dict[str, Any]] = []
        self.error: str | None = None
        self.cache = Cache()
        self._drawn = None  # the last figure drawn, updated in place when the next one has its layout
        self._rendering = False  # the explorer itself is setting controls or drawing: their changes are its own
        self._pending: asyncio.TimerHandle | None = None
        self._computing: concurrent.futures.Future | None = None  # a browser render's compute under way
        self._generation = 0  # counts renders begun: a compute that finishes after a newer one began is dropped
        self.style = w.HTML(STYLE)
        self.status = w.HTML(layout=w.Layout(max_width="100%"))
        self.status.add_class("gradeclip-status")
        # at most as wide as the output area (no side margins, which would add to it), the height following
        self.view = w.Image(format="png", layout=w.Layout(max_width="100%", height="auto", margin="2px 0"))
        self.export_folder, self.export_button, self.exported = controls.export_row()
        self.export_button.on_click(lambda _button: self.export_to_folder())

    def _layout(self, name: str, rows: Sequence[Any], below: Sequence[Any] = ()) -> None:
        """Make ``widget``: the controls (``rows``), the status line, the figure, what stands ``below`` it,
        the export row; and the snapshot note that replaces the controls where there is no kernel."""
        self.widget = controls.panel(name, [
            self.style, controls.snapshot_note(), controls.control_rows(rows), self.status, self.view, *below,
            controls.control_rows([controls.row([self.export_folder, self.export_button]), self.exported])])
        self.widget.fallback = self.snapshot

    def snapshot(self) -> str:
        """The explorer as static HTML: the current figure, its status line and a note that the controls need
        the cell run (what the widget's display carries for viewers that cannot show the widget)."""
        png = bytes(self.view.value) if self.figure is not None else None
        return snapshot_html(png, self.status.value, type(self).__name__)

    # --------------------------------------------------------------- the render frame
    def render(self) -> dict[str, Any]:
        """Draw now with the controls' current values (a browser render still computing is waited for and
        dropped); a failure replaces the figure and what stands beside it by the error (the notebook keeps
        running). Returns the render's state (``last``)."""
        self._settle()
        self._generation += 1
        self._rendering = True
        state = self._begin()
        started = time.perf_counter()
        return self._complete(state, self._compute(state), started)

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
        return settings_text(state, self.precision, self.default_score)

    def _begin(self) -> dict[str, Any]:
        self._cancel_pending()
        state = self.settings()
        self._set_busy(state)
        return state

    def _compute(self, state: dict[str, Any]) -> tuple[Any, Exception | None]:
        """``compute``'s result, or the error it raised (shown in the widget; the notebook keeps running)."""
        try:
            return self.compute(state), None
        except Exception as caught:
            return None, caught

    def _complete(self, state: dict[str, Any], computed: tuple[Any, Exception | None], started: float) -> dict[str, Any]:
        """Draw and show what was computed (or the error), and record the render."""
        result, error = computed
        fig = png = None
        self._rendering = True
        try:
            if error is None:
                fig = self._drawn = self.draw(result, state)
                png = figure_png(fig)
                if self.timed:
                    state["seconds"] = round(time.perf_counter() - started, 3)
                self.show(result, state)
        except Exception as caught:  # shown in the widget; the notebook keeps running
            error = caught
        try:
            return self._finish(state, fig, png, error)
        finally:
            self._rendering = False

    def _clear_outputs(self) -> None:
        """Empty what the explorer shows beside the figure (on a failed render)."""

    def _finish(self, state: dict[str, Any], fig, png: bytes | None, error: Exception | None) -> dict[str, Any]:
        if error is None and png is not None:
            self.view.value = png
            self.view.layout.width = f"{pixel_width(fig)}px"  # its own size where it fits, else scaled down
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
        after the last one. Marks the figure outdated at once. Without a running event loop (plain Python,
        no kernel) it draws at once. The compute runs off the event loop, so that changes made meanwhile
        arrive: they make its result outdated (never shown) and one more render follows with the last state."""
        loop = _running_loop()
        if loop is None or (self.debounce == 0 and self._computing is None):
            self.render()
            return
        self._cancel_pending()
        self._set_busy(self.settings())
        self._pending = loop.call_later(self.debounce, self._fire)

    @property
    def pending(self) -> bool:
        """Whether a debounced redraw is waiting."""
        return self._pending is not None

    @property
    def computing(self) -> bool:
        """Whether a browser render is computing (off the event loop)."""
        return self._computing is not None

    def _fire(self) -> None:
        self._pending = None
        if self._computing is None:  # else the render under way sees the new settings when it ends
            self._start(asyncio.get_running_loop())

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin a render whose compute runs on the render thread; it is drawn when it ends, if it is still
        what the controls hold."""
        self._generation += 1
        generation, state = self._generation, self._begin()
        wanted, started = copy.deepcopy(state), time.perf_counter()
        # in the context of the change that asked for it: what the compute prints or warns goes where the
        # kernel sends that change's output (not into whichever cell runs meanwhile)
        future = _render_worker().submit(contextvars.copy_context().run, self._compute, state)
        self._computing = future
        future.add_done_callback(lambda done: _deliver(loop, self._computed, done, generation, state, wanted,
                                                       started))

    def _computed(self, future: concurrent.futures.Future, generation: int, state: dict[str, Any],
                  wanted: dict[str, Any], started: float) -> None:
        if self._computing is future:
            self._computing = None
        if generation != self._generation or future.cancelled():
            return  # a render from code began meanwhile and drew the newer state
        if self._pending is not None:
            return  # a newer change waits for its debounce: this result is outdated and never shown
        if self.settings() != wanted:  # changed while computing: draw the last state instead
            self._start(asyncio.get_running_loop())
            return
        self._complete(state, future.result(), started)

    def _settle(self) -> None:
        """Wait for a browser render's compute under way (its result is then dropped)."""
        if self._computing is not None:
            concurrent.futures.wait([self._computing])
            self._computing = None

    def _cancel_pending(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def current_prompts(self) -> list[str]:
        """The prompts in the box (split at ";" and newlines, blanks dropped)."""
        return split_prompts(self.prompts.value)

    def _setting_controls(self, change: Callable[[], Any]) -> None:
        """Run ``change`` (which sets controls) without the redraws those settings would ask for."""
        rendering, self._rendering = self._rendering, True
        try:
            change()
        finally:
            self._rendering = rendering

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

    def export_to_folder(self, folder: str | Path | None = None) -> dict[str, Any] | None:
        """What the export button does: save the current figure and its manifest into ``folder`` (default:
        the folder box's), named ``<kind>_<date>-<time>``; the line under the button says what was written,
        or why nothing was. Returns the manifest (None when nothing was written)."""
        from ..export import FigureExporter

        target = Path(folder if folder is not None else (self.export_folder.value.strip() or controls.EXPORT_FOLDER))
        stem = f"{self.kind}_{time.strftime('%Y%m%d-%H%M%S')}"
        name, count = stem, 1
        while (target / f"{name}.json").exists():  # two exports within a second
            count += 1
            name = f"{stem}-{count}"
        try:
            saved = self.export(FigureExporter(target, model=self.model), name)
        except Exception as caught:  # said under the button; the notebook keeps running
            self.exported.value = error_html(f"{type(caught).__name__}: {caught}", "export")
            return None
        self.exported.value = status_html(f"saved {target / name}.png, .pdf and .json (the manifest)")
        return saved
