"""What the embedded synthetic CLIP knows, and the warning when it is given something else.

The embedded model (``load_model()`` == ``load_model("synthetic")``) was trained only on the scenes of
:mod:`.scenes` (one to six flat-coloured shapes on a grey background, 64 x 64 pixels) and on the captions of
:mod:`.captions`. Given a photograph or words it never saw, it still returns scores, maps and word importance,
which mean little there. ``load_model`` gives it a ``SyntheticWorld`` as its ``known_inputs``: every picture a
user gives (``LoadedModel.check_picture``, called by ``inputs.prepare_image``) and every prompt
(``LoadedModel.tokenize``) passes through it, so that ``explain_image``, ``explain_text``, ``encode_texts``, the
explorers, the command line and the dataset job all warn, once per process for pictures and once for words,
naming how to load a real CLIP.

What counts as inside:

- a picture (``is_scene``): the size of a scene, and its pixels explained by the scene generator's own model
  of them: each pixel either within ``SceneConfig.colour_jitter`` of a palette colour (objects are painted
  flat, without anti-aliasing) or within the background's variation (texture contrast, noise) of the
  background's median colour, which must itself be a grey of the generator's range; and at least one object's
  worth of palette pixels. Preprocessed float tensors are not pictures and are not looked at.
- a prompt (``unknown_words``): every word one of the caption generator's texts or the zero-shot template
  (``class_prompts``) can contain (``vocabulary``, produced by that code itself).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..notices import warn_user
from ..text import as_text_list
from .captions import NUMBER_WORDS, RELATIONS, Caption, NounPhrase, class_prompts
from .scenes import SceneConfig, shape_mask
from .world import COLOUR_RGB, COLOURS, SHAPES, SIZES

__all__ = ["REAL_CLIP", "SyntheticWorld", "is_scene", "unknown_words", "vocabulary", "words"]

#: how to load a real CLIP, in both spellings (Python and the command line)
REAL_CLIP = ("For photographs and free text, load a real CLIP: load_model('ViT-B-16', pretrained='openai') "
             "(command line: --model ViT-B-16 --pretrained openai).")
#: the kinds of input already warned about in this process ("picture", "words")
_WARNED: set[str] = set()
_WORD = re.compile(r"[^\W_]+")
#: the most unknown words a warning names
_NAMED = 8


def words(text: str) -> list[str]:
    """The words of a text as the vocabulary holds them: lower case, split at anything but letters and digits."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=1)
def vocabulary() -> frozenset[str]:
    """Every word the caption generator can write, and the zero-shot template's: the texts of every noun phrase
    (each count, size, colour and shape, or none), of a list of phrases and of each relation, and of
    ``class_prompts``, made by that code itself."""
    phrases = [NounPhrase(shape=shape, colour=colour, size=size, count=count)
               for shape in (*SHAPES, None) for colour in (*COLOURS, None) for size in (*SIZES, None)
               for count in (*NUMBER_WORDS, None)]
    single = [phrase for phrase in phrases if phrase.count is None]
    texts = [phrase.text for phrase in phrases]
    texts += [Caption((single[0], single[1]), relation=relation).text for relation in RELATIONS]
    texts.append(Caption(tuple(single[:3])).text)  # "..., ... and ..."
    texts += class_prompts()[0]
    return frozenset(word for text in texts for word in words(text))


def unknown_words(texts: str | Sequence[str]) -> list[str]:
    """The words of ``texts`` outside ``vocabulary()``, each once, in order of appearance."""
    known, unknown = vocabulary(), {}
    for text in as_text_list(texts, "texts"):
        for word in words(text):
            if word not in known:
                unknown.setdefault(word, None)
    return list(unknown)


@lru_cache(maxsize=None)
def _object_floor(config: SceneConfig) -> int:
    """The fewest palette pixels a scene has: half the pixels of the smallest shape at the smallest radius (every
    scene has an object, and no object loses more than half of its pixels to others)."""
    centre = config.image_size / 2
    return min(int(shape_mask(shape, centre, centre, config.small_radius[0], config.image_size).sum())
               for shape in SHAPES) // 2


def is_scene(picture: Image.Image | np.ndarray, config: SceneConfig = SceneConfig()) -> bool:
    """Whether an RGB picture (a PIL image or an (H, W, 3) uint8 array) looks like a scene of ``generate_scene``
    with ``config``, judged from its size and pixels by the generator's own parameters (the module docstring):

    1. square, between half and four times ``config.image_size`` a side;
    2. at least 99% of the pixels explained: a palette pixel lies within ``colour_jitter`` of a palette colour
       in every channel; a background pixel within max(2 x texture contrast, 4 x noise std) of the median of
       the other pixels in every channel;
    3. that median a grey of the generator's backgrounds: channels at most 2 x ``background_tint`` apart, its
       level within ``background_level`` widened by the tint and the texture contrast;
    4. at least one object's worth of palette pixels.

    On 3000 held-out scenes and 1000 training scenes the explained share was at least 0.9992; the bundled
    photographs, whole, resized or cut to 64 x 64, explain at most 95% and fail the grey test (3.) too.
    """
    array = np.asarray(picture.convert("RGB") if isinstance(picture, Image.Image) else picture)
    if array.ndim != 3 or array.shape[-1] != 3:
        return False
    height, width = array.shape[:2]
    if height != width or not config.image_size // 2 <= height <= 4 * config.image_size:
        return False
    pixels = array.reshape(-1, 3).astype(np.int16)
    palette = np.asarray(list(COLOUR_RGB.values()), dtype=np.int16)
    painted = np.abs(pixels[:, None, :] - palette[None]).max(-1).min(-1) <= config.colour_jitter
    if painted.sum() < _object_floor(config) * (height / config.image_size) ** 2:
        return False
    rest = pixels[~painted]
    if len(rest):
        grey = np.median(rest, axis=0)
        tint, contrast = config.background_tint, config.texture_contrast[1]
        low, high = config.background_level[0] - tint - contrast, config.background_level[1] + tint + contrast
        if grey.max() - grey.min() > 2 * tint or not low <= grey.mean() <= high:
            return False
        spread = max(2 * contrast, 4 * config.noise_std[1])
        background = int((np.abs(rest - grey).max(-1) <= spread).sum())
    else:
        background = 0
    return (int(painted.sum()) + background) >= 0.99 * len(pixels)


def _warn_once(kind: str, message: str) -> None:
    if kind not in _WARNED:
        _WARNED.add(kind)
        warn_user(message)


class SyntheticWorld:
    """What the embedded synthetic CLIP knows, as its ``LoadedModel.known_inputs``: pictures and prompts from
    outside the synthetic world are warned about, once per process for each kind (see the module docstring).
    ``model`` names the model in the warnings (the embedded classifier has one too)."""

    def __init__(self, model: str = "the embedded synthetic CLIP") -> None:
        self.model = model

    def check_picture(self, picture: Any, source: str) -> None:
        """Warn (once per process) when ``picture``, an RGB PIL image, is not a scene (``is_scene``)."""
        if "picture" in _WARNED or is_scene(picture):
            return
        size = SceneConfig().image_size
        _warn_once("picture", f"{source} does not look like a scene of the synthetic world (one to six flat-coloured "
                              f"shapes on a grey background, {size} x {size} pixels), the only pictures {self.model} "
                              "has seen: its scores and maps mean little for it. " + REAL_CLIP)

    def check_texts(self, texts: str | Sequence[str]) -> None:
        """Warn (once per process) when ``texts`` hold words outside ``vocabulary()``."""
        if "words" in _WARNED:
            return
        unknown = unknown_words(texts)
        if unknown:
            named = ", ".join(repr(word) for word in unknown[:_NAMED]) + (", ..." if len(unknown) > _NAMED else "")
            verb = "is" if len(unknown) == 1 else "are"
            _warn_once("words", f"the embedded synthetic CLIP knows only the words of its scene captions (colours, "
                                f"shapes, sizes, counts, four relations); {named} {verb} not among them, so its scores "
                                "and word importance mean little for these prompts. " + REAL_CLIP)

    def __repr__(self) -> str:
        return "SyntheticWorld()" if self.model == "the embedded synthetic CLIP" else f"SyntheticWorld({self.model!r})"
