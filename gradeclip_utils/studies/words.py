"""Word importance across prompts: which words carry the image-text score.

One image against many prompts (a class name in prompt templates, and paraphrases); Grad-ECLIP's word
importance for each prompt, tagged with each word's part of speech (the context-free lexicon tagger of
``studies.lexicon``), its concreteness (Brysbaert et al. 2014) and, for the synthetic grammar, its role
(colour, shape, count...). Importance sums to 1 over a prompt's words, so a word of a long prompt
gets less on average; ``relative_importance`` = importance x number of words corrects for that (1 =
the uniform share).

A check of the attribution (``word_deletion_check``): remove the most important word, the least
important one, or a random one from each prompt and measure how much the score drops.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..samples import as_input, default_resolution, image_name
from ..stats import bootstrap_ci

#: a selection of the prompt templates OpenAI used for zero-shot ImageNet
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.", "a bad photo of a {}.", "a close-up photo of the {}.", "a bright photo of a {}.",
    "a cropped photo of the {}.", "a drawing of a {}.", "art of the {}.", "itap of a {}.",
    "a photo of the large {}.", "a photo of the small {}.", "a blurry photo of a {}.", "a good photo of the {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "a photo of one {}.", "there is a {} here.",
)
#: templates for the synthetic world (its grammar has no "photo"; out-of-grammar words show what the
#: model ignores)
SYNTHETIC_TEMPLATES: tuple[str, ...] = (
    "{}", "a picture of {}", "a photo of {}", "there is {}", "an image with {}", "{} on a background",
    "a drawing of {}", "{} in the scene",
)


#: paraphrases of the bundled photographs' captions (the first of each is samples.PHOTO_CAPTIONS')
PHOTO_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "astronaut": ("an astronaut in an orange suit in front of a flag", "a woman astronaut wearing an orange suit",
                  "a portrait of an astronaut with a flag behind her", "a smiling astronaut in an orange spacesuit"),
    "chelsea": ("a close-up of a tabby cat with green eyes", "the face of a striped cat looking to the side",
                "a brown tabby cat with long white whiskers", "a portrait of a cat with green eyes"),
    "coffee": ("a red cup of coffee on a saucer with a spoon", "a red espresso cup on a red saucer",
               "coffee in a red cup with a spoon beside it", "a hot drink in a cup on a wooden table"),
    "rocket": ("a white rocket on a launch pad at dusk", "a tall white rocket standing between towers",
               "a rocket ready for launch in the evening", "a launch pad with a rocket and bright lights"),
}
#: class names of the bundled photographs, for the prompt templates
PHOTO_CLASSES: dict[str, str] = {"astronaut": "astronaut", "chelsea": "cat", "coffee": "cup of coffee",
                                 "rocket": "rocket"}


def synthetic_paraphrases(colour: str, shape: str) -> list[str]:
    """Ways of saying "a <colour> <shape>"; only the first is of the synthetic grammar."""
    article = "an" if colour[0] in "aeiou" else "a"
    return [f"{article} {colour} {shape}", f"a {shape} that is {colour}", f"the {colour} {shape}",
            f"one {colour} {shape}", f"a {shape} coloured {colour}", f"{article} {colour} {shape} in the picture"]


def prompt_set(image: Any, synthetic: bool, templates: Sequence[str] | None = None,
               paraphrases: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Prompts for one image and the group of each ("template" or "paraphrase").

    A synthetic scene: its largest uniquely nameable object ("a red circle") in ``SYNTHETIC_TEMPLATES``
    and ``synthetic_paraphrases``. A bundled photograph: its class name (``PHOTO_CLASSES``) in
    ``TEMPLATES`` and its ``PHOTO_PARAPHRASES``. Other images need ``templates`` filled with a name
    already (plain prompts) and/or ``paraphrases``.
    """
    from pathlib import Path

    from ..synthetic import Scene
    from ..synthetic.captions import unique_objects

    if isinstance(image, Scene):
        unique = unique_objects(image.objects)
        if not unique:
            raise ValueError(f"scene {image.seed} has no uniquely nameable object")
        target = image.objects[max(unique, key=lambda i: image.objects[i].visible_area)]
        name = f"{'an' if target.colour[0] in 'aeiou' else 'a'} {target.colour} {target.shape}"
        template_list = template_prompts(name, templates or SYNTHETIC_TEMPLATES)
        paraphrase_list = list(paraphrases or synthetic_paraphrases(target.colour, target.shape))
    else:
        stem = Path(str(image)).stem
        if templates is None and stem not in PHOTO_CLASSES and paraphrases is None:
            raise ValueError(f"no prompts known for {stem!r}: pass templates (with the name filled in) or paraphrases")
        template_list = (template_prompts(PHOTO_CLASSES[stem], templates or TEMPLATES) if stem in PHOTO_CLASSES
                         else list(templates or []))
        paraphrase_list = list(paraphrases if paraphrases is not None else PHOTO_PARAPHRASES.get(stem, ()))
    prompts, groups = [], []
    for group, items in (("template", template_list), ("paraphrase", paraphrase_list)):
        for prompt in items:
            if prompt not in prompts:
                prompts.append(prompt)
                groups.append(group)
    return prompts, groups


def template_prompts(name: str, templates: Sequence[str] = TEMPLATES) -> list[str]:
    """The class name ``name`` in every template (fixing 'a' before a vowel)."""
    import re

    prompts = []
    for template in templates:
        text = template.format(name)
        prompts.append(re.sub(r"\ba ([aeiou])", r"an \1", text))
    return prompts


def word_table(explanation: Any, *, overrides: Mapping[str, str] | None = None, groups: Sequence[str] | None = None,
               image_names: Sequence[str] | None = None):
    """A TextExplanation as a long table: one row per (image, prompt, word) with importance,
    relative_importance, position, n_words, score, pos, role, concreteness, and the prompt's group
    (e.g. "template" or "paraphrase") when ``groups`` is given (one per prompt)."""
    from .lexicon import concreteness, synthetic_role, tag_word

    frame = explanation.to_frame()
    if groups is not None:
        if len(groups) != len(explanation.texts):
            raise ValueError(f"{len(groups)} groups for {len(explanation.texts)} prompts")
        frame["group"] = frame["text"].map(dict(zip(explanation.texts, groups)))
    if image_names is not None:
        frame["image"] = frame["image"].map(dict(enumerate(image_names)))
    counts = {text: len(words) for text, words in zip(explanation.texts, explanation.words)}
    frame["n_words"] = frame["text"].map(counts)
    frame["relative_importance"] = frame["importance"] * frame["n_words"]
    lowered = frame["word"].str.lower()
    frame["pos"] = [tag_word(w, overrides) for w in lowered]
    frame["role"] = [synthetic_role(w) for w in lowered]
    frame["concreteness"] = [concreteness(w) for w in lowered]
    return frame


def explain_prompts(model: Any, image: Any, prompts: Sequence[str], *, layers: Any = 8, mode: str = "faithful",
                    method: str = "grad_eclip", resolution: str | None = None, groups: Sequence[str] | None = None,
                    overrides: Mapping[str, str] | None = None):
    """Word importance of every prompt for one image; returns (TextExplanation, table)."""
    from .. import explain_text
    resolution = resolution or default_resolution(model, image)
    text_blocks = model.adapter.num_text_blocks
    if isinstance(layers, int) and layers > text_blocks:
        layers = text_blocks
    explanation = explain_text(model, as_input(image), list(prompts), layers=layers, mode=mode, method=method,
                               resolution=resolution)
    table = word_table(explanation, overrides=overrides, groups=groups, image_names=[image_name(image)])
    return explanation, table


#: the 95% interval's tail as the studies compute it: 0.025 but for the last bit of (1 - 0.95) / 2, kept so that
#: their published tables keep their exact values
STUDY_TAIL = (1 - 0.95) / 2


def summarise(frame, by: str | Sequence[str], value: str = "relative_importance", n_boot: int = 2000):
    """Mean of ``value`` per group with a 95% percentile-bootstrap interval and the group's size."""
    import pandas as pd

    rows = []
    for key, group in frame.groupby(by, sort=False):
        _, low, high = bootstrap_ci(group[value].to_numpy(), resamples=n_boot, tail=STUDY_TAIL)
        key = key if isinstance(key, tuple) else (key,)
        names = [by] if isinstance(by, str) else list(by)
        rows.append({**dict(zip(names, key)), "n": len(group), "mean": float(group[value].mean()),
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows).sort_values("mean", ascending=False, ignore_index=True)


POS_ORDER: tuple[str, ...] = ("NOUN", "PROPN", "ADJ", "VERB", "NUM", "ADV", "ADP", "DET", "PRON", "AUX", "CCONJ",
                              "SCONJ", "PART", "PUNCT", "X")


def plot_by(frame, column: str = "pos", value: str = "relative_importance", hue: str | None = None,
            order: Sequence[str] | None = None, xlabel: str | None = None):
    """Mean importance per value of ``column`` (e.g. part of speech or synthetic role), bars with 95%
    bootstrap intervals (seaborn); the dashed line is the uniform share for relative importance."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    present = set(frame[column])
    if order is None:
        order = [p for p in POS_ORDER if p in present] if column == "pos" else sorted(present)
    order = [o for o in order if o in present]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.75 * len(order) + 2) + 1.6, 3.4), layout="constrained")
    sns.barplot(data=frame, x=column, y=value, hue=hue, order=order, errorbar=("ci", 95), ax=ax, seed=0,
                color=None if hue else "#5dade2")
    if value == "relative_importance":  # named in the legend, which stands beside the bars
        ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="uniform share (every word alike)")
    counts = frame.groupby(column).size()
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([f"{p}\n(n={counts[p]})" for p in order], fontsize=8)
    ax.set_xlabel(xlabel or ("part of speech (context-free lexicon tagger)" if column == "pos" else column))
    ax.set_ylabel(value.replace("_", " "))
    ax.set_title("means with 95% bootstrap intervals over words", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def plot_by_concreteness(frame, value: str = "relative_importance"):
    """Importance against concreteness (Brysbaert et al. 2014) with a linear fit and its 95% interval,
    and the mean per concreteness band."""
    import pandas as pd
    import seaborn as sns
    from matplotlib import pyplot as plt

    data = frame.dropna(subset=["concreteness"]).copy()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    if len(data) >= 3:
        sns.regplot(data=data, x="concreteness", y=value, ax=axes[0], x_jitter=0.03, seed=0,
                    scatter_kws={"s": 10, "alpha": 0.4}, line_kws={"color": "#c0392b"})
        data["band"] = pd.cut(data["concreteness"], bins=[1, 2, 3, 4, 5.01], right=False,
                              labels=["1-2", "2-3", "3-4", "4-5"])
        sns.barplot(data=data, x="band", y=value, errorbar=("ci", 95), ax=axes[1], color="#5dade2", seed=0)
    axes[0].set_xlabel("concreteness (1 abstract - 5 concrete)")
    axes[1].set_xlabel("concreteness band")
    missing = int(frame["concreteness"].isna().sum())
    fig.suptitle(f"word importance and concreteness ({len(data)} words rated, {missing} not in the norms)",
                 fontsize=10)
    for ax in axes:
        ax.set_ylabel(value.replace("_", " "))
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def plot_prompt_words(explanation: Any, image: int = 0, max_prompts: int = 16, cmap: str = "Reds",
                      fontsize: int = 10):
    """Every prompt on its own line with each word shaded by its importance, and the score."""
    import matplotlib
    from matplotlib import pyplot as plt

    colours = matplotlib.colormaps[cmap]
    count = min(len(explanation.texts), max_prompts)
    fig, ax = plt.subplots(figsize=(9, 0.38 * count + 0.6))
    ax.axis("off")
    renderer = fig.canvas.get_renderer()
    order = np.argsort(-explanation.scores[image, :count].numpy())
    for line, k in enumerate(order):
        pair = explanation.pair(image, int(k))
        y = 1 - (line + 0.5) / count
        ax.text(0.0, y, f"{pair.score:.3f}", fontsize=fontsize - 1, transform=ax.transAxes, va="center",
                family="monospace")
        x = 0.08
        peak = float(pair.word_importance.max()) if pair.word_importance.size and pair.word_importance.max() > 0 \
            else 1.0
        for word, value in zip(pair.words, pair.word_importance):
            shade = float(value) / peak
            text = ax.text(x, y, word, fontsize=fontsize, transform=ax.transAxes, va="center",
                           color="white" if shade > 0.6 else "black",
                           bbox=dict(boxstyle="round,pad=0.2", facecolor=colours(shade), edgecolor="none"))
            box = text.get_window_extent(renderer=renderer).transformed(ax.transAxes.inverted())
            x = box.x1 + 0.01
    ax.set_title("prompts by score (S, left); words shaded by importance within each prompt", fontsize=9,
                 loc="left")
    fig.tight_layout()
    return fig


def _drop_word(words: Sequence[str], index: int) -> str:
    return " ".join(w for i, w in enumerate(words) if i != index)


def word_deletion_check(model: Any, image: Any, explanation: Any, *, image_index: int = 0, seed: int = 0,
                        resolution: str | None = None):
    """For each prompt: the score with the most important word removed, with the least important one
    removed, and with a random word removed (the same image). If the importance is right, removing the
    top word lowers the score most. Returns a DataFrame (one row per prompt with at least two words)."""
    import pandas as pd
    import torch

    from .. import encode_texts
    from ..session import explaining
    from ..inputs import prepare_images

    rng = np.random.default_rng(seed)
    resolution = resolution or default_resolution(model, image)
    prepared = prepare_images(model, as_input(image), resolution)[0]
    with explaining(model.model), torch.no_grad():
        embedding = model.adapter.encode_image(prepared.pixels.unsqueeze(0).to(model.device)).float()
    embedding = torch.nn.functional.normalize(embedding, dim=-1)
    rows, variants = [], []
    for k, text in enumerate(explanation.texts):
        pair = explanation.pair(image_index, k)
        if len(pair.words) < 2:
            continue
        top, bottom = int(np.argmax(pair.word_importance)), int(np.argmin(pair.word_importance))
        random = int(rng.integers(len(pair.words)))
        rows.append({"text": text, "score": pair.score, "top_word": pair.words[top],
                     "bottom_word": pair.words[bottom], "random_word": pair.words[random]})
        variants.append([_drop_word(pair.words, i) for i in (top, bottom, random)])
    if not rows:
        raise ValueError("no prompt has two or more words")
    flat = [v for triple in variants for v in triple]
    scores = (encode_texts(model, flat).to(embedding.device) @ embedding[0]).cpu().numpy().reshape(-1, 3)
    frame = pd.DataFrame(rows)
    frame["score_without_top"], frame["score_without_bottom"], frame["score_without_random"] = scores.T
    for which in ("top", "bottom", "random"):
        frame[f"drop_{which}"] = frame["score"] - frame[f"score_without_{which}"]
    return frame


def deletion_check_summary(frame) -> dict[str, Any]:
    """What the word-removal check says, on average and prompt by prompt: the mean score drop for each
    removal, the number of prompts, those where removing the most important word raises the score
    (``top_raises``) or costs less than removing a random word (``top_below_random``), and those prompts'
    most important words, most frequent first (``top_words_where_it_raises``)."""
    from collections import Counter

    raises = frame[frame["drop_top"] < 0]
    return {"mean_drop": {k: float(frame[f"drop_{k}"].mean()) for k in ("top", "random", "bottom")},
            "prompts": int(len(frame)), "top_raises": int(len(raises)),
            "top_below_random": int((frame["drop_top"] < frame["drop_random"]).sum()),
            "top_words_where_it_raises": dict(Counter(raises["top_word"]).most_common())}


def plot_deletion_check(frame):
    """Score drop when removing the most / least important word or a random one (95% bootstrap CIs)."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    long = frame.melt(value_vars=["drop_top", "drop_random", "drop_bottom"], var_name="removed",
                      value_name="score drop")
    long["removed"] = long["removed"].map({"drop_top": "most important", "drop_random": "random",
                                           "drop_bottom": "least important"})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    sns.barplot(data=long, x="removed", y="score drop", errorbar=("ci", 95), ax=ax, color="#5dade2", seed=0)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("word removed")
    raises = int((frame["drop_top"] < 0).sum())
    ax.set_title(f"score drop S(prompt) \u2212 S(prompt without the word), {len(frame)} prompts\n(means with 95% "
                 f"bootstrap intervals; removing the most important word raises S for {raises})", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig
