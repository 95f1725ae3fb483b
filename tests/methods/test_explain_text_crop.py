"""explain_text's official mode embeds the image as the authors' text notebook does: the model's resize and
centre crop (224 for ViT-B); the faithful mode keeps the native resolution."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import gradeclip_utils as ge
from gradeclip_utils.inputs import prepare_images


def test_official_text_explanation_embeds_the_centre_crop(tiny):
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 96, 3), dtype=np.uint8))
    texts = ["a red circle", "two blue squares"]
    official = ge.explain_text(tiny, picture, texts, mode="official", layers=2)
    cropped = ge.explain_text(tiny, picture, texts, mode="official", layers=2, resolution="model")
    native = ge.explain_text(tiny, picture, texts, mode="official", layers=2, resolution="native")
    assert official.settings["resolution"] == "model" and torch.equal(official.scores, cropped.scores)
    assert (official.scores - native.scores).abs().max() > 1e-4
    # the image target is the model's preprocessing of the picture (resize 48, centre crop 48 x 48)
    pixels = tiny.preprocess(picture)[None]
    assert pixels.shape[-2:] == (48, 48)
    with torch.no_grad():
        image = F.normalize(tiny.model.encode_image(pixels), dim=-1)
    faithful_crop = ge.explain_text(tiny, picture, texts, layers=2, resolution="model")
    expected = image @ F.normalize(tiny.model.encode_text(tiny.tokenize(texts)), dim=-1).T
    assert (faithful_crop.scores - expected.detach()).abs().max() <= 1e-5
    faithful = ge.explain_text(tiny, picture, texts, layers=2)
    assert faithful.settings["resolution"] == "native"
    assert prepare_images(tiny, picture, "native")[0].pixels.shape[-2:] == (40, 96)
