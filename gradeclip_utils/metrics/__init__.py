"""Evaluation metrics for explanation maps."""

from .localisation import (dilate_masks, energy_pointing_game, localisation_scores, mask_iou,
                           pointing_game, resize_maps)
from .faithfulness import (AUC_DEFINITION, CURVE_MEASURES, PerturbationCurves, area_under_curve,
                           perturbation_curves, pixel_ranks)
from .sanity import SanityResult, cascading_randomisation, spearman, ssim

__all__ = ["AUC_DEFINITION", "CURVE_MEASURES", "PerturbationCurves", "SanityResult", "area_under_curve",
           "cascading_randomisation", "perturbation_curves", "pixel_ranks", "spearman", "ssim",
           "pointing_game", "energy_pointing_game", "mask_iou", "localisation_scores", "resize_maps",
           "dilate_masks"]
