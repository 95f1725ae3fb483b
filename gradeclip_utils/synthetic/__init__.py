"""Procedural scenes with exact ground truth, and the small CLIP trained on them.

``generate_scene(seed)`` draws a scene of 1-6 coloured shapes (image, instance masks, attributes,
true captions and hard negatives); :mod:`.captions` holds the caption grammar and its truth
conditions; :mod:`.dataset` batches scenes for contrastive training and evaluation; ``python -m
gradeclip_utils.synthetic.train`` trains the embedded model and ``python -m
gradeclip_utils.synthetic.evaluate`` prints its evaluation table.
"""

from .scenes import (COLOURS, COLOUR_RGB, SHAPES, SIZES, Scene, SceneConfig, SceneObject,
                     generate_scene, shape_mask)
from .captions import (Caption, NounPhrase, caption_holds, class_prompts, describe_scene,
                       hard_negatives, parse_caption)

__all__ = [
    "COLOURS", "COLOUR_RGB", "SHAPES", "SIZES", "Scene", "SceneConfig", "SceneObject",
    "generate_scene", "shape_mask", "Caption", "NounPhrase", "caption_holds", "class_prompts",
    "describe_scene", "hard_negatives", "parse_caption",
]
