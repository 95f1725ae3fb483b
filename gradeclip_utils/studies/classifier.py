"""A classifier beside a CLIP: Grad-ECLIP for the embedded classifier's class logit and for the embedded CLIP's
prompt naming the same object, on the same held-out synthetic scenes, scored against the object's exact mask.

``compare_localisation`` explains each scene of ``synthetic.evaluate.localisation_items`` (2-4 objects, one
uniquely nameable object) twice: the CLIP for the object's caption ("a red circle", its cosine), the classifier
for the object's class ("red circle", its logit); both last block, faithful mode, at each model's patch grid (the
same 8 x 8 here). One row per (scene, model): pointing game (within ``tolerance`` pixels of the 64 x 64 mask),
energy pointing game, IoU of the map above its mean, the mask's area share; ``summarise`` gives the means and
the scenes where the two models' pointing games disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["CLASSIFIER_OFFSET", "Comparison", "compare_localisation", "explain_objects", "peak_objects",
           "plot_comparison", "plot_objects", "plot_scores", "summarise"]

#: held-out scene block of the comparison (disjoint from the evaluation's blocks and from the layers study's)
CLASSIFIER_OFFSET = 800_000
METRICS = ("pointing", "energy", "iou", "area_share")


@dataclass
class Comparison:
    """The scenes, each model's maps (N, h, w) for its own target, and one row per (scene, model)."""

    items: list
    maps: dict[str, Any]
    frame: Any
    #: what each model explains per scene: the CLIP's captions, the classifier's class names
    targets: dict[str, list[str]]


def compare_localisation(clip: Any, classifier: Any, n: int = 40, *, offset: int = CLASSIFIER_OFFSET,
                         tolerance: float = 4.0, mode: str = "faithful", layers: Sequence[int] = (-1,),
                         batch_size: int = 64) -> Comparison:
    """Grad-ECLIP maps of ``clip`` (for each object's caption) and of ``classifier`` (for its class) on ``n``
    held-out scenes, with their localisation scores (see the module docstring)."""
    import pandas as pd

    from ..metrics import localisation_scores
    from ..synthetic.evaluate import item_maps, localisation_items, object_class

    items = localisation_items(n, offset)
    masks = np.stack([mask for _, _, mask in items])
    targets = {"CLIP": [caption.text for _, caption, _ in items],
               "classifier": [object_class(scene, caption) for scene, caption, _ in items]}
    models = {"CLIP": clip, "classifier": classifier}
    maps, rows = {}, []
    for label, model in models.items():
        maps[label] = item_maps(model, items, layers=tuple(layers), mode=mode, batch_size=batch_size,
                                prompts=targets[label])
        scores = localisation_scores(maps[label], masks, tolerance=tolerance)
        for i, (scene, _, _) in enumerate(items):
            rows.append({"model": label, "seed": scene.seed, "objects": scene.n_objects, "target": targets[label][i],
                         **{metric: float(scores[metric][i]) for metric in METRICS}})
    return Comparison(items=items, maps=maps, frame=pd.DataFrame(rows), targets=targets)


def summarise(comparison: Comparison) -> dict[str, Any]:
    """Per model: the scenes, the mean of each metric; and how often the pointing games agree (both hit, only
    the CLIP, only the classifier, neither)."""
    frame = comparison.frame
    means = {model: {metric: float(group[metric].mean()) for metric in METRICS}
             for model, group in frame.groupby("model", sort=False)}
    hits = frame.pivot(index="seed", columns="model", values="pointing").astype(bool)
    agreement = {"both": int((hits["CLIP"] & hits["classifier"]).sum()),
                 "only CLIP": int((hits["CLIP"] & ~hits["classifier"]).sum()),
                 "only classifier": int((~hits["CLIP"] & hits["classifier"]).sum()),
                 "neither": int((~hits["CLIP"] & ~hits["classifier"]).sum())}
    return {"scenes": int(frame["seed"].nunique()), "means": means, "pointing_agreement": agreement}


def plot_comparison(comparison: Comparison, rows: int = 6, panel_size: float = 1.6):
    """The first ``rows`` scenes: the scene with the target object outlined, the CLIP's map and the classifier's
    (each min-max scaled on its own), the pointing game's verdict in each title."""
    from matplotlib import pyplot as plt

    from ..maps import resize_maps

    shown = comparison.items[:rows]
    fig, axes = plt.subplots(len(shown), 3, figsize=(3 * panel_size, len(shown) * panel_size + 0.5), squeeze=False)
    frame = comparison.frame.set_index(["model", "seed"])
    for r, (scene, caption, mask) in enumerate(shown):
        axes[r, 0].imshow(scene.image)
        axes[r, 0].contour(mask, levels=[0.5], colors="white", linewidths=0.8)
        axes[r, 0].set_title(caption.text, fontsize=7)
        for c, model in enumerate(("CLIP", "classifier"), start=1):
            heat = resize_maps(comparison.maps[model][r:r + 1], tuple(mask.shape)).numpy()[0]
            span = float(heat.max() - heat.min()) or 1.0
            axes[r, c].imshow(scene.image)
            axes[r, c].imshow((heat - heat.min()) / span, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[r, c].contour(mask, levels=[0.5], colors="white", linewidths=0.6)
            hit = bool(frame.loc[(model, scene.seed), "pointing"])
            target = comparison.targets[model][r]
            axes[r, c].set_title(f"{model}: {target!r}\n{'hit' if hit else 'miss'}", fontsize=7,
                                 color="black" if hit else "red")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("Grad-ECLIP, last block: CLIP prompt vs classifier logit (object outlined)", fontsize=9)
    fig.tight_layout()
    return fig


def explain_objects(clip: Any, classifier: Any, scene: Any, *, mode: str = "faithful") -> dict[str, Any]:
    """One scene explained for each of its objects by both models: the CLIP for "a {colour} {shape}" (its
    cosine), the classifier for "{colour} {shape}" (its logit). Returns the two ``ImageExplanation`` s."""
    from .. import explain_image

    names = list(dict.fromkeys(o.description for o in scene.objects))
    return {"CLIP": explain_image(clip, scene.image, [f"a {name}" for name in names], mode=mode, progress=False),
            "classifier": explain_image(classifier, scene.image, names, mode=mode, progress=False)}


def peak_objects(explanation: Any, scene: Any) -> list[str]:
    """For each of an explanation's maps of ``scene``: the object under the map's peak (its description, the
    peak taken on the map resized to the scene as the pointing game takes it), or "background"."""
    from ..maps import resize_maps

    size = tuple(scene.masks.shape[-2:])
    found = []
    for heat in explanation.raw[0]:
        y, x = divmod(int(resize_maps(heat[None], size, dtype=torch.float64).flatten().argmax()), size[1])
        under = [o.description for o, mask in zip(scene.objects, scene.masks) if mask[y, x]]
        found.append(under[0] if under else "background")
    return found


def plot_objects(explained: dict[str, Any], panel_size: float = 1.8):
    """Two rows of one scene's maps, one panel per object: the CLIP's (score: the cosine) above the classifier's
    (score: the logit), each map min-max scaled on its own."""
    from ..plotting import PanelRow, heat_map_grid

    rows = []
    for model, label in (("CLIP", "cos"), ("classifier", "logit")):
        ex = explained[model]
        titles = [f"{model}: {prompt}\n{label} {float(ex.scores[0, k]):.3f}" for k, prompt in enumerate(ex.prompts)]
        rows.append(PanelRow(ex.images[0], [m for m in ex.raw[0]], titles))
    return heat_map_grid(rows, title="Grad-ECLIP for each object of one scene: CLIP (top) and classifier (bottom)",
                         width_px=None, panel_inches=panel_size, pyplot=True)


def plot_scores(comparison: Comparison):
    """Pointing game, energy pointing game and IoU of both models with 95% bootstrap intervals; the dashed line
    is the mask's area share (what a uniform map gets in the energy pointing game)."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    frame = comparison.frame
    fig, axes = plt.subplots(1, 3, figsize=(9, 3))
    for ax, metric, label in zip(axes, ("pointing", "energy", "iou"),
                                 ("pointing game", "energy pointing game", "IoU (map > mean)")):
        sns.barplot(data=frame, x="model", y=metric, errorbar=("ci", 95), ax=ax, seed=0, color="#2e86c1")
        if metric == "energy":
            ax.axhline(float(frame["area_share"].mean()), color="grey", ls="--", lw=0.8)
            ax.text(-0.4, float(frame["area_share"].mean()), "uniform map", fontsize=7, color="grey", va="bottom")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(label)
        ax.set_xlabel("")
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"Grad-ECLIP localisation on {frame['seed'].nunique()} held-out scenes: the CLIP's prompt and the "
                 "classifier's class", fontsize=9)
    fig.tight_layout()
    return fig
