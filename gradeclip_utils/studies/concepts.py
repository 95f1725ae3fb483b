"""Concept decomposition: a sentence's heat map and score against those of its concepts.

A sentence ("a red circle and a blue square") is explained on an image together with each of its
concepts: its nouns ("a circle"), attributes ("a red shape") and verbs, each as a prompt of its own.
Three questions:

- overlap: how much of the sentence map each concept map shares (histogram intersection of the two
  maps scaled to sum 1: 1 = the same distribution, 0 = disjoint) and their Pearson correlation over
  patches;
- combination: the non-negative least-squares fit of the sentence's raw map by the concepts' raw maps,
  ``s ~ sum_j w_j c_j`` with ``w >= 0`` (``scipy.optimize.nnls``), with the uncentred
  ``R^2 = 1 - |s - C w|^2 / |s|^2`` (no intercept: a map of zeros is the baseline);
- the score: the sentence's unit text embedding t fitted non-negatively by the concepts' unit text
  embeddings, ``t = sum_j b_j t_j + r`` with ``b >= 0``. Then the image-text cosine splits exactly:
  ``S = f_I . t = sum_j b_j S_j + f_I . r`` (``S_j`` the concept's own cosine with the image): the
  contribution of concept j is ``b_j S_j`` and ``f_I . r`` is what no concept accounts for. (Exact in
  the "faithful" mode, where the scores are the model's cosines.)

Relations ("left of") and counts are not drawable as a concept alone: counts get a prompt ("three
shapes"), relations none.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..maps import resize_maps
from ..samples import as_input
from .common import mask_shares

#: prompt templates per concept kind for the synthetic world and for photographs
SYNTHETIC_TEMPLATES: dict[str, str] = {"noun": "a {}", "attribute": "a {} shape", "count": "{} shapes"}
PHOTO_TEMPLATES: dict[str, str] = {"noun": "a photo of a {}", "attribute": "a photo of something {}",
                                   "verb": "a photo of someone {}"}
_KIND_OF_TAG = {"NOUN": "noun", "PROPN": "noun", "ADJ": "attribute", "VERB": "verb"}
#: a combination whose peak is under this share of the sentence map's peak is marked "≈ 0" in the figure
NEGLIGIBLE_SHARE = 0.05
#: the concept kinds in the order the study's figures show them
KIND_ORDER: tuple[str, ...] = ("noun", "attribute", "count", "verb")


@dataclass(frozen=True)
class Concept:
    """One concept of a sentence: the word, its kind (noun, attribute, verb, count), and the prompt
    that stands for it."""

    word: str
    kind: str
    prompt: str


def _article(text: str) -> str:
    """'a apple' -> 'an apple' for templates that start with 'a {}'."""
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


def synthetic_concepts(caption: Any, templates: Mapping[str, str] | None = None) -> list[Concept]:
    """Concepts of a caption of the synthetic grammar: shape nouns, colours and sizes, counts."""
    from ..synthetic.captions import NUMBER_WORDS, Caption, parse_caption

    templates = {**SYNTHETIC_TEMPLATES, **(templates or {})}
    cap = caption if isinstance(caption, Caption) else parse_caption(str(caption))
    concepts: list[Concept] = []
    for phrase in cap.phrases:
        if phrase.count is not None:
            concepts.append(Concept(NUMBER_WORDS[phrase.count], "count",
                                    templates["count"].format(NUMBER_WORDS[phrase.count])))
        for attribute in (phrase.size, phrase.colour):
            if attribute is not None:
                concepts.append(Concept(attribute, "attribute", _article(templates["attribute"].format(attribute))))
        if phrase.shape is not None:
            concepts.append(Concept(phrase.shape, "noun", _article(templates["noun"].format(phrase.shape))))
    return _unique(concepts)


def lexicon_concepts(sentence: str, templates: Mapping[str, str] | None = None,
                     overrides: Mapping[str, str] | None = None) -> list[Concept]:
    """Concepts of any English sentence: its nouns, adjectives and verbs by the lexicon tagger
    (``studies.lexicon``, context-free; ``overrides`` fixes a word's tag)."""
    from .lexicon import tag_word

    templates = {**PHOTO_TEMPLATES, **(templates or {})}
    concepts = []
    for word in re.findall(r"[A-Za-z][A-Za-z'-]*", sentence):
        kind = _KIND_OF_TAG.get(tag_word(word, overrides))
        if kind is not None and kind in templates:
            concepts.append(Concept(word.lower(), kind, _article(templates[kind].format(word.lower()))))
    return _unique(concepts)


def _unique(concepts: Sequence[Concept]) -> list[Concept]:
    seen, out = set(), []
    for concept in concepts:
        if concept.prompt not in seen:
            seen.add(concept.prompt)
            out.append(concept)
    return out


def extract_concepts(sentence: str, synthetic: bool | None = None, templates: Mapping[str, str] | None = None,
                     overrides: Mapping[str, str] | None = None) -> list[Concept]:
    """The sentence's concepts: by the synthetic grammar when the sentence is one of its captions (or
    ``synthetic=True``), else by the lexicon tagger."""
    if synthetic is None:
        from ..synthetic.captions import parse_caption

        try:
            parse_caption(sentence)
            synthetic = True
        except ValueError:
            synthetic = False
    if synthetic:
        return synthetic_concepts(sentence, templates)
    return lexicon_concepts(sentence, templates, overrides)


def nnls_fit(columns: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares ``target ~ columns @ w`` (columns: (n, k)); returns (w, uncentred R^2)."""
    from scipy.optimize import nnls

    A = np.asarray(columns, dtype=np.float64)
    b = np.asarray(target, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != b.shape[0]:
        raise ValueError(f"columns {A.shape} do not fit a target of length {b.shape[0]}")
    weights, _ = nnls(A, b)
    denominator = float(b @ b)
    r2 = 1.0 - float(np.sum((b - A @ weights) ** 2)) / denominator if denominator > 0 else float("nan")
    return weights, r2


def histogram_intersection(a: np.ndarray, b: np.ndarray) -> float:
    """sum(min(p, q)) of the non-negative parts of two maps each scaled to sum 1 (NaN for an empty map)."""
    p = np.clip(np.asarray(a, dtype=np.float64).ravel(), 0, None)
    q = np.clip(np.asarray(b, dtype=np.float64).ravel(), 0, None)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    return float(np.minimum(p / p.sum(), q / q.sum()).sum())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


@dataclass
class Decomposition:
    """A sentence and its concepts explained on one image (see the module docstring)."""

    sentence: str
    concepts: list[Concept]
    explanation: Any  # ImageExplanation; prompts = [sentence, *concept prompts]
    map_weights: np.ndarray
    map_r2: float
    reconstruction: np.ndarray
    overlap: np.ndarray
    correlation: np.ndarray
    text_weights: np.ndarray
    text_r2: float
    score: float
    concept_scores: np.ndarray
    image: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def contributions(self) -> np.ndarray:
        """b_j S_j: each concept's share of the image-text score."""
        return self.text_weights * self.concept_scores

    @property
    def score_residual(self) -> float:
        """f_I . r: the part of the score that no concept accounts for."""
        return float(self.score - self.contributions.sum())

    def table(self):
        """One row per concept (a pandas DataFrame)."""
        import pandas as pd

        rows = []
        for j, concept in enumerate(self.concepts):
            rows.append({"concept": concept.word, "kind": concept.kind, "prompt": concept.prompt,
                         "map_weight": float(self.map_weights[j]), "overlap": float(self.overlap[j]),
                         "correlation": float(self.correlation[j]), "score": float(self.concept_scores[j]),
                         "text_weight": float(self.text_weights[j]),
                         "score_contribution": float(self.contributions[j]), **{
                             k: v[j] for k, v in self.extra.items() if isinstance(v, (list, np.ndarray))}})
        return pd.DataFrame(rows)

    def plot(self, panel_size: float = 2.2, cmap: str = "jet", columns: int = 4):
        """Input, sentence map, NNLS combination, then each concept's map with its weight, on lines of
        ``columns`` panels. Each map is min-max scaled on its own, except the combination, which is drawn on
        the sentence map's scale (so that a combination that explains little looks weak, and one that is
        all but zero is marked "≈ 0"); the colour bar says so."""
        from ..plotting import PanelRow, heat_map_grid

        picture = self.explanation.images[0]
        size = picture.size[::-1]
        sentence = resize_maps(self.explanation.raw[0][0], size, dtype=torch.float64).numpy()
        combination = resize_maps(torch.from_numpy(np.asarray(self.reconstruction)), size,
                                  dtype=torch.float64).numpy()
        low, high = float(sentence.min()), float(sentence.max())
        peak = float(combination.max()) / high if high > 0 else float("nan")
        faint = " \u00b7 map \u2248 0" if not peak >= NEGLIGIBLE_SHARE else ""
        maps = [sentence, combination] + [self.explanation.raw[0][j + 1] for j in range(len(self.concepts))]
        titles = [f"sentence\nS = {self.score:.3f}",
                  f"NNLS combination\nR\u00b2 = {self.map_r2:.2f}{faint} \u00b7 on the sentence's scale"]
        for j, concept in enumerate(self.concepts):
            overlap = "n/a (empty map)" if np.isnan(self.overlap[j]) else f"{self.overlap[j]:.2f}"
            titles.append(f"{concept.prompt}\nS = {self.concept_scores[j]:.3f} \u00b7 w = {self.map_weights[j]:.2f}"
                          f" \u00b7 overlap {overlap}")
        ranges = [None, (low, high)] + [None] * len(self.concepts)
        return heat_map_grid([PanelRow(picture, maps, titles, "input", ranges=ranges)],
                             title=f"\u201c{self.sentence}\u201d: its map, the concepts' NNLS combination and "
                                   "each concept's map", columns=columns, width_px=None, panel_inches=panel_size,
                             cmap=cmap, bar_label="each panel scaled: 0 its min,\n1 its max (the combination: "
                                                  "the\nsentence map's min and max)", pyplot=True)

    def plot_score(self):
        """The image-text score split into concept contributions b_j S_j and the unexplained rest."""
        from matplotlib import pyplot as plt

        labels = [c.prompt for c in self.concepts] + ["not in any concept"]
        values = list(self.contributions) + [self.score_residual]
        fig, ax = plt.subplots(figsize=(6, 0.45 * len(labels) + 1.2))
        colours = ["#2e86c1"] * len(self.concepts) + ["#999999"]
        ax.barh(range(len(labels)), values, color=colours)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=9)
        ax.invert_yaxis()
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("contribution to S (b_j · S_j)")
        ax.set_title(f"“{self.sentence}”: S = {self.score:.3f}, text-embedding fit R² = {self.text_r2:.2f}",
                     fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        return fig


def decompose(model: Any, image: Any, sentence: str, concepts: Sequence[Concept] | None = None, *,
              method: str = "grad_eclip", layers: Any = (-1,), mode: str = "faithful",
              resolution: str = "native", templates: Mapping[str, str] | None = None) -> Decomposition:
    """Explain ``sentence`` and each of its concepts on ``image`` and relate them (module docstring).

    ``concepts`` default to ``extract_concepts(sentence)`` (the synthetic grammar when the sentence is
    one of its captions, else the lexicon tagger).
    """
    from .. import encode_texts, explain_image

    if concepts is None:
        concepts = extract_concepts(sentence, templates=templates)
    concepts = list(concepts)
    if not concepts:
        raise ValueError(f"no concepts found in {sentence!r}: pass concepts=[Concept(...), ...]")
    prompts = [sentence, *[c.prompt for c in concepts]]
    explanation = explain_image(model, as_input(image), prompts, method=method, layers=layers, mode=mode,
                                resolution=resolution, progress=False)
    raw = explanation.raw[0].double().numpy()
    s, C = raw[0].ravel(), raw[1:].reshape(len(concepts), -1)
    map_weights, map_r2 = nnls_fit(C.T, s)
    embeddings = encode_texts(model, prompts).double().cpu().numpy()
    text_weights, text_r2 = nnls_fit(embeddings[1:].T, embeddings[0])
    return Decomposition(
        sentence=sentence, concepts=concepts, explanation=explanation, map_weights=map_weights, map_r2=map_r2,
        reconstruction=(C.T @ map_weights).reshape(raw.shape[1:]),
        overlap=np.array([histogram_intersection(s, c) for c in C]),
        correlation=np.array([pearson(s, c) for c in C]),
        text_weights=text_weights, text_r2=text_r2, score=float(explanation.scores[0, 0]),
        concept_scores=explanation.scores[0, 1:].double().numpy(), image=image)


def concept_mask(scene: Any, concept: Concept) -> np.ndarray | None:
    """Union of the visible masks of the scene's objects that show the concept (a colour, size or
    shape); None for concepts without a drawable extent (counts, unknown words)."""
    from ..synthetic import COLOURS, SHAPES, SIZES

    attribute = ("colour" if concept.word in COLOURS else "size" if concept.word in SIZES
                 else "shape" if concept.word in SHAPES else None)
    if attribute is None:
        return None
    selected = [i for i, o in enumerate(scene.objects) if getattr(o, attribute) == concept.word]
    mask = np.zeros(scene.masks.shape[1:], dtype=bool)
    for i in selected:
        mask |= scene.masks[i]
    return mask


def decomposition_study(model: Any, items: Sequence[Any], caption_kinds: Sequence[str] = ("pair", "full"),
                        *, progress: bool = True, **options: Any):
    """Decompose one sentence per image and collect one row per (image, concept) as a DataFrame.

    ``items``: synthetic scenes (their first caption of ``caption_kinds`` is decomposed; scenes with
    none are skipped), or (image, sentence) pairs (e.g. photographs with captions). For scenes the
    rows also hold the concept map's energy share inside the objects that show the concept and that
    mask's area share (what a uniform map would get). Options go to ``decompose``; the resolution
    defaults to the model's for scenes and the synthetic model, else native.
    """
    import pandas as pd
    from tqdm import tqdm  # text progress: readable in a saved or reloaded notebook

    from ..samples import default_resolution, image_name
    from ..synthetic import Scene

    rows = []
    for index, item in enumerate(tqdm(items, desc="decompose", disable=not progress)):
        if isinstance(item, Scene):
            caption = next((item.captions[k] for k in caption_kinds if k in item.captions), None)
            if caption is None:
                continue
            image, sentence, concepts = item, caption.text, synthetic_concepts(caption)
        else:
            image, sentence = item
            concepts = None
        settings = {"resolution": default_resolution(model, image), **options}
        dec = decompose(model, image, sentence, concepts, **settings)
        table = dec.table()
        energies, areas = [], []
        for j, concept in enumerate(dec.concepts):
            mask = concept_mask(image, concept) if isinstance(image, Scene) else None
            if mask is None or not mask.any():
                energies.append(np.nan)
                areas.append(np.nan)
                continue
            heat = resize_maps(dec.explanation.raw[0][j + 1], mask.shape, dtype=torch.float64).numpy()
            energies.append(mask_shares(heat, {"concept": mask})["concept"])
            areas.append(float(mask.mean()))
        table["energy_in_mask"] = energies
        table["mask_area"] = areas
        table.insert(0, "image", image_name(image, index))
        table.insert(1, "sentence", dec.sentence)
        table["sentence_score"] = dec.score
        table["map_r2"] = dec.map_r2
        table["text_r2"] = dec.text_r2
        table["score_residual"] = dec.score_residual
        rows.append(table)
    if not rows:
        raise ValueError(f"nothing to decompose: no scene has a caption of kinds {tuple(caption_kinds)}")
    return pd.concat(rows, ignore_index=True)


def typical_example(frame, items: Sequence[Any], column: str = "map_r2") -> tuple[Any, dict[str, Any]]:
    """The study's typical image: the one whose per-image ``column`` (default: the map fit's R²) is nearest
    the median over the study's images (the first such). ``items``: what was given to
    ``decomposition_study``. Returns (the item, {"image", "sentence", column, "median", "rank"}) where rank
    is the image's place among the study's values, sorted (0 = lowest)."""
    from ..synthetic import Scene
    from .common import image_name

    per_image = frame.drop_duplicates("image").reset_index(drop=True)
    values = per_image[column].astype(float)
    median = float(values.median())
    pick = int((values - median).abs().idxmin())
    name = per_image.at[pick, "image"]
    for index, item in enumerate(items):
        if image_name(item if isinstance(item, Scene) else item[0], index) == name:
            rank = int((values < values[pick]).sum())
            return item, {"image": name, "sentence": per_image.at[pick, "sentence"], column: float(values[pick]),
                          "median": median, "rank": rank, "images": len(per_image)}
    raise ValueError(f"{name!r} is not one of the items given")


def _kinds_with_data(frame, column: str) -> list[str]:
    """The concept kinds that have at least one value of ``column``, in ``KIND_ORDER``."""
    present = set(frame.dropna(subset=[column])["kind"])
    return [k for k in KIND_ORDER if k in present] + sorted(present - set(KIND_ORDER))


def plot_study(frame) -> Any:
    """Across images: NNLS weight, overlap and score contribution per concept kind (bars with 95%
    bootstrap intervals; a kind without a value in a panel is left out of it, and each kind says its n),
    the R^2 of both fits, and concept-map energy in the concept's own objects."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8), layout="constrained")
    for ax, column, label, title in ((axes[0], "map_weight", "NNLS map weight", "weight in the map fit"),
                                     (axes[1], "overlap", "overlap with sentence map",
                                      "overlap with the sentence map"),
                                     (axes[2], "score_contribution", "contribution to S (b·S_j)",
                                      "share of the score S")):
        order = _kinds_with_data(frame, column)
        counts = frame.dropna(subset=[column]).groupby("kind").size()
        sns.barplot(data=frame, x="kind", y=column, order=order, errorbar=("ci", 95), ax=ax, color="#5dade2",
                    seed=0)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([f"{k}\n(n={counts[k]})" for k in order], fontsize=8)
        ax.set_ylabel(label)
        ax.set_xlabel("")
        ax.set_title(title, fontsize=9)
    per_image = frame.drop_duplicates("image")
    fits = pd_melt(per_image, ["map_r2", "text_r2"], {"map_r2": "maps", "text_r2": "text embeddings"})
    with warnings.catch_warnings():  # seaborn passes matplotlib's deprecated ``vert`` itself
        warnings.filterwarnings("ignore", message=".*vert: bool was deprecated.*")
        sns.boxplot(data=fits, x="fit", y="R²", ax=axes[3], color="#a9cce3")
    axes[3].set_ylim(min(0.0, float(fits["R²"].min()) - 0.05), 1.02)
    axes[3].set_title("NNLS fit of the sentence (uncentred R²)", fontsize=9)
    axes[3].set_xlabel("")
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"concept decomposition over {frame['image'].nunique()} images (bars: means with 95% bootstrap "
                 "intervals; boxes: R² per image)", fontsize=11)
    return fig


def pd_melt(frame, columns: Sequence[str], names: Mapping[str, str]):
    melted = frame.melt(value_vars=list(columns), var_name="fit", value_name="R²")
    melted["fit"] = melted["fit"].map(names)
    return melted


def plot_concept_localisation(frame) -> Any:
    """Energy of each concept map inside the objects that show the concept, against the area those
    objects cover (a uniform map's energy), per concept kind: means with 95% bootstrap intervals over
    the concepts (the title says how many), the legend beside the axes."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    data = frame.dropna(subset=["energy_in_mask"])
    melted = data.melt(id_vars=["kind"], value_vars=["energy_in_mask", "mask_area"], var_name="measure",
                       value_name="share")
    melted["measure"] = melted["measure"].map({"energy_in_mask": "map energy in the concept's objects",
                                               "mask_area": "their area (uniform map)"})
    order = _kinds_with_data(frame, "energy_in_mask")
    counts = data.groupby("kind").size()
    fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
    sns.barplot(data=melted, x="kind", y="share", hue="measure", order=order, errorbar=("ci", 95), ax=ax, seed=0)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([f"{k}\n(n={counts[k]})" for k in order], fontsize=9)
    ax.set_xlabel("")
    ax.set_ylabel("share of the map / image")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"does a concept's map fall on the objects that show it? {len(data)} concepts on "
                 f"{data['image'].nunique()} images\n(means with 95% bootstrap intervals over the concepts)",
                 fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return fig
