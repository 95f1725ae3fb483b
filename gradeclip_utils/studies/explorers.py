"""What the explorer notebook says about the maps it shows, measured: how strong each prompt's map is
beside its score, and on which object of a synthetic scene its mass lies."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..maps import resize_maps
from .common import mask_shares


def map_strengths(explanation: Any, scene: Any = None, image: int = 0) -> list[dict[str, Any]]:
    """One row per prompt of ``explanation`` (an ImageExplanation) on its image ``image``: the score S, the
    map's peak and positive mass (its raw values, as the explorers' shared colour scale shows them), and,
    for a synthetic ``scene``, whether the prompt is true of the scene (``caption_holds``; None for a
    prompt outside the synthetic grammar), the object that holds the largest share of the map's positive
    mass ("orange square") and that share."""
    from ..synthetic import Scene
    from ..synthetic.captions import caption_holds

    rows = []
    for k, prompt in enumerate(explanation.prompts):
        raw = explanation.raw[image][k].double()
        row = {"prompt": prompt, "score": float(explanation.scores[image, k]), "map_peak": float(raw.max()),
               "map_mass": float(raw.clamp(min=0).sum())}
        if isinstance(scene, Scene):
            try:
                holds = bool(caption_holds(prompt, scene))
            except ValueError:  # not a caption of the synthetic grammar
                holds = None
            heat = resize_maps(raw, scene.masks.shape[1:], dtype=torch.float64).numpy()
            shares = mask_shares(heat, {str(i): scene.masks[i] for i in range(len(scene.objects))})
            values = np.array([shares[str(i)] for i in range(len(scene.objects))], dtype=float)
            top = int(np.nanargmax(values)) if np.isfinite(values).any() else None
            row.update(true_of_scene=holds, top_object=scene.objects[top].description if top is not None else None,
                       top_object_share=float(values[top]) if top is not None else float("nan"))
        rows.append(row)
    return rows
