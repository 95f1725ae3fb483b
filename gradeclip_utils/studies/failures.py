"""Attribute, counting and relation failures: does CLIP prefer the true caption to a one-word edit of
it, and where do the heat maps go when it is right and when it is wrong?

On the synthetic world every item is a held-out scene with a true caption and its false one-edit
variants (exact truth): a colour, shape or size changed, the count changed ("two" against "three"),
the colours of two objects swapped ("a red circle and a blue square" against "a blue circle and a red
square": attribute binding), or the relation flipped ("left of" against "right of"). An item is
right when the true caption scores above every variant. The maps of the true caption and of the
best-scoring variant are measured against the exact masks: the share of each map's mass on the
objects the caption is about ("targets"), on the other objects, and on the background.

On photographs the items are hand-written pairs (``PHOTO_PROBES``): one true caption and one false
edit each, with no masks.

The explained score (``explained_scores``): on scenes holding a red circle and a blue circle (both
captions true), the probability of each among the two prompts and the contrasts "a red circle rather
than a blue circle" and the reverse, with the share of each map's mass on each circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from ..maps import resize_maps
from ..samples import as_input, default_resolution, image_name
from ..stats import wilson_interval
from .common import mask_shares

KINDS: tuple[str, ...] = ("colour", "shape", "size", "count", "binding", "relation")
#: start of each kind's block of held-out scene ids (disjoint from the evaluation command's blocks)
SEED_BLOCK = 600_000
#: a choice is a tie when the model's own softmax over the true caption and the best variant (at its logit
#: scale) gives the favoured one less than this probability: a coin flip, not a decision
TIE_PROBABILITY = 0.55
#: the verdicts of a choice, and the colour each is written in
VERDICT_COLOURS = {"right": "#1e8449", "wrong": "#c0392b", "tie": "#7f8c8d"}


def tie_margin(logit_scale: float, probability: float = TIE_PROBABILITY) -> float:
    """The score margin below which a choice is a tie: softmax([m, 0] * logit_scale)[0] < ``probability``,
    that is |m| < log(p / (1 - p)) / logit_scale (0.0084 at the synthetic CLIP's 23.8, 0.0020 at CLIP's 100)."""
    if not 0.5 < probability < 1.0:
        raise ValueError(f"probability must be in (0.5, 1), got {probability}")
    return float(np.log(probability / (1.0 - probability)) / logit_scale)


def verdict(margin: float, tie: float) -> str:
    """"right" (the true caption wins by ``tie`` or more), "wrong" (loses by ``tie`` or more) or "tie"."""
    return "tie" if abs(margin) < tie else ("right" if margin > 0 else "wrong")

#: start of the explained-score example's held-out scene ids (after the kinds' blocks)
SCORE_BLOCK = SEED_BLOCK + 90_000
#: the explained-score example's prompts, one per circle of its scenes (the scenes' objects in this order)
CIRCLES: tuple[str, str] = ("a red circle", "a blue circle")

#: hand-written probes for the bundled photographs: (photo stem, kind, true caption, false edit)
PHOTO_PROBES: tuple[tuple[str, str, str, str], ...] = (
    ("chelsea", "colour", "a photo of a brown tabby cat", "a photo of a white cat"),
    ("chelsea", "count", "a photo of one cat", "a photo of two cats"),
    ("chelsea", "shape", "a photo of a cat", "a photo of a dog"),
    ("coffee", "colour", "a photo of a red cup", "a photo of a blue cup"),
    ("coffee", "relation", "a cup on top of a saucer", "a saucer on top of a cup"),
    ("coffee", "count", "a photo of one cup of coffee", "a photo of three cups of coffee"),
    ("coffee", "binding", "a red cup on a brown table", "a brown cup on a red table"),
    ("astronaut", "colour", "an astronaut in an orange suit", "an astronaut in a blue suit"),
    ("astronaut", "count", "a photo of one person", "a photo of three people"),
    ("rocket", "colour", "a white rocket at dusk", "a black rocket at dusk"),
    ("rocket", "relation", "a rocket between two towers", "a tower between two rockets"),
    ("rocket", "count", "a photo of one rocket", "a photo of three rockets"),
)


@dataclass
class ChoiceItem:
    """One test: an image, its true caption and false variants; for scenes, the target objects."""

    kind: str
    image: Any
    caption: str
    negatives: list[str]
    targets: tuple[int, ...] = ()
    name: str = ""


@dataclass
class ChoiceResults:
    """The per-item table and, for the galleries, the maps of each item (true caption, best variant)."""

    frame: Any
    items: list[ChoiceItem]
    maps: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    pictures: list[Any] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


def _size_negatives(caption, objects) -> list:
    from ..synthetic import SIZES

    out = []
    for k, phrase in enumerate(caption.phrases):
        if phrase.size is None:
            continue
        for size in SIZES:
            if size != phrase.size:
                edited = replace(caption, phrases=caption.phrases[:k] + (replace(phrase, size=size),)
                                 + caption.phrases[k + 1:])
                if not edited.holds(objects):
                    out.append(edited)
    return out


def synthetic_items(kind: str, n: int, start: int | None = None) -> list[ChoiceItem]:
    """``n`` held-out scenes with a true caption and its false one-edit variants of ``kind``."""
    from ..synthetic.captions import hard_negatives, object_caption, unique_objects
    from ..synthetic.dataset import HELDOUT_SEED_START, make_example

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    source = {"colour": "partial", "shape": "partial", "size": "partial", "count": "count", "binding": "pair",
              "relation": "relation"}[kind]
    first = HELDOUT_SEED_START + (SEED_BLOCK + 10_000 * KINDS.index(kind) if start is None else start)
    items: list[ChoiceItem] = []
    for seed in range(first, first + 50 * max(n, 1)):
        if len(items) >= n:
            break
        example = make_example(seed, kind=source)
        scene, caption = example.scene, example.caption
        if kind == "size":
            unique = [i for i in unique_objects(scene.objects) if i in caption.targets]
            if not unique:
                continue
            caption = object_caption(scene.objects, unique[0], with_size=True)
            negatives = _size_negatives(caption, scene.objects)
        else:
            if kind == "count" and not any(p.count for p in caption.phrases):
                continue
            if kind == "binding" and (len(caption.phrases) != 2 or caption.relation is not None):
                continue
            if kind == "relation" and caption.relation is None:
                continue
            negatives = hard_negatives(caption, scene.objects, kind)
        if negatives and caption.holds(scene.objects):
            items.append(ChoiceItem(kind, scene, caption.text, [c.text for c in negatives],
                                    tuple(caption.targets), f"scene {scene.seed}"))
    if len(items) < n:
        raise RuntimeError(f"found only {len(items)} of {n} {kind} items")
    return items


def photo_items(probes: Sequence[tuple[str, str, str, str]] = PHOTO_PROBES, photos: Sequence[Any] | None = None
                ) -> list[ChoiceItem]:
    """Items for photographs from (photo stem, kind, true caption, false caption) probes."""
    from pathlib import Path

    from ..samples import sample_photos

    by_stem = {Path(p).stem: p for p in (photos if photos is not None else sample_photos())}
    items = []
    for stem, kind, true, false in probes:
        if stem not in by_stem:
            raise KeyError(f"no photograph named {stem!r}; have {sorted(by_stem)}")
        items.append(ChoiceItem(kind, str(by_stem[stem]), true, [false], (), stem))
    return items


def run_choices(model: Any, items: Sequence[ChoiceItem], *, method: str = "grad_eclip", layers: Any = (-1,),
                mode: str = "faithful", resolution: str | None = None, tolerance: float = 4.0,
                progress: bool = True) -> ChoiceResults:
    """Score and explain every item (one forward pass per item for all its captions).

    ``resolution``: default "model" for synthetic scenes, "native" for photographs. Columns of the
    frame: kind, image, caption, negative (the best-scoring false variant), options, score_true,
    score_negative, margin, correct, and for scenes the map shares (true_/negative_ targets, others,
    background) and whether the true caption's map points at a target (within ``tolerance`` pixels).
    ``verdict``: "right", "wrong", or "tie" when the margin is under ``tie_margin`` (the model's own two-way
    softmax within 45-55%; ``correct`` is the strict comparison, which the accuracy counts).
    """
    import pandas as pd
    from tqdm import tqdm  # text progress: readable in a saved or reloaded notebook

    from .. import explain_image
    from ..metrics import pointing_game
    from ..synthetic import Scene

    rows, maps, pictures = [], [], []
    logit_scale = float(model.adapter.logit_scale)
    tie = tie_margin(logit_scale)
    for item in tqdm(items, desc="captions", disable=not progress):
        is_scene = isinstance(item.image, Scene)
        res = resolution or default_resolution(model, item.image)
        prompts = [item.caption, *item.negatives]
        ex = explain_image(model, as_input(item.image), prompts, method=method, layers=layers, mode=mode,
                           resolution=res, progress=False)
        scores = ex.scores[0].double().numpy()
        best = 1 + int(np.argmax(scores[1:]))
        row = {"kind": item.kind, "image": item.name or image_name(item.image), "caption": item.caption,
               "negative": prompts[best], "options": len(prompts), "score_true": float(scores[0]),
               "score_negative": float(scores[best]), "margin": float(scores[0] - scores[best]),
               "correct": bool(scores[0] > scores[best]), "verdict": verdict(float(scores[0] - scores[best]), tie)}
        if is_scene:
            size = item.image.masks.shape[1:]
            target = np.zeros(size, dtype=bool)
            for index in item.targets:
                target |= item.image.masks[index]
            others = item.image.masks.any(axis=0) & ~target
            true_map, negative_map = (resize_maps(ex.raw[0][k], size, dtype=torch.float64).numpy() for k in (0, best))
            for label, heat in (("true", true_map), ("negative", negative_map)):
                shares = mask_shares(heat, {"targets": target, "others": others})
                row.update({f"{label}_{k}": v for k, v in shares.items()})
            row["target_area"] = float(target.mean())
            row["pointing"] = bool(pointing_game(ex.raw[0][0], target, tolerance=tolerance))
        else:
            true_map, negative_map = ex.raw[0][0].numpy(), ex.raw[0][best].numpy()
        maps.append((true_map, negative_map))
        pictures.append(ex.images[0])
        rows.append(row)
    settings = {"method": method, "layers": list(layers) if not isinstance(layers, int) else layers,
                "mode": mode, "resolution": resolution or "model for scenes and the synthetic model, else native",
                "tolerance_px": tolerance, "logit_scale": logit_scale, "tie_probability": TIE_PROBABILITY,
                "tie_margin": tie}
    return ChoiceResults(pd.DataFrame(rows), list(items), maps, pictures, settings)


def accuracy_table(frame):
    """Per kind: n, accuracy with its 95% Wilson interval, chance (mean of 1 / options), mean margin, the
    number of ties (``verdict``), and (scenes) the true caption's map share on the targets when the model
    is right and when it is wrong."""
    import pandas as pd

    rows = []
    for kind, group in frame.groupby("kind", sort=False):
        k, n = int(group["correct"].sum()), len(group)
        low, high = wilson_interval(k, n)
        row = {"kind": kind, "n": n, "accuracy": k / n, "ci_low": low, "ci_high": high,
               "chance": float((1.0 / group["options"]).mean()), "mean_margin": float(group["margin"].mean())}
        if "verdict" in group:
            row["ties"] = int((group["verdict"] == "tie").sum())
        if "true_targets" in group:
            row["target_share_right"] = float(group.loc[group["correct"], "true_targets"].mean()) \
                if group["correct"].any() else float("nan")
            row["target_share_wrong"] = float(group.loc[~group["correct"], "true_targets"].mean()) \
                if (~group["correct"]).any() else float("nan")
            row["target_area"] = float(group["target_area"].mean())
            row["pointing"] = float(group["pointing"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def plot_accuracy(table, title: str = "true caption against its one-edit variants"):
    """Accuracy per kind with 95% Wilson intervals and chance marked (the legend beside the axes); a kind
    with ties (``verdict``) says how many under its name."""
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(table) + 2.5, 3.3))
    x = np.arange(len(table))
    acc = table["accuracy"].to_numpy()
    err = np.clip(np.vstack([acc - table["ci_low"].to_numpy(), table["ci_high"].to_numpy() - acc]), 0, None)
    ax.bar(x, acc, yerr=err, capsize=4, color="#5dade2", label="accuracy (95% Wilson CI)")
    ax.scatter(x, table["chance"], marker="_", s=600, color="black", zorder=3, label="chance")
    ties = table["ties"] if "ties" in table else [0] * len(table)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{k}\n(n={n}" + (f", {t} tie{'s' if t != 1 else ''})" if t else ")")
                        for k, n, t in zip(table["kind"], table["n"], ties)], fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def plot_map_destinations(frame):
    """Where the mass of the maps goes (targets, other objects, background), for the true caption and
    the best false variant, split by whether the model chose right; bars with 95% bootstrap intervals."""
    import pandas as pd
    import seaborn as sns

    parts = []
    for label in ("true", "negative"):
        for region in ("targets", "others", "background"):
            column = f"{label}_{region}"
            part = frame[["kind", "correct", column]].rename(columns={column: "share"})
            part["caption"] = "true caption" if label == "true" else "false variant"
            part["region"] = region
            parts.append(part)
    long = pd.concat(parts, ignore_index=True).dropna(subset=["share"])
    long["model"] = np.where(long["correct"], "right", "wrong")
    grid = sns.catplot(data=long, x="region", y="share", hue="model", col="kind", row="caption", kind="bar",
                       errorbar=("ci", 95), height=2.3, aspect=0.95, hue_order=["right", "wrong"],
                       palette={"right": "#27ae60", "wrong": "#c0392b"}, seed=0, sharey=True)
    grid.set_titles("{col_name} · {row_name}", size=9)
    grid.tick_params(axis="x", labelsize=8, rotation=30)
    grid.set_axis_labels("", "share of map mass")
    grid.figure.suptitle("where the heat maps go", fontsize=10)
    grid.tight_layout()  # the grid's own layout keeps room for the legend
    return grid.figure


@dataclass
class Gallery:
    """A gallery figure and exactly what it shows: the results' rows (``indices``), their images and names,
    and the numbers its titles print (``manifest`` gives them to ``FigureExporter.save``, so the manifest
    names the scenes the figure shows, whatever rows were picked)."""

    figure: Any
    indices: list[int]
    images: list[Any]
    image_names: list[str]
    rows: list[dict[str, Any]]
    tie_margin: float | None

    def manifest(self) -> dict[str, Any]:
        """``images``, ``image_names`` and ``data`` (each row's captions, scores, margin and verdict, the tie
        margin) for ``FigureExporter.save``."""
        return {"images": self.images, "image_names": self.image_names,
                "data": {"rows": self.rows, "tie_margin": self.tie_margin}}


def gallery(results: ChoiceResults, kind: str | None = None, n_right: int = 2, n_wrong: int = 2, n_tie: int = 2,
            panel_size: float = 2.2) -> Gallery:
    """Examples the model got right, wrong and tied (``verdict``: a margin under the tie margin is a tie,
    not a decision), the first of each of ``kind`` (None: all kinds): input, map of the true caption and
    map of the best false variant, each map min-max scaled on its own (colour bar), the input titled with
    the verdict and the margin S(true) - S(false), the maps with their scores."""
    from ..plotting import PanelRow, heat_map_grid

    frame = results.frame
    pool = list(frame.index[frame["kind"] == kind] if kind is not None else frame.index)
    if not pool:
        raise ValueError(f"no items of kind {kind!r}")
    tie = results.settings.get("tie_margin")
    verdicts = {i: frame.at[i, "verdict"] if "verdict" in frame else ("right" if frame.at[i, "correct"] else "wrong")
                for i in pool}
    picked = {name: [i for i in pool if verdicts[i] == name][:count]
              for name, count in (("right", n_right), ("wrong", n_wrong), ("tie", n_tie))}
    chosen = picked["right"] + picked["wrong"] + picked["tie"]
    if not chosen:
        raise ValueError(f"nothing to show for kind {kind!r} with n_right={n_right}, n_wrong={n_wrong}, n_tie={n_tie}")
    panel_rows, rows = [], []
    for index in chosen:
        row = frame.loc[index]
        margin = float(row["margin"])
        rows.append({"image": row["image"], "kind": row["kind"], "caption": row["caption"],
                     "negative": row["negative"], "score_true": float(row["score_true"]),
                     "score_negative": float(row["score_negative"]), "margin": margin, "verdict": verdicts[index]})
        true_map, negative_map = results.maps[index]
        panel_rows.append(PanelRow(
            results.pictures[index], [true_map, negative_map],
            [f"true: {row['caption']}\nS = {row['score_true']:.3f}",
             f"false: {row['negative']}\nS = {row['score_negative']:.3f}"],
            input_title=f"{row['image']} ({row['kind']})\n{verdicts[index]}: margin "
                        f"{f'{margin:+.2g}'.replace('-', chr(0x2212))}",
            input_colour=VERDICT_COLOURS[verdicts[index]]))
    counts = ", ".join(f"{len(picked[name])} {name}{'s' if name == 'tie' and len(picked[name]) != 1 else ''}"
                       for name in ("right", "wrong", "tie"))
    rule = (f"tie: |margin| < {tie:.4f} (the model's own choice between the two within "
            f"{100 * (1 - TIE_PROBABILITY):.0f}-{100 * TIE_PROBABILITY:.0f}%)" if tie is not None else "")
    title = f"{kind or 'all kinds'}: {counts}; margin = S(true) \u2212 S(false)" + (f"\n{rule}" if rule else "")
    fig = heat_map_grid(panel_rows, title=title, width_px=None, panel_inches=panel_size, pyplot=True)
    return Gallery(fig, chosen, [results.items[i].image for i in chosen], [frame.at[i, "image"] for i in chosen],
                   rows, tie)


def plot_gallery(results: ChoiceResults, kind: str | None = None, n_right: int = 2, n_wrong: int = 2,
                 panel_size: float = 2.2, n_tie: int = 2):
    """The figure of ``gallery`` (its ``manifest`` says which scenes it shows)."""
    return gallery(results, kind, n_right, n_wrong, n_tie, panel_size).figure


# ---------------------------------------------------------------------------------- the explained score
@dataclass
class ScoreExample:
    """Scenes holding a red and a blue circle explained with the probability among ``CIRCLES`` and the
    contrasts both ways. ``frame``: one row per scene (the probabilities, the contrast, each map's share
    of mass on each circle and on the background, and how far each probability map is from its contrast
    map times s p_red p_blue); ``probability`` / ``contrast``: the explanations, scene by scene."""

    frame: Any
    scenes: list[Any]
    probability: list[Any]
    contrast: list[Any]
    scale: float
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Means over the scenes of every numeric column, and the largest deviation of a probability map
        from s p_red p_blue times its contrast map."""
        means = {k: float(v) for k, v in self.frame.drop(columns=["scene"]).mean().items()}
        return {**means, "largest_deviation": float(self.frame["deviation"].max()), "scenes": len(self.frame)}

    def shares(self):
        """The mean share of each map's mass on the red circle, the blue circle and the background."""
        import pandas as pd

        return pd.DataFrame([{"map": f"{source}: {name}", **{region: float(self.frame[f"{name}: {region}"].mean())
                                                             for region in ("red", "blue", "background")}}
                             for source, _, name in _SCORE_MAPS]).set_index("map")


#: the maps of the example: (explanation, index of the map in it, its name in the frame)
_SCORE_MAPS = (("probability", 0, "p(red)"), ("probability", 1, "p(blue)"), ("contrast", 0, "red rather than blue"),
               ("contrast", 1, "blue rather than red"))


def explained_scores(model: Any, n: int, *, method: str = "grad_eclip", layers: Any = (-1,),
                     mode: str = "faithful") -> ScoreExample:
    """``n`` held-out scenes of a red and a blue circle, each explained with ``score="probability"`` among
    ``CIRCLES`` and ``score="contrast"`` both ways. With two prompts the probability's gradient is
    s p_red p_blue (grad S_red - grad S_blue): for a method linear in the gradient (Grad-ECLIP), each
    probability map is its contrast map times that positive number (``deviation`` measures it)."""
    import pandas as pd

    from .. import explain_image
    from ..synthetic import generate_scene
    from ..synthetic.dataset import HELDOUT_SEED_START

    scale = float(model.adapter.logit_scale)
    rows, scenes, probabilities, contrasts = [], [], [], []
    for index in range(n):
        scene = generate_scene(HELDOUT_SEED_START + SCORE_BLOCK + index,
                               objects=[{"shape": "circle", "colour": "red"}, {"shape": "circle", "colour": "blue"}])
        common = dict(method=method, layers=layers, mode=mode, resolution=default_resolution(model, scene),
                      progress=False)
        probability = explain_image(model, as_input(scene), list(CIRCLES), score="probability", **common)
        contrast = explain_image(model, as_input(scene), [CIRCLES, CIRCLES[::-1]], score="contrast", **common)
        p_red, p_blue = probability.scores[0].tolist()
        row = {"scene": scene.seed, "p(red)": p_red, "p(blue)": p_blue,
               "S(red) - S(blue)": float(contrast.scores[0, 0])}
        explained = {"probability": probability, "contrast": contrast}
        size = scene.masks.shape[1:]
        for source, k, name in _SCORE_MAPS:
            heat = resize_maps(explained[source].raw[0][k], size, dtype=torch.float64).numpy()
            shares = mask_shares(heat, {"red": scene.masks[0], "blue": scene.masks[1]})
            row.update({f"{name}: {region}": share for region, share in shares.items()})
        factor = scale * p_red * p_blue
        row["deviation"] = max(float((probability.raw[0][k] - factor * contrast.raw[0][k]).abs().max())
                               / max(float((factor * contrast.raw[0][k]).abs().max()), 1e-30) for k in range(2))
        rows.append(row)
        scenes.append(scene)
        probabilities.append(probability)
        contrasts.append(contrast)
    settings = {"method": method, "layers": list(layers) if not isinstance(layers, int) else layers, "mode": mode,
                "scores": ["probability", "contrast"], "prompts": list(CIRCLES), "logit_scale": scale}
    return ScoreExample(pd.DataFrame(rows), scenes, probabilities, contrasts, scale, settings)


def plot_explained_scores(example: ScoreExample, index: int = 0, panel_size: float = 2.2):
    """One scene of the example: the picture, the probability maps of both prompts and the contrasts both
    ways, each normalised to its own maximum, with its score."""
    from matplotlib import pyplot as plt

    from ..plotting import overlay

    picture = example.probability[index].images[0]
    explained = {"probability": example.probability[index], "contrast": example.contrast[index]}
    fig, axes = plt.subplots(1, 5, figsize=(panel_size * 5 + 0.5, panel_size + 0.7))
    axes[0].imshow(picture)
    axes[0].set_title(f"scene {example.scenes[index].seed}", fontsize=8)
    axes[0].axis("off")
    for ax, (source, k, name) in zip(axes[1:], _SCORE_MAPS):
        ex = explained[source]
        score = float(ex.scores[0, k])
        value = f"p = {score:.3f}" if source == "probability" else f"ΔS = {score:+.3f}"
        overlay(picture, ex.heatmaps()[0, k].numpy(), ax=ax, title=f"{source}: {name}\n{value}")
        ax.title.set_fontsize(7)
    fig.suptitle(f"the explained score: probability among {list(CIRCLES)} and the contrasts", fontsize=10)
    fig.tight_layout()
    return fig
