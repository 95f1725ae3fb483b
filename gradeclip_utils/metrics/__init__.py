"""Evaluation metrics for explanation maps."""

from .localisation import (dilate_masks, energy_pointing_game, localisation_scores, mask_iou,
                           pointing_game, resize_maps)

__all__ = ["pointing_game", "energy_pointing_game", "mask_iou", "localisation_scores", "resize_maps",
           "dilate_masks"]
