"""The notebooks' studies: the logic behind each notebook, importable and tested on its own.

- :mod:`.common`: map shares in masks, the notebooks' thread setting (sample images: ``gradeclip_utils.samples``)
- :mod:`.lexicon`: a context-free part-of-speech lexicon and the Brysbaert concreteness norms, offline
- :mod:`.concepts`: a sentence's map and score against its concepts' (overlap, NNLS combination)
- :mod:`.explorers`: what the explorer notebook measures of its maps (strength beside the score, where the mass lies)
- :mod:`.failures`: colour, shape, size, count, binding and relation choices, with where the maps go
- :mod:`.words`: word importance across prompt templates and paraphrases, by part of speech and concreteness
- :mod:`.layers`: maps and localisation per block
- :mod:`.classifier`: the embedded classifier's maps (a class logit) beside the embedded CLIP's (a prompt)
"""

from ..samples import default_images, is_synthetic, named_images, sample_photos, sample_scene_path
from . import classifier, common, concepts, explorers, failures, layers, lexicon, words

__all__ = ["classifier", "common", "concepts", "default_images", "explorers", "failures", "is_synthetic", "layers",
           "lexicon", "named_images", "sample_photos", "sample_scene_path", "words"]
