"""Figures: heat-map overlays, image x prompt grids, panels of maps, and word importance as text and bars.

Every function returns a matplotlib Figure; ``save_figure`` writes it as PNG, PDF or SVG.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import matplotlib
import numpy as np
from matplotlib import pyplot as plt
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from .methods.scores import DEFAULT_SCORE, SYMBOLS
from .text import display_piece

if TYPE_CHECKING:
    from .results import ImageExplanation, WordImportance

FIGURE_FORMATS = ("png", "pdf", "svg")

#: heat_map_panels' layout: every panel is PANEL_INCHES square and text has fixed point sizes, so at
#: PANEL_DPI (and shown at its pixel size) text looks the same whatever the number of panels
PANEL_INCHES = 2.0
PANEL_DPI = 100
TITLE_POINTS = 9
SUPTITLE_POINTS = 10
NEGATIVE_COLOUR = "#b03a2e"
SCALES = ("panel", "shared")


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def overlay(image: Image.Image, heatmap: np.ndarray, *, ax=None, alpha: float = 0.5, cmap: str = "jet",
            title: str | None = None, colorbar: bool = False) -> Figure:
    """Draw a [0, 1] heat map over its image (the map is resized to the image if needed)."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D, got shape {heatmap.shape}")
    if heatmap.shape != (image.height, image.width):
        resized = Image.fromarray(heatmap).resize(image.size, Image.BILINEAR)
        heatmap = np.asarray(resized, dtype=np.float32)
    fig, ax = _new_axes(ax, (4, 4 * image.height / max(image.width, 1)))
    ax.imshow(image)
    shown = ax.imshow(heatmap, cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    if colorbar:
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title, fontsize=9)
    ax.axis("off")
    return fig


def plot_explanation_grid(explanation: "ImageExplanation", *, images: Sequence[int] | None = None,
                          prompts: Sequence[int] | None = None, alpha: float = 0.5, cmap: str = "jet",
                          panel_size: float = 2.4, show_input: bool = True, scores: bool = True,
                          colorbar: bool = True) -> Figure:
    """Grid of images (rows) x prompts (columns), each panel a heat-map overlay with its score (a negative
    one in red, its panel framed in red, as the explorers draw it), each map min-max scaled on its own (the
    colour bar says so; ``heat_map_grid``). A pyplot figure."""
    rows = list(range(len(explanation))) if images is None else list(images)
    cols = list(range(len(explanation.prompts))) if prompts is None else list(prompts)
    if not rows or not cols:
        raise ValueError("nothing to plot: choose at least one image and one prompt")
    score = explanation.settings.get("score", DEFAULT_SCORE)  # absent: the cosine (results made before the setting)
    symbol = SYMBOLS.get(score, "S")
    panel_rows = []
    for b in rows:
        best = int(explanation.scores[b].argmax())
        titles = []
        for k in cols:
            title = explanation.prompts[k]
            if scores:
                marker = " (best)" if k == best and len(explanation.prompts) > 1 else ""
                title = f"{title}\n{symbol} = {float(explanation.scores[b, k]):.3f}{marker}"
            titles.append(title)
        panel_rows.append(PanelRow(explanation.images[b], [explanation.raw[b][k] for k in cols], titles,
                                   "input" if show_input else None,
                                   flagged=[scores and float(explanation.scores[b, k]) < 0 for k in cols]))
    settings = explanation.settings
    described = [settings.get("method", "?")]
    if settings.get("layers") is not None:
        layers = list(settings["layers"])
        described.append(("block " if len(layers) == 1 else "blocks ") + ", ".join(str(layer) for layer in layers))
    if settings.get("mode"):
        described.append(f"{settings['mode']} mode")
    if score != DEFAULT_SCORE:
        described.append(f"score {score}")
    described.append(f"model {settings.get('model', '?')}")
    return heat_map_grid(panel_rows, title=" \u00b7 ".join(described), width_px=None, colorbar=colorbar, cmap=cmap,
                         alpha=alpha, panel_inches=panel_size, pyplot=True)


def _importance(pair: "WordImportance", level: str) -> tuple[list[str], np.ndarray]:
    if level == "word":
        return list(pair.words), np.asarray(pair.word_importance)
    if level == "token":
        return [display_piece(t) for t in pair.tokens], np.asarray(pair.token_importance)
    raise ValueError(f"level must be 'word' or 'token', got {level!r}")


def plot_word_bars(pair: "WordImportance", *, level: str = "word", ax=None, color: str = "#c0392b") -> Figure:
    """Bar chart of word (or BPE piece) importance in text order."""
    labels, values = _importance(pair, level)
    fig, ax = _new_axes(ax, (max(3.0, 0.55 * len(labels) + 1), 2.8))
    positions = np.arange(len(labels))
    ax.bar(positions, values, color=color)
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_ylabel("importance")
    ax.set_ylim(0, max(float(values.max()) if len(values) else 0.0, 1e-6) * 1.15)
    ax.set_title(f"“{pair.text}”  (S = {pair.score:.3f})", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def plot_highlighted_text(pair: "WordImportance", *, level: str = "word", ax=None, cmap: str = "Reds",
                          fontsize: int = 13, width: float = 7.0) -> Figure:
    """The text with each word's background shaded by its importance (darkest = most important)."""
    labels, values = _importance(pair, level)
    colours = matplotlib.colormaps[cmap]
    peak = float(values.max()) if len(values) and values.max() > 0 else 1.0
    fig, ax = _new_axes(ax, (width, 1.2))
    ax.axis("off")
    renderer = fig.canvas.get_renderer()
    x, y, line_height = 0.01, 0.7, 0.0
    for label, value in zip(labels, values):
        shade = float(value) / peak
        text = ax.text(x, y, label, fontsize=fontsize, transform=ax.transAxes, va="center",
                       color="white" if shade > 0.6 else "black",
                       bbox=dict(boxstyle="round,pad=0.25", facecolor=colours(shade), edgecolor="none"))
        box = text.get_window_extent(renderer=renderer).transformed(ax.transAxes.inverted())
        if box.x1 > 0.99 and x > 0.01:  # wrap to the next line
            x, y = 0.01, y - max(line_height, box.height) * 1.8
            text.set_position((x, y))
            box = text.get_window_extent(renderer=renderer).transformed(ax.transAxes.inverted())
        line_height = box.height
        x = box.x1 + 0.015
    ax.set_title(f"S = {pair.score:.3f}", fontsize=9, loc="left")
    return fig


def save_figure(fig: Figure, path: str | Path, formats: Iterable[str] | None = None, *, dpi: int = 200) -> list[Path]:
    """Save ``fig``. With ``formats`` (e.g. ("png", "pdf")) one file per format next to ``path`` (its
    suffix replaced); otherwise the format comes from ``path``'s suffix (png, pdf or svg)."""
    path = Path(path)
    if formats is None:
        suffix = path.suffix.lower().lstrip(".")
        if suffix not in FIGURE_FORMATS:
            raise ValueError(f"cannot tell the figure format from {path.name!r}: use a .png, .pdf or .svg name")
        formats = [suffix]
    formats = [f.lower().lstrip(".") for f in formats]
    unknown = [f for f in formats if f not in FIGURE_FORMATS]
    if unknown:
        raise ValueError(f"unsupported figure formats {unknown}; choose from {FIGURE_FORMATS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        fig.savefig(target, dpi=dpi, bbox_inches="tight")
        written.append(target)
    return written


def panel_columns(panels: int, width_px: int, *, panel_inches: float = PANEL_INCHES, dpi: int = PANEL_DPI,
                  reserved_px: int = 0) -> int:
    """How many panels of ``panel_inches`` fit side by side in ``width_px`` pixels (at least one, at most
    ``panels``)."""
    if panels < 1:
        raise ValueError("panels must be at least 1")
    fit = int((width_px - reserved_px) // (panel_inches * dpi + 0.15 * dpi))
    return max(1, min(panels, fit))


#: where a title line breaks, first choice first: at a " · " separator (dropped there); then before a
#: parenthesis, after a comma or after a colon; then between words
_BREAKS = (re.compile(r"(?= \u00b7 )"), re.compile(r"(?= \()|(?<=, )|(?<=: )"))


def _wrapped(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters, broken at its separators where it can (``_BREAKS``:
    a " · " first, then " (", ", " or ": "), so that a phrase such as "(no mode)" or "top 2 randomised"
    stays on one line; a piece longer than a line is broken between words."""
    return "\n".join(line for paragraph in text.split("\n") for line in _wrap_line(paragraph, width, 0))


def _wrap_line(text: str, width: int, level: int) -> list[str]:
    if len(text) <= width:
        return [text]
    if level == len(_BREAKS):
        return textwrap.wrap(text, width=width, break_long_words=True) or [""]
    lines, line = [], ""
    for piece in _BREAKS[level].split(text):
        if not piece:
            continue
        if line.strip() and len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = piece.lstrip().removeprefix("\u00b7").lstrip()
        else:
            line += piece
    lines.append(line.rstrip())
    return [part for line in lines for part in _wrap_line(line, width, level + 1)]


def signed(value: float, digits: int = 3) -> str:
    """A score with its sign always written, and a true minus sign: "+0.312", "−0.462"."""
    return f"{value:+.{digits}f}".replace("-", "\u2212")


def format_seconds(seconds: float) -> str:
    """A run time with three significant digits in a unit that suits it: "8.42 ms", "153 ms", "2.31 s"."""
    if seconds < 1.0:
        milliseconds = 1000.0 * seconds
        return f"{milliseconds:.3g} ms" if milliseconds >= 1.0 else f"{milliseconds:.2f} ms"
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def map_scale(maps: Sequence[np.ndarray], scale: str) -> tuple[list[np.ndarray], float, float]:
    """The maps as shown and the (vmin, vmax) of their colour scale.

    ``"panel"``: each map min-max normalised to [0, 1] on its own (a constant map gives zeros); the
    scale is 0 (each map's minimum) to 1 (its maximum). ``"shared"``: the maps' own values on one scale
    from min(0, smallest value) to the largest value over all maps, so that a weak map looks weak.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    arrays = [np.asarray(m, dtype=np.float32) for m in maps]
    if scale == "panel":
        shown = []
        for a in arrays:
            low, high = float(a.min()), float(a.max())
            shown.append((a - low) / (high - low) if high > low else np.zeros_like(a))
        return shown, 0.0, 1.0
    low = min([0.0] + [float(a.min()) for a in arrays])
    high = max([float(a.max()) for a in arrays] + [low])
    if high <= low:
        return [np.zeros_like(a) for a in arrays], 0.0, 1.0
    return arrays, low, high


#: the colour bar's label for each scale
SCALE_LABELS = {"panel": "each panel scaled:\n0 its min, 1 its max", "shared": "map value, one scale\nfor all panels"}


@dataclass
class PanelRow:
    """One picture and its maps, a row of ``heat_map_grid`` (wrapped onto further lines when it has more
    panels than fit in a line).

    ``maps``: 2-D arrays of raw values (resized to the picture when their shape differs); ``titles``: one
    per map; ``input_title``: the picture's own panel's title (None: no picture panel); ``input_colour``:
    that title's colour; ``flagged``: maps drawn with a red frame and a red title; ``ranges``: per map
    None (the figure's scale) or the (low, high) that map is drawn on, 0 to 1 of a "panel" figure's
    colour bar (for example a reconstruction drawn on the scale of the map it reconstructs).
    """

    picture: Image.Image
    maps: Sequence[np.ndarray]
    titles: Sequence[str]
    input_title: str | None = "input"
    input_colour: str = "black"
    flagged: Sequence[bool] | None = None
    ranges: Sequence[tuple[float, float] | None] | None = None

    def __post_init__(self) -> None:
        if len(self.maps) != len(self.titles):
            raise ValueError(f"{len(self.maps)} maps for {len(self.titles)} titles")
        for name in ("flagged", "ranges"):
            given = getattr(self, name)
            if given is not None and len(given) != len(self.maps):
                raise ValueError(f"{len(given)} {name} for {len(self.maps)} maps")

    @property
    def panels(self) -> int:
        return len(self.maps) + (self.input_title is not None)


def _at_picture_size(heat: Any, picture: Image.Image) -> np.ndarray:
    """A map at its picture's size (bilinear, as ``ImageExplanation.heatmap``), as float32 numpy."""
    shape = (picture.height, picture.width)
    array = np.asarray(heat.detach().cpu().numpy() if hasattr(heat, "detach") else heat, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"a map must be 2-D, got shape {array.shape}")
    if array.shape != shape:
        import torch

        from .maps import resize_maps

        array = resize_maps(torch.from_numpy(array), shape).numpy().astype(np.float32)
    return array


def _shown_maps(rows: Sequence[PanelRow], scale: str) -> tuple[list[list[np.ndarray]], float, float]:
    """Every row's maps as drawn, and the colour scale (``map_scale``; a map with its own range is drawn
    on that range instead, with a "panel" scale only)."""
    raw = [[_at_picture_size(m, row.picture) for m in row.maps] for row in rows]
    ranges = [list(row.ranges) if row.ranges is not None else [None] * len(maps) for row, maps in zip(rows, raw)]
    if scale != "panel" and any(r is not None for given in ranges for r in given):
        raise ValueError("a map's own range needs scale='panel'")
    free_shown, vmin, vmax = map_scale([m for maps, given in zip(raw, ranges) for m, r in zip(maps, given)
                                        if r is None], scale)
    free = iter(free_shown)
    shown = []
    for maps, given in zip(raw, ranges):
        drawn = []
        for m, r in zip(maps, given):
            if r is None:
                drawn.append(next(free))
            else:
                low, high = float(r[0]), float(r[1])
                drawn.append(np.clip((m - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(m))
        shown.append(drawn)
    return shown, vmin, vmax


def heat_map_grid(rows: Sequence[PanelRow], *, title: str, scale: str = "panel", colorbar: bool = True,
                  bar_label: str | None = None, width_px: int | None = 980, columns: int | None = None,
                  cmap: str = "jet", alpha: float = 0.5, panel_inches: float = PANEL_INCHES, dpi: int = PANEL_DPI,
                  title_points: float = TITLE_POINTS, suptitle_points: float = SUPTITLE_POINTS,
                  pyplot: bool = False) -> Figure:
    """Rows of heat-map overlays: each ``PanelRow`` its picture, then one overlay per map, starting on a new
    line and wrapped onto as many lines as ``columns`` (or ``width_px``) needs.

    Text has fixed point sizes and every panel is ``panel_inches`` wide whatever the number of panels
    (the figure grows instead); the layout is computed, so the title block, the panel titles and the
    panels never overlap. ``scale``: "panel" (each map min-max on its own) or "shared" (one scale of raw
    values for every map of the figure), see ``map_scale``; ``colorbar`` adds one bar for the figure
    that says which (``bar_label`` replaces its label). ``title`` may hold several lines; every title is
    wrapped at its separators. ``width_px`` None: no width limit (``columns``, or every row on one line).
    ``pyplot``: make the figure with pyplot (so that ``plt.show`` and a notebook's inline display pick it
    up, as for any pyplot figure); otherwise it is on its own Agg canvas, not registered with pyplot.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("nothing to draw: give at least one row")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    widest = max(row.panels for row in rows)
    if widest == 0:
        raise ValueError("nothing to draw: give at least one map or the input")
    shown, vmin, vmax = _shown_maps(rows, scale)
    bar_in = 1.0 if colorbar else 0.0
    gap_in, margin_in = 0.15, 0.08
    # the colour bar and the margins left and right: the figure is at most width_px wide
    cols = widest if width_px is None else panel_columns(widest, width_px, panel_inches=panel_inches, dpi=dpi,
                                                         reserved_px=int(round((bar_in + 2 * margin_in) * dpi)))
    if columns is not None:
        cols = min(cols if width_px is not None else columns, columns, widest)
    chars = max(8, int(panel_inches * 72 / (title_points * 0.56)))
    titles = [([row.input_title] if row.input_title is not None else []) + list(row.titles) for row in rows]
    titles = [[_wrapped(t, chars) for t in line] for line in titles]
    title_lines = max(t.count("\n") + 1 for line in titles for t in line)
    suptitle = _wrapped(title, int((cols * (panel_inches + 0.15) + bar_in) * 72 / (suptitle_points * 0.56)))
    lines = [-(-row.panels // cols) for row in rows]
    pad_pt = 5
    line_in = title_points * 1.3 / 72
    head_in = (suptitle.count("\n") + 1) * suptitle_points * 1.35 / 72 + 0.12
    title_in = title_lines * line_in + pad_pt / 72
    cell_w, cell_h = panel_inches + gap_in, panel_inches + title_in + gap_in
    width = round((cols * cell_w + bar_in + 2 * margin_in) * dpi) / dpi  # whole pixels
    height = round((head_in + sum(lines) * cell_h + margin_in) * dpi) / dpi
    if pyplot:
        fig = plt.figure(figsize=(width, height), dpi=dpi)
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        fig = Figure(figsize=(width, height), dpi=dpi)
        FigureCanvasAgg(fig)
    fig.suptitle(suptitle, fontsize=suptitle_points, y=1 - 0.06 / height, va="top")
    norm = Normalize(vmin=vmin, vmax=vmax)
    first_line = 0
    for row, drawn, names, count in zip(rows, shown, titles, lines):
        extra = 1 if row.input_title is not None else 0
        flagged = list(row.flagged) if row.flagged is not None else [False] * len(drawn)
        for index in range(row.panels):
            r, c = divmod(index, cols)
            left = margin_in + c * cell_w + gap_in / 2
            bottom = height - head_in - (first_line + r) * cell_h - title_in - panel_inches
            ax = fig.add_axes((left / width, bottom / height, panel_inches / width, panel_inches / height))
            ax.imshow(row.picture)
            red = index >= extra and flagged[index - extra]
            if index >= extra:
                ax.imshow(drawn[index - extra], cmap=cmap, alpha=alpha, norm=Normalize(vmin=vmin, vmax=vmax))
            ax.set_axis_off()  # no ticks or spines to lay out and draw (the frame below is a plain patch)
            if red:
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=NEGATIVE_COLOUR,
                                       linewidth=2.5, clip_on=False, gid="flag"))
            colour = NEGATIVE_COLOUR if red else (row.input_colour if index < extra else "black")
            ax.set_title(names[index], fontsize=title_points, color=colour, pad=pad_pt)
        first_line += count
    if colorbar:
        top = height - head_in - title_in
        bar_h = max(0.8, min(panel_inches, top - margin_in - 0.1))
        cax = fig.add_axes(((width - bar_in + 0.05) / width, (top - bar_h) / height, 0.13 / width, bar_h / height))
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
        bar.ax.tick_params(labelsize=7)
        bar.set_label(bar_label or SCALE_LABELS[scale], fontsize=7)
        fig._panel_bar = bar
    return fig


def heat_map_panels(picture: Image.Image, maps: Sequence[np.ndarray], titles: Sequence[str], *, title: str,
                    scale: str = "panel", colorbar: bool = True, flagged: Sequence[bool] | None = None,
                    width_px: int = 980, input_title: str | None = "input", cmap: str = "jet", alpha: float = 0.5,
                    panel_inches: float = PANEL_INCHES, dpi: int = PANEL_DPI, columns: int | None = None,
                    reuse: Figure | None = None) -> Figure:
    """The input picture, then one overlay per map, in as many rows as ``width_px`` needs (``heat_map_grid``
    with one ``PanelRow``).

    ``maps`` are 2-D arrays at the picture's size (raw values); ``scale`` is "panel" or "shared" (see
    ``map_scale``); ``colorbar`` adds one bar for the figure that says which. Panels with ``flagged`` True
    get a red frame and a red title (the explorers flag a negative score S this way). ``title`` may hold
    several lines. ``columns``: panels per row when they fit in ``width_px`` (a grid, for example models x
    prompts); otherwise as many as fit. Returns a Figure on its own Agg canvas, not registered with pyplot
    (nothing to close).

    ``reuse``: a figure this function made before; when its layout (panel count, rows, title lines, size)
    is the one needed, its images, titles, frames and colour bar are updated in place and it is returned
    (the same drawing, without building the axes again: an explorer's redraw is faster).
    """
    if len(maps) != len(titles):
        raise ValueError(f"{len(maps)} maps for {len(titles)} titles")
    flagged = list(flagged) if flagged is not None else [False] * len(maps)
    if len(flagged) != len(maps):
        raise ValueError(f"{len(flagged)} flags for {len(maps)} maps")
    shape = (picture.height, picture.width)
    for index, heat in enumerate(maps):
        if np.shape(heat) != shape:
            raise ValueError(f"map {index} has shape {np.shape(heat)}, the picture {shape}")
    row = PanelRow(picture, maps, titles, input_title, flagged=flagged)
    if row.panels == 0:
        raise ValueError("nothing to draw: give at least one map or the input")
    options = dict(title=title, scale=scale, colorbar=colorbar, width_px=width_px, columns=columns, cmap=cmap,
                   alpha=alpha, panel_inches=panel_inches, dpi=dpi)
    layout = _panel_layout(row, **options)
    if reuse is not None and getattr(reuse, "_panel_layout", None) == layout:
        return _redraw(reuse, row, **options)
    fig = heat_map_grid([row], **options)
    fig._panel_layout = layout
    return fig


def _panel_layout(row: PanelRow, *, title: str, scale: str, colorbar: bool, width_px: int, columns: int | None,
                  cmap: str, alpha: float, panel_inches: float, dpi: int) -> tuple:
    """What decides ``heat_map_panels``' axes: a figure with the same layout can be redrawn in place."""
    bar_in = 1.0 if colorbar else 0.0
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    cols = panel_columns(row.panels, width_px, panel_inches=panel_inches, dpi=dpi, reserved_px=int(bar_in * dpi))
    if columns is not None:
        cols = min(cols, columns, row.panels)
    chars = max(8, int(panel_inches * 72 / (TITLE_POINTS * 0.56)))
    names = ([row.input_title] if row.input_title is not None else []) + list(row.titles)
    title_lines = max(_wrapped(t, chars).count("\n") + 1 for t in names)
    suptitle = _wrapped(title, int((cols * (panel_inches + 0.15) + bar_in) * 72 / (SUPTITLE_POINTS * 0.56)))
    return (row.panels, row.input_title is not None, cols, title_lines, suptitle.count("\n"), colorbar, cmap,
            alpha, panel_inches, dpi, (row.picture.height, row.picture.width))


def _redraw(fig: Figure, row: PanelRow, *, title: str, scale: str, colorbar: bool, width_px: int,
            columns: int | None, cmap: str, alpha: float, panel_inches: float, dpi: int) -> Figure:
    """``heat_map_panels``' figure ``fig`` with new pictures, maps, titles, frames and colour scale, its axes
    kept (the layout is the same: ``_panel_layout``)."""
    cols = fig._panel_layout[2]
    bar_in = 1.0 if colorbar else 0.0
    fig._suptitle.set_text(_wrapped(title, int((cols * (panel_inches + 0.15) + bar_in) * 72
                                               / (SUPTITLE_POINTS * 0.56))))
    (shown,), vmin, vmax = _shown_maps([row], scale)
    chars = max(8, int(panel_inches * 72 / (TITLE_POINTS * 0.56)))
    extra = 1 if row.input_title is not None else 0
    names = [_wrapped(t, chars) for t in ([row.input_title] if extra else []) + list(row.titles)]
    for index, ax in enumerate(fig.axes[:row.panels]):
        red = index >= extra and row.flagged[index - extra]
        ax.images[0].set_data(row.picture)
        if index >= extra:
            ax.images[1].set_data(shown[index - extra])
            ax.images[1].set_norm(Normalize(vmin=vmin, vmax=vmax))
        for patch in [p for p in ax.patches if p.get_gid() == "flag"]:
            patch.remove()
        if red:
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=NEGATIVE_COLOUR,
                                   linewidth=2.5, clip_on=False, gid="flag"))
        ax.title.set_text(names[index])
        ax.title.set_color(NEGATIVE_COLOUR if red else "black")
    if colorbar:
        fig._panel_bar.mappable.set_norm(Normalize(vmin=vmin, vmax=vmax))
        fig._panel_bar.update_normal(fig._panel_bar.mappable)
        fig._panel_bar.ax.tick_params(labelsize=7)
        fig._panel_bar.set_label(SCALE_LABELS[scale], fontsize=7)
    return fig


def add_colour_bar(fig: Figure, axes: Any, *, scale: str = "panel", label: str | None = None,
                   cmap: str = "jet", vmin: float = 0.0, vmax: float = 1.0) -> Any:
    """A colour bar beside ``axes`` (one axes or several) of a figure drawn with ``overlay``; its label says
    how the maps are scaled (``SCALE_LABELS``, or ``label``)."""
    bar = fig.colorbar(ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=cmap), ax=axes, fraction=0.03,
                       pad=0.02)
    bar.ax.tick_params(labelsize=7)
    bar.set_label(label or SCALE_LABELS[scale], fontsize=7)
    return bar
