"""Interactive explorers for notebooks (ipywidgets).

- ``Explorer``: pick the image, type or add prompts, move the block slider, switch mode and method;
  heat maps, scores and word importance redraw.
- ``MethodComparison``: the same image and prompt under several methods side by side, with timings
  and, on synthetic scenes, the share of each map on the prompted objects.
- ``LayerViewer``: one image and prompt, a slider over the blocks (maps computed once, the slider only
  switches), optionally the sum of the blocks from the chosen one to the last.
- ``ModelComparisonView``: the same image and prompts under two or more models (of any family), with
  each model's scores and how far their maps agree.

Every explorer has ``.widget`` (display it), ``render()`` (draw now, with the controls' current values)
and observable state: ``last`` (the settings and scores of the last render), ``figure`` (its matplotlib
figure; None when the last render failed; a redraw with the same layout updates the same figure in place), ``history`` (every render's ``last``) and ``error`` (None, or
why the last render failed). ``export(exporter, name)`` saves the current figure with its manifest.

Redraws. A change made in the browser (a slider step, Enter in the prompt box, a click in a list) is
debounced: the explorer waits ``debounce`` seconds after the last change of a burst and draws once, with
the last state. From the first change until the new figure is there, the status line says what is being
drawn, the old figure is greyed out as stale and the apply button shows it is busy. A change made from
code (``explorer.layer.value = 2``) redraws at once, so the next line can read ``explorer.last``. A render
that fails replaces the figure, the scores and the words by the error (nothing stale stays up).

Figures. Panels have a fixed size and text a fixed point size; the figure grows with the number of
panels (wrapping into rows that fit ``width`` pixels) and is shown at its own pixel size, so text looks
the same with one prompt or seven. The title names the method, block, mode and precision (also in the
exported files); a colour bar says whether each panel has its own scale or all prompts share one
(``shared_scale``); a negative score S gets a red title and frame.

The explorers use the package's public API only (``explain_image``, ``explain_text``, the results
objects, ``model.describe()``) and the adapter interface's block count, so they work with any model
family that ``load_model`` returns.
"""

from __future__ import annotations

import asyncio
import functools
import html
import io
import time
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .config import ExplainConfig, applied_settings
from .maps import resize_maps
from .plotting import signed
from .samples import as_input, default_resolution, named_images, prompt_mask

#: generic class names whose prompts form CLIP Surgery's class set on real models (COCO's categories, in part)
GENERIC_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "airplane", "bus", "train", "boat", "bird", "cat", "dog", "horse", "sheep", "cow",
    "bottle", "cup", "fork", "spoon", "bowl", "banana", "chair", "couch", "bed", "table", "tv", "laptop",
    "phone", "book", "clock", "vase", "flag", "rocket", "tree", "building", "sky")

#: seconds a browser change waits for the next one before the redraw (a burst draws once)
DEBOUNCE_SECONDS = 0.3
#: the width (pixels) the figures wrap their panels to
DEFAULT_WIDTH = 960
#: what separates prompts in the explorer's prompt box (a newline does too)
PROMPT_SEPARATOR = ";"
ADD_PROMPT = "(add a prompt)"
#: explanations kept per explorer (settings -> result), so that going back to a setting is instant
CACHE_SIZE = 32

_STYLE = """<style>
.gradeclip-stale { opacity: 0.3; filter: grayscale(80%); transition: opacity 0.1s; }
.gradeclip-busy, .gradeclip-busy * { cursor: progress; }
.gradeclip-status { min-height: 1.5em; }
.gradeclip-busy-badge { background: #f5b041; color: black; border-radius: 3px; padding: 1px 6px; }
</style>"""


def comparison_methods() -> list[str]:
    """The image methods ``MethodComparison`` shows side by side by default (``MethodSpec.shown``), in
    the order they were registered."""
    from .methods import method_specs

    return [spec.name for spec in method_specs() if spec.shown and spec.image is not None]


def default_method_options(model: Any) -> dict[str, dict[str, Any]]:
    """Options that make every method usable with one prompt at a time, from the methods' declarations:
    a method with a class set (CLIP Surgery) gets one (the synthetic world's 35 colour x shape prompts,
    or "a photo of a {class}" over GENERIC_CLASSES), and each its options for interactive speed (RISE
    500 masks instead of 2000)."""
    from . import encode_texts
    from .methods import method_specs
    from .samples import is_synthetic
    from .synthetic import class_prompts

    specs = [spec for spec in method_specs() if spec.image is not None]
    classes = None
    if any(spec.class_set is not None for spec in specs):
        names = class_prompts()[0] if is_synthetic(model) else [f"a photo of a {c}" for c in GENERIC_CLASSES]
        classes = encode_texts(model, names)
    options = {spec.name: {**spec.interactive_options, **spec.options_from({}, classes=classes)} for spec in specs}
    return {name: values for name, values in options.items() if values}


def _merged_options(model: Any, given: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    options = default_method_options(model)
    for method, extra in (given or {}).items():
        options[method] = {**options.get(method, {}), **dict(extra)}
    return options


def _widgets():
    try:
        import ipywidgets
    except ImportError as error:  # pragma: no cover - ipywidgets is a runtime dependency
        raise ImportError("the explorers need ipywidgets: pip install ipywidgets") from error
    return ipywidgets


@functools.lru_cache(maxsize=None)
def _panel_type():
    """The explorers' outer box: a VBox whose plain-text form (what a viewer without the widget manager
    shows) says what it is instead of listing its children."""
    w = _widgets()

    class ExplorerPanel(w.VBox):
        explorer = "explorer"

        def __repr__(self) -> str:
            return f"{self.explorer}: an interactive widget (live in a running notebook, or from its saved state)"

    return ExplorerPanel


def _panel(name: str, children: list) -> Any:
    panel = _panel_type()(children)
    panel.explorer = name
    return panel


def image_blocks(model: Any) -> int:
    """How many image blocks the model has (the block slider's range), from its adapter's interface."""
    return int(model.adapter.num_image_blocks)


def text_blocks(model: Any) -> int:
    """How many text blocks the model has."""
    return int(model.adapter.num_text_blocks)


def figure_png(fig, dpi: int | None = None) -> bytes:
    """A figure as PNG bytes at its own size (``dpi``: the figure's own by default)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or fig.dpi, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def method_takes(method: str, option: str) -> bool:
    """Whether an image method uses ``option`` (e.g. "layers", "mode"; ``MethodSpec.takes``)."""
    from .methods import get_spec

    return get_spec(method).takes(option)


def settings_text(state: Mapping[str, Any], precision: str | None) -> str:
    """"grad_eclip · block 3 · faithful mode · fp32": what a render used (a setting the method does
    not take is said to be unused)."""
    layers = list(state.get("layers") or [])
    if not state.get("uses_layers", True):
        block = "block: not used"
    elif len(layers) > 1:
        block = f"blocks {layers[0]}\u2013{layers[-1]} (sum)"
    else:
        block = f"block {layers[0]}" if layers else "block ?"
    mode = f"{state.get('mode')} mode" if state.get("uses_mode", True) else "mode: not used"
    parts = [str(state.get("method")), block, mode]
    if precision:
        parts.append(str(precision))
    return " \u00b7 ".join(parts)


def _error_html(message: str, what: str = "") -> str:
    where = f" ({html.escape(what)})" if what else ""
    return f"<div style='color:#b03a2e'><b>could not render{where}:</b> {html.escape(message)}</div>"


def _busy_html(text: str) -> str:
    return (f"<div><span class='gradeclip-busy-badge'>\u23f3 rendering</span> <small>{html.escape(text)} "
            "\u2026 (the figure below is from the previous settings)</small></div>")


def words_html(text_explanation: Any, image: int = 0) -> str:
    """Each prompt's words shaded by their importance (darker red = more important), as HTML."""
    import matplotlib

    colours = matplotlib.colormaps["Reds"]
    lines = []
    for k in range(len(text_explanation.texts)):
        pair = text_explanation.pair(image, k)
        peak = float(pair.word_importance.max()) if pair.word_importance.size else 0.0
        spans = []
        for word, value in zip(pair.words, pair.word_importance):
            shade = float(value) / peak if peak > 0 else 0.0
            r, g, b, _ = colours(shade)
            colour = "white" if shade > 0.6 else "black"
            style = (f"background:rgb({int(r * 255)},{int(g * 255)},{int(b * 255)});color:{colour};"
                     "padding:1px 3px;border-radius:3px")
            spans.append(f"<span title='{float(value):.3f}' style='{style}'>{html.escape(word)}</span>")
        score_colour = "#b03a2e" if pair.score < 0 else "black"
        lines.append(f"<div style='margin:2px 0'><code style='color:{score_colour}'>{signed(pair.score)}</code> "
                     f"{' '.join(spans)}</div>")
    return "".join(lines)


_CELL = "padding:2px 10px;text-align:right;white-space:nowrap"
_FIRST = "padding:2px 10px;text-align:left"


def scores_html(prompts: Sequence[str], scores: Sequence[float]) -> str:
    """The prompts with their scores S, signed (negative in red), the best in bold."""
    best = int(np.argmax(scores)) if len(scores) else -1
    rows = []
    for i, (prompt, score) in enumerate(zip(prompts, scores)):
        colour = "#b03a2e" if score < 0 else "black"
        value = f"<b>{signed(score, 4)}</b>" if i == best else signed(score, 4)
        rows.append(f"<tr><td style='{_FIRST}'>{html.escape(prompt)}</td>"
                    f"<td style='{_CELL};color:{colour}'>{value}</td></tr>")
    head = f"<tr><th style='{_FIRST}'>prompt</th><th style='{_CELL}'>S (cosine)</th></tr>"
    note = ("<tr><td colspan='2' style='padding:2px 10px'><small>S &lt; 0 (red): the image and the prompt do "
            "not match; its map still has a maximum</small></td></tr>") if any(s < 0 for s in scores) else ""
    return f"<table style='border-collapse:collapse'>{head}{''.join(rows)}{note}</table>"


def _from_browser(change: Any) -> bool:
    """Whether a traitlets change came from the browser: while ipywidgets applies a browser message it
    holds a lock on the properties being set, and the observers run inside it (a selection widget's
    browser sends ``index``; its ``value`` follows within the same lock)."""
    return bool(getattr(change.get("owner"), "_property_lock", None))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Cache:
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


def _prompt_box(prompts: Sequence[str]) -> tuple[Any, Any]:
    """The prompts box (prompts separated by ";", drawn on Enter) and its apply button."""
    w = _widgets()
    bad = [p for p in prompts if PROMPT_SEPARATOR in p or "\n" in p]
    if bad:
        raise ValueError(f"prompts cannot contain {PROMPT_SEPARATOR!r} or a newline (it separates them): {bad}")
    box = w.Text(value=f"{PROMPT_SEPARATOR} ".join(prompts), description="prompts", continuous_update=False,
                 placeholder="type prompts separated by ; and press Enter", layout=w.Layout(width="600px"))
    apply = w.Button(description="apply", icon="check", button_style="primary",
                     tooltip="draw with the prompts as typed (Enter in the box does the same)",
                     layout=w.Layout(width="120px"))
    return box, apply


def _mode_buttons(mode: str) -> Any:
    from .adapters import MODES

    w = _widgets()
    return w.ToggleButtons(options=list(MODES), value=mode, description="mode",
                           style={"button_width": "80px", "description_width": "initial"},
                           layout=w.Layout(width="auto", flex="0 0 auto", display="flex"))


def _shared_box(value: bool, what: str) -> Any:
    w = _widgets()
    return w.Checkbox(value=value, description=f"one colour scale for all {what}", indent=False,
                      layout=w.Layout(width="auto"))


class _Base:
    """Shared state, debouncing, busy state and bookkeeping of the explorers."""

    apply = None  # the apply button, for explorers that have one

    def __init__(self, model: Any, *, width: int, debounce: float) -> None:
        w = _widgets()
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
        self.cache = _Cache()
        self._drawn = None  # the last figure drawn, updated in place when the next one has its layout
        self._rendering = False
        self._pending: asyncio.TimerHandle | None = None
        self.style = w.HTML(_STYLE)
        self.status = w.HTML()
        self.status.add_class("gradeclip-status")
        self.view = w.Image(format="png", layout=w.Layout(max_width="none"))

    # --------------------------------------------------------------- redraw requests
    def _changed(self, change: Any = None) -> None:
        if self._rendering:
            return
        if change is not None and _from_browser(change):
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
        text = self.prompts.value.replace("\n", PROMPT_SEPARATOR)
        return [part.strip() for part in text.split(PROMPT_SEPARATOR) if part.strip()]

    def settings(self) -> dict[str, Any]:  # pragma: no cover - implemented by each explorer
        raise NotImplementedError

    def render(self) -> dict[str, Any]:  # pragma: no cover - implemented by each explorer
        raise NotImplementedError

    # --------------------------------------------------------------- busy state and results
    def _set_busy(self, state: Mapping[str, Any]) -> None:
        self.widget.add_class("gradeclip-busy")
        self.view.add_class("gradeclip-stale")
        self.status.value = _busy_html(self._describe(state))
        if self.apply is not None:
            self.apply.description, self.apply.icon = "rendering\u2026", "hourglass"

    def _set_idle(self) -> None:
        self.widget.remove_class("gradeclip-busy")
        self.view.remove_class("gradeclip-stale")
        if self.apply is not None:
            self.apply.description, self.apply.icon = "apply", "check"

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
            self.view.layout.width = f"{int(round(fig.get_size_inches()[0] * fig.dpi))}px"
            self.view.layout.display = None
            self.figure, self.error = fig, None
        else:
            self.error = f"{type(error).__name__}: {error}" if error is not None else "nothing drawn"
            state["error"] = self.error
            self.figure = None
            self.view.value = b""
            self.view.layout.display = "none"
            self._clear_outputs()
            self.status.value = _error_html(self.error, self._describe(state))
        self._set_idle()
        self.last = state
        self.history.append(state)
        return state

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

            display(Image(data=figure_png(self.figure), width=int(round(self.figure.get_size_inches()[0] *
                                                                          self.figure.dpi))))
        return saved


class Explorer(_Base):
    """Heat maps, scores and word importance of one image against typed or chosen prompts.

    ``images``: paths, PIL images or synthetic scenes (a list, or a name -> image dict); ``prompts``:
    the initial prompts; ``suggestions``: prompts offered in the "add" list; ``methods``: the image
    methods in the method switch (default: all registered); ``method_options``: extra options per
    method, over ``default_method_options`` (e.g. ``{"rise": {"masks": 2000}}``); ``text_layers``: text
    blocks for word importance (the authors' 8, or all blocks of a smaller text tower);
    ``shared_scale``: start with one colour scale for all prompts (a checkbox switches it);
    ``colorbar``: draw the colour bar; ``width``: pixels the figure wraps its panels to; ``debounce``:
    seconds a browser change waits for the next.

    Prompts are typed in one line separated by ";" and drawn on Enter (or the apply button).
    """

    def __init__(self, model: Any, images: Any, prompts: Sequence[str], *, suggestions: Sequence[str] = (),
                 method: str = "grad_eclip", methods: Sequence[str] | None = None, layer: int = -1,
                 mode: str = "faithful", resolution: str | None = None,
                 method_options: Mapping[str, Mapping[str, Any]] | None = None, text_layers: int = 8,
                 shared_scale: bool = False, colorbar: bool = True, width: int = DEFAULT_WIDTH,
                 debounce: float = DEBOUNCE_SECONDS, auto_render: bool = True) -> None:
        from .methods import list_methods

        super().__init__(model, width=width, debounce=debounce)
        w = _widgets()
        self.images = named_images(images)
        self.resolution = resolution
        self.method_options = _merged_options(model, method_options)
        self.text_layers = min(text_layers, text_blocks(model))
        self.colorbar = colorbar
        available = list_methods()["image"]
        methods = list(methods) if methods is not None else available
        unknown = [m for m in [*methods, method] if m not in available]
        if unknown:
            raise ValueError(f"unknown image methods {unknown}; registered: {available}")
        if method not in methods:
            raise ValueError(f"method {method!r} is not among the methods offered {methods}")
        self.prompts, self.apply = _prompt_box(prompts)
        blocks = image_blocks(model)
        self.image = w.Dropdown(options=list(self.images), description="image")
        self.method = w.Dropdown(options=methods, value=method, description="method")
        self.suggestions = w.Dropdown(options=[ADD_PROMPT, *suggestions], description="add")
        self.layer = w.IntSlider(min=0, max=blocks - 1, value=layer % blocks, description="block",
                                 continuous_update=False)
        self.mode = _mode_buttons(mode)
        self.shared = _shared_box(shared_scale, "prompts")
        self.scores = w.HTML()
        self.words = w.HTML()
        hint = w.HTML("<small>prompts are separated by <b>;</b> &mdash; press <b>Enter</b> in the box (or "
                      "<b>apply</b>) to draw; the list on the right adds a suggested prompt</small>")
        controls = w.VBox([w.HBox([self.image, self.method, self.suggestions]),
                           w.HBox([self.prompts, self.apply]), hint,
                           w.HBox([self.layer, self.mode, self.shared])])
        self.widget = _panel("Explorer", [self.style, controls, self.status, self.view,
                                          w.HBox([self.scores, self.words])])
        for control in (self.image, self.prompts, self.layer, self.mode, self.method, self.shared):
            control.observe(self._changed, names="value")
        self.suggestions.observe(self._add_suggestion, names="value")
        self.apply.on_click(lambda _button: self.render())
        if auto_render:
            self.render()

    def _add_suggestion(self, change: Any) -> None:
        if change["new"] == ADD_PROMPT:
            return
        current = self.current_prompts()
        browser = _from_browser(change)
        if change["new"] not in current:
            self._rendering = True  # one redraw below, not one for the prompt box too
            try:
                self.prompts.value = f"{PROMPT_SEPARATOR} ".join([*current, change["new"]])
            finally:
                self._rendering = False
            if browser:
                self.schedule()
            else:
                self.render()
        self.suggestions.value = ADD_PROMPT

    def settings(self) -> dict[str, Any]:
        """What the next render will use."""
        method = self.method.value
        return {"image": self.image.value, "prompts": self.current_prompts(), "layers": [self.layer.value],
                "mode": self.mode.value, "method": method, "shared_scale": bool(self.shared.value),
                "uses_layers": method_takes(method, "layers") if method else True,
                "uses_mode": method_takes(method, "mode") if method else True}

    def _clear_outputs(self) -> None:
        self.scores.value = ""
        self.words.value = ""

    def _explain(self, state: Mapping[str, Any], image: Any, resolution: str):
        from . import explain_image

        # a block or mode the method does not use is left at its default: it would be refused, and the
        # cache then keeps one explanation for every value of it
        config = ExplainConfig(method=state["method"], resolution=resolution,
                               options=self.method_options.get(state["method"], {}),
                               **applied_settings(state["method"], {"layers": state["layers"], "mode": state["mode"]}))
        key = ("image", state["image"], tuple(state["prompts"]), config.method, config.layers, config.mode,
               config.resolution)
        return self.cache.get(key, lambda: explain_image(self.model, as_input(image), state["prompts"],
                                                         progress=False, **config.keywords()))

    def _explain_words(self, state: Mapping[str, Any], image: Any, resolution: str, text_method: str):
        from . import explain_text

        config = ExplainConfig(method=text_method, resolution=resolution,
                               **applied_settings(text_method, {"layers": self.text_layers, "mode": state["mode"]}))
        key = ("text", state["image"], tuple(state["prompts"]), config.method, config.mode, config.resolution)
        return self.cache.get(key, lambda: explain_text(self.model, as_input(image), state["prompts"],
                                                        **config.keywords()))

    def render(self) -> dict[str, Any]:
        """Explain the current image against the current prompts with the current block, mode and
        method, and redraw the heat maps, scores and word importance."""
        from .methods import list_methods

        state = self._begin()
        fig = png = error = None
        try:
            if not state["prompts"]:
                raise ValueError("type at least one prompt (separate several with ';')")
            if not state["method"]:
                raise ValueError("choose a method")
            started = time.perf_counter()
            image = self.images[state["image"]]
            resolution = self.resolution or default_resolution(self.model, image)
            explanation = self._explain(state, image, resolution)
            text_method = state["method"] if state["method"] in list_methods()["text"] else "grad_eclip"
            words = self._explain_words(state, image, resolution, text_method)
            state.update(text_method=text_method, resolution=resolution,
                         scores=[float(s) for s in explanation.scores[0]])
            state.update({k: v for k, v in explanation.settings.items() if k not in state})
            fig = self.draw(explanation, state)
            png = figure_png(fig)
            state["seconds"] = round(time.perf_counter() - started, 3)
            self.explanation, self.text_explanation = explanation, words
            self.scores.value = scores_html(state["prompts"], state["scores"])
            self.words.value = ("<b>word importance</b> (Grad-ECLIP text)" if text_method == "grad_eclip" else
                                f"<b>word importance</b> ({html.escape(text_method)})") + words_html(words)
            ignored = [o for o, used in (("block", state["uses_layers"]), ("mode", state["uses_mode"])) if not used]
            note = f" ({state['method']} does not use the {' or '.join(ignored)} setting)" if ignored else ""
            self.status.value = (f"<small>{html.escape(self._describe(state))} \u00b7 {len(state['prompts'])} "
                                 f"prompt{'s' if len(state['prompts']) != 1 else ''} \u00b7 drawn in "
                                 f"{state['seconds']:.2f} s{html.escape(note)}</small>")
        except Exception as caught:  # shown in the widget; the notebook keeps running
            error = caught
        return self._finish(state, fig, png, error)

    def draw(self, explanation: Any, state: Mapping[str, Any]):
        """The figure of one render: the input and one panel per prompt."""
        from .plotting import heat_map_panels

        picture = explanation.images[0]
        size = (picture.height, picture.width)
        maps = [resize_maps(explanation.raw[0][k], size).numpy() for k in range(len(explanation.prompts))]
        scores = state["scores"]
        best = int(np.argmax(scores))
        titles = [f"{prompt}\nS = {signed(s)}{' (best)' if k == best and len(scores) > 1 else ''}"
                  for k, (prompt, s) in enumerate(zip(explanation.prompts, scores))]
        scale = "shared" if state["shared_scale"] else "panel"
        described = self.model.describe()
        weights = f" ({described['pretrained']})" if described.get("pretrained") else ""
        scale_text = "one colour scale for all prompts" if scale == "shared" else "each panel on its own scale"
        title = (f"{self._describe(state)}\n{state['image']} \u00b7 model {described.get('model')}{weights} "
                 f"\u00b7 {scale_text}")
        self._drawn = heat_map_panels(picture, maps, titles, title=title, scale=scale, colorbar=self.colorbar,
                                      flagged=[s < 0 for s in scores], width_px=self.width, reuse=self._drawn)
        return self._drawn


class MethodComparison(_Base):
    """One image and one prompt under several methods, side by side.

    On a synthetic scene with a prompt of its grammar, the table also gives each map's share of mass
    on the prompted objects (energy pointing game) and whether its maximum falls on them; otherwise
    those columns say why there is no value. Each method's map is cached, so adding a method to the
    selection computes only that one.
    """

    def __init__(self, model: Any, images: Any, prompts: Sequence[str], methods: Sequence[str] | None = None, *,
                 layer: int = -1, mode: str = "faithful", resolution: str | None = None,
                 method_options: Mapping[str, Mapping[str, Any]] | None = None, width: int = DEFAULT_WIDTH,
                 colorbar: bool = True, debounce: float = DEBOUNCE_SECONDS, auto_render: bool = True) -> None:
        from .methods import list_methods

        super().__init__(model, width=width, debounce=debounce)
        w = _widgets()
        if not prompts:
            raise ValueError("give at least one prompt")
        self.images = named_images(images)
        self.resolution = resolution
        self.colorbar = colorbar
        self.method_options = _merged_options(model, method_options)
        available = list_methods()["image"]
        chosen = [m for m in comparison_methods() if m in available] if methods is None else list(methods)
        unknown = [m for m in chosen if m not in available]
        if unknown:
            raise ValueError(f"unknown image methods {unknown}; registered: {available}")
        blocks = image_blocks(model)
        self.layer_index = layer % blocks
        self.mode = mode
        self.image = w.Dropdown(options=list(self.images), description="image")
        self.prompt = w.Combobox(options=list(prompts), value=prompts[0], description="prompt", ensure_option=False,
                                 continuous_update=False, placeholder="type a prompt and press Enter",
                                 layout=w.Layout(width="420px"))
        self.apply = w.Button(description="apply", icon="check", button_style="primary",
                              tooltip="draw with the prompt as typed (Enter in the box does the same)",
                              layout=w.Layout(width="120px"))
        self.methods = w.SelectMultiple(options=available, value=tuple(chosen), description="methods", rows=8)
        self.table = w.HTML()
        hint = w.HTML("<small>press <b>Enter</b> in the prompt box (or <b>apply</b>); ctrl-click or shift-click "
                      "to choose several methods</small>")
        self.widget = _panel("MethodComparison", [
            self.style, w.HBox([w.VBox([self.image, w.HBox([self.prompt, self.apply]), hint]), self.methods]),
            self.status, self.view, self.table])
        for control in (self.image, self.prompt, self.methods):
            control.observe(self._changed, names="value")
        self.apply.on_click(lambda _button: self.render())
        if auto_render:
            self.render()

    def settings(self) -> dict[str, Any]:
        return {"image": self.image.value, "prompt": self.prompt.value.strip(), "methods": list(self.methods.value),
                "layers": [self.layer_index], "mode": self.mode}

    def _describe(self, state: Mapping[str, Any]) -> str:
        count = len(state.get("methods") or [])
        parts = [f"\u201c{state.get('prompt')}\u201d", f"{count} method{'s' if count != 1 else ''}",
                 f"block {state['layers'][0]}", f"{state['mode']} mode"]
        if self.precision:
            parts.append(str(self.precision))
        return " \u00b7 ".join(parts)

    def _clear_outputs(self) -> None:
        self.table.value = ""

    def _explain(self, method: str, state: Mapping[str, Any], image: Any, resolution: str):
        from . import explain_image

        config = ExplainConfig(method=method, resolution=resolution, options=self.method_options.get(method, {}),
                               **applied_settings(method, {"layers": state["layers"], "mode": state["mode"]}))

        def make():
            started = time.perf_counter()
            ex = explain_image(self.model, as_input(image), [state["prompt"]], progress=False, **config.keywords())
            return ex, time.perf_counter() - started

        key = (state["image"], state["prompt"], config.method, config.layers, config.mode, config.resolution)
        return self.cache.get(key, make)

    def render(self) -> dict[str, Any]:
        """Explain the current image and prompt with every chosen method and redraw."""
        from .metrics import energy_pointing_game, pointing_game

        state = self._begin()
        fig = png = error = None
        try:
            if not state["prompt"]:
                raise ValueError("type a prompt")
            if not state["methods"]:
                raise ValueError("choose at least one method")
            started = time.perf_counter()
            image = self.images[state["image"]]
            resolution = self.resolution or default_resolution(self.model, image)
            mask = prompt_mask(image, state["prompt"])
            if mask is None:
                why = ("no object of this scene matches the prompt" if hasattr(image, "masks")
                       else "not a synthetic scene (no object masks)")
            self.explanations, rows, failed = {}, [], {}
            for method in state["methods"]:
                try:
                    ex, seconds = self._explain(method, state, image, resolution)
                except Exception as caught:  # one method this model cannot run does not stop the others
                    failed[method] = f"{type(caught).__name__}: {caught}"
                    continue
                row = {"method": method, "seconds": round(seconds, 3), "score": float(ex.scores[0, 0]),
                       "energy_on_prompted_objects": None, "max_on_prompted_objects": None,
                       "uses_block": method_takes(method, "layers"), "uses_mode": method_takes(method, "mode")}
                if mask is not None:
                    heat = resize_maps(ex.raw[0][0], mask.shape, dtype=torch.float64).numpy()
                    row["energy_on_prompted_objects"] = float(energy_pointing_game(heat, mask))
                    row["max_on_prompted_objects"] = bool(pointing_game(heat, mask))
                self.explanations[method] = ex
                rows.append(row)
            state.update(resolution=resolution, rows=rows, scores=[r["score"] for r in rows],
                         no_mask_reason=None if mask is not None else why, failed=failed)
            if not rows:
                raise ValueError("no chosen method could run: " + "; ".join(f"{m}: {e}" for m, e in failed.items()))
            fig = self.draw(state)
            png = figure_png(fig)
            state["seconds"] = round(time.perf_counter() - started, 3)
            self.table.value = _rows_html(rows, None if mask is not None else why, failed)
            note = (f" \u00b7 {len(failed)} method{'s' if len(failed) != 1 else ''} could not run (see the table)"
                    if failed else "")
            self.status.value = (f"<small>{html.escape(self._describe(state))} \u00b7 drawn in "
                                 f"{state['seconds']:.2f} s (maps: {sum(r['seconds'] for r in rows):.2f} s when "
                                 f"first computed){html.escape(note)}</small>")
        except Exception as caught:
            error = caught
        return self._finish(state, fig, png, error)

    def draw(self, state: Mapping[str, Any]):
        """The figure of one render: the input and one panel per method."""
        from .plotting import heat_map_panels

        rows = state["rows"]
        first = self.explanations[rows[0]["method"]]
        picture = first.images[0]
        maps = [self.explanations[r["method"]].heatmap(0, 0) for r in rows]
        scores = [r["score"] for r in rows]
        one_score = max(scores) - min(scores) < 1e-6  # the model's own S: the same for every method
        titles = []
        for r in rows:
            energy = ("energy n/a" if r["energy_on_prompted_objects"] is None else
                      f"energy {r['energy_on_prompted_objects']:.2f}" + (" \u00b7 peak on it"
                                                                       if r["max_on_prompted_objects"] else ""))
            unused = [o for o, used in (("block", r["uses_block"]), ("mode", r["uses_mode"])) if not used]
            name = r["method"] + "".join(f" (no {o})" for o in unused)
            timing = f"{r['seconds']:.2f} s" if one_score else f"S = {signed(r['score'])} \u00b7 {r['seconds']:.2f} s"
            titles.append(f"{name}\n{timing}\n{energy}")
        described = self.model.describe()
        score = f" \u00b7 S = {signed(scores[0])}" + (" (S < 0: no match)" if scores[0] < 0 else "") if one_score else ""
        title = (f"\u201c{state['prompt']}\u201d on {state['image']}{score}\nblock {state['layers'][0]} \u00b7 "
                 f"{state['mode']} mode \u00b7 {self.precision} \u00b7 model {described.get('model')}\n"
                 "each panel on its own scale; (no block), (no mode): the method ignores that setting")
        if state.get("failed"):
            title += f"\nnot drawn (could not run on this model): {', '.join(state['failed'])}"
        self._drawn = heat_map_panels(picture, maps, titles, title=title, scale="panel", colorbar=self.colorbar,
                                      flagged=[False] * len(rows) if one_score else [s < 0 for s in scores],
                                      width_px=self.width, reuse=self._drawn)
        return self._drawn


def _rows_html(rows: Sequence[dict[str, Any]], no_mask_reason: str | None = None,
               failed: Mapping[str, str] | None = None) -> str:
    """The comparison table: one row per method, every column aligned the same way in header and body;
    methods that could not run get a row that says why."""
    if not rows and not failed:
        return ""
    columns = [("method", "method"), ("seconds", "seconds"), ("score", "S (cosine)"),
               ("energy_on_prompted_objects", "energy on prompted objects"),
               ("max_on_prompted_objects", "maximum on them")]
    head = "".join(f"<th style='{_FIRST if i == 0 else _CELL}'>{html.escape(label)}</th>"
                   for i, (_, label) in enumerate(columns))
    body = []
    for row in rows:
        cells = []
        for i, (key, _) in enumerate(columns):
            value = row.get(key)
            if value is None:
                text = "n/a"
            elif key == "score":
                text = signed(value)
            elif isinstance(value, bool):
                text = "yes" if value else "no"
            elif isinstance(value, float):
                text = f"{value:.3f}"
            else:
                text = str(value)
            colour = ";color:#b03a2e" if key == "score" and value is not None and value < 0 else ""
            cells.append(f"<td style='{_FIRST if i == 0 else _CELL}{colour}'>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    for method, reason in (failed or {}).items():
        body.append(f"<tr><td style='{_FIRST}'>{html.escape(method)}</td><td colspan='{len(columns) - 1}' "
                    f"style='{_FIRST};color:#b03a2e'>could not run: {html.escape(reason)}</td></tr>")
    note = (f"<tr><td colspan='{len(columns)}' style='padding:2px 10px'><small>energy n/a: "
            f"{html.escape(no_mask_reason)}</small></td></tr>") if no_mask_reason else ""
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{''.join(body)}{note}</table>"


class LayerViewer(_Base):
    """One image and prompt with a slider over the image blocks: the map of the chosen block (all
    blocks are explained once, when the viewer is made), or with ``cumulative`` ticked the sum of the
    per-block maps from the chosen block to the last (explain_image's combination of several blocks)."""

    def __init__(self, model: Any, image: Any, prompt: str, *, method: str = "grad_eclip", mode: str = "faithful",
                 resolution: str | None = None, width: int = DEFAULT_WIDTH, debounce: float = DEBOUNCE_SECONDS,
                 auto_render: bool = True) -> None:
        from .blocks import layer_maps

        super().__init__(model, width=width, debounce=debounce)
        w = _widgets()
        self.images = named_images([image])
        self.name = next(iter(self.images))
        self.image_source = image
        self.prompt, self.method, self.mode = prompt, method, mode
        self.resolution = resolution or default_resolution(model, image)
        self.maps = layer_maps(model, image, [prompt], method=method, mode=mode, resolution=self.resolution)
        blocks = sorted(self.maps)
        self.layer = w.IntSlider(min=blocks[0], max=blocks[-1], value=blocks[-1], description="block",
                                 continuous_update=False)
        self.cumulative = w.Checkbox(value=False, description="sum from this block to the last", indent=False,
                                     layout=w.Layout(width="auto"))
        self.widget = _panel("LayerViewer", [self.style, w.HBox([self.layer, self.cumulative]), self.status,
                                             self.view])
        for control in (self.layer, self.cumulative):
            control.observe(self._changed, names="value")
        if auto_render:
            self.render()

    def settings(self) -> dict[str, Any]:
        block = self.layer.value
        layers = [b for b in sorted(self.maps) if b >= block] if self.cumulative.value else [block]
        return {"image": self.name, "prompts": [self.prompt], "layers": layers, "mode": self.mode,
                "method": self.method, "cumulative": self.cumulative.value}

    def render(self) -> dict[str, Any]:
        """Draw the chosen block's map (or the sum of the blocks from it to the last)."""
        from .plotting import heat_map_panels

        state = self._begin()
        fig = png = error = None
        try:
            chosen = self.maps[state["layers"][0]]
            picture = chosen.images[0]
            raw = sum(torch.relu(self.maps[b].raw[0][0]) for b in state["layers"])
            heat = resize_maps(raw, (picture.height, picture.width)).numpy()
            score = float(chosen.scores[0, 0])
            label = (f"blocks {state['layers'][0]}\u2013{state['layers'][-1]} summed" if len(state["layers"]) > 1
                     else f"block {state['layers'][0]}")
            title = (f"\u201c{self.prompt}\u201d on {self.name}\n{self._describe(state)} \u00b7 model "
                     f"{self.model.describe().get('model')}")
            fig = self._drawn = heat_map_panels(picture, [heat], [f"{label}\nS = {signed(score)}"], title=title,
                                                scale="panel", flagged=[score < 0], width_px=self.width,
                                                reuse=self._drawn)
            png = figure_png(fig)
            state["scores"] = [score]
            self.status.value = f"<small>{html.escape(self._describe(state))} \u00b7 S = {signed(score)}</small>"
        except Exception as caught:
            error = caught
        return self._finish(state, fig, png, error)


class ModelComparisonView(_Base):
    """The same image and prompts under two or more models, of any family, side by side.

    ``models``: a mapping of names to LoadedModels (the first one's preprocessing decides the default
    resolution). Each model embeds the prompts with its own text tower; the panels are models (rows of
    panels) x prompts, every map upsampled to the first model's picture of the image, with each model's
    own score. Below the figure, the Spearman rank correlation of each pair of models' maps per prompt
    (``compare.ModelComparison.agreement``). ``shared_scale`` (a checkbox) puts every panel on one colour
    scale, so that a model whose maps are weaker shows weaker maps. Comparisons are cached.
    """

    def __init__(self, models: Mapping[str, Any], images: Any, prompts: Sequence[str], *, method: str = "grad_eclip",
                 mode: str = "faithful", resolution: str | None = None, shared_scale: bool = False,
                 colorbar: bool = True, width: int = DEFAULT_WIDTH, debounce: float = DEBOUNCE_SECONDS,
                 auto_render: bool = True) -> None:
        from .methods import list_methods

        if not isinstance(models, Mapping) or len(models) < 2:
            raise ValueError("give at least two models, as a mapping of names to loaded models")
        self.models = dict(models)
        super().__init__(next(iter(self.models.values())), width=width, debounce=debounce)
        w = _widgets()
        if not prompts:
            raise ValueError("give at least one prompt")
        self.images = named_images(images)
        self.resolution = resolution
        self.colorbar = colorbar
        available = list_methods()["image"]
        if method not in available:
            raise ValueError(f"unknown image method {method!r}; registered: {available}")
        self.image = w.Dropdown(options=list(self.images), description="image")
        self.method = w.Dropdown(options=available, value=method, description="method")
        self.prompts, self.apply = _prompt_box(prompts)
        self.mode = _mode_buttons(mode)
        self.shared = _shared_box(shared_scale, "panels")
        self.table = w.HTML()
        hint = w.HTML("<small>prompts are separated by <b>;</b> &mdash; press <b>Enter</b> in the box (or "
                      f"<b>apply</b>) to draw; {len(self.models)} models: {html.escape(', '.join(self.models))}</small>")
        self.widget = _panel("ModelComparisonView", [
            self.style, w.VBox([w.HBox([self.image, self.method]), w.HBox([self.prompts, self.apply]), hint,
                                w.HBox([self.mode, self.shared])]), self.status, self.view, self.table])
        for control in (self.image, self.prompts, self.method, self.mode, self.shared):
            control.observe(self._changed, names="value")
        self.apply.on_click(lambda _button: self.render())
        if auto_render:
            self.render()

    def settings(self) -> dict[str, Any]:
        return {"image": self.image.value, "prompts": self.current_prompts(), "method": self.method.value,
                "mode": self.mode.value, "layers": [-1], "shared_scale": bool(self.shared.value),
                "models": list(self.models)}

    def _describe(self, state: Mapping[str, Any]) -> str:
        precisions = sorted({str(m.describe().get("precision")) for m in self.models.values()})
        return " \u00b7 ".join([str(state.get("method")), "last block", f"{state.get('mode')} mode",
                                f"{len(self.models)} models", "/".join(precisions)])

    def _clear_outputs(self) -> None:
        self.table.value = ""

    def render(self) -> dict[str, Any]:
        """Explain the current image against the current prompts under every model and redraw."""
        from .compare import compare_models

        state = self._begin()
        fig = png = error = None
        try:
            if not state["prompts"]:
                raise ValueError("type at least one prompt (separate several with ';')")
            started = time.perf_counter()
            image = self.images[state["image"]]
            resolution = self.resolution or default_resolution(self.model, image)
            key = ("models", state["image"], tuple(state["prompts"]), state["method"], state["mode"], resolution)
            comparison = self.cache.get(key, lambda: compare_models(
                self.models, as_input(image), state["prompts"], method=state["method"], mode=state["mode"],
                resolution=resolution, progress=False))
            agreement = comparison.agreement()[0]  # (K, M, M)
            scores = comparison.scores[:, 0]  # (M, K)
            state.update(resolution=resolution, scores=scores.tolist(),
                         agreement={p: agreement[k].round(4).tolist() for k, p in enumerate(state["prompts"])})
            fig = self.draw(comparison, state)
            png = figure_png(fig)
            self.comparison = comparison
            self.table.value = _agreement_html(comparison.names, state["prompts"], agreement)
            state["seconds"] = round(time.perf_counter() - started, 3)
            self.status.value = (f"<small>{html.escape(self._describe(state))} \u00b7 drawn in "
                                 f"{state['seconds']:.2f} s</small>")
        except Exception as caught:
            error = caught
        return self._finish(state, fig, png, error)

    def draw(self, comparison: Any, state: Mapping[str, Any]):
        """Models x prompts panels on the first model's picture (``ModelComparison.plot``)."""
        families = ", ".join(f"{n}: {m.describe().get('family')}" for n, m in self.models.items())
        title = (f"{self._describe(state)}\n{state['image']} \u00b7 {families} \u00b7 "
                 + ("one colour scale for all panels" if state["shared_scale"] else "each panel on its own scale"))
        self._drawn = comparison.plot(0, shared_scale=bool(state["shared_scale"]), title=title, width_px=self.width,
                                      colorbar=self.colorbar, reuse=self._drawn)
        return self._drawn


def _agreement_html(names: Sequence[str], prompts: Sequence[str], agreement: np.ndarray) -> str:
    """Spearman rank correlation of each pair of models' maps, one row per pair, one column per prompt."""
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    head = "".join(f"<th style='text-align:right'>{html.escape(p[:30])}</th>" for p in prompts)
    rows = "".join(
        f"<tr><td>{html.escape(names[i])} vs {html.escape(names[j])}</td>"
        + "".join(f"<td style='text-align:right'>{agreement[k, i, j]:+.3f}</td>" for k in range(len(prompts)))
        + "</tr>" for i, j in pairs)
    return ("<b>agreement of the maps</b> (Spearman rank correlation on the first model's picture)"
            f"<table><tr><th style='text-align:left'>models</th>{head}</tr>{rows}</table>")
