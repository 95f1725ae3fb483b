"""What the explorers offer of each method, read from the methods' declarations (``MethodSpec``): which
methods the comparison shows, the options that make a method interactive, which of the offered settings a
method applies and what those settings are called on screen. The code names no method (a method
registered later, say in a test, is offered the same way)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..config import ExplainConfig
from ..methods import get_spec, list_methods, method_specs, refusal
from ..methods.scores import DEFAULT_SCORE, model_scores

#: generic class names whose prompts form a method's class set (``MethodSpec.class_set``, e.g. CLIP Surgery's) on
#: real models (COCO's categories, in part)
GENERIC_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "airplane", "bus", "train", "boat", "bird", "cat", "dog", "horse", "sheep", "cow",
    "bottle", "cup", "fork", "spoon", "bowl", "banana", "chair", "couch", "bed", "table", "tv", "laptop",
    "phone", "book", "clock", "vase", "flag", "rocket", "tree", "building", "sky")

#: the settings the explorers offer for every method, with the word that names each on screen
OFFERED_SETTINGS: dict[str, str] = {"layers": "block", "mode": "mode", "score": "score"}

#: the text method that explains the words when the chosen image method has no text version: the
#: package's default method (Grad-ECLIP), as ``explain_text`` uses it
WORDS_METHOD: str = ExplainConfig().method


def comparison_methods() -> list[str]:
    """The image methods ``MethodComparison`` shows side by side by default (``MethodSpec.shown``), in
    the order they were registered."""
    return [spec.name for spec in method_specs() if spec.shown and spec.image is not None]


def default_method_options(model: Any) -> dict[str, dict[str, Any]]:
    """Options that make every method usable with one prompt at a time, from the methods' declarations:
    a method with a class set (CLIP Surgery) gets one (the synthetic world's 35 colour x shape prompts,
    or "a photo of a {class}" over GENERIC_CLASSES), and each its options for interactive speed (RISE
    500 masks instead of 2000)."""
    from .. import encode_texts
    from ..samples import is_synthetic
    from ..synthetic import class_prompts

    specs = [spec for spec in method_specs() if spec.image is not None]
    classes = None
    # only for a method the model can run: a model without a text tower (a classifier) embeds no prompts
    if any(spec.class_set is not None and refusal(spec, model.adapter) is None for spec in specs):
        names = class_prompts()[0] if is_synthetic(model) else [f"a photo of a {c}" for c in GENERIC_CLASSES]
        classes = encode_texts(model, names)
    options = {spec.name: {**spec.interactive_options, **spec.options_from({}, classes=classes)} for spec in specs}
    return {name: values for name, values in options.items() if values}


def merged_options(model: Any, given: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``default_method_options`` with the options ``given`` per method on top."""
    options = default_method_options(model)
    for method, extra in (given or {}).items():
        options[method] = {**options.get(method, {}), **dict(extra)}
    return options


def method_takes(method: str, option: str) -> bool:
    """Whether an image method uses ``option`` (e.g. "layers", "mode"; ``MethodSpec.takes``)."""
    return get_spec(method).takes(option)


def unused_settings(method: str, score: str = DEFAULT_SCORE, default: str = DEFAULT_SCORE) -> list[str]:
    """The on-screen names of the offered settings that ``method`` does not apply (e.g. ["block"]); the
    score only when one other than the model's ``default`` is chosen (every method gives the model's default
    score: a CLIP's cosine, a classifier's logit)."""
    return [label for setting, label in OFFERED_SETTINGS.items()
            if not method_takes(method, setting) and (setting != "score" or score not in (DEFAULT_SCORE, default))]


def settings_used(method: str) -> dict[str, bool]:
    """For each offered setting ("layers", "mode"), whether ``method`` applies it: the explorers disable the
    controls of the others and say they are not used."""
    return {setting: method_takes(method, setting) for setting in OFFERED_SETTINGS}


def text_score(text_method: str, score: str) -> str:
    """The score the words are explained with: ``score`` where the text method explains it, else the
    default (the contrast has no text side: ``methods.scores.TEXT_CONTRAST``)."""
    from ..methods.scores import DEFAULT_SCORE

    return score if get_spec(text_method).explains(score, "text") else DEFAULT_SCORE


def contrast_pairs(prompts: Sequence[str]) -> list[tuple[str, str]]:
    """The explorer's contrast prompts, each written "a | b", as pairs (a, b); a ValueError naming the form
    for one that is not."""
    pairs = []
    for prompt in prompts:
        parts = [part.strip() for part in prompt.split("|")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"the contrast explains one prompt rather than another: write each as "
                             f"'a red circle | a blue circle' (got {prompt!r})")
        pairs.append((parts[0], parts[1]))
    return pairs


def words_method(method: str) -> str:
    """The text method that explains the words beside ``method``'s maps: its own text version when it
    has one, else ``WORDS_METHOD``."""
    return method if method in list_methods()["text"] else WORDS_METHOD


def image_methods(wanted: Sequence[str] = (), models: Sequence[Any] = ()) -> list[str]:
    """The registered image methods, after checking that each of ``wanted`` is one of them (a ValueError
    naming the unknown ones). With ``models``: those a method list offers them, without the methods that
    explain only scores none of them gives (the matching head's Grad-CAM for a model without one); a method
    one of them cannot run for want of a capture stays, marked by ``method_choices``."""
    available = list_methods()["image"]
    unknown = [m for m in wanted if m not in available]
    if unknown:
        raise ValueError(f"unknown image methods {unknown}; registered: {available}")
    if not models:
        return available
    given = {name for model in models for name in model_scores(model.adapter)}
    return [m for m in available if "score" not in get_spec(m).uses or any(get_spec(m).explains(s) for s in given)]


def method_refusal(model: Any, method: str, tower: str = "image") -> str | None:
    """Why ``model`` cannot run ``method``'s ``tower`` function (``methods.refusal``, from the method's and the
    adapter's declarations), or None."""
    return refusal(get_spec(method), model.adapter, tower)


#: how a method the model cannot run is marked in the method lists (choosing it says why)
NOT_FOR_MODEL = "not for this model"


def method_choices(model: Any, methods: Sequence[str]) -> list[Any]:
    """The method lists' options: ``methods`` as they are when ``model`` runs them all, else (label, method)
    pairs, a method it cannot run marked ``NOT_FOR_MODEL`` (it stays listed: choosing it shows the reason
    instead of a figure)."""
    return marked(methods, {name: NOT_FOR_MODEL for name in methods if method_refusal(model, name) is not None})


def marked(methods: Sequence[str], notes: Mapping[str, str]) -> list[Any]:
    """``methods`` as the options of a list, those in ``notes`` labelled with their note: the names as they are
    when there is no note, else (label, method) pairs (a list takes one form or the other)."""
    if not notes:
        return list(methods)
    return [(f"{name} ({notes[name]})" if name in notes else name, name) for name in methods]


def class_labels(model: Any) -> tuple[str, ...]:
    """The names of ``model``'s classes when its targets are classes (an image classifier's ``labels``), else
    (): its targets are texts."""
    return tuple(getattr(model.adapter, "labels", None) or ())


def image_blocks(model: Any) -> int:
    """How many image blocks the model has (the block slider's range), from its adapter's interface."""
    return int(model.adapter.num_image_blocks)


def text_blocks(model: Any) -> int:
    """How many text blocks the model has (0 without a text tower: an image classifier)."""
    return int(model.adapter.num_text_blocks) if getattr(model.adapter, "text", True) is not None else 0
