"""``Explorer``: heat maps, scores and word importance of one image against typed or chosen prompts, with
the block, mode, method and colour scale as controls."""

from __future__ import annotations

import html
from typing import Any, Mapping, NamedTuple, Sequence

from ..config import ExplainConfig, applied_settings
from ..explain import method_default_score
from ..maps import resize_maps
from ..methods.registry import find_spec, values_score
from ..methods.scores import SYMBOLS, model_scores
from ..plotting import heat_map_panels, signed
from ..samples import as_input, default_resolution, image_prompts, named_images, object_prompts
from ..text import cut_note, has_words
from . import controls
from .base import DEBOUNCE_SECONDS, DEFAULT_WIDTH, BaseExplorer, from_browser
from .markup import RED, best_prompt, scores_html, status_html, words_html, words_title
from .policy import (OFFERED_SETTINGS, contrast_pairs, image_blocks, image_methods, merged_options, method_choices,
                     method_refusal, settings_used, text_blocks, text_score, unused_settings, words_method)

#: the first entry of the list of suggested prompts (choosing another adds it to the prompts)
ADD_PROMPT = "(add a prompt)"
#: the entry of that list that replaces the prompts by one per object of the chosen (synthetic) image
OBJECT_PROMPTS = "(this image's objects)"


class Explained(NamedTuple):
    """What one render of the explorer shows: the maps and the word importance."""

    maps: Any  # ImageExplanation
    words: Any  # TextExplanation, or None for a model without a text tower (``state["no_text"]`` says why)


class Explorer(BaseExplorer):
    """Heat maps, scores and word importance of one image against typed or chosen prompts.

    ``images``: paths, PIL images or synthetic scenes (a list, or a name -> image dict); ``prompts``:
    the initial prompts; ``suggestions``: prompts offered in the "add" list; ``methods``: the image
    methods in the method switch (default: all registered); ``method_options``: extra options per
    method, over ``default_method_options`` (e.g. ``{"rise": {"masks": 2000}}``); ``text_layers``: text
    blocks for word importance (the authors' 8, or all blocks of a smaller text tower);
    ``score``: the explained score, of the model's scores (``methods.scores.model_scores``; None: its default;
    a switch changes it; the contrast takes prompts written "a | b" and explains the words of both captions by
    their cosines);
    ``shared_scale``: start with one colour scale for all prompts (a checkbox switches it);
    ``colorbar``: draw the colour bar; ``width``: pixels the figure wraps its panels to; ``debounce``:
    seconds a browser change waits for the next.

    Prompts are typed in one line separated by ";" and drawn on Enter (or the apply button).

    An image classifier's targets are its classes: the box takes class names or indices (``prompts`` may be
    either), the "add" box completes the model's class names as they are typed, the score switch offers its
    scores (the logit, its default, and the probability over all its classes); the methods it cannot run are
    marked in the method list (choosing one shows why), and there is no word importance (no text tower).
    """

    def __init__(self, model: Any, images: Any, prompts: Sequence[str], *, suggestions: Sequence[str] = (),
                 method: str = "grad_eclip", methods: Sequence[str] | None = None, layer: int = -1,
                 mode: str = "faithful", score: str | None = None, resolution: str | None = None,
                 method_options: Mapping[str, Mapping[str, Any]] | None = None, text_layers: int = 8,
                 shared_scale: bool = False, colorbar: bool = True, width: int = DEFAULT_WIDTH,
                 debounce: float = DEBOUNCE_SECONDS, auto_render: bool = True) -> None:
        super().__init__(model, width=width, debounce=debounce)
        w = controls.ipywidgets()
        self.images = named_images(images)
        self.resolution = resolution
        self.method_options = merged_options(model, method_options)
        self.text_layers = min(text_layers, text_blocks(model))
        self.colorbar = colorbar
        methods = list(methods) if methods is not None else image_methods(models=[model])
        image_methods([*methods, method])  # a ValueError naming any that is not registered
        if method not in methods:
            raise ValueError(f"method {method!r} is not among the methods offered {methods}")
        self.prompts, self.apply = controls.prompt_box(prompts, self.targets)
        blocks = image_blocks(model)
        self.image = controls.image_list(self.images)
        self.method = w.Dropdown(options=method_choices(model, methods), value=method, description="method")
        self.given_suggestions = [str(s) for s in suggestions]
        if self.labels:  # a classifier's classes: completed as they are typed (a list of a thousand is no list)
            self.no_suggestion = ""
            self.suggestions = controls.class_picker(list(dict.fromkeys([*self.given_suggestions, *self.labels])))
            hint = ("classes (names or indices) are separated by <b>;</b> &mdash; press <b>Enter</b> in the box (or "
                    "<b>apply</b>) to draw; the <b>add</b> box completes the model's class names")
        else:
            self.no_suggestion = ADD_PROMPT
            self.suggestions = w.Dropdown(options=self._suggestion_options(), description="add")
            hint = ("prompts are separated by <b>;</b> &mdash; press <b>Enter</b> in the box (or <b>apply</b>) to "
                    "draw; the <b>add</b> list adds a suggested prompt or one that describes the image (or all of "
                    "its objects)")
        self.layer = controls.block_slider(0, blocks - 1, layer % blocks)
        self.mode = controls.mode_buttons(mode)
        self.score = controls.score_dropdown(score or self.default_score, model_scores(model.adapter))
        self.shared = controls.shared_box(shared_scale, self.targets)
        self.scores = w.HTML()
        self.words = w.HTML()
        hint = controls.hint(hint)
        self._layout("Explorer", [controls.row([self.image, self.method, self.suggestions]),
                                  controls.row([self.prompts, self.apply]), hint,
                                  controls.row([self.layer, self.mode, self.score, self.shared])],
                     [controls.row([self.scores, self.words], align="flex-start")])
        self.suggestions.observe(self._add_suggestion, names="value")
        if not self.labels:  # a classifier's classes are the same for every image
            self.image.observe(lambda _change: self._setting_controls(self._offer_image_prompts), names="value")
        self.method.observe(lambda _change: self._enable_settings(), names="value")
        self._enable_settings()
        self._connect([self.image, self.prompts, self.layer, self.mode, self.method, self.score, self.shared],
                      auto_render)

    def _suggestion_options(self) -> list[Any]:
        """The "add" list: the chosen image's own prompts first (marked so), then the suggestions given."""
        image = self.images[self.image.value]
        own = image_prompts(image)
        options: list[Any] = [ADD_PROMPT] + ([OBJECT_PROMPTS] if object_prompts_of(image) else [])
        options += [(f"{prompt} \u00b7 this image", prompt) for prompt in own]
        return options + [p for p in dict.fromkeys(self.given_suggestions) if p not in own]

    def _offer_image_prompts(self) -> None:
        self.suggestions.options = self._suggestion_options()
        self.suggestions.value = ADD_PROMPT

    def _enable_settings(self) -> None:
        """Disable the block slider, the mode buttons and the score switch while the chosen method does not
        use them."""
        method = self.method.value
        used = self._used()
        for control, setting, label in ((self.layer, "layers", "block"), (self.mode, "mode", "mode"),
                                        (self.score, "score", "score")):
            control.disabled = not used[setting]
            control.tooltip = None if used[setting] else f"{method} does not use the {label} setting"
        self._follow_score(method, used["score"])

    def _follow_score(self, method: str, uses_score: bool) -> None:
        """A chosen method that cannot explain the score shown but explains another of the model's takes that
        one (BLIP's matching head's Grad-CAM explains 'itm', the class-token methods 'itc'): the score switch
        follows the method; a score chosen afterwards that the method cannot explain is refused with the reason."""
        spec = find_spec(method) if method else None
        if spec is None or not uses_score or spec.explains(self.score.value):
            return
        own = method_default_score(self.model.adapter, spec)
        if spec.explains(own) and own in [value for _, value in self.score.options]:
            self.score.value = own

    def _used(self) -> dict[str, bool]:
        """Which offered settings the chosen method applies (all of them while no method is chosen)."""
        method = self.method.value
        return settings_used(method) if method else {setting: True for setting in OFFERED_SETTINGS}

    def _add_suggestion(self, change: Any) -> None:
        if change["new"] == self.no_suggestion or self._rendering:
            return
        current = self.current_prompts()
        browser = from_browser(change)
        if change["new"] == OBJECT_PROMPTS:
            wanted = object_prompts_of(self.images[self.image.value])
        else:
            wanted = current + ([change["new"]] if change["new"] not in current else [])
        if wanted != current:
            self._setting_controls(lambda: setattr(self.prompts, "value", controls.join_prompts(wanted)))
            if browser:  # one redraw below, not one for the prompt box too
                self.schedule()
            else:
                self.render()
        self._setting_controls(lambda: setattr(self.suggestions, "value", self.no_suggestion))

    def settings(self) -> dict[str, Any]:
        """What the next render will use."""
        method = self.method.value
        used = self._used()
        return {"image": self.image.value, "prompts": self.current_prompts(), "layers": [self.layer.value],
                "mode": self.mode.value, "score": self.score.value, "method": method,
                "shared_scale": bool(self.shared.value), "uses_layers": used["layers"], "uses_mode": used["mode"],
                "uses_score": used["score"]}

    def _clear_outputs(self) -> None:
        self.scores.value = ""
        self.words.value = ""

    def _explain(self, state: Mapping[str, Any], image: Any, resolution: str):
        from .. import explain_image

        # a block or mode the method does not use is left at its default: it would be refused, and the
        # cache then keeps one explanation for every value of it
        config = ExplainConfig(method=state["method"], resolution=resolution,
                               options=self.method_options.get(state["method"], {}),
                               **applied_settings(state["method"], {"layers": state["layers"], "mode": state["mode"],
                                                                    "score": state["score"]}))
        prompts = contrast_pairs(state["prompts"]) if config.score == "contrast" else state["prompts"]
        key = ("image", state["image"], tuple(prompts), config.method, config.layers, config.mode,
               config.resolution, config.score)
        return self.cache.get(key, lambda: explain_image(self.model, as_input(image), prompts,
                                                         progress=False, **config.keywords()))

    def _explain_words(self, state: Mapping[str, Any], image: Any, resolution: str, text_method: str):
        from .. import explain_text

        score = text_score(text_method, state["score"])
        config = ExplainConfig(method=text_method, resolution=resolution,
                               **applied_settings(text_method, {"layers": self.text_layers, "mode": state["mode"],
                                                                "score": score}))
        texts = state["prompts"]
        if state["score"] == "contrast" and state["uses_score"]:  # both captions of each pair, by their cosines
            texts = [text for pair in contrast_pairs(texts) for text in pair]
        key = ("text", state["image"], tuple(texts), config.method, config.mode, config.resolution, config.score)
        return self.cache.get(key, lambda: explain_text(self.model, as_input(image), texts, **config.keywords()))

    def compute(self, state: dict[str, Any]) -> Explained:
        """Explain the current image against the current prompts with the current block, mode and
        method (the maps), and with the method's text version or ``WORDS_METHOD`` (the words)."""
        if not state["prompts"]:
            one = "class (a name or an index; separate" if self.labels else "prompt (separate"
            raise ValueError(f"type at least one {one} several with ';')")
        if not state["method"]:
            raise ValueError("choose a method")
        image = self.images[state["image"]]
        resolution = self.resolution or default_resolution(self.model, image)
        explanation = self._explain(state, image, resolution)
        text_method = words_method(state["method"])
        no_text = method_refusal(self.model, text_method, "text")  # a model without a text tower: no words
        words = None if no_text else self._explain_words(state, image, resolution, text_method)
        score = values_score(self.model.adapter, explanation.config)
        state.update(text_method=text_method, resolution=resolution, labels=list(explanation.prompts),
                     symbol=SYMBOLS.get(score, "S"), scores=[float(s) for s in explanation.scores[0]],
                     no_words=[p for p in state["prompts"] if not has_words(p)], no_text=no_text,
                     truncated={p: cut for p, cut in zip(words.texts, words.truncated) if cut} if words else {})
        state.update({k: v for k, v in explanation.settings.items() if k not in state})
        return Explained(explanation, words)

    def draw(self, result: Explained, state: Mapping[str, Any]):
        """The figure of one render: the input and one panel per prompt."""
        explanation = result.maps
        picture = explanation.images[0]
        size = (picture.height, picture.width)
        maps = [resize_maps(explanation.raw[0][k], size).numpy() for k in range(len(explanation.prompts))]
        scores = state["scores"]
        best = best_prompt(explanation.prompts, scores)
        titles = [f"{prompt}\n{state['symbol']} = {signed(s)}{' (best)' if k == best and len(scores) > 1 else ''}"
                  + ("" if has_words(prompt) else " (no words)")
                  for k, (prompt, s) in enumerate(zip(explanation.prompts, scores))]
        scale = "shared" if state["shared_scale"] else "panel"
        described = self.model.describe()
        weights = f" ({described['pretrained']})" if described.get("pretrained") else ""
        scale_text = "one colour scale for all " + self.targets if scale == "shared" else "each panel on its own scale"
        title = (f"{self._describe(state)}\n{state['image']} \u00b7 model {described.get('model')}{weights} "
                 f"\u00b7 {scale_text}")
        flagged = [s < 0 or not has_words(p) for p, s in zip(explanation.prompts, scores)]
        return heat_map_panels(picture, maps, titles, title=title, scale=scale, colorbar=self.colorbar,
                               flagged=flagged, width_px=self.width, reuse=self._drawn)

    def show(self, result: Explained, state: dict[str, Any]) -> None:
        """The scores, the word importance and the status line (which says which settings the method
        ignores)."""
        self.explanation, self.text_explanation = result
        self.scores.value = scores_html(state["labels"], state["scores"], state["symbol"],
                                        "class" if self.labels else "prompt")
        if result.words is None:
            self.words.value = f"<b>no word importance</b><br><small>{html.escape(state['no_text'])}</small>"
        else:
            self.words.value = words_title(state["text_method"]) + words_html(result.words)
        ignored = unused_settings(state["method"], state["score"], self.default_score)
        note = f" ({state['method']} does not use the {' or '.join(ignored)} setting)" if ignored else ""
        count = len(state["prompts"])
        what = ("class" if count == 1 else "classes") if self.labels else ("prompt" if count == 1 else "prompts")
        lines = [f"\u201c{shortened(p)}\u201d: {cut_note(cut)}" for p, cut in state["truncated"].items()]
        if state["no_words"]:
            lines.append(f"{len(state['no_words'])} prompt{'s have' if len(state['no_words']) != 1 else ' has'} no "
                         "words (punctuation or spaces alone): scored, but never the best")
        notes = "".join(f"<br><small style='color:{RED}'>{html.escape(line)}</small>" for line in lines)
        self.status.value = status_html(f"{self._describe(state)} \u00b7 {count} {what} "
                                        f"\u00b7 drawn in {state['seconds']:.2f} s{note}") + notes


def object_prompts_of(image: Any) -> list[str]:
    """One prompt per object of a synthetic scene (``samples.object_prompts``); [] for other images."""
    from ..synthetic import Scene

    return object_prompts(image) if isinstance(image, Scene) else []


def shortened(text: str, length: int = 40) -> str:
    """``text`` cut to ``length`` characters, with an ellipsis when it was longer."""
    return text if len(text) <= length else text[:length - 1] + "\u2026"
