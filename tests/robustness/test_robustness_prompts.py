"""Robustness of prompts and texts: empty, whitespace, overlong, non-ASCII, duplicates, bad embeddings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gradeclip_utils as ge
from gradeclip_utils.text import group_words, token_pieces

PIXELS = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(7))


def check_image(explanation, count):
    assert explanation.maps.shape == (2, count, 6, 6)
    assert torch.isfinite(explanation.maps).all() and (explanation.maps >= 0).all()
    assert torch.isfinite(explanation.scores).all() and explanation.scores.abs().max() <= 1 + 1e-6
    heat = explanation.heatmaps()
    assert torch.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1


def check_text(explanation):
    for values in (explanation.token_importance, explanation.word_importance):
        assert torch.isfinite(values).all() and values.min() >= 0 and values.max() <= 1 + 1e-6
        sums = values.sum(dim=-1)
        assert torch.all(((sums - 1).abs() <= 1e-5) | (sums == 0))


@pytest.mark.parametrize("text", ["", " ", "   \t\n  "], ids=["empty", "space", "whitespace"])
def test_empty_and_whitespace_prompts_give_finite_maps_and_no_words(tiny, text):
    tokens = tiny.tokenize([text])
    assert tokens[0, :3].tolist() == [49406, 49407, 0]  # start and end tokens only
    check_image(ge.explain_image(tiny, PIXELS, [text, "a red circle"]), 2)
    explanation = ge.explain_text(tiny, PIXELS, [text, "a red circle"])
    check_text(explanation)
    assert explanation.words[0] == [] and explanation.tokens[0] == []
    assert torch.equal(explanation.word_importance[:, 0], torch.zeros(2, explanation.word_importance.shape[-1]))
    assert explanation.words[1] == ["a", "red", "circle"]
    pair = explanation.pair(1, 0)
    assert pair.words == [] and pair.word_importance.shape == (0,)
    assert len(explanation.to_frame()) == 2 * 3  # two images x three words of the second text
    only_empty = ge.explain_text(tiny, PIXELS, text)
    assert only_empty.words == [[]] and only_empty.word_importance.abs().sum() == 0


def test_overlong_prompt_is_cut_with_a_warning_at_the_callers_line(tiny):
    long_text = " ".join(["word"] * 500)
    with pytest.warns(UserWarning, match=r"500 tokens is cut to the context length 16") as record:
        image = ge.explain_image(tiny, PIXELS, [long_text])
    assert {w.filename for w in record} == {__file__}
    check_image(image, 1)
    with pytest.warns(UserWarning, match="context length") as record:
        text = ge.explain_text(tiny, PIXELS, [long_text, "a star"])
    assert {w.filename for w in record} == {__file__}
    check_text(text)
    assert text.words[0] == ["word"] * 14  # 16 positions minus the start and end tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ge.explain_image(tiny, PIXELS, [" ".join(["word"] * 14)])  # exactly fits: no warning


def test_non_ascii_and_emoji_words_are_decoded_whole(tiny):
    texts = ["café ñandú 😀 日本", "naïve Zürich façade"]
    check_image(ge.explain_image(tiny, PIXELS, texts), 2)
    explanation = ge.explain_text(tiny, PIXELS, texts)
    check_text(explanation)
    assert explanation.words[0] == ["café", "ñandú", "😀", "日本"]
    assert explanation.words[1] == ["naïve", "zürich", "façade"]  # the tokenizer lower-cases
    for k in range(2):
        assert "\ufffd" not in "".join(explanation.tokens[k])
        assert "".join(p.replace("</w>", "") for p in explanation.tokens[k]) == "".join(explanation.words[k])


def test_split_multibyte_characters_join_in_their_word(tiny):
    """An emoji is four UTF-8 bytes, split over BPE pieces: the last piece shows it, earlier ones are empty."""
    ids = tiny.tokenize(["🦩"])[0]
    eos = int(ids.argmax())
    pieces = token_pieces(tiny, ids[1:eos].tolist())
    assert "".join(pieces) == "🦩</w>"
    assert group_words(pieces) == [("🦩", list(range(len(pieces))))]


def test_duplicate_prompts_give_identical_maps(tiny):
    # duplicates sit at different rows of one batched backward, where BLAS may round differently
    explanation = ge.explain_image(tiny, PIXELS, ["a red circle", "a star", "a red circle"])
    assert (explanation.maps[:, 0] - explanation.maps[:, 2]).abs().max() <= 1e-6
    assert (explanation.scores[:, 0] - explanation.scores[:, 2]).abs().max() <= 1e-6
    assert explanation.prompts == ["a red circle", "a star", "a red circle"]
    text = ge.explain_text(tiny, PIXELS, ["a star", "a star"])
    assert (text.word_importance[:, 0] - text.word_importance[:, 1]).abs().max() <= 1e-6


def test_empty_and_wrong_prompt_containers_give_clear_errors(tiny):
    with pytest.raises(ValueError, match="prompts is empty"):
        ge.explain_image(tiny, PIXELS, [])
    with pytest.raises(ValueError, match="prompts is empty"):
        ge.explain_image(tiny, PIXELS, ())
    with pytest.raises(ValueError, match="texts is empty"):
        ge.explain_text(tiny, PIXELS, [])
    with pytest.raises(TypeError, match="must be strings"):
        ge.explain_image(tiny, PIXELS, ["a dog", 3])
    with pytest.raises(TypeError, match="string or a list of strings"):
        ge.explain_image(tiny, PIXELS, None)
    with pytest.raises(ValueError, match="2 labels for 1 prompts"):
        ge.explain_image(tiny, PIXELS, ["a dog"], labels=["x", "y"])


def test_prompt_embeddings_are_checked(tiny):
    dim = tiny.adapter.embed_dim
    good = F.normalize(torch.randn(3, dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    from_tensor = ge.explain_image(tiny, PIXELS, good, labels=["a", "b", "c"])
    from_numpy = ge.explain_image(tiny, PIXELS, good.numpy().astype(np.float64))
    assert torch.equal(from_tensor.maps, from_numpy.maps) and from_tensor.prompts == ["a", "b", "c"]
    assert from_numpy.prompts == ["embedding 0", "embedding 1", "embedding 2"]
    # unnormalised embeddings give the same maps: only their direction matters
    assert (ge.explain_image(tiny, PIXELS, good * 3.0).maps - from_tensor.maps).abs().max() <= 1e-6
    with pytest.raises(ValueError, match=rf"must be \(K, {dim}\).*got \(3, {dim + 1}\)"):
        ge.explain_image(tiny, PIXELS, torch.randn(3, dim + 1))
    with pytest.raises(ValueError, match=rf"\(K, {dim}\)"):
        ge.explain_image(tiny, PIXELS, torch.randn(2, 3, dim))
    with pytest.raises(ValueError, match="empty"):
        ge.explain_image(tiny, PIXELS, torch.zeros(0, dim))
    with pytest.raises(ValueError, match="finite and non-zero"):
        ge.explain_image(tiny, PIXELS, torch.zeros(2, dim))
    with pytest.raises(ValueError, match="finite and non-zero"):
        ge.explain_image(tiny, PIXELS, torch.full((1, dim), float("nan")))
    with pytest.raises(TypeError, match="floating point"):
        ge.explain_image(tiny, PIXELS, torch.ones(1, dim, dtype=torch.long))
    with pytest.raises(TypeError, match="floating point"):
        ge.explain_image(tiny, PIXELS, np.ones((1, dim), dtype=np.int64))
