"""What the studies share beyond the samples (``gradeclip_utils.samples``): map shares in masks and the
notebooks' thread setting.

The sample helpers that the notebooks, benchmarks and tests name as ``studies.common.X`` (``PHOTOS_DIR``,
``as_input``, ``object_prompts``, ...) stay importable from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..resources import PHOTOS_DIR
from ..samples import (PHOTO_CAPTIONS, as_input, default_caption, default_resolution, image_name, is_synthetic,
                       named_images, object_prompts, prompt_mask, sample_photos, sample_scene_path)

__all__ = ["PHOTOS_DIR", "PHOTO_CAPTIONS", "as_input", "default_caption", "default_resolution", "image_name",
           "is_synthetic", "mask_shares", "named_images", "object_prompts", "prompt_mask", "sample_photos",
           "sample_scene_path", "tune_threads"]


def mask_shares(heatmap: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of a map's non-negative mass in each of a set of disjoint masks, and in the rest
    ("background"). ``heatmap`` must already be on the masks' grid."""
    mass = np.clip(np.asarray(heatmap, dtype=np.float64), 0, None)
    total = mass.sum()
    shares: dict[str, float] = {}
    covered = np.zeros(mass.shape, dtype=bool)
    for name, mask in masks.items():
        mask = np.asarray(mask, dtype=bool) & ~covered
        shares[name] = float(mass[mask].sum() / total) if total > 0 else float("nan")
        covered |= mask
    shares["background"] = float(mass[~covered].sum() / total) if total > 0 else float("nan")
    return shares


def tune_threads(model: Any) -> int:
    """Use one PyTorch CPU thread for the small synthetic CLIP on the CPU and return the count in use.

    Its operations are too small to gain from being split across threads, and on a busy machine the
    split costs much more than it gains (20x slower measured on two loaded cores). Other models and
    devices keep PyTorch's own setting.
    """
    import torch

    if is_synthetic(model) and getattr(model, "device", None) is not None and model.device.type == "cpu":
        torch.set_num_threads(1)
    return torch.get_num_threads()
