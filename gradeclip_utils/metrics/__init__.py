"""Evaluation metrics for explanation maps."""

from .localisation import dilate_masks, energy_pointing_game, localisation_scores, mask_iou, pointing_game
from .faithfulness import (AUC_DEFINITION, CURVE_MEASURES, TIES, PerturbationCurves, area_under_curve,
                           authors_heatmap, authors_perturbation_curves, perturbation_curves,
                           perturbation_curves_over_ties, pixel_order, pixel_ranks, shrink_to_640)
from .sanity import SanityResult, cascading_randomisation, randomised_copy, spearman, ssim

__all__ = ["AUC_DEFINITION", "CURVE_MEASURES", "TIES", "PerturbationCurves", "authors_heatmap",
           "authors_perturbation_curves", "pixel_order", "shrink_to_640", "SanityResult", "area_under_curve",
           "cascading_randomisation", "perturbation_curves", "perturbation_curves_over_ties", "pixel_ranks", "randomised_copy", "spearman", "ssim",
           "pointing_game", "energy_pointing_game", "mask_iou", "localisation_scores", "dilate_masks"]
