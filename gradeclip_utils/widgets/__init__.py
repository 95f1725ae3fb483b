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
the last state. The compute runs off the kernel's event loop, so changes made while it runs are seen: its
result is then outdated and never shown, and one more render follows with the last state. From the first
change until the new figure is in, the status line says what is being drawn and that the figure is
outdated, the old figure is greyed out and the apply button shows it is busy. A change made from code
(``explorer.layer.value = 2``) redraws at once, so the next line can read ``explorer.last``. A render that
fails replaces the figure, the scores and the words by the error (nothing stale stays up).

Controls. A setting the chosen method does not use (the block, the mode: ``MethodSpec.uses``) has its
control disabled, and the status line and title say "not used". A prompt with no words (punctuation alone)
is marked so and never the best; a prompt cut at the text tower's context length is named with the words
that were ignored. The explorer's "add" list and the method comparison's prompt list offer the prompts
that describe the chosen image (``samples.image_prompts``: a synthetic scene's objects and captions). The
export button writes the current figure (PNG, PDF) and its manifest into the folder in the box beside it
(``export_to_folder``; ``controls.EXPORT_FOLDER`` by default, relative to the notebook).

Figures. Panels have a fixed size and text a fixed point size; the figure grows with the number of
panels (wrapping into rows that fit ``width`` pixels) and is shown at its own pixel size where the output
area is wide enough, else scaled down to its width (nothing is cut), so text looks the same with one
prompt or seven. The rows of controls wrap in a narrow output area. The title names the method, block,
mode and precision (also in the exported files); a colour bar says whether each panel has its own scale
or all prompts share one (``shared_scale``); a negative score S gets a red title and frame.

Saved notebooks. Reopened without a kernel (the widget state saved with the notebook), an explorer shows
its last figure, its status line and one note ("static snapshot ... run the cell to use the controls")
instead of its controls; a viewer without the widget manager (or JupyterLab for an untrusted notebook)
shows the same as static HTML, with the figure of when the cell ran.

The explorers use the package's public API only (``explain_image``, ``explain_text``, the results
objects, ``model.describe()``) and the adapter interface's block count, so they work with any model
family that ``load_model`` returns. What differs for an image classifier they ask of the model: its targets
are classes when its adapter names them (``policy.class_labels``: the box takes names or indices, completed
from the labels), its scores and their default (``methods.scores.model_scores``, ``default_score``), the
methods and the word importance it cannot run (``policy.method_refusal``, from the declarations: marked in the
lists, and their reason shown in place of the figure).

The package: ``base`` (the render frame every explorer shares: ``render()`` calls ``compute``, ``draw``
and ``show``; the cache, debouncing, the compute off the event loop, busy state, errors, export and the
static snapshot), ``controls`` (the shared controls),
``markup`` (the HTML beside the figures: status lines, scores, words, tables), ``policy`` (what the
explorers offer of each method, read from its ``MethodSpec``), and one module per explorer.
"""

from __future__ import annotations

from ..plotting import signed  # how the explorers write a score, as the tests check it
from .base import CACHE_SIZE, DEBOUNCE_SECONDS, DEFAULT_WIDTH, figure_png
from .controls import EXPORT_FOLDER, PROMPT_SEPARATOR
from .explorer import ADD_PROMPT, OBJECT_PROMPTS, Explorer
from .layer_viewer import LayerViewer
from .markup import scores_html, settings_text, words_html
from .method_comparison import MethodComparison
from .model_comparison import ModelComparisonView
from .policy import (GENERIC_CLASSES, comparison_methods, default_method_options, image_blocks, method_takes,
                     text_blocks)

__all__ = [
    "ADD_PROMPT", "CACHE_SIZE", "DEBOUNCE_SECONDS", "DEFAULT_WIDTH", "EXPORT_FOLDER", "GENERIC_CLASSES",
    "OBJECT_PROMPTS", "PROMPT_SEPARATOR", "Explorer",
    "LayerViewer", "MethodComparison", "ModelComparisonView", "comparison_methods", "default_method_options",
    "figure_png", "image_blocks", "method_takes", "scores_html", "settings_text", "signed", "text_blocks",
    "words_html",
]
