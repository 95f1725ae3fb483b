"""Figures: heat-map overlays, image x prompt grids, panels of maps, and word importance as text and bars.

Every function returns a matplotlib Figure; ``save_figure`` writes it as PNG, PDF or SVG.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import textwrap

import matplotlib
import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

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
                          panel_size: float = 2.4, show_input: bool = True, scores: bool = True) -> Figure:
    """Grid of images (rows) x prompts (columns), each panel a heat-map overlay with its score."""
    rows = list(range(len(explanation))) if images is None else list(images)
    cols = list(range(len(explanation.prompts))) if prompts is None else list(prompts)
    if not rows or not cols:
        raise ValueError("nothing to plot: choose at least one image and one prompt")
    extra = 1 if show_input else 0
    fig, axes = plt.subplots(len(rows), len(cols) + extra, squeeze=False,
                             figsize=(panel_size * (len(cols) + extra), panel_size * len(rows) + 0.4))
    for r, b in enumerate(rows):
        picture = explanation.images[b]
        if show_input:
            axes[r, 0].imshow(picture)
            axes[r, 0].set_title("input", fontsize=9)
            axes[r, 0].axis("off")
        best = int(explanation.scores[b].argmax())
        for c, k in enumerate(cols):
            title = explanation.prompts[k]
            if scores:
                marker = " *" if k == best and len(explanation.prompts) > 1 else ""
                title = f"{title}\nS = {float(explanation.scores[b, k]):.3f}{marker}"
            overlay(picture, explanation.heatmap(b, k), ax=axes[r, c + extra], alpha=alpha, cmap=cmap, title=title)
    method = explanation.settings.get("method", "")
    fig.suptitle(f"{method}  ·  model {explanation.settings.get('model', '?')}", fontsize=10)
    fig.tight_layout()
    return fig


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


def _wrapped(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width=width, break_long_words=True) or [""])


def signed(value: float, digits: int = 3) -> str:
    """A score with its sign always written, and a true minus sign: "+0.312", "−0.462"."""
    return f"{value:+.{digits}f}".replace("-", "\u2212")


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


def heat_map_panels(picture: Image.Image, maps: Sequence[np.ndarray], titles: Sequence[str], *, title: str,
                    scale: str = "panel", colorbar: bool = True, flagged: Sequence[bool] | None = None,
                    width_px: int = 980, input_title: str | None = "input", cmap: str = "jet", alpha: float = 0.5,
                    panel_inches: float = PANEL_INCHES, dpi: int = PANEL_DPI, columns: int | None = None,
                    reuse: Figure | None = None) -> Figure:
    """The input picture, then one overlay per map, in as many rows as ``width_px`` needs (the figure is at
    most ``width_px`` wide, colour bar and margins included, unless one panel alone is wider).

    Text has fixed point sizes and every panel is ``panel_inches`` wide whatever the number of panels
    (the figure grows instead), and the layout is computed, so titles never overlap. ``maps`` are 2-D
    arrays at the picture's size (raw values); ``scale`` is "panel" or "shared" (see ``map_scale``);
    ``colorbar`` adds one bar for the figure that says which. Panels with ``flagged`` True get a red
    frame and a red title (the explorers flag a negative score S this way). ``title`` may hold several
    lines. ``columns``: panels per row when they fit in ``width_px`` (a grid, for example models x prompts);
    otherwise as many as fit. Returns a Figure on its own Agg canvas, not registered with pyplot (nothing
    to close).

    ``reuse``: a figure this function made before; when its layout (panel count, rows, title lines, size)
    is the one needed, its images, titles, frames and colour bar are updated in place and it is returned
    (the same drawing, without building the axes again: an explorer's redraw is faster).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.patches import Rectangle
    from matplotlib.colors import Normalize

    if len(maps) != len(titles):
        raise ValueError(f"{len(maps)} maps for {len(titles)} titles")
    flagged = list(flagged) if flagged is not None else [False] * len(maps)
    if len(flagged) != len(maps):
        raise ValueError(f"{len(flagged)} flags for {len(maps)} maps")
    shown, vmin, vmax = map_scale(maps, scale)
    extra = 1 if input_title is not None else 0
    n = len(shown) + extra
    if n == 0:
        raise ValueError("nothing to draw: give at least one map or the input")
    bar_in = 1.0 if colorbar else 0.0
    gap_in, margin_in = 0.15, 0.08
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    # the colour bar and the margins left and right: the figure is at most width_px wide
    cols = panel_columns(n, width_px, panel_inches=panel_inches, dpi=dpi,
                         reserved_px=int(round((bar_in + 2 * margin_in) * dpi)))
    if columns is not None:
        cols = min(cols, columns, n)
    rows = -(-n // cols)
    chars = max(8, int(panel_inches * 72 / (TITLE_POINTS * 0.56)))
    panel_titles = ([input_title] if extra else []) + [_wrapped(t, chars) if "\n" not in t else
                                                      "\n".join(_wrapped(line, chars) for line in t.split("\n"))
                                                      for t in titles]
    title_lines = max(t.count("\n") + 1 for t in panel_titles)
    suptitle = "\n".join(_wrapped(line, int((cols * (panel_inches + 0.15) + bar_in) * 72 / (SUPTITLE_POINTS * 0.56)))
                         for line in title.split("\n"))
    pad_pt = 5
    line_in = TITLE_POINTS * 1.3 / 72
    head_in = (suptitle.count("\n") + 1) * SUPTITLE_POINTS * 1.35 / 72 + 0.12
    title_in = title_lines * line_in + pad_pt / 72
    cell_w, cell_h = panel_inches + gap_in, panel_inches + title_in + gap_in
    width = cols * cell_w + bar_in + 2 * margin_in
    height = head_in + rows * cell_h + margin_in
    width, height = round(width * dpi) / dpi, round(height * dpi) / dpi  # whole pixels
    shape = (picture.height, picture.width)
    for index, heat in enumerate(shown):
        if heat.shape != shape:
            raise ValueError(f"map {index} has shape {heat.shape}, the picture {shape}")
    norm = Normalize(vmin=vmin, vmax=vmax)
    colour_label = "map value, one scale\nfor all panels" if scale == "shared" else "each panel scaled:\n0 its min, 1 its max"
    layout = (n, extra, cols, title_lines, suptitle.count("\n"), width, height, dpi, colorbar, cmap, alpha, shape)
    if reuse is not None and getattr(reuse, "_panel_layout", None) == layout:
        reuse._suptitle.set_text(suptitle)
        for index, ax in enumerate(reuse.axes[:n]):
            red = index >= extra and flagged[index - extra]
            ax.images[0].set_data(picture)
            if index >= extra:
                ax.images[1].set_data(shown[index - extra])
                ax.images[1].set_norm(Normalize(vmin=vmin, vmax=vmax))
            for patch in [p for p in ax.patches if p.get_gid() == "flag"]:
                patch.remove()
            if red:
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False,
                                       edgecolor=NEGATIVE_COLOUR, linewidth=2.5, clip_on=False, gid="flag"))
            ax.title.set_text(panel_titles[index])
            ax.title.set_color(NEGATIVE_COLOUR if red else "black")
        if colorbar:
            reuse._panel_bar.mappable.set_norm(norm)
            reuse._panel_bar.update_normal(reuse._panel_bar.mappable)
            reuse._panel_bar.ax.tick_params(labelsize=7)
            reuse._panel_bar.set_label(colour_label, fontsize=7)
        return reuse
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.suptitle(suptitle, fontsize=SUPTITLE_POINTS, y=1 - 0.06 / height, va="top")
    for index in range(n):
        r, c = divmod(index, cols)
        left = margin_in + c * cell_w + gap_in / 2
        bottom = height - head_in - r * cell_h - title_in - panel_inches
        ax = fig.add_axes((left / width, bottom / height, panel_inches / width, panel_inches / height))
        ax.imshow(picture)
        red = index >= extra and flagged[index - extra]
        if index >= extra:
            ax.imshow(shown[index - extra], cmap=cmap, alpha=alpha, norm=Normalize(vmin=vmin, vmax=vmax))
        ax.set_axis_off()  # no ticks or spines to lay out and draw (the frame below is a plain patch)
        if red:
            ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor=NEGATIVE_COLOUR,
                                   linewidth=2.5, clip_on=False, gid="flag"))
        ax.set_title(panel_titles[index], fontsize=TITLE_POINTS, color=NEGATIVE_COLOUR if red else "black",
                     pad=pad_pt)
    if colorbar:
        top = height - head_in - title_in
        bar_h = max(0.8, min(panel_inches, top - margin_in - 0.1))
        cax = fig.add_axes(((width - bar_in + 0.05) / width, (top - bar_h) / height, 0.13 / width, bar_h / height))
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
        bar.ax.tick_params(labelsize=7)
        bar.set_label(colour_label, fontsize=7)
        fig._panel_bar = bar
    fig._panel_layout = layout
    return fig
