"""A small random transformers ``SiglipModel`` (width 64, two heads, two blocks a tower, 64 x 64 pixels in 16-pixel
patches, context 16) with realistic random parameters (``support.realistic``; the attention-pool head's probe
N(0, 0.5), a logit scale of 10 and a bias of -2), and a SigLIP-like tokenizer built here (nothing is downloaded):
SentencePiece-style pieces (Unigram, U+2581 word starts) with SigLIP's special tokens (end and padding ``</s>``,
no start).
"""

from __future__ import annotations

import math

import torch
import transformers

from support.realistic import realistic_init

WIDTH, HEADS, SIZE, PATCH, CONTEXT = 64, 2, 64, 16, 16
WORDS = ["a", "photo", "of", "dog", "red", "car", "tree", "cat", "blue", "square", "two", "circle", "green"]
LOGIT_SCALE, LOGIT_BIAS = math.log(10.0), -2.0


def hf_tokenizer():
    """SigLIP-like: SentencePiece pieces (Unigram, U+2581 starts a word), lower-cased, '</s>' appended as the end
    token and used as padding, no start token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *[("\u2581" + w, -1.0) for w in WORDS], ("s", -2.0),
             ("\u2581", -3.0), *[(c, -5.0) for c in "abcdefghijklmnopqrtuvwxyz"]]
    inner = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    inner.normalizer = normalizers.Lowercase()
    inner.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    inner.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    inner.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=inner, eos_token="</s>", pad_token="</s>",
                                                unk_token="<unk>")


VOCAB = len(hf_tokenizer())


def config(**vision):
    text = dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=2,
                num_attention_heads=HEADS, max_position_embeddings=CONTEXT, projection_size=WIDTH, hidden_act="gelu",
                pad_token_id=1, eos_token_id=1, bos_token_id=None)
    image = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=2, num_attention_heads=HEADS,
                 image_size=SIZE, patch_size=PATCH, hidden_act="gelu", **vision)  # timm's SigLIP trunk: exact GELU
    cfg = transformers.SiglipConfig(text_config=text, vision_config=image)
    cfg._attn_implementation = "sdpa"
    return cfg


def build(seed: int = 0, bias: float = LOGIT_BIAS):
    torch.manual_seed(seed)
    model = transformers.SiglipModel(config()).eval()
    left = realistic_init(model, seed)
    assert sorted(left) == ["logit_bias", "logit_scale", "vision_model.head.probe"], left
    with torch.no_grad():
        model.vision_model.head.probe.copy_(torch.randn(1, 1, WIDTH, generator=torch.Generator().manual_seed(seed)) * 0.5)
        model.logit_scale.fill_(LOGIT_SCALE)
        model.logit_bias.fill_(bias)
    return model


def save(folder, seed: int = 0):
    """``build(seed)`` and its tokenizer saved to ``folder`` with ``save_pretrained`` (what ``load_model("hf:FOLDER")``
    reads offline); returns the model."""
    model = build(seed)
    model.save_pretrained(folder, safe_serialization=True)
    hf_tokenizer().save_pretrained(folder)
    return model


__all__ = ["CONTEXT", "HEADS", "LOGIT_BIAS", "LOGIT_SCALE", "PATCH", "SIZE", "VOCAB", "WIDTH", "WORDS", "build", "config",
           "hf_tokenizer", "save"]
