"""Hugging Face BLIP (``BlipForImageTextRetrieval``): its ITC cosine and its matching probability.

A small random BLIP with realistic parameters (``support.blip``: image size 224 and patch 16, as the authors'
notebook fixes, width 64) and a BERT tokenizer written here. Checked: the model's own scores (ITC cosine, ITM
probability, from transformers' forward) equal ``ex.scores``; Grad-ECLIP's image maps (faithful, on non-square
inputs) and word importance equal literal code on transformers' modules; official mode equals the authors'
notebook (``support.authors_blip``) executed on the same weights; the matching head's Grad-CAM equals
salesforce's ``compute_gradcam`` written on transformers' cross-attention probabilities (a forward hook, as its
``save_attention``); loading from a folder offline; bad inputs as clear errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gradeclip_utils as ge
from gradeclip_utils.adapters import UnsupportedMethodError, UnsupportedModelError, get_adapter
from gradeclip_utils.adapters.hf_blip import BlipTokenizer
from gradeclip_utils.methods.scores import scale_refusal

from support.authors_blip import as_salesforce, authors_maps
from support.blip import bert_tokenizer, blip_model
from support.families import non_square_pixels, reference_open_clip, relative

TOLERANCE = 1e-5
#: the notebook against the package's official mode (same operations, float32; measured about 1e-7)
NOTEBOOK_TOLERANCE = 1e-5
CAPTIONS = ["a dog in a car waiting for traffic lights", "a red circle", "cats playing on the grass"]


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blip")
    model = blip_model()
    tokenizer = BlipTokenizer(bert_tokenizer(folder), 35)
    return ge.wrap_model(model, tokenizer=tokenizer), folder


def _ids(loaded, captions=CAPTIONS):
    ids = loaded.tokenize(captions)
    return ids, (ids != 0).long()


def _own_itc(model, pixels, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels, attention_mask=mask, use_itm_head=False,
                     interpolate_pos_encoding=tuple(pixels.shape[-2:]) != (224, 224)).itm_score


def _own_itm(model, pixels, ids, mask):
    rows = []
    with torch.no_grad():
        for image in pixels:
            batch = image.unsqueeze(0).expand(len(ids), -1, -1, -1)
            rows.append(model(input_ids=ids, pixel_values=batch, attention_mask=mask,
                              interpolate_pos_encoding=tuple(pixels.shape[-2:]) != (224, 224)
                              ).itm_score.softmax(-1)[:, 1])
    return torch.stack(rows)


# ----------------------------------------------------------------------------------------- scores
def test_family_scores_and_the_models_own(blip):
    loaded, _ = blip
    adapter = loaded.adapter
    assert adapter.family == "Hugging Face BLIP" and adapter.num_image_blocks == 2 and adapter.num_text_blocks == 3
    assert adapter.score_names == ("itc", "itm", "contrast") and not adapter.has_logit_scale
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ids, mask = _ids(loaded)
    itc = ge.explain_image(loaded, pixels, CAPTIONS, progress=False)
    assert itc.settings["score"] == "itc"
    assert torch.allclose(itc.scores, _own_itc(loaded.model, pixels, ids, mask), atol=1e-6)
    itm = ge.explain_image(loaded, pixels, CAPTIONS, method="itm_gradcam", progress=False)
    assert itm.settings["score"] == "itm"
    assert torch.allclose(itm.scores, _own_itm(loaded.model, pixels, ids, mask), atol=1e-6)
    cosine = ge.explain_image(loaded, pixels, CAPTIONS, score="cosine", progress=False)  # the ITC under its name
    assert torch.equal(cosine.scores, itc.scores) and torch.equal(torch.stack(cosine.raw), torch.stack(itc.raw))
    other = non_square_pixels(1, (224, 288))
    assert torch.allclose(ge.explain_image(loaded, other, CAPTIONS, progress=False).scores,
                          _own_itc(loaded.model, other, ids, mask), atol=1e-6)
    assert torch.allclose(ge.explain_image(loaded, other, CAPTIONS, method="itm_gradcam", progress=False).scores,
                          _own_itm(loaded.model, other, ids, mask), atol=1e-6)


# -------------------------------------------------------------------------------------- literal code
def _literal_image(model, pixels, text, layer_mode="faithful"):
    """Grad-ECLIP of the last visual block on transformers' modules: the attention output computed by hand
    (all heads), its class row's gradient, the values and min-max cosines of the class query with the keys."""
    vision = model.vision_model
    x = vision.embeddings(pixels, interpolate_pos_encoding=True)
    for layer in vision.encoder.layers[:-1]:
        x = layer(x)
    last = vision.encoder.layers[-1]
    h = last.layer_norm1(x)
    q, k, v = last.self_attn.qkv(h).chunk(3, dim=-1)
    heads = last.self_attn.num_heads
    split = lambda t: t.reshape(*t.shape[:2], heads, -1).transpose(1, 2)  # noqa: E731
    context = ((split(q) @ split(k).transpose(-1, -2) * last.self_attn.scale).softmax(-1) @ split(v))
    context = context.transpose(1, 2).reshape(x.shape)
    out = x + last.self_attn.projection(context)
    out = out + last.mlp(last.layer_norm2(out))
    feature = F.normalize(model.vision_proj(vision.post_layernorm(out)[:, 0]), dim=-1)
    cosines = feature @ text.T
    grid = (pixels.shape[-2] // 16, pixels.shape[-1] // 16)
    similarity = F.cosine_similarity(q[:, :1], k[:, 1:], dim=-1)
    low, high = similarity.min(dim=-1, keepdim=True).values, similarity.max(dim=-1, keepdim=True).values
    spatial = (similarity - low) / (high - low)
    maps = []
    for j in range(text.shape[0]):
        grad = torch.autograd.grad(cosines[:, j].sum(), context, retain_graph=True)[0][:, 0]
        maps.append((torch.einsum("bc,bpc->bp", grad, v[:, 1:]) * spatial).relu().reshape(-1, *grid))
    return cosines.detach(), torch.stack(maps, dim=1).detach()


def test_faithful_image_maps_equal_the_literal_code(blip):
    loaded, _ = blip
    pixels = non_square_pixels(2, (224, 288))
    ids, mask = _ids(loaded)
    with torch.no_grad():
        text = F.normalize(loaded.model.text_proj(
            loaded.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]), dim=-1)
    cosines, expected = _literal_image(loaded.model, pixels, text)
    ex = ge.explain_image(loaded, pixels, CAPTIONS, progress=False)
    assert relative(torch.stack(ex.raw), expected) < TOLERANCE and expected.abs().max() > 0
    assert torch.allclose(ex.scores, cosines, atol=1e-6)


def _literal_words(model, ids, mask, image, layers):
    """Grad-ECLIP word importance on transformers' BERT layers: the explained layers' self-attention computed by
    hand, the gradient of the cosine with the image at the [CLS] row, values, min-max cosines of the [CLS]
    query with every key; summed over the layers, ReLU, normalised over the words."""
    text = model.text_encoder
    x = text.embeddings(input_ids=ids)
    additive = torch.zeros(ids.shape).masked_fill(mask == 0, torch.finfo(torch.float32).min)[:, None, None, :]
    captured = {}
    for index, layer in enumerate(text.encoder.layer):
        if index not in layers:
            x = layer(x, attention_mask=additive)
            continue
        attention = layer.attention.self
        heads = attention.num_attention_heads
        q, k, v = attention.query(x), attention.key(x), attention.value(x)
        split = lambda t: t.reshape(*t.shape[:2], heads, -1).transpose(1, 2)  # noqa: E731
        logits = split(q) @ split(k).transpose(-1, -2) / attention.attention_head_size ** 0.5 + additive
        context = (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(x.shape)
        captured[index] = (context, q.detach(), k.detach(), v.detach())
        x = layer.feed_forward_chunk(layer.attention.output(context, x))
    cosine = F.normalize(model.text_proj(x[:, 0]), dim=-1) @ image
    total = 0
    for context, q, k, v in captured.values():
        grad = torch.autograd.grad(cosine.sum(), context, retain_graph=True)[0][:, 0]
        similarity = F.cosine_similarity(q[:, :1], k, dim=-1)
        low, high = similarity.min(dim=-1, keepdim=True).values, similarity.max(dim=-1, keepdim=True).values
        total = total + torch.einsum("kc,klc->kl", grad, v) * (similarity - low) / (high - low)
    relevance = total.relu()
    importance = []
    for row, sequence in zip(relevance, ids):
        end = int((sequence == 3).int().argmax())  # [SEP]
        kept = row[1:end]
        importance.append(kept / kept.sum())
    return cosine.detach(), importance


def test_word_importance_equals_the_literal_code(blip):
    loaded, _ = blip
    pixels = non_square_pixels(1, (224, 288))
    ids, mask = _ids(loaded)
    image = F.normalize(loaded.adapter.encode_image(pixels), dim=-1)[0]
    for layers in ((2,), (1, 2)):
        cosine, expected = _literal_words(loaded.model, ids, mask, image, layers)
        ex = ge.explain_text(loaded, pixels, CAPTIONS, layers=list(layers))
        assert torch.allclose(ex.scores[0], cosine, atol=1e-6)
        for k, row in enumerate(expected):
            assert relative(ex.token_importance[0, k, :len(row)], row) < TOLERANCE
    assert ex.words[2] == ["cats", "playing", "on", "the", "grass"] and ex.tokens[2][:2] == ["cat", "s</w>"]


@pytest.mark.parametrize("size", [(224, 224), (224, 288)])
def test_official_mode_equals_the_authors_notebook(blip, size):
    """The notebook's ``blip_img_encoder`` and ``grad_eclip`` on the same weights (salesforce's names through the
    shim), one image at a time, at the model's size and on a non-square image of more patches."""
    loaded, _ = blip
    pixels = non_square_pixels(2, size)
    ids, mask = _ids(loaded)
    cosines, expected = authors_maps(as_salesforce(loaded.model), pixels, ids, mask)
    ex = ge.explain_image(loaded, pixels, CAPTIONS, mode="official", progress=False)
    assert relative(torch.stack(ex.raw), expected) < NOTEBOOK_TOLERANCE and expected.abs().max() > 0
    assert torch.allclose(ex.scores, cosines, atol=1e-6)
    assert not torch.allclose(ex.scores, _own_itc(loaded.model, pixels, ids, mask), atol=1e-3)  # not the model's


# ------------------------------------------------------------------------------------ the matching head
def _literal_gradcam(model, pixels, ids, mask, block, logit=False):
    """salesforce's ``compute_gradcam`` on transformers' forward: layer ``block``'s cross-attention probabilities
    (a forward hook keeps them, as its ``save_attention``) and their gradient; the gradient clamped at 0, times
    the attention, padding rows zeroed, the heads averaged, the word rows 1..n averaged (n = tokens - 2)."""
    store = {}

    def keep(module, inputs, output):
        output[1].retain_grad()
        store["probs"] = output[1]

    handle = model.text_encoder.encoder.layer[block].crossattention.self.register_forward_hook(keep)
    try:
        maps, scores = [], []
        for image in pixels:
            batch = image.unsqueeze(0).expand(len(ids), -1, -1, -1)
            logits = model(input_ids=ids, pixel_values=batch, attention_mask=mask,
                           interpolate_pos_encoding=tuple(pixels.shape[-2:]) != (224, 224)).itm_score
            probability = logits.softmax(-1)[:, 1]
            (logits[:, 1] if logit else probability).sum().backward()
            probs, grads = store["probs"], store["probs"].grad
            cams = probs[..., 1:] * mask[:, None, :, None]
            grads = grads[..., 1:].clamp(0) * mask[:, None, :, None]
            gradcam = (cams * grads).mean(1)  # (K, L, P)
            length = mask.sum(-1) - 2
            rows = [gradcam[k, 1:int(length[k]) + 1].sum(0) / length[k] for k in range(len(ids))]
            maps.append(torch.stack(rows).reshape(len(ids), pixels.shape[-2] // 16, pixels.shape[-1] // 16))
            scores.append(probability.detach())
        model.zero_grad(set_to_none=True)
        return torch.stack(scores), torch.stack(maps).detach()
    finally:
        handle.remove()


@pytest.mark.parametrize("variant", ["score", "lavis"])
def test_itm_gradcam_equals_salesforce_compute_gradcam(blip, variant):
    loaded, _ = blip
    pixels = non_square_pixels(2, (224, 288))
    ids, mask = _ids(loaded)
    for block in (None, 0):
        scores, expected = _literal_gradcam(loaded.model, pixels, ids, mask, 1 if block is None else block,
                                            logit=variant == "lavis")
        ex = ge.explain_image(loaded, pixels, CAPTIONS, method="itm_gradcam", variant=variant, block=block,
                              progress=False)
        assert relative(torch.stack(ex.raw), expected) < TOLERANCE and expected.abs().max() > 0
        assert torch.allclose(ex.scores, scores, atol=1e-6)
    assert all(p.grad is None for p in loaded.model.parameters())


# ------------------------------------------------------------------------------------------ errors
def test_bad_inputs_are_clear_errors(blip):
    loaded, _ = blip
    pixels = torch.randn(1, 3, 224, 224)
    with pytest.raises(ValueError, match="give the captions as text, not as embeddings"):
        ge.explain_image(loaded, pixels, torch.randn(2, 32), method="itm_gradcam", progress=False)
    with pytest.raises(ValueError, match="prompts is empty"):
        ge.explain_image(loaded, pixels, [], method="itm_gradcam", progress=False)
    with pytest.raises(ValueError, match="grad_eclip cannot explain score='itm'.*cross-attention"):
        ge.explain_image(loaded, pixels, CAPTIONS, score="itm", progress=False)
    with pytest.raises(ValueError, match="itm_gradcam cannot explain score='itc'"):
        ge.explain_image(loaded, pixels, CAPTIONS, method="itm_gradcam", score="itc", progress=False)
    with pytest.raises(UnsupportedMethodError, match="score='logit' is not a score of this model .Hugging Face BLIP"):
        ge.explain_image(loaded, pixels, CAPTIONS, score="logit", progress=False)
    with pytest.raises(ValueError, match="grad_eclip cannot explain score='itm'"):
        ge.explain_text(loaded, pixels, CAPTIONS, score="itm")
    with pytest.raises(ValueError, match="block must be a text-encoder layer index"):
        ge.explain_image(loaded, pixels, CAPTIONS, method="itm_gradcam", block=3, progress=False)
    with pytest.raises(ValueError, match="the matching head takes the captions' token ids"):
        loaded.adapter.match_trace(pixels, torch.randn(2, 5), 0)
    clip = ge.wrap_model(reference_open_clip(layers=1))
    with pytest.raises(UnsupportedMethodError, match="itm_gradcam is not available for open_clip ViT models: the ViT "
                                                     "tower does not feed its tokens to a text encoder's cross-att"):
        ge.explain_image(clip, torch.randn(1, 3, 64, 64), ["a dog"], method="itm_gradcam", progress=False)
    # a CLIP does not give the matching probability: the model says so before the method would
    with pytest.raises(UnsupportedMethodError, match=r"score='itm' is not a score of this model \(open_clip ViT\)"):
        ge.explain_image(clip, torch.randn(1, 3, 64, 64), ["a dog"], score="itm", progress=False)
    assert scale_refusal("itm", clip.adapter).startswith("score='itm' is not a score of this model (open_clip ViT)")
    assert scale_refusal("itc", clip.adapter) is not None
    with pytest.raises(ValueError, match="pass its own tokenizer"):
        ge.wrap_model(loaded.model)


def test_other_blip_classes_are_refused_by_name():
    from transformers import BlipForConditionalGeneration

    from support.blip import blip_config

    with pytest.raises(UnsupportedModelError, match="BlipForConditionalGeneration: a captioning model"):
        get_adapter(BlipForConditionalGeneration(blip_config(image_layers=1, text_layers=1)))


# ------------------------------------------------------------------------------------------ loading
def test_load_model_from_a_folder_offline(blip, tmp_path):
    loaded, tokenizer_folder = blip
    folder = tmp_path / "blip"
    loaded.model.save_pretrained(str(folder))
    with pytest.raises(FileNotFoundError, match="has no tokenizer"):
        ge.load_model(f"hf:{folder}", device="cpu")
    loaded.tokenizer.tokenizer.save_pretrained(str(folder))
    again = ge.load_model(f"hf:{folder}", device="cpu")
    assert again.family == "Hugging Face BLIP" and isinstance(again.tokenizer, BlipTokenizer)
    assert torch.equal(again.tokenize(CAPTIONS), loaded.tokenize(CAPTIONS))
    pixels = torch.randn(1, 3, 224, 224)
    for method in ("grad_eclip", "itm_gradcam"):
        a = ge.explain_image(again, pixels, CAPTIONS, method=method, progress=False)
        b = ge.explain_image(loaded, pixels, CAPTIONS, method=method, progress=False)
        assert torch.allclose(a.scores, b.scores, atol=1e-6)


# ---------------------------------------------------------------------------------------- above the adapters
def test_the_dataset_job_explains_both_scores(blip, tmp_path):
    """The dataset job stores the captions of the matching score as token ids, and its maps and scores are
    explain_image's; classes (template-averaged embeddings) are refused for it."""
    import numpy as np
    from PIL import Image

    from gradeclip_utils.explain_dataset import explain_dataset
    from gradeclip_utils.maps_store import DatasetMaps

    loaded, _ = blip
    folder = tmp_path / "pictures" / "things"
    folder.mkdir(parents=True)
    for index, size in enumerate(((224, 288), (240, 224))):
        picture = (np.random.RandomState(index).rand(*size, 3) * 255).astype("uint8")
        Image.fromarray(picture).save(folder / f"{index}.png")
    for method, score in (("grad_eclip", "itc"), ("itm_gradcam", "itm")):
        out = tmp_path / score
        explain_dataset(loaded, tmp_path / "pictures", out, prompts=CAPTIONS[:2], method=method, score=score,
                        progress=False)
        maps = DatasetMaps(out)
        assert not maps.targets().is_floating_point() if score == "itm" else maps.targets().is_floating_point()
        for stored in maps.values():
            want = ge.explain_image(loaded, tmp_path / "pictures" / stored.key, CAPTIONS[:2], method=method,
                                    score=score, progress=False)
            assert torch.allclose(stored.maps, want.raw[0], atol=1e-6) and torch.allclose(stored.scores, want.scores[0])
    with pytest.raises(ValueError, match="score='itm' reads each caption's words with the image, which classes"):
        explain_dataset(loaded, tmp_path / "pictures", tmp_path / "classes", classes="own", method="itm_gradcam",
                        score="itm", progress=False)
