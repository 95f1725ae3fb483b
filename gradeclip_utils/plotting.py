"""Figures: heat-map overlays, image x prompt grids, and word importance as text and bars.

Every function returns a matplotlib Figure; ``save_figure`` writes it as PNG, PDF or SVG.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import matplotlib

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

from .text import display_piece

if TYPE_CHECKING:
    from .results import ImageExplanation, WordImportance

FIGURE_FORMATS = ("png", "pdf", "svg")


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
