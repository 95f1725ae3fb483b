"""The settings of an explanation as one small typed object, validated once.

``ExplainConfig(method, layers, mode, qk, resolution, max_patches, options, score)`` is what an explanation
depends on: ``explain_image`` and ``explain_text`` build one from their keywords, the dataset job and the
explorers from theirs, the runner (``session.run_image_method``) takes one, and results carry the one
they were made with. ``to_settings()`` is the dict results and manifests store.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping, Sequence

from .adapters import MODES
from .budget import check_budget
from .inputs import DEFAULT_MAX_PATCHES, RESOLUTIONS
from .methods.grad_eclip import QK_CHOICES
from .methods.registry import SETTINGS, MethodSpec, find_spec
from .methods.scores import DEFAULT_SCORE, KNOWN_SCORES

#: option values a result's settings record (others, such as tensors, are left out)
SCALARS = (int, float, str, bool)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """A ValueError naming the setting, its choices and the bad value, unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


@dataclass(frozen=True)
class ExplainConfig:
    """How to explain: the method, the blocks, the mode, the q/k of the spatial weight, the input
    resolution, the patch cap at native resolution, the method's own options and the explained score.

    ``layers``: block indices (negative from the end) or an int n for the last n blocks (``resolved``
    turns them into absolute indices for a model). ``mode`` is one of ``MODES``, ``qk`` of ``QK_CHOICES``,
    ``resolution`` of ``RESOLUTIONS`` and ``score`` of ``SCORES`` (``methods/scores.py``: "cosine", the
    default, "logit", "probability" or "contrast"); another value is a ValueError naming the choices, raised
    when the config is made. ``options`` are the method's own (see its ``MethodSpec``). ``memory_budget``: the
    bytes a call's work may hold (None: ``budget.default_budget`` of the model's device), which sets the
    chunks the runner cuts it into; the chunks are recorded (in the options and the result's settings),
    not the budget.

    A registered method that does not use a setting (its spec's ``uses``) refuses a value of it other
    than the default, by name and with what to use instead (``check_uses``): a setting that would be
    recorded without changing the map is an error, not a silent no-op. So does a method given a score it
    does not explain (its spec's ``scores``; the text side's ``text_scores``, checked by ``explain_text``). The
    default score of a method that explains none of a CLIP's scores is its own first one (``itm_gradcam``: "itm").
    """

    method: str = "grad_eclip"
    layers: int | tuple[int, ...] = (-1,)
    mode: str = "faithful"
    qk: str = "raw"
    resolution: str = "native"
    max_patches: int = DEFAULT_MAX_PATCHES
    options: Mapping[str, Any] = field(default_factory=dict)
    score: str = DEFAULT_SCORE
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        if self.memory_budget is not None:
            check_budget(self.memory_budget)
        check_choice("qk", self.qk, QK_CHOICES)
        check_choice("resolution", self.resolution, RESOLUTIONS)
        check_choice("score", self.score, KNOWN_SCORES)
        if not isinstance(self.layers, int):  # a sequence (an int, and a bool, are resolve_layers' to judge)
            object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "options", dict(self.options))
        spec = find_spec(self.method)
        if spec is not None and self.score == DEFAULT_SCORE and "score" in spec.uses and not spec.explains(self.score):
            # the default score named stands for the method's own first one where it explains no CLIP score (the
            # matching head's Grad-CAM explains "itm")
            object.__setattr__(self, "score", spec.scores[0])
        if spec is not None:
            self.check_uses(spec)

    def check_uses(self, spec: MethodSpec, tower: Literal["image", "text"] = "image") -> None:
        """A ValueError naming the method and the setting when this config gives ``spec``'s method a
        setting it does not use (other than the setting's default), or a score its ``tower`` function does
        not explain."""
        for setting in SETTINGS:
            reason = spec.unused_setting(setting, getattr(self, setting))
            if reason is not None:
                raise ValueError(reason)
        reason = spec.unsupported_score(self.score, tower)
        if reason is not None:
            raise ValueError(reason)

    def uses(self, setting: str) -> bool:
        """Whether the method applies ``setting`` (one of ``SETTINGS``; True for a method not registered)."""
        spec = find_spec(self.method)
        return spec is None or setting in spec.uses

    def resolved(self, adapter: Any, tower: Literal["image", "text"] = "image") -> "ExplainConfig":
        """This config with ``layers`` as the absolute block indices of ``adapter``'s ``tower`` (unchanged
        for a method that does not use them)."""
        if not self.uses("layers"):
            return self
        return replace(self, layers=tuple(adapter.resolve_layers(self.layers, tower)))

    def with_options(self, options: Mapping[str, Any]) -> "ExplainConfig":
        """This config with other method options."""
        return replace(self, options=options)

    def keywords(self) -> dict[str, Any]:
        """The keywords of ``explain_image`` that make this config (the options among them)."""
        budget = {} if self.memory_budget is None else {"memory_budget": self.memory_budget}
        return {"method": self.method, "layers": self.layers, "mode": self.mode, "qk": self.qk,
                "resolution": self.resolution, "max_patches": self.max_patches, "score": self.score,
                **self.options, **budget}

    def to_settings(self, model: Mapping[str, Any] | None = None, *, options: bool = True) -> dict[str, Any]:
        """What a result's ``settings`` hold: method, layers (a list), mode, qk, resolution and the explained
        score, then the model's description (``model.describe()``) and, with ``options``, the method options
        that are plain values (numbers, strings, booleans). Of layers, mode, qk and score only those the
        method uses are recorded (the others did not shape the map). Results saved before the score was a
        setting have no ``score``: they explain the cosine."""
        layers = self.layers if isinstance(self.layers, int) else list(self.layers)
        settings = {"method": self.method, "layers": layers, "mode": self.mode, "qk": self.qk,
                    "resolution": self.resolution, "score": self.score, **(model or {})}
        for setting in SETTINGS:
            if not self.uses(setting):
                del settings[setting]
        if options:
            settings.update({k: v for k, v in self.options.items() if isinstance(v, SCALARS)})
        return settings


def applied_settings(method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Those of ``settings`` (layers, mode, qk, score) that ``method`` uses: what a caller that offers every
    setting for every method (the explorers) gives ``ExplainConfig``, the others left at their defaults."""
    spec = find_spec(method)
    return {k: v for k, v in settings.items() if spec is None or k not in SETTINGS or k in spec.uses}


__all__ = ["SCALARS", "ExplainConfig", "applied_settings", "check_choice"]
