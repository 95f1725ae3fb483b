"""``ModelComparisonView``: the same image and prompts under two or more models (of any family), with each
model's scores and how far their maps agree."""

from __future__ import annotations

import html
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from ..config import applied_settings
from ..methods.scores import model_scores
from ..samples import as_input, default_resolution, named_images
from ..text import has_words
from . import controls
from .base import DEBOUNCE_SECONDS, DEFAULT_WIDTH, BaseExplorer
from .markup import agreement_html, score_parts, status_html
from .policy import class_labels, contrast_pairs, image_methods, marked, method_refusal, settings_used


class Compared(NamedTuple):
    """What one render of the view shows: the comparison and the agreement of its maps."""

    comparison: Any  # compare.ModelComparison
    agreement: np.ndarray  # (K, M, M) Spearman rank correlation of each pair of models' maps per prompt


class ModelComparisonView(BaseExplorer):
    """The same image and prompts under two or more models, of any family, side by side.

    ``models``: a mapping of names to LoadedModels (the first one's preprocessing decides the default
    resolution). Each model embeds the prompts with its own text tower; the panels are models (rows of
    panels) x prompts, every map upsampled to the first model's picture of the image, with each model's
    own score. Below the figure, the Spearman rank correlation of each pair of models' maps per prompt
    (``compare.ModelComparison.agreement``). ``shared_scale`` (a checkbox) puts every panel on one colour
    scale, so that a model whose maps are weaker shows weaker maps. Comparisons are cached.

    Image classifiers take part with their classes: every model reads the same typed targets, a CLIP as
    prompts and a classifier as class names (or indices, where every model is a classifier), each explaining its
    own default score (a CLIP's cosine, a classifier's logit) unless ``score`` names one that every model gives.
    A method that one of the models cannot run is marked in the method list, and choosing it says which model
    refuses it and why.
    """

    kind = "models"

    def __init__(self, models: Mapping[str, Any], images: Any, prompts: Sequence[str], *, method: str = "grad_eclip",
                 mode: str = "faithful", score: str | None = None, resolution: str | None = None,
                 shared_scale: bool = False,
                 colorbar: bool = True, width: int = DEFAULT_WIDTH, debounce: float = DEBOUNCE_SECONDS,
                 auto_render: bool = True) -> None:
        if not isinstance(models, Mapping) or len(models) < 2:
            raise ValueError("give at least two models, as a mapping of names to loaded models")
        self.models = dict(models)
        super().__init__(next(iter(self.models.values())), width=width, debounce=debounce)
        w = controls.ipywidgets()
        if not prompts:
            raise ValueError("give at least one prompt")
        self.images = named_images(images)
        self.resolution = resolution
        self.colorbar = colorbar
        available = image_methods()
        if method not in available:
            raise ValueError(f"unknown image method {method!r}; registered: {available}")
        for name, model in self.models.items():
            if score is not None and score not in model_scores(model.adapter):
                raise ValueError(f"score={score!r} is not a score of model {name!r} (its scores: "
                                 f"{', '.join(model_scores(model.adapter))}); leave score=None for each model's own "
                                 "default")
        # the explained score of every model (None: each its own default; a method that takes none says so)
        self.score = score
        self.classifiers = [n for n, m in self.models.items() if class_labels(m)]
        mixed = 0 < len(self.classifiers) < len(self.models)
        self.targets = "targets" if mixed else "classes" if self.classifiers else "prompts"
        self.image = controls.image_list(self.images)
        offered = image_methods(models=list(self.models.values()))
        offered = offered if method in offered else [*offered, method]
        self.method = w.Dropdown(options=self._method_choices(offered), value=method, description="method")
        self.prompts, self.apply = controls.prompt_box(prompts, self.targets)
        self.mode = controls.mode_buttons(mode)
        self.shared = controls.shared_box(shared_scale, "panels")
        self.table = w.HTML(layout=w.Layout(max_width="100%", overflow="auto"))
        read = (" (a CLIP reads each as a prompt, a classifier as one of its class names)" if mixed else
                " (names or indices)" if self.classifiers else "")
        hint = controls.hint(f"{self.targets}{read} are separated by <b>;</b> &mdash; press <b>Enter</b> in the box "
                             f"(or <b>apply</b>) to draw; {len(self.models)} models: "
                             f"{html.escape(', '.join(self.models))}")
        self._layout("ModelComparisonView", [controls.row([self.image, self.method]),
                                             controls.row([self.prompts, self.apply]), hint,
                                             controls.row([self.mode, self.shared])], [self.table])
        self.method.observe(lambda _change: self._enable_settings(), names="value")
        self._enable_settings()
        self._connect([self.image, self.prompts, self.method, self.mode, self.shared], auto_render)

    def _method_choices(self, methods: list[str]) -> list[Any]:
        """The method list: a method that some of the models cannot run is marked so, naming them."""
        refusing = {method: [n for n, m in self.models.items() if method_refusal(m, method) is not None]
                    for method in methods}
        return marked(methods, {method: f"not for {', '.join(names)}" for method, names in refusing.items() if names})

    def _enable_settings(self) -> None:
        """Disable the mode buttons while the chosen method does not use the mode."""
        used = settings_used(self.method.value)["mode"]
        self.mode.disabled = not used
        self.mode.tooltip = None if used else f"{self.method.value} does not use the mode setting"

    def settings(self) -> dict[str, Any]:
        used = settings_used(self.method.value)
        return {"image": self.image.value, "prompts": self.current_prompts(), "method": self.method.value,
                "mode": self.mode.value, "score": self.score, "layers": [-1], "shared_scale": bool(self.shared.value),
                "models": list(self.models), "uses_layers": used["layers"], "uses_mode": used["mode"],
                "uses_score": used["score"]}

    def _describe(self, state: Mapping[str, Any]) -> str:
        """"grad_eclip · last block · faithful mode · 2 models · fp32", a setting the method does not use
        said to be unused (as the explorer says it)."""
        precisions = sorted({str(m.describe().get("precision")) for m in self.models.values()})
        block = "last block" if state.get("uses_layers", True) else "block: not used"
        mode = f"{state.get('mode')} mode" if state.get("uses_mode", True) else "mode: not used"
        scores = score_parts(state) if state.get("score") else []  # None: each model's own default
        return " \u00b7 ".join([str(state.get("method")), block, mode, *scores, f"{len(self.models)} models",
                                "/".join(precisions)])

    def export(self, exporter: Any, name: str, *, show: bool = False, **manifest: Any) -> dict[str, Any]:
        """``BaseExplorer.export``, the manifest's ``data`` also saying of each model (``data["models"]``) its
        kind, the score its values are and, for a classifier, the classes (``export.target_fields``)."""
        from ..export import target_fields

        if self.last is not None and "data" not in manifest:
            used = {"score": self.last.get("score"), "uses_score": self.last.get("uses_score")}
            # the score each model's values are, as compare_models named it (a score left out is each model's own)
            named = self.last.get("score_names") or [None] * len(self.models)
            manifest["data"] = {"scores": self.last.get("scores"), "models": [
                {"name": n, **target_fields(m, self.last.get("prompts"), used), **({"score": s} if s else {})}
                for (n, m), s in zip(self.models.items(), named)]}
        return super().export(exporter, name, show=show, **manifest)

    def _clear_outputs(self) -> None:
        self.table.value = ""

    def compute(self, state: dict[str, Any]) -> Compared:
        """Explain the current image against the current prompts under every model (``compare_models``,
        cached) and measure how far their maps agree."""
        from ..compare import compare_models

        if not state["prompts"]:
            one = {"prompts": "prompt", "classes": "class", "targets": "target"}[self.targets]
            raise ValueError(f"type at least one {one} (separate several with ';')")
        indices = [p for p in state["prompts"] if p.isascii() and p.isdigit()]
        if indices and len(self.classifiers) < len(self.models):
            clips = [n for n in self.models if n not in self.classifiers]
            raise ValueError(f"{', '.join(map(repr, indices))}: a class index means nothing to {', '.join(clips)} (a "
                             "CLIP reads it as a text); name the classes by their labels, which every model reads")
        image = self.images[state["image"]]
        resolution = self.resolution or default_resolution(self.model, image)
        # a mode the method does not use is left at its default: it would be refused, and the cache then
        # keeps one comparison for every value of it
        applied = applied_settings(state["method"], {"mode": state["mode"], "score": state["score"]})
        prompts = contrast_pairs(state["prompts"]) if applied.get("score") == "contrast" else state["prompts"]
        key = ("models", state["image"], tuple(prompts), state["method"], applied.get("mode"), applied.get("score"),
               resolution)
        comparison = self.cache.get(key, lambda: compare_models(
            self.models, as_input(image), prompts, method=state["method"], resolution=resolution,
            progress=False, **applied))
        agreement = comparison.agreement()[0]  # (K, M, M)
        scores = comparison.scores[:, 0]  # (M, K)
        state.update(resolution=resolution, scores=scores.tolist(),
                     score_names=list(comparison.settings.get("score_names") or []),
                     agreement={p: agreement[k].round(4).tolist() for k, p in enumerate(state["prompts"])})
        return Compared(comparison, agreement)

    def draw(self, result: Compared, state: Mapping[str, Any]):
        """Models x prompts panels on the first model's picture (``ModelComparison.plot``)."""
        named = result.comparison.settings.get("score_names") or []
        explained = [f" ({score})" for score in named] if set(named) - {"cosine"} else [""] * len(self.models)
        families = ", ".join(f"{n}: {m.describe().get('family')}{score}"
                             for (n, m), score in zip(self.models.items(), explained))
        title = (f"{self._describe(state)}\n{state['image']} \u00b7 {families} \u00b7 "
                 + ("one colour scale for all panels" if state["shared_scale"] else "each panel on its own scale"))
        return result.comparison.plot(0, shared_scale=bool(state["shared_scale"]), title=title, width_px=self.width,
                               colorbar=self.colorbar, reuse=self._drawn)

    def show(self, result: Compared, state: dict[str, Any]) -> None:
        """The agreement table and the status line."""
        self.comparison = result.comparison
        self.table.value = agreement_html(result.comparison.names, state["prompts"], result.agreement)
        empty = [p for p in state["prompts"] if not has_words(p)]
        note = (f" \u00b7 {len(empty)} prompt{'s have' if len(empty) != 1 else ' has'} no words (punctuation or "
                "spaces alone)") if empty else ""
        self.status.value = status_html(f"{self._describe(state)} \u00b7 drawn in {state['seconds']:.2f} s{note}")
