"""Layers: how Grad-ECLIP maps change from early to late blocks.

``layer_maps`` (from ``gradeclip_utils.blocks``, which the layer viewer shares) explains one image and
prompt at every block separately (each block's map uses the gradient of the score with respect to that
block's class-token attention output and that block's own q, k, v). ``layer_localisation`` scores every
block's map on held-out synthetic scenes against the exact instance mask of the prompted object (pointing
game, energy pointing game, IoU), and also the combination of all blocks (ReLU per block, then sum).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..blocks import layer_maps

__all__ = ["LAYER_OFFSET", "layer_localisation", "layer_maps", "plot_layer_strip", "plot_layer_summary"]

#: held-out scene block for the per-layer localisation (disjoint from the evaluation command's blocks)
LAYER_OFFSET = 700_000


def plot_layer_strip(maps: dict, prompt: int = 0, panel_size: float = 2.0, cmap: str = "jet"):
    """One row: the input, then the map of each block, each min-max scaled on its own (the colour bar says
    so)."""
    from ..plotting import PanelRow, heat_map_grid

    blocks = sorted(maps)
    first = maps[blocks[0]]
    row = PanelRow(first.images[0], [maps[block].raw[0][prompt] for block in blocks], [f"block {b}" for b in blocks])
    return heat_map_grid([row], title=f"\u201c{first.prompts[prompt]}\u201d: Grad-ECLIP per block "
                                      f"(S = {float(first.scores[0, prompt]):.3f})", width_px=None,
                         panel_inches=panel_size, cmap=cmap, pyplot=True)


def layer_localisation(model: Any, n: int = 100, layers: Sequence[int] | None = None, *, tolerance: float = 4.0,
                       method: str = "grad_eclip", mode: str = "faithful", include_all: bool = True,
                       offset: int = LAYER_OFFSET, batch_size: int = 64, progress: bool = True):
    """Localisation of every block's map on ``n`` held-out synthetic scenes of 2-4 objects (one uniquely
    nameable object prompted by its description). One row per (scene, block) with pointing (within
    ``tolerance`` pixels of the 64 x 64 mask), energy, iou and the mask's area share; block "all" is the
    sum of the per-block ReLU maps of every block (explain_image's combination)."""
    import pandas as pd
    from tqdm import tqdm  # text progress: readable in a saved or reloaded notebook

    from ..metrics import localisation_scores
    from ..synthetic.evaluate import item_maps, localisation_items

    items = localisation_items(n, offset)
    total = model.adapter.num_image_blocks
    settings: list[tuple[Any, Any]] = [(block, (block,)) for block in (range(total) if layers is None else layers)]
    if include_all:
        settings.append(("all", total))
    masks = np.stack([mask for _, _, mask in items])
    rows = []
    for label, spec in tqdm(settings, desc="blocks", disable=not progress):
        maps = item_maps(model, items, layers=spec, method=method, mode=mode, batch_size=batch_size)
        scores = localisation_scores(maps, masks, tolerance=tolerance)
        for i, (scene, caption, _) in enumerate(items):
            rows.append({"block": str(label), "seed": scene.seed, "prompt": caption.text,
                         "pointing": float(scores["pointing"][i]), "energy": float(scores["energy"][i]),
                         "iou": float(scores["iou"][i]), "area_share": float(scores["area_share"][i])})
    return pd.DataFrame(rows)


def plot_layer_summary(frame, title: str | None = None):
    """Pointing game, energy pointing game and IoU per block with 95% bootstrap intervals; the dashed
    line is the mask's area share (what a uniform map gets in the energy pointing game)."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    order = list(dict.fromkeys(frame["block"]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.3))
    for ax, metric, label in zip(axes, ("pointing", "energy", "iou"),
                                 ("pointing game", "energy pointing game", "IoU (map > mean)")):
        sns.pointplot(data=frame, x="block", y=metric, order=order, errorbar=("ci", 95), ax=ax, seed=0,
                      color="#2e86c1")
        if metric == "energy":
            ax.axhline(float(frame["area_share"].mean()), color="grey", ls="--", lw=0.8)
            ax.text(0, float(frame["area_share"].mean()), "uniform map", fontsize=7, color="grey", va="bottom")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(label)
        ax.set_xlabel("block (\"all\": every block, ReLU then sum)")
        ax.spines[["top", "right"]].set_visible(False)
    n = frame["seed"].nunique()
    fig.suptitle(title or f"Grad-ECLIP localisation per block on {n} held-out synthetic scenes", fontsize=10)
    fig.tight_layout()
    return fig
