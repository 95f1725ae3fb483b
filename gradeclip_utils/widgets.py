"""Interactive explorers for notebooks (ipywidgets).

- ``Explorer``: pick the image, type or choose prompts, move the block slider, switch mode and method;
  heat maps, scores and word importance redraw.
- ``MethodComparison``: the same image and prompt under several methods side by side, with timings
  and, on synthetic scenes, the share of each map on the prompted objects.
- ``LayerViewer``: one image and prompt, a slider over the blocks (maps computed once, the slider only
  switches), optionally the sum of the blocks from the chosen one to the last.

Every explorer has ``.widget`` (display it), ``render()`` (the callback that every control triggers),
and observable state: ``last`` (the settings and scores of the last render), ``figure`` (its
matplotlib figure), ``history`` (every render's ``last``), ``error`` (None, or why the last render
failed, also shown in the widget). Setting a control's value programmatically (``explorer.layer.value
= 2``) redraws exactly as a user's change does. ``export(exporter, name)`` saves the current figure
with its manifest.
"""

from __future__ import annotations

import html
import inspect
import io
import time
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import pyplot as plt

from .studies.common import as_input, default_resolution, named_images, prompt_mask, upsampled

#: methods shown side by side by default (those registered are used)
DEFAULT_COMPARISON: tuple[str, ...] = ("grad_eclip", "grad_eclip_no_spatial", "raw_attention", "rollout",
                                       "grad_cam", "game", "maskclip", "clip_surgery", "itsm")


#: generic class names whose prompts form CLIP Surgery's class set on real models (COCO's categories, in part)
GENERIC_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "airplane", "bus", "train", "boat", "bird", "cat", "dog", "horse", "sheep", "cow",
    "bottle", "cup", "fork", "spoon", "bowl", "banana", "chair", "couch", "bed", "table", "tv", "laptop",
    "phone", "book", "clock", "vase", "flag", "rocket", "tree", "building", "sky")


def default_method_options(model: Any) -> dict[str, dict[str, Any]]:
    """Options that make every method usable with one prompt at a time: CLIP Surgery gets a class set
    (the synthetic world's 35 colour x shape prompts, or "a photo of a {class}" over GENERIC_CLASSES),
    and RISE 500 masks instead of 2000 (interactive speed)."""
    from . import encode_texts
    from .studies.common import is_synthetic
    from .synthetic import class_prompts

    classes = class_prompts()[0] if is_synthetic(model) else [f"a photo of a {c}" for c in GENERIC_CLASSES]
    return {"clip_surgery": {"surgery_targets": encode_texts(model, classes)}, "rise": {"masks": 500}}


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


def figure_png(fig, dpi: int = 100) -> bytes:
    """A figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def method_takes(method: str, option: str) -> bool:
    """Whether an image method uses ``option`` (e.g. "layers", "mode"): it names the parameter, or it
    passes its keyword options on (a ``**options`` parameter; baselines that ignore options take ``**_``)."""
    from .methods import get_image_method

    parameters = inspect.signature(get_image_method(method)).parameters
    if option in parameters:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD and p.name != "_" for p in parameters.values())


def _error_html(message: str) -> str:
    return f"<div style='color:#b03a2e'><b>could not render:</b> {html.escape(message)}</div>"


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
        lines.append(f"<div style='margin:2px 0'><code>{pair.score:+.3f}</code> {' '.join(spans)}</div>")
    return "".join(lines)


def scores_html(prompts: Sequence[str], scores: Sequence[float]) -> str:
    best = int(np.argmax(scores)) if len(scores) else -1
    rows = "".join(f"<tr><td>{html.escape(p)}</td><td style='text-align:right'>{'<b>' if i == best else ''}"
                   f"{s:.4f}{'</b>' if i == best else ''}</td></tr>" for i, (p, s) in enumerate(zip(prompts, scores)))
    return f"<table><tr><th>prompt</th><th>S (cosine)</th></tr>{rows}</table>"


class _Base:
    """Shared state and bookkeeping of the explorers."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.last: dict[str, Any] | None = None
        self.figure = None
        self.history: list[dict[str, Any]] = []
        self.error: str | None = None
        self._rendering = False

    def _changed(self, change: Any = None) -> None:
        if not self._rendering:
            self.render()

    def render(self) -> dict[str, Any]:  # pragma: no cover - implemented by each explorer
        raise NotImplementedError

    def _finish(self, state: dict[str, Any], fig, error: Exception | None) -> dict[str, Any]:
        if fig is not None:
            self.view.value = figure_png(fig)
            plt.close(fig)
            self.figure = fig
        if error is not None:
            self.error = f"{type(error).__name__}: {error}"
            state["error"] = self.error
            self.status.value = _error_html(self.error)
        else:
            self.error = None
        self.last = state
        self.history.append(state)
        return state

    def export(self, exporter: Any, name: str, *, show: bool = False, **manifest: Any) -> dict[str, Any]:
        """Save the current figure (PNG, PDF, manifest) with ``exporter`` (an export.FigureExporter);
        with ``show`` also display it (in a notebook)."""
        if self.figure is None or self.last is None:
            raise RuntimeError("nothing rendered yet: call render() first")
        settings = {k: v for k, v in self.last.items() if k not in ("prompts", "scores", "image")}
        manifest.setdefault("prompts", self.last.get("prompts") or [self.last.get("prompt")])
        manifest.setdefault("images", [self.images[self.last["image"]]])
        manifest.setdefault("image_names", [self.last["image"]])
        manifest.setdefault("method", self.last.get("method"))
        manifest.setdefault("data", {"scores": self.last.get("scores")})
        saved = exporter.save(self.figure, name, settings=settings, **manifest)
        if show:
            from IPython.display import display

            display(self.figure)
        return saved


class Explorer(_Base):
    """Heat maps, scores and word importance of one image against typed or chosen prompts.

    ``images``: paths, PIL images or synthetic scenes (a list, or a name -> image dict); ``prompts``:
    the initial prompts; ``suggestions``: prompts offered in the "add" list; ``methods``: the image
    methods in the method switch (default: all registered); ``method_options``: extra options per
    method, over ``default_method_options`` (e.g. ``{"rise": {"masks": 2000}}``); ``text_layers``: text
    blocks for word importance (the authors' 8, or all blocks of a smaller text tower).
    """

    def __init__(self, model: Any, images: Any, prompts: Sequence[str], *, suggestions: Sequence[str] = (),
                 method: str = "grad_eclip", methods: Sequence[str] | None = None, layer: int = -1,
                 mode: str = "faithful", resolution: str | None = None,
                 method_options: Mapping[str, Mapping[str, Any]] | None = None, text_layers: int = 8,
                 auto_render: bool = True) -> None:
        from .adapters import MODES
        from .methods import list_methods

        super().__init__(model)
        w = _widgets()
        self.images = named_images(images)
        self.resolution = resolution
        self.method_options = _merged_options(model, method_options)
        self.text_layers = min(text_layers, model.adapter.num_text_blocks)
        available = list_methods()["image"]
        methods = list(methods) if methods is not None else available
        unknown = [m for m in [*methods, method] if m not in available]
        if unknown:
            raise ValueError(f"unknown image methods {unknown}; registered: {available}")
        blocks = model.adapter.num_image_blocks
        self.image = w.Dropdown(options=list(self.images), description="image")
        self.prompts = w.Textarea(value="\n".join(prompts), description="prompts", continuous_update=False,
                                  placeholder="one prompt per line", layout=w.Layout(width="420px", height="90px"))
        self.suggestions = w.Dropdown(options=["(add a prompt)", *suggestions], description="add")
        self.layer = w.IntSlider(min=0, max=blocks - 1, value=layer % blocks, description="block",
                                 continuous_update=False)
        self.mode = w.ToggleButtons(options=list(MODES), value=mode, description="mode")
        self.method = w.Dropdown(options=methods, value=method, description="method")
        self.view = w.Image(format="png")
        self.scores = w.HTML()
        self.words = w.HTML()
        self.status = w.HTML()
        controls = w.VBox([w.HBox([self.image, self.method]), w.HBox([self.prompts, self.suggestions]),
                           w.HBox([self.layer, self.mode])])
        self.widget = w.VBox([controls, self.status, self.view, w.HBox([self.scores, self.words])])
        for control in (self.image, self.prompts, self.layer, self.mode, self.method):
            control.observe(self._changed, names="value")
        self.suggestions.observe(self._add_suggestion, names="value")
        if auto_render:
            self.render()

    def _add_suggestion(self, change: Any) -> None:
        if change["new"] == "(add a prompt)":
            return
        current = self.current_prompts()
        if change["new"] not in current:
            self.prompts.value = "\n".join([*current, change["new"]])  # triggers a render
        self.suggestions.value = "(add a prompt)"

    def current_prompts(self) -> list[str]:
        return [line.strip() for line in self.prompts.value.splitlines() if line.strip()]

    def settings(self) -> dict[str, Any]:
        """What the next render will use."""
        return {"image": self.image.value, "prompts": self.current_prompts(), "layers": [self.layer.value],
                "mode": self.mode.value, "method": self.method.value}

    def render(self) -> dict[str, Any]:
        """Explain the current image against the current prompts with the current block, mode and
        method, and redraw the heat maps, scores and word importance."""
        from . import explain_image, explain_text
        from .methods import list_methods

        state = self.settings()
        fig, error = None, None
        self._rendering = True
        try:
            if not state["prompts"]:
                raise ValueError("type at least one prompt")
            image = self.images[state["image"]]
            resolution = self.resolution or default_resolution(self.model, image)
            options = self.method_options.get(state["method"], {})
            started = time.perf_counter()
            explanation = explain_image(self.model, as_input(image), state["prompts"], method=state["method"],
                                        layers=tuple(state["layers"]), mode=state["mode"], resolution=resolution,
                                        progress=False, **options)
            text_method = state["method"] if state["method"] in list_methods()["text"] else "grad_eclip"
            words = explain_text(self.model, as_input(image), state["prompts"], method=text_method,
                                 layers=self.text_layers, mode=state["mode"], resolution=resolution)
            state.update(seconds=round(time.perf_counter() - started, 3), text_method=text_method,
                         resolution=resolution, scores=[float(s) for s in explanation.scores[0]],
                         uses_layers=method_takes(state["method"], "layers"),
                         uses_mode=method_takes(state["method"], "mode"))
            state.update({k: v for k, v in explanation.settings.items() if k not in state})
            fig = explanation.plot()
            self.explanation, self.text_explanation = explanation, words
            self.scores.value = scores_html(state["prompts"], state["scores"])
            self.words.value = ("<b>word importance</b> (Grad-ECLIP text)" if text_method == "grad_eclip" else
                                f"<b>word importance</b> ({html.escape(text_method)})") + words_html(words)
            ignored = [o for o, used in (("block", state["uses_layers"]), ("mode", state["uses_mode"])) if not used]
            note = f" ({state['method']} does not use the {' or '.join(ignored)} setting)" if ignored else ""
            self.status.value = f"<small>rendered in {state['seconds']:.2f} s{html.escape(note)}</small>"
        except Exception as caught:  # shown in the widget; the notebook keeps running
            error = caught
        finally:
            self._rendering = False
        return self._finish(state, fig, error)


class MethodComparison(_Base):
    """One image and one prompt under several methods, side by side.

    On a synthetic scene with a prompt of its grammar, the table also gives each map's share of mass
    on the prompted objects (energy pointing game) and whether its maximum falls on them.
    """

    def __init__(self, model: Any, images: Any, prompts: Sequence[str], methods: Sequence[str] | None = None, *,
                 layer: int = -1, mode: str = "faithful", resolution: str | None = None,
                 method_options: Mapping[str, Mapping[str, Any]] | None = None, columns: int = 5,
                 auto_render: bool = True) -> None:
        from .methods import list_methods

        super().__init__(model)
        w = _widgets()
        self.images = named_images(images)
        self.resolution = resolution
        self.method_options = _merged_options(model, method_options)
        available = list_methods()["image"]
        chosen = [m for m in DEFAULT_COMPARISON if m in available] if methods is None else list(methods)
        unknown = [m for m in chosen if m not in available]
        if unknown:
            raise ValueError(f"unknown image methods {unknown}; registered: {available}")
        blocks = model.adapter.num_image_blocks
        self.layer_index = layer % blocks
        self.mode = mode
        self.columns = max(1, columns)
        self.image = w.Dropdown(options=list(self.images), description="image")
        self.prompt = w.Combobox(options=list(prompts), value=prompts[0], description="prompt", ensure_option=False,
                                 continuous_update=False, layout=w.Layout(width="420px"))
        self.methods = w.SelectMultiple(options=available, value=tuple(chosen), description="methods", rows=8)
        self.view = w.Image(format="png")
        self.table = w.HTML()
        self.status = w.HTML()
        self.widget = w.VBox([w.HBox([w.VBox([self.image, self.prompt]), self.methods]), self.status, self.view,
                              self.table])
        for control in (self.image, self.prompt, self.methods):
            control.observe(self._changed, names="value")
        if auto_render:
            self.render()

    def settings(self) -> dict[str, Any]:
        return {"image": self.image.value, "prompt": self.prompt.value.strip(), "methods": list(self.methods.value),
                "layers": [self.layer_index], "mode": self.mode}

    def render(self) -> dict[str, Any]:
        """Explain the current image and prompt with every chosen method and redraw."""
        from . import explain_image
        from .metrics import energy_pointing_game, pointing_game
        from .plotting import overlay

        state = self.settings()
        fig, error = None, None
        self._rendering = True
        try:
            if not state["prompt"]:
                raise ValueError("type a prompt")
            if not state["methods"]:
                raise ValueError("choose at least one method")
            image = self.images[state["image"]]
            resolution = self.resolution or default_resolution(self.model, image)
            mask = prompt_mask(image, state["prompt"])
            self.explanations, rows = {}, []
            for method in state["methods"]:
                started = time.perf_counter()
                ex = explain_image(self.model, as_input(image), [state["prompt"]], method=method,
                                   layers=tuple(state["layers"]), mode=state["mode"], resolution=resolution,
                                   progress=False, **self.method_options.get(method, {}))
                row = {"method": method, "seconds": round(time.perf_counter() - started, 3),
                       "score": float(ex.scores[0, 0])}
                if mask is not None:
                    heat = upsampled(ex.raw[0][0], mask.shape)
                    row["energy_on_prompted_objects"] = float(energy_pointing_game(heat, mask))
                    row["max_on_prompted_objects"] = bool(pointing_game(heat, mask))
                self.explanations[method] = ex
                rows.append(row)
            first = self.explanations[state["methods"][0]]
            picture = first.images[0]
            n = len(state["methods"]) + 1
            cols = min(n, self.columns)
            lines = -(-n // cols)
            fig, axes = plt.subplots(lines, cols, figsize=(2.5 * cols, 2.7 * lines + 0.4), squeeze=False,
                                     layout="constrained")
            axes = axes.ravel()
            for ax in axes[n:]:
                ax.axis("off")
            axes[0].imshow(picture)
            axes[0].set_title("input", fontsize=9)
            axes[0].axis("off")
            for ax, row in zip(axes[1:], rows):
                extra = f"\nenergy {row['energy_on_prompted_objects']:.2f}" if mask is not None else ""
                overlay(picture, self.explanations[row["method"]].heatmap(0, 0), ax=ax,
                        title=f"{row['method']}\n{row['seconds']:.2f} s{extra}")
            fig.suptitle(f"“{state['prompt']}”  ·  S = {rows[0]['score']:.3f}  ·  block {state['layers'][0]} "
                         f"(for methods that take a block)", fontsize=10)
            state.update(resolution=resolution, rows=rows, scores=[r["score"] for r in rows])
            self.table.value = _rows_html(rows)
            self.status.value = f"<small>{len(rows)} methods in {sum(r['seconds'] for r in rows):.2f} s</small>"
        except Exception as caught:
            error = caught
        finally:
            self._rendering = False
        return self._finish(state, fig, error)


def _rows_html(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    head = "".join(f"<th>{html.escape(k.replace('_', ' '))}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>"
                                    for v in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class LayerViewer(_Base):
    """One image and prompt with a slider over the image blocks: the map of the chosen block (all
    blocks are explained once, when the viewer is made), or with ``cumulative`` ticked the sum of the
    per-block maps from the chosen block to the last (explain_image's combination of several blocks)."""

    def __init__(self, model: Any, image: Any, prompt: str, *, method: str = "grad_eclip", mode: str = "faithful",
                 resolution: str | None = None, auto_render: bool = True) -> None:
        from .studies.layers import layer_maps

        super().__init__(model)
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
        self.cumulative = w.Checkbox(value=False, description="sum from this block to the last")
        self.view = w.Image(format="png")
        self.status = w.HTML()
        self.widget = w.VBox([w.HBox([self.layer, self.cumulative]), self.status, self.view])
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
        import torch

        from .plotting import overlay
        from .results import normalise_maps

        state = self.settings()
        fig, error = None, None
        self._rendering = True
        try:
            first = self.maps[state["layers"][0]]
            picture = first.images[0]
            raw = sum(torch.relu(self.maps[b].raw[0][0]) for b in state["layers"])
            heat = normalise_maps(torch.as_tensor(upsampled(raw, picture.size[::-1])).float()).numpy()
            fig, axes = plt.subplots(1, 2, figsize=(5.6, 3.0))
            axes[0].imshow(picture)
            axes[0].set_title("input", fontsize=9)
            axes[0].axis("off")
            label = (f"blocks {state['layers'][0]}-{state['layers'][-1]} (sum)" if len(state["layers"]) > 1
                     else f"block {state['layers'][0]}")
            overlay(picture, heat, ax=axes[1], title=label)
            fig.suptitle(f"“{self.prompt}”  ·  S = {float(first.scores[0, 0]):.3f}", fontsize=10)
            fig.tight_layout()
            state["scores"] = [float(first.scores[0, 0])]
            self.status.value = f"<small>{html.escape(label)}</small>"
        except Exception as caught:
            error = caught
        finally:
            self._rendering = False
        return self._finish(state, fig, error)
