"""The controls the explorers share, made in one place: the outer panel, the rows of controls (wrapping
where the window is narrow), the prompt box with its apply button, the image list, the block slider, the mode
buttons, the shared-scale box, the export row and the note a saved notebook shows without a kernel."""

from __future__ import annotations

import functools
from typing import Any, Sequence

#: what separates prompts in the explorer's prompt box (a newline does too)
PROMPT_SEPARATOR = ";"
#: the least length (pixels) of the block slider's track
SLIDER_TRACK = 120
#: where the export button writes, by default (relative to the notebook's folder)
EXPORT_FOLDER = "outputs/explorers"


def ipywidgets():
    """The ipywidgets module, or an ImportError that says how to install it."""
    try:
        import ipywidgets
    except ImportError as error:  # pragma: no cover - ipywidgets is a runtime dependency
        raise ImportError("the explorers need ipywidgets: pip install ipywidgets") from error
    return ipywidgets


@functools.lru_cache(maxsize=None)
def _panel_type():
    """The explorers' outer box: a VBox whose plain-text form says what it is instead of listing its
    children, and whose display also carries a static HTML copy of the figure (``fallback``): what a
    viewer without the widget manager shows, or JupyterLab for an untrusted notebook."""
    w = ipywidgets()

    class ExplorerPanel(w.VBox):
        explorer = "explorer"
        fallback = None  # a callable giving the static HTML, set by the explorer

        def __repr__(self) -> str:
            return f"{self.explorer}: an interactive widget (live in a running notebook, or from its saved state)"

        def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
            bundle = super()._repr_mimebundle_(**kwargs)
            if bundle is not None and self.fallback is not None:
                bundle["text/html"] = self.fallback()
            return bundle

    return ExplorerPanel


def panel(name: str, children: list) -> Any:
    """The outer box of explorer ``name`` (what its ``.widget`` is)."""
    box = _panel_type()(children, layout=ipywidgets().Layout(max_width="100%"))
    box.explorer = name
    box.add_class("gradeclip-panel")
    return box


def row(children: Sequence[Any], align: str = "center") -> Any:
    """A row of controls (or of tables: ``align="flex-start"``) that wraps onto the next line where the output
    area is too narrow for it (no scrollbar, no control squeezed)."""
    w = ipywidgets()
    return w.HBox(list(children), layout=w.Layout(flex_flow="row wrap", align_items=align, max_width="100%"))


def control_rows(rows: Sequence[Any]) -> Any:
    """The controls of an explorer, one box: hidden (with the rows' broken-link marks) where the widget is
    shown from a notebook's saved state without a kernel, where the controls could do nothing."""
    box = ipywidgets().VBox(list(rows))
    box.add_class("gradeclip-controls")
    return box


def snapshot_note() -> Any:
    """The note shown instead of the controls where the widget has no kernel behind it (``STYLE`` hides
    it otherwise)."""
    from .markup import SNAPSHOT_NOTE

    note = ipywidgets().HTML(f"<b>static snapshot</b> of the last figure: {SNAPSHOT_NOTE}")
    note.add_class("gradeclip-snapshot-note")
    return note


def apply_button(what: str) -> Any:
    """The button that draws with the ``what`` ("prompts", "prompt") as typed."""
    w = ipywidgets()
    return w.Button(description="apply", icon="check", button_style="primary",
                    tooltip=f"draw with the {what} as typed (Enter in the box does the same)",
                    layout=w.Layout(width="120px"))


def prompt_box(prompts: Sequence[str]) -> tuple[Any, Any]:
    """The prompts box (prompts separated by ";", drawn on Enter) and its apply button."""
    w = ipywidgets()
    bad = [p for p in prompts if PROMPT_SEPARATOR in p or "\n" in p]
    if bad:
        raise ValueError(f"prompts cannot contain {PROMPT_SEPARATOR!r} or a newline (it separates them): {bad}")
    box = w.Text(value=join_prompts(prompts), description="prompts", continuous_update=False,
                 placeholder="type prompts separated by ; and press Enter", layout=flexible(600, 240))
    return box, apply_button("prompts")


def flexible(width: int, least: int) -> Any:
    """A control's layout in a row that wraps: ``least`` pixels wide, growing to ``width`` where the row
    has room (so that the control beside it stays on its line as long as both fit at their least)."""
    return ipywidgets().Layout(width="auto", min_width=f"{least}px", max_width=f"min({width}px, 100%)",
                               flex=f"1 1 {least}px")


def block_slider(low: int, high: int, value: int) -> Any:
    """The block slider: its track keeps a usable length (at least SLIDER_TRACK pixels) whatever the width."""
    return ipywidgets().IntSlider(min=low, max=high, value=value, description="block", continuous_update=False,
                                  layout=flexible(360, SLIDER_TRACK + 160))


def split_prompts(text: str) -> list[str]:
    """The prompts of a prompt box's text (split at ";" and newlines, blanks dropped)."""
    text = text.replace("\n", PROMPT_SEPARATOR)
    return [part.strip() for part in text.split(PROMPT_SEPARATOR) if part.strip()]


def join_prompts(prompts: Sequence[str]) -> str:
    """The prompt box's text for ``prompts``."""
    return f"{PROMPT_SEPARATOR} ".join(prompts)


def image_list(names: Sequence[str]) -> Any:
    """The list of the explorer's images, by name."""
    return ipywidgets().Dropdown(options=list(names), description="image")


def mode_buttons(mode: str) -> Any:
    """The mode switch (``adapters.MODES``)."""
    from ..adapters import MODES

    w = ipywidgets()
    return w.ToggleButtons(options=list(MODES), value=mode, description="mode", style={"button_width": "80px"},
                           layout=w.Layout(width="auto", flex="0 0 auto", display="flex"))


def score_dropdown(score: str, names: Sequence[str] | None = None) -> Any:
    """The explained score among ``names`` (the model's, ``methods.scores.model_scores``; None: a CLIP's
    ``SCORES``); the contrast takes prompts written "a | b"."""
    from ..methods.scores import SCORES

    w = ipywidgets()
    labels = {"contrast": "contrast (a | b)"}
    return w.Dropdown(options=[(labels.get(name, name), name) for name in (names or SCORES)], value=score,
                      description="score", layout=w.Layout(width="auto", min_width="190px", flex="0 0 auto"))


def shared_box(value: bool, what: str) -> Any:
    """The box that puts all ``what`` ("prompts", "panels") on one colour scale."""
    w = ipywidgets()
    return w.Checkbox(value=value, description=f"one colour scale for all {what}", indent=False,
                      layout=w.Layout(width="auto"))


def hint(text: str) -> Any:
    """A line of small print under the controls (``text`` is HTML)."""
    return ipywidgets().HTML(f"<small>{text}</small>", layout=ipywidgets().Layout(max_width="100%"))


def export_row() -> tuple[Any, Any, Any]:
    """The export controls: the folder (a text box, ``EXPORT_FOLDER`` by default), the button, and the
    line that says what was written."""
    w = ipywidgets()
    folder = w.Text(value=EXPORT_FOLDER, description="folder", placeholder="where the export button writes",
                    layout=flexible(360, 200))
    button = w.Button(description="export", icon="download", tooltip="save the figure (PNG, PDF) and its manifest "
                      "(JSON: model, method, settings, prompts, images) into the folder", layout=w.Layout(width="120px"))
    done = w.HTML(layout=w.Layout(max_width="100%"))
    return folder, button, done
