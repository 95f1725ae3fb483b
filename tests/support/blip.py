"""A small random BLIP (``BlipForImageTextRetrieval``) with realistic parameters, and a BERT tokenizer for it
built from a vocabulary written here (nothing is downloaded).

The vision config of transformers' BLIP initialises with ``initializer_range`` 1e-10 (class and positional
embeddings of about 1e-10): the maps of such a model are degenerate. ``realistic_init`` redraws every parameter
(``support.realistic``) and ``initializer_range`` is set to 0.02 besides, so that nothing is left tiny.

Sizes: the authors' notebook fixes an image size of 224 and a patch of 16 (its positional grid is 14 x 14), so
the model has those; its width is small (64, two heads; the text encoder 64, two heads), with two image blocks
and three text layers (the matching Grad-CAM reads a middle one). Tests that need no notebook take a smaller
``image_size``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from support.realistic import realistic_init

#: the words of the test vocabulary (wordpieces "##s", "##ing" too)
WORDS = ("a", "dog", "cat", "car", "red", "blue", "circle", "photo", "of", "in", "the", "tree", "waiting", "for",
         "traffic", "lights", "play", "##s", "##ing", "on", "grass", ".", ",")
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]")
VOCAB = SPECIAL + WORDS


def write_vocab(folder: Path) -> Path:
    path = Path(folder) / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


def bert_tokenizer(folder: Path):
    """A ``BertTokenizerFast`` over ``VOCAB`` (lower case), saved in ``folder``."""
    from transformers import BertTokenizerFast

    write_vocab(folder)
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(VOCAB)}, do_lower_case=True)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def blip_config(*, image_layers: int = 2, text_layers: int = 3, width: int = 64, heads: int = 2,
                image_size: int = 224):
    from transformers import BlipConfig

    vocab = {token: index for index, token in enumerate(VOCAB)}
    text = dict(vocab_size=len(VOCAB) + 1, hidden_size=width, encoder_hidden_size=width, intermediate_size=4 * width,
                num_hidden_layers=text_layers, num_attention_heads=heads, max_position_embeddings=64,
                pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"], bos_token_id=vocab["[DEC]"],
                initializer_range=0.02)
    vision = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=image_layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=16, initializer_range=0.02)
    return BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=32)


def blip_model(seed: int = 0, **sizes):
    """A ``BlipForImageTextRetrieval`` of ``blip_config(**sizes)`` with realistic random parameters, eval mode."""
    from transformers import BlipForImageTextRetrieval

    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(blip_config(**sizes))
    realistic_init(model, seed)
    return model.eval()


def save_blip(folder: Path, seed: int = 0, **sizes):
    """``blip_model(seed, **sizes)`` and its tokenizer saved to ``folder`` with ``save_pretrained`` (what
    ``load_model("hf:FOLDER")`` reads offline); returns the model."""
    model = blip_model(seed, **sizes)
    model.save_pretrained(str(folder))
    bert_tokenizer(folder)
    return model


def match_head_methods() -> set[str]:
    """The registered methods of an image-text matching head (they require a tower that feeds a text encoder's
    cross-attention): every CLIP refuses them; ``tests/adapters/test_hf_blip.py`` runs them on BLIP."""
    from gradeclip_utils.methods import method_specs

    return {spec.name for spec in method_specs() if "cross_attention" in spec.requires}


__all__ = ["VOCAB", "bert_tokenizer", "blip_config", "blip_model", "match_head_methods", "save_blip", "write_vocab"]
