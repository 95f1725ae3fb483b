"""What a method is: its ``MethodSpec``, declared in its own file, and the registry of them by name.

A method's file ends with ``SPEC = MethodSpec(...)``: its image and/or text function, what it requires of
an adapter's towers, the options it takes with their defaults, its ``prepare`` hook and cheap ``probe``
options, how the evaluation sets its options from a run's settings, how the Grad-ECLIP authors' evaluation
scripts run it (``AuthorsProtocol``), whether it is slow or has a paired mode, and how the explorers show
it. ``methods/__init__.py`` registers the specs of the package's methods in order; code outside
``methods/`` reads these declarations and names no method (a method registered later, say in a test,
is picked up the same way).

An image method is ``fn(adapter, pixels, targets, **options) -> MapOutput`` with ``pixels`` a (B, 3, H, W)
batch on one grid and ``targets`` (K, D) unit-normalised text embeddings; a text method is
``fn(adapter, tokens, targets, **options) -> TokenOutput`` with ``targets`` (B, D) unit-normalised image
embeddings. Both get the settings ``layers``, ``mode``, ``qk`` and ``score`` besides their own options; a
spec's ``uses`` says which of them the method applies, and a config that sets another one away from its
default is refused (``ExplainConfig``), so that no setting is recorded that did not shape the map. A method
that uses ``score`` (``scores.py``: the cosine, the logit, the probability, a contrast) declares which of
the scores it explains on each side (``scores`` / ``text_scores``) and refuses the others by name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

from ..adapters import CAPTURES
from .scores import (DEFAULT_SCORE, KNOWN_SCORES, SCORE_ALIASES, SCORE_REASONS, SCORES, TEXT_CONTRAST, default_score,
                     score_name)

if TYPE_CHECKING:
    from ..adapters import CLIPAdapter
    from .grad_eclip import MapOutput, TokenOutput

ImageMethod = Callable[..., "MapOutput"]
TextMethod = Callable[..., "TokenOutput"]

#: the settings every method is called with (``ExplainConfig``'s), as opposed to a method's own options
SETTINGS: tuple[str, ...] = ("layers", "mode", "qk", "score")
#: each setting's default: the value a method that does not use the setting is run with
SETTING_DEFAULTS: dict[str, Any] = {"layers": (-1,), "mode": "faithful", "qk": "raw", "score": DEFAULT_SCORE}
#: what to do instead, said when a method is given a setting it does not use (unless its ``instead`` says more;
#: ``{explaining}``: the registered methods that use the setting)
SETTING_HINTS: dict[str, str] = {
    "score": "its map takes no gradient of a score and scores no masked image, so no score shapes it; explain "
             f"the score with a method that does ({{explaining}}), or leave score at its default {DEFAULT_SCORE!r}",
}


@dataclass(frozen=True)
class AuthorsProtocol:
    """How the Grad-ECLIP authors' evaluation scripts (github.com/Cyang-Zhao/Grad-Eclip,
    ``imagenet_eval_*.py``) run a method, for ``evaluate --protocol authors``.

    ``options``: the options their scripts use (over the evaluation's own). ``target``: what the map
    explains, the zero-shot classifier's row ("classifier") or the class name ("class_name"), embedded
    bare, or with the prompt ensemble ``templates`` when given. ``class_set``: names of a class set given to
    the method's class-set option (``MethodSpec.class_set``), after the target and embedded as it is.
    ``resolution``: the picture at its native resolution or the model's centre crop ("model", the map
    then stretched over the picture). ``upsampled``: the method's own code hands the script a map already
    upsampled to the model's input size, which the script then resizes to the picture.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    target: Literal["classifier", "class_name"] = "classifier"
    templates: tuple[str, ...] = ()
    class_set: tuple[str, ...] = ()
    resolution: Literal["native", "model"] = "native"
    upsampled: bool = False


@dataclass(frozen=True, eq=False)
class MethodSpec:
    """Everything about one explanation method, declared beside it.

    - ``name``; ``image`` / ``text``: the image and text functions (either may be None).
    - ``requires`` / ``text_requires``: what the method needs of the image / text tower beyond a plain trace
      (names from ``adapters.CAPTURES``, in the order they are checked); a tower that lacks one refuses it
      with its own reason (``refusal``). ``alternative``: what to use instead, added to that message.
    - ``options``: the options the method takes, with their defaults (besides the settings ``layers``,
      ``mode`` and ``qk``).
    - ``uses``: which of the settings (``SETTINGS``) the method applies; by default those its function
      names as parameters (all of them when it passes ``**options`` on). ``instead``: setting -> what to
      use instead, said when a setting the method does not use is given (e.g. LeGrad's ``layer_index``).
    - ``scores`` / ``text_scores``: the explained scores (``scores.SCORES``) its image / text function
      takes; by default all of them on the image side and all but the contrast on the text side (which has
      none: ``scores.TEXT_CONTRAST``) when it uses the setting ``score``, else only the default cosine.
    - ``prepare(model, targets, options) -> options``: the model-dependent defaults of a call, completed
      once per call before the batches. ``probe``: options that make a trial run cheap (the support probe
      tries every method once; a refusal never depends on them).
    - ``slow``: too slow for a quick run on the CPU (many forward passes or an optimisation per map).
      ``paired``: has a ``paired=True`` mode explaining image b against target b only (its cost grows with
      images x targets otherwise).
    - ``class_set``: the option that takes a set of (R, D) class embeddings, which callers fill with theirs
      (the evaluation's classifier, the explorers' class prompts, the benchmark's class embeddings).
    - ``run_options``: option -> the name of a run setting it takes its value from (the evaluation's
      settings, e.g. ``{"masks": "rise_masks"}``; the benchmarks use the same names).
    - ``shown``: drawn side by side by default in the explorers' method comparison.
      ``interactive_options``: options for interactive speed in the explorers.
    - ``authors``: how the authors' evaluation scripts run it.
    - ``reference``: explains nothing (the evaluation's random floor): no support probe, no sanity check.
      ``keyed``: takes the items' keys (``keys=``) to seed each item's map.
    - ``memory(adapter, grid, count, options) -> budget.Cost``: the bytes one call holds per image of a patch
      ``grid`` against ``count`` explained scores (the maps of each image), and per unit of the method's own
      inner chunk (the option that sets it), from the estimators of ``budget.py``; ``options`` are the call's
      over the spec's, with the resolved ``layers``. None: ``budget.default_cost``.
    - ``colour``: the colour every figure draws the method in (a matplotlib colour); None: the palette's
      colour for the method's place in the registry (``method_colour``).
    """

    name: str
    image: ImageMethod | None = None
    text: TextMethod | None = None
    requires: tuple[str, ...] = ()
    text_requires: tuple[str, ...] = ()
    alternative: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    prepare: Callable[..., dict] | None = None
    probe: Mapping[str, Any] = field(default_factory=dict)
    slow: bool = False
    paired: bool = False
    class_set: str | None = None
    run_options: Mapping[str, str] = field(default_factory=dict)
    shown: bool = True
    interactive_options: Mapping[str, Any] = field(default_factory=dict)
    authors: AuthorsProtocol = field(default_factory=AuthorsProtocol)
    reference: bool = False
    keyed: bool = False
    uses: tuple[str, ...] | None = None
    instead: Mapping[str, str] = field(default_factory=dict)
    memory: Callable[..., Any] | None = None
    colour: str | None = None
    scores: tuple[str, ...] | None = None
    text_scores: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a method needs a name, got {self.name!r}")
        if self.image is None and self.text is None:
            raise ValueError(f"method {self.name!r} has neither an image nor a text function")
        unknown = [c for c in (*self.requires, *self.text_requires) if c not in CAPTURES]
        if unknown:
            raise ValueError(f"method {self.name!r} requires unknown captures {unknown}; known: {sorted(CAPTURES)}")
        clash = [o for o in (*self.options, *self.run_options, *self.interactive_options, *self.probe)
                 if o in SETTINGS]
        if clash:
            raise ValueError(f"method {self.name!r}: {clash} are settings (ExplainConfig), not options")
        if self.uses is None:
            fn = self.image if self.image is not None else self.text
            object.__setattr__(self, "uses", tuple(s for s in SETTINGS if _names(fn, s)))
        else:
            object.__setattr__(self, "uses", tuple(self.uses))
        unknown = [s for s in (*self.uses, *self.instead) if s not in SETTINGS]
        if unknown:
            raise ValueError(f"method {self.name!r}: {unknown} are not settings; settings: {SETTINGS}")
        explains = "score" in self.uses
        if self.scores is None:
            object.__setattr__(self, "scores", SCORES if explains else (DEFAULT_SCORE,))
        if self.text_scores is None:
            object.__setattr__(self, "text_scores", tuple(s for s in self.scores if s != "contrast"))
        object.__setattr__(self, "scores", tuple(self.scores))
        object.__setattr__(self, "text_scores", tuple(self.text_scores))
        unknown = [s for s in (*self.scores, *self.text_scores) if s not in KNOWN_SCORES]
        if unknown:
            raise ValueError(f"method {self.name!r}: {unknown} are not scores; scores: {KNOWN_SCORES}")

    def unused_setting(self, setting: str, value: Any) -> str | None:
        """Why ``setting=value`` is refused for this method: None when the method uses the setting or
        ``value`` is its default; otherwise a message naming method and setting and what to use instead."""
        if setting in self.uses or _same_setting(setting, value, SETTING_DEFAULTS[setting]):
            return None
        hint = self.instead.get(setting, SETTING_HINTS.get(
            setting, f"leave {setting} at its default {SETTING_DEFAULTS[setting]!r}"))
        hint = hint.replace("{explaining}", ", ".join(s.name for s in _SPECS.values() if setting in s.uses))
        return (f"{self.name} does not use the setting {setting} (got {value!r}), so it would not change the "
                f"map; {hint}")

    def unsupported_score(self, score: str, tower: Literal["image", "text"] = "image") -> str | None:
        """Why the method's ``tower`` function refuses to explain ``score``: None when it takes it (or does not
        use the setting and ``score`` is the default: ``unused_setting`` says the rest); otherwise a message
        naming the method, the score and the reason."""
        if "score" not in self.uses or self.explains(score, tower):
            return None
        supported = self.scores if tower == "image" else self.text_scores
        if tower == "text" and score == "contrast":
            return f"{self.name}'s word importance cannot explain score='contrast': {TEXT_CONTRAST}"
        reason = f": {SCORE_REASONS[score]}" if score in SCORE_REASONS else ""
        return (f"{self.name} cannot explain score={score!r} on the {tower} side; it explains "
                f"{', '.join(map(repr, supported))}{reason}")

    def explains(self, score: str, tower: Literal["image", "text"] = "image") -> bool:
        """Whether the method's ``tower`` function explains ``score``: one of its ``scores`` / ``text_scores``, or a
        model's own name for one of them (``scores.SCORE_ALIASES``: BLIP's "itc" is the cosine)."""
        supported = self.scores if tower == "image" else self.text_scores
        return score in supported or SCORE_ALIASES.get(score) in supported

    def takes(self, option: str, tower: Literal["image", "text"] = "image") -> bool:
        """Whether the method uses ``option`` (a setting such as "layers" or "mode", or an option): its
        function names the parameter, or passes its keyword options on (a ``**options`` parameter;
        functions that ignore options take ``**_``)."""
        fn = self.image if tower == "image" else self.text
        if fn is None:
            return False
        if option in SETTINGS:
            return option in self.uses
        return _names(fn, option)

    def options_from(self, settings: Mapping[str, Any], classes: Any = None) -> dict[str, Any]:
        """The options a run with ``settings`` gives the method: each of ``run_options`` whose setting
        ``settings`` holds, and ``classes`` (a (R, D) class set, when given) as its class-set option."""
        options = {option: settings[name] for option, name in self.run_options.items() if name in settings}
        if self.class_set is not None and classes is not None:
            options[self.class_set] = classes
        return options


def _names(fn: Callable[..., Any], option: str) -> bool:
    """Whether ``fn`` names ``option`` as a parameter or passes keyword options on (``**options``;
    functions that ignore options take ``**_``)."""
    parameters = inspect.signature(fn).parameters
    if option in parameters:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD and p.name != "_" for p in parameters.values())


def _same_setting(setting: str, value: Any, default: Any) -> bool:
    if setting == "layers":  # (-1,), [-1] and 1 (the last block) are the same blocks
        if isinstance(value, bool):
            return False
        if isinstance(value, int):
            return value == 1
        return tuple(value) == tuple(default)
    return value == default


_SPECS: dict[str, MethodSpec] = {}
IMAGE_METHODS: dict[str, ImageMethod] = {}
"""The image functions by name (what ``get_image_method`` and the runner call)."""
TEXT_METHODS: dict[str, TextMethod] = {}
"""The text functions by name."""


def register(spec: MethodSpec) -> MethodSpec:
    """Register (or replace) a method by its spec; returns the spec."""
    _SPECS[spec.name] = spec
    for table, fn in ((IMAGE_METHODS, spec.image), (TEXT_METHODS, spec.text)):
        if fn is not None:
            table[spec.name] = fn
        else:
            table.pop(spec.name, None)
    return spec


def unregister(name: str) -> None:
    """Forget a registered method (e.g. one a test registered)."""
    _SPECS.pop(name, None)
    IMAGE_METHODS.pop(name, None)
    TEXT_METHODS.pop(name, None)


def register_image_method(name: str, fn: ImageMethod, prepare: Callable[..., dict] | None = None,
                          probe: dict | None = None) -> ImageMethod:
    """Register an image function under ``name``: a new spec with only that, or the registered spec with
    this image function (and ``prepare`` / ``probe`` when given)."""
    old = _SPECS.get(name)
    changes: dict[str, Any] = {"image": fn}
    if prepare is not None:
        changes["prepare"] = prepare
    if probe is not None:
        changes["probe"] = dict(probe)
    register(replace(old, **changes) if old is not None else MethodSpec(name=name, **changes))
    return fn


def register_text_method(name: str, fn: TextMethod) -> TextMethod:
    """Register a text function under ``name`` (beside the image function of a registered method)."""
    old = _SPECS.get(name)
    register(replace(old, text=fn) if old is not None else MethodSpec(name=name, text=fn))
    return fn


def method_specs() -> list[MethodSpec]:
    """The registered methods' specs, in the order they were registered."""
    return list(_SPECS.values())


def find_spec(name: str) -> MethodSpec | None:
    """The spec of a registered method, or None."""
    return _SPECS.get(name)


def values_score(adapter: Any, config: Any = None) -> str:
    """The score that an explanation's ``scores`` are, for ``adapter``'s model (``config``: its ``ExplainConfig``,
    or None): ``score_name`` of the score its method explained; for a method that explains no score (or no
    config), the model's own default (``own_scores``: a CLIP's cosine, SigLIP's logit, a classifier's logit),
    which the default score it is recorded with (the cosine) names only where the model does not give the
    cosine itself."""
    spec = None if config is None else find_spec(config.method)
    if config is None or (spec is not None and "score" not in spec.uses):
        return default_score(adapter)
    return score_name(adapter, config.score)


#: the figures' method colours, distinct on white (Sasha Trubetskoy's 20 distinct colours without the light
#: ones, and a darkened yellow, its yellow being too light on white): the first registered method (Grad-ECLIP)
#: black, each further one the next colour (cycling after the last, black left out)
METHOD_PALETTE: tuple[str, ...] = ("#000000", "#4363d8", "#f58231", "#3cb44b", "#e6194b", "#911eb4", "#f032e6",
                                   "#42d4f4", "#9a6324", "#469990", "#800000", "#808000", "#000075", "#c9a000")
#: the colour of a reference that explains nothing (``MethodSpec.reference``) and of a name the registry
#: does not know (the evaluation's random floor, which is not registered)
REFERENCE_COLOUR = "#a9a9a9"


def method_colour(method: "str | MethodSpec") -> str:
    """The one colour of a method in every figure: its spec's ``colour``, else ``METHOD_PALETTE``'s for its
    place in the registry; grey (``REFERENCE_COLOUR``) for a reference and for an unregistered name."""
    spec = method if isinstance(method, MethodSpec) else find_spec(method)
    if spec is not None and spec.colour is not None:
        return spec.colour
    if spec is None or spec.reference or _SPECS.get(spec.name) is not spec:
        return REFERENCE_COLOUR
    index = list(_SPECS).index(spec.name)
    return METHOD_PALETTE[0] if index == 0 else METHOD_PALETTE[1 + (index - 1) % (len(METHOD_PALETTE) - 1)]


def get_spec(name: str) -> MethodSpec:
    """The spec of a registered method."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(_SPECS))}") from None


def _lookup(table: dict, name: str, kind: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {kind} method {name!r}; available: {', '.join(sorted(table))}") from None


def get_image_method(name: str) -> ImageMethod:
    return _lookup(IMAGE_METHODS, name, "image")


def get_text_method(name: str) -> TextMethod:
    return _lookup(TEXT_METHODS, name, "text")


def list_methods() -> dict[str, list[str]]:
    """Names of the registered image and text methods."""
    return {"image": sorted(IMAGE_METHODS), "text": sorted(TEXT_METHODS)}


def probe_options(name: str, options: dict) -> dict:
    """``options`` for a cheap trial run of image method ``name`` (its ``probe`` options on top)."""
    spec = _SPECS.get(name)
    return {**options, **(spec.probe if spec is not None else {})}


def prepare_options(name: str, model: Any, targets: Any, options: dict) -> dict:
    """The options of image method ``name`` completed with its model-dependent defaults."""
    spec = _SPECS.get(name)
    prepare = spec.prepare if spec is not None else None
    return prepare(model, targets, dict(options)) if prepare is not None else dict(options)


def refusal(spec: MethodSpec, adapter: CLIPAdapter, tower: Literal["image", "text"] = "image") -> str | None:
    """Why ``adapter``'s family cannot run ``spec``'s image (or text) method, from the two declarations: None
    when the tower captures all the method requires; otherwise the message naming the method, the family
    and the tower's reason for the first requirement it lacks (with the method's ``alternative``).

    A model without the tower (``adapter.text`` None: an image classifier) refuses every method of that
    tower. An adapter that does not declare what its towers capture (a stand-in) is not refused here: the
    method then meets what is missing when it runs."""
    required = spec.requires if tower == "image" else spec.text_requires
    part = getattr(adapter, tower, None)
    if part is None and hasattr(adapter, tower):
        return f"{spec.name} is not available for {adapter.family} models: they have no {tower} tower"
    captures = getattr(part, "captures", None)
    if captures is None:
        return None
    for capture in required:
        if capture not in captures:
            hint = f" ({spec.alternative})" if spec.alternative else ""
            return f"{spec.name} is not available for {adapter.family} models: {part.missing(capture)}{hint}"
    return None


__all__ = [
    "IMAGE_METHODS", "SETTINGS", "SETTING_DEFAULTS", "SETTING_HINTS", "TEXT_METHODS", "AuthorsProtocol", "ImageMethod",
    "MethodSpec", "TextMethod",
    "find_spec", "get_image_method", "get_spec", "get_text_method", "list_methods", "method_specs", "prepare_options",
    "probe_options", "refusal", "register", "register_image_method", "register_text_method", "unregister", "values_score",
]
