"""The controls the explorers share, made in one place: the outer panel, the prompt box with its apply
button, the image list, the mode buttons and the shared-scale box."""

from __future__ import annotations

import functools
from typing import Any, Sequence

#: what separates prompts in the explorer's prompt box (a newline does too)
PROMPT_SEPARATOR = ";"


def ipywidgets():
    """The ipywidgets module, or an ImportError that says how to install it."""
    try:
        import ipywidgets
    except ImportError as error:  # pragma: no cover - ipywidgets is a runtime dependency
        raise ImportError("the explorers need ipywidgets: pip install ipywidgets") from error
    return ipywidgets


@functools.lru_cache(maxsize=None)
def _panel_type():
    """The explorers' outer box: a VBox whose plain-text form (what a viewer without the widget manager
    shows) says what it is instead of listing its children."""
    w = ipywidgets()

    class ExplorerPanel(w.VBox):
        explorer = "explorer"

        def __repr__(self) -> str:
            return f"{self.explorer}: an interactive widget (live in a running notebook, or from its saved state)"

    return ExplorerPanel


def panel(name: str, children: list) -> Any:
    """The outer box of explorer ``name`` (what its ``.widget`` is)."""
    box = _panel_type()(children)
    box.explorer = name
    return box


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
                 placeholder="type prompts separated by ; and press Enter", layout=w.Layout(width="600px"))
    return box, apply_button("prompts")


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
    return w.ToggleButtons(options=list(MODES), value=mode, description="mode",
                           style={"button_width": "80px", "description_width": "initial"},
                           layout=w.Layout(width="auto", flex="0 0 auto", display="flex"))


def shared_box(value: bool, what: str) -> Any:
    """The box that puts all ``what`` ("prompts", "panels") on one colour scale."""
    w = ipywidgets()
    return w.Checkbox(value=value, description=f"one colour scale for all {what}", indent=False,
                      layout=w.Layout(width="auto"))


def hint(text: str) -> Any:
    """A line of small print under the controls (``text`` is HTML)."""
    return ipywidgets().HTML(f"<small>{text}</small>")
