"""``MethodComparison``: one image and one prompt under several methods side by side, with each map's
time and, on a synthetic scene, its share on the prompted objects."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..config import ExplainConfig, applied_settings
from ..maps import resize_maps
from ..metrics import energy_pointing_game, pointing_game
from ..methods.scores import DEFAULT_SCORE, SYMBOLS, model_scores, score_name
from ..plotting import format_seconds, heat_map_panels, signed
from ..samples import as_input, default_resolution, image_prompts, named_images, prompt_mask
from ..text import has_words
from . import controls
from .base import DEBOUNCE_SECONDS, DEFAULT_WIDTH, BaseExplorer
from .markup import rows_html, score_parts, status_html, target_text
from .policy import (OFFERED_SETTINGS, comparison_methods, contrast_pairs, image_blocks, image_methods, merged_options,
                     method_choices, method_refusal, method_takes, unused_settings)


class MethodComparison(BaseExplorer):
    """One image and one prompt under several methods, side by side.

    On a synthetic scene with a prompt of its grammar, the table also gives each map's share of mass
    on the prompted objects (energy pointing game) and whether its maximum falls on them; otherwise
    those columns say why there is no value. Each method's map is cached, so adding a method to the
    selection computes only that one. The prompt box's list offers the prompts that describe the chosen
    image (``samples.image_prompts``), then the prompts given.

    An image classifier explains a class (a name or an index; the box completes its class names) with its
    ``score`` (None: its default, the logit); the methods it cannot run are marked in the list and left out
    of the default selection (chosen, their row says why).
    """

    kind = "methods"

    def __init__(self, model: Any, images: Any, prompts: Sequence[str], methods: Sequence[str] | None = None, *,
                 layer: int = -1, mode: str = "faithful", score: str | None = None, resolution: str | None = None,
                 method_options: Mapping[str, Mapping[str, Any]] | None = None, width: int = DEFAULT_WIDTH,
                 colorbar: bool = True, debounce: float = DEBOUNCE_SECONDS, auto_render: bool = True) -> None:
        super().__init__(model, width=width, debounce=debounce)
        w = controls.ipywidgets()
        if not prompts:
            raise ValueError("give at least one prompt")
        self.images = named_images(images)
        self.resolution = resolution
        self.colorbar = colorbar
        self.method_options = merged_options(model, method_options)
        available = image_methods(models=[model])
        if methods is None:  # by default the shown methods that this model can run
            chosen = [m for m in comparison_methods() if m in available and method_refusal(model, m) is None]
        else:
            chosen = list(methods)
        image_methods(chosen)  # a ValueError naming any that is not registered
        self.layer_index = layer % image_blocks(model)
        self.mode = mode
        # each method that takes a score explains it; the others say they do not
        self.score = score or self.default_score
        if self.score not in model_scores(model.adapter):
            raise ValueError(f"score must be one of this model's scores {model_scores(model.adapter)}, got {score!r}")
        self.image = controls.image_list(self.images)
        self.given_prompts = [str(p) for p in prompts]
        what = "class" if self.labels else "prompt"
        self.prompt = w.Combobox(options=self._prompt_options(), value=self.given_prompts[0], description=what,
                                 ensure_option=False, continuous_update=False,
                                 placeholder=f"type a {'class name or index' if self.labels else 'prompt'} and press "
                                 "Enter", layout=controls.flexible(420, 240))
        self.apply = controls.apply_button(what)
        self.methods = w.SelectMultiple(options=method_choices(model, available), value=tuple(chosen),
                                        description="methods", rows=8)
        self.table = w.HTML(layout=w.Layout(max_width="100%", overflow="auto"))
        listed = "the model's class names" if self.labels else "the prompts that describe the image"
        hint = controls.hint(f"press <b>Enter</b> in the {what} box (or <b>apply</b>); its list offers {listed}; "
                             "ctrl-click or shift-click to choose several methods")
        self._layout("MethodComparison", [controls.row([
            w.VBox([self.image, controls.row([self.prompt, self.apply]), hint],
                   layout=w.Layout(flex="1 1 420px", max_width="100%")), self.methods])], [self.table])
        self.image.observe(lambda _change: self._setting_controls(
            lambda: setattr(self.prompt, "options", self._prompt_options())), names="value")
        self._connect([self.image, self.prompt, self.methods], auto_render)

    def _prompt_options(self) -> list[str]:
        """The prompt box's list: the prompts that describe the chosen image, then those given (a classifier's:
        those given, then its class names)."""
        own = self.labels or image_prompts(self.images[self.image.value])
        if self.labels:
            return list(dict.fromkeys([*self.given_prompts, *own]))
        return list(dict.fromkeys([*own, *self.given_prompts]))

    def settings(self) -> dict[str, Any]:
        return {"image": self.image.value, "prompt": self.prompt.value.strip(), "methods": list(self.methods.value),
                "layers": [self.layer_index], "mode": self.mode, "score": self.score}

    def _describe(self, state: Mapping[str, Any]) -> str:
        count = len(state.get("methods") or [])
        parts = [target_text(str(state.get("prompt")), self.labels), f"{count} method{'s' if count != 1 else ''}",
                 f"block {state['layers'][0]}", f"{state['mode']} mode", *score_parts(state, self.default_score)]
        if self.precision:
            parts.append(str(self.precision))
        return " \u00b7 ".join(parts)

    def _clear_outputs(self) -> None:
        self.table.value = ""

    def _explain(self, method: str, state: Mapping[str, Any], image: Any, resolution: str):
        from .. import explain_image

        config = ExplainConfig(method=method, resolution=resolution, options=self.method_options.get(method, {}),
                               **applied_settings(method, {"layers": state["layers"], "mode": state["mode"],
                                                           "score": state["score"]}))
        prompts = contrast_pairs([state["prompt"]]) if config.score == "contrast" else [state["prompt"]]

        def make():
            started = time.perf_counter()
            ex = explain_image(self.model, as_input(image), prompts, progress=False, **config.keywords())
            return ex, time.perf_counter() - started

        key = (state["image"], state["prompt"], config.method, config.layers, config.mode, config.resolution)
        return self.cache.get(key, make)

    def compute(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Explain the current image and prompt with every chosen method (those the model cannot run are
        reported, not drawn); returns the table's rows."""
        if not state["prompt"]:
            raise ValueError("type a class (a name or an index)" if self.labels else "type a prompt")
        if not state["methods"]:
            raise ValueError("choose at least one method")
        image = self.images[state["image"]]
        resolution = self.resolution or default_resolution(self.model, image)
        mask = prompt_mask(image, state["prompt"])
        self.explanations, rows, failed = {}, [], {}
        for method in state["methods"]:
            try:
                ex, seconds = self._explain(method, state, image, resolution)
            except Exception as caught:  # one method this model cannot run does not stop the others
                failed[method] = f"{type(caught).__name__}: {caught}"
                continue
            self.explanations[method] = ex
            rows.append(_row(method, ex, seconds, mask))
        why = None if mask is not None else ("no object of this scene matches the prompt" if hasattr(image, "masks")
                                             else "not a synthetic scene (no object masks)")
        state.update(resolution=resolution, rows=rows, scores=[r["score"] for r in rows], no_mask_reason=why,
                     failed=failed, symbol=SYMBOLS.get(score_name(self.model.adapter, self.score), "S"))
        if not rows:
            raise ValueError("no chosen method could run: " + "; ".join(f"{m}: {e}" for m, e in failed.items()))
        return rows

    def draw(self, rows: list[dict[str, Any]], state: Mapping[str, Any]):
        """The figure of one render: the input and one panel per method."""
        picture = self.explanations[rows[0]["method"]].images[0]
        maps = [self.explanations[r["method"]].heatmap(0, 0) for r in rows]
        scores = [r["score"] for r in rows]
        one_score = max(scores) - min(scores) < 1e-6  # the model's own S: the same for every method
        symbol = state["symbol"]
        titles = [_panel_title(r, one_score, state["score"], self.default_score, symbol) for r in rows]
        described = self.model.describe()
        score = ""
        if one_score:
            below = " (S < 0: no match)" if symbol == "S" else f" ({symbol} < 0)"
            score = f" \u00b7 {symbol} = {signed(scores[0])}" + (below if scores[0] < 0 else "")
        ignored = ", ".join(f"(no {label})" for setting, label in OFFERED_SETTINGS.items()
                            if setting != "score" or state["score"] not in (DEFAULT_SCORE, self.default_score))
        settings = " \u00b7 ".join([f"block {state['layers'][0]}", f"{state['mode']} mode",
                                    *score_parts(state, self.default_score),
                                    str(self.precision), f"model {described.get('model')}"])
        title = (f"{target_text(state['prompt'], self.labels)} on {state['image']}{score}\n{settings}\n"
                 f"each panel on its own scale; {ignored}: the method ignores that setting")
        if state.get("failed"):
            title += f"\nnot drawn (could not run on this model): {', '.join(state['failed'])}"
        if not has_words(state["prompt"]):
            title += "\nthe prompt has no words (punctuation or spaces alone): its maps name nothing"
        return heat_map_panels(picture, maps, titles, title=title, scale="panel", colorbar=self.colorbar,
                               flagged=[False] * len(rows) if one_score else [s < 0 for s in scores],
                               width_px=self.width, reuse=self._drawn)

    def show(self, rows: list[dict[str, Any]], state: dict[str, Any]) -> None:
        """The table (a row per method) and the status line."""
        failed = state["failed"]
        self.table.value = rows_html(rows, state["no_mask_reason"], failed, state["symbol"])
        note = (f" \u00b7 {len(failed)} method{'s' if len(failed) != 1 else ''} could not run (see the table)"
                if failed else "")
        if not has_words(state["prompt"]):
            note += " \u00b7 the prompt has no words (punctuation or spaces alone)"
        self.status.value = status_html(f"{self._describe(state)} \u00b7 drawn in {format_seconds(state['seconds'])} (maps: "
                                        f"{format_seconds(sum(r['seconds'] for r in rows))} when first computed){note}")


def _row(method: str, ex: Any, seconds: float, mask: np.ndarray | None) -> dict[str, Any]:
    """A method's row of the table: its time, score, which settings it uses and, with the prompted
    objects' ``mask``, the share of its map on them and whether its maximum falls on them."""
    row = {"method": method, "seconds": round(seconds, 3), "score": float(ex.scores[0, 0]),
           "energy_on_prompted_objects": None, "max_on_prompted_objects": None,
           "uses_block": method_takes(method, "layers"), "uses_mode": method_takes(method, "mode")}
    if mask is not None:
        heat = resize_maps(ex.raw[0][0], mask.shape, dtype=torch.float64).numpy()
        row["energy_on_prompted_objects"] = float(energy_pointing_game(heat, mask))
        row["max_on_prompted_objects"] = bool(pointing_game(heat, mask))
    return row


def _panel_title(row: Mapping[str, Any], one_score: bool, score: str = DEFAULT_SCORE, default: str = DEFAULT_SCORE,
                 symbol: str = "S") -> str:
    """A method's panel title: its name with the settings it ignores, its time (and score, named by its
    ``symbol``, when the methods' scores differ), its share on the prompted objects."""
    energy = ("energy n/a" if row["energy_on_prompted_objects"] is None else
              f"energy {row['energy_on_prompted_objects']:.2f}" + (" \u00b7 peak on it"
                                                                  if row["max_on_prompted_objects"] else ""))
    name = row["method"] + "".join(f" (no {o})" for o in unused_settings(row["method"], score, default))
    timing = format_seconds(row['seconds'])
    timing = timing if one_score else f"{symbol} = {signed(row['score'])} \u00b7 {timing}"
    return f"{name}\n{timing}\n{energy}"
