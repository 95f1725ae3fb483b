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
figure; None when the last render failed; a redraw with the same layout updates the same figure in
place), ``history`` (every render's ``last``) and ``error`` (None, or why the last render failed).
``export(exporter, name)`` saves the current figure with its manifest.

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

The package: ``base`` (the render frame every explorer shares: ``render()`` calls ``compute``, ``draw``
and ``show``; the cache, debouncing, busy state, errors, export), ``controls`` (the shared controls),
``markup`` (the HTML beside the figures: status lines, scores, words, tables), ``policy`` (what the
explorers offer of each method, read from its ``MethodSpec``), and one module per explorer.
"""

from __future__ import annotations

from ..plotting import signed  # how the explorers write a score, as the tests check it
from .base import CACHE_SIZE, DEBOUNCE_SECONDS, DEFAULT_WIDTH, figure_png
from .controls import PROMPT_SEPARATOR
from .explorer import ADD_PROMPT, Explorer
from .layer_viewer import LayerViewer
from .markup import scores_html, settings_text, words_html
from .method_comparison import MethodComparison
from .model_comparison import ModelComparisonView
from .policy import (GENERIC_CLASSES, comparison_methods, default_method_options, image_blocks, method_takes,
                     text_blocks)

__all__ = [
    "ADD_PROMPT", "CACHE_SIZE", "DEBOUNCE_SECONDS", "DEFAULT_WIDTH", "GENERIC_CLASSES", "PROMPT_SEPARATOR", "Explorer",
    "LayerViewer", "MethodComparison", "ModelComparisonView", "comparison_methods", "default_method_options",
    "figure_png", "image_blocks", "method_takes", "scores_html", "settings_text", "signed", "text_blocks",
    "words_html",
]
