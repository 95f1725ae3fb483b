"""Hugging Face ``transformers`` BLIP: ``BlipForImageTextRetrieval`` (salesforce BLIP's ``BLIP_ITM``).

Where the pieces are. Image: ``vision_model.embeddings`` (``patch_embedding``, ``class_embedding``,
``position_embedding``, no norm before the blocks) -> ``encoder.layers[i]`` (``layer_norm1``, the packed
``self_attn.qkv`` and ``self_attn.projection``, ``layer_norm2``, ``mlp``) -> ``post_layernorm`` (every token:
the image embeddings the text encoder's cross-attention reads). Text: ``text_encoder`` is a BERT encoder,
post-norm and bidirectional: ``embeddings`` (word and position embeddings, a LayerNorm) -> ``encoder.layer[i]``
(``attention.self.query/key/value``; ``attention.output``: dense, dropout, LayerNorm of it plus the layer's
input; with image embeddings, ``crossattention`` likewise over them; ``intermediate`` and ``output``: dense,
dropout, LayerNorm of it plus its input), padding masked from its keys.

The scores (``score_names``). ``"itc"`` (the default), the image-text contrastive score: the cosine of
``vision_proj`` of the image's class token and ``text_proj`` of the caption's first token ([CLS]), as
``BlipForImageTextRetrieval(use_itm_head=False)`` computes it; it is the cosine of a CLIP (``"cosine"`` names
it too), so every method that explains a CLIP's cosine explains it, Grad-ECLIP's word importance included (the
caption's words lie between its [CLS] and its [SEP]: ``word_end``). ``"contrast"``: the cosine of caption a
minus that of caption b. ``"itm"``: the matching head's probability that image and caption match, the softmax
of ``itm_head`` over its two classes at index 1, of the text encoder's first token run with the image
embeddings through cross-attention in every layer, as ``use_itm_head=True`` computes it (the same [CLS] first
token: transformers does not put salesforce's [ENC] there). The image reaches it through cross-attention over
every image token, not through its class token: only the methods that declare it explain it
(``itm_gradcam``, BLIP's own Grad-CAM on one layer's cross-attention: ``match_trace``); the others refuse it.
The model carries no logit scale (salesforce's ITC temperature is not in the converted checkpoints): no
"logit" or "probability".

Official mode is the authors' recomputation in ``gradeclip_adaptation_blip.ipynb`` (``blip_img_encoder``):
the last visual block with one head of width C whose logits are scaled by the attention module's own
``scale`` (1/sqrt(C / heads), ``NOTEBOOK_OFFICIAL``), the attention's residual on the block's input; the rest
is the model's (the earlier blocks, the positional embedding interpolated bicubically, the final norm,
``vision_proj`` of the class token). The notebook has no text part: official text blocks are recomputed the
same way (one head with the module's scale).

The caption length is BLIP's 35 tokens (``MAX_TEXT_LENGTH``: salesforce's ``BLIP_ITM`` tokenises with
``max_length=35``), padded with [PAD] and masked: the embedding does not depend on the padding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .. import hub
from ..text import HFTokenizer
from .base import CLIPAdapter, UnsupportedModelError
from .transformer import (BlockView, CausalTextTower, Official, ViTTower, check_block_index, fused_qkv, identity,
                          interpolate_positions, run_native)

FAMILY = "Hugging Face BLIP"
PREFIX = "hf:"
OFFLINE_HINT = ("copy the model's folder (config.json, model.safetensors and the tokenizer's files, e.g. a hub "
                "snapshot of Salesforce/blip-itm-base-coco) from a machine that has it and use "
                "load_model('hf:/path/to/folder')")
#: the classes this file reads
CLASSES = ("BlipForImageTextRetrieval",)
#: the other BLIP classes, refused with the reason
REASONS = {
    "BlipModel": "transformers' BlipModel is deprecated and its checkpoints are captioning or question-answering "
                 "ones; load BlipForImageTextRetrieval (e.g. Salesforce/blip-itm-base-coco)",
    "BlipForConditionalGeneration": "a captioning model: it has no contrastive projections and no matching head",
    "BlipForQuestionAnswering": "a question-answering model: it has no contrastive projections and no matching head",
}
#: the authors' BLIP notebook: one head of width C, logits scaled by the module's 1/sqrt(C / heads), the residual
#: on the block's input
NOTEBOOK_OFFICIAL = Official(head_scale=True)
#: the caption length of salesforce BLIP's BLIP_ITM
MAX_TEXT_LENGTH = 35
#: what a tower that feeds a text encoder's cross-attention captures beyond a ViT's
CROSS_ATTENTION = "cross_attention"


def recognises(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers") and type(model).__name__ in (*CLASSES, *REASONS)


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this file cannot explain ``model`` (None when it can)."""
    kind = type(model).__name__
    if kind not in CLASSES:
        return f"Hugging Face {kind}: {REASONS.get(kind, 'no adapter reads it')}"
    layer = model.text_encoder.encoder.layer[0]
    if getattr(layer, "crossattention", None) is None:
        return "its text encoder has no cross-attention (a text config with is_decoder=False): no matching head input"
    return None


# ------------------------------------------------------------------------------------------- image
def _vision_block(layer: nn.Module) -> BlockView:
    attention = layer.self_attn
    return BlockView(module=layer, ln_1=layer.layer_norm1, qkv=fused_qkv(attention.qkv.weight, attention.qkv.bias),
                     heads=int(attention.num_heads), out_proj=attention.projection, ln_2=layer.layer_norm2,
                     mlp=layer.mlp, native=lambda x, mask: layer(x), official=NOTEBOOK_OFFICIAL)


class BlipVisionTower(ViTTower):
    """BLIP's ViT: a ``ViTTower`` whose tokens also feed the text encoder's cross-attention."""

    captures = ViTTower.captures | {CROSS_ATTENTION}

    def __init__(self, model: nn.Module) -> None:
        vision = model.vision_model
        embeddings, config = vision.embeddings, vision.config
        patch, size = int(config.patch_size), int(config.image_size)
        native = (size // patch, size // patch)
        self.post_layernorm = vision.post_layernorm

        def blocks() -> list[BlockView]:
            return [_vision_block(layer) for layer in vision.encoder.layers]

        def embed(pixels: Tensor, grid: tuple[int, int]) -> Tensor:
            x = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
            cls = embeddings.class_embedding.to(x.dtype).expand(x.shape[0], -1, -1)
            pos = interpolate_positions(embeddings.position_embedding[0], native, grid)
            return torch.cat([cls, x], dim=1) + pos.to(x.dtype)

        def head(pooled: Tensor) -> Tensor:
            return model.vision_proj(vision.post_layernorm(pooled))

        def groups() -> list[tuple[str, list[nn.Parameter]]]:
            out = [("head", [*vision.post_layernorm.parameters(), *model.vision_proj.parameters()])]
            for index in reversed(range(len(vision.encoder.layers))):
                out.append((f"block {index}", list(vision.encoder.layers[index].parameters())))
            return out + [("embedding", list(embeddings.parameters()))]

        super().__init__(embed=embed, blocks=blocks, head=head, patch_size=(patch, patch), image_size=(size, size),
                         embed_dim=int(model.vision_proj.out_features),
                         weight=lambda: embeddings.patch_embedding.weight, parameter_groups=groups)

    @torch.no_grad()
    def image_embeds(self, pixels: Tensor) -> Tensor:
        """(B, N, C): every token after the last block and the final norm, what the cross-attention reads."""
        tokens, _ = self.tokens_before(pixels, self.num_blocks)
        return self.post_layernorm(tokens)


# -------------------------------------------------------------------------------------------- text
@dataclass
class PostNormBlockView(BlockView):
    """A post-norm (BERT) block: h = attn_norm(x + project(attention(x))), then mlp_norm(h + mlp(h)); ``ln_1``
    and ``ln_2`` are the identity (the engine's pre-norms), so that official mode's residual is the input."""

    attn_norm: Callable[[Tensor], Tensor] = identity
    mlp_norm: Callable[[Tensor], Tensor] = identity

    def finish(self, x: Tensor, out: Tensor) -> Tensor:
        x = self.attn_norm(x + self.project(out))
        return self.mlp_norm(x + self.post_mlp(self.mlp(x)))


def _text_block(layer: nn.Module) -> PostNormBlockView:
    attention, output = layer.attention.self, layer.attention.output

    def mlp(h: Tensor) -> Tensor:
        return layer.output.dropout(layer.output.dense(layer.intermediate(h)))

    return PostNormBlockView(
        module=layer, ln_1=identity, qkv=lambda h: (attention.query(h), attention.key(h), attention.value(h)),
        heads=int(attention.num_attention_heads), out_proj=output.dense, ln_2=identity, mlp=mlp,
        native=lambda x, mask: layer(x, attention_mask=None if mask is None else mask[:, None]),
        post_attn=output.dropout, official=NOTEBOOK_OFFICIAL, attn_norm=output.LayerNorm,
        mlp_norm=layer.output.LayerNorm)


def key_mask(tokens: Tensor, pad: int, dtype: torch.dtype) -> Tensor:
    """The (K, 1, L) additive mask of (K, L) token ids: the dtype's lowest value on the padding's keys (as
    transformers' eager BERT masks them), 0 elsewhere."""
    return torch.zeros(tokens.shape, dtype=dtype, device=tokens.device).masked_fill(
        tokens == pad, torch.finfo(dtype).min)[:, None, :]


class BertTextTower(CausalTextTower):
    """BLIP's text encoder as Grad-ECLIP's text tower: bidirectional, pooled at the first token ([CLS]), padding
    masked from the keys; its words end at the [SEP] token (``word_end``)."""

    kind = "BERT text"

    def __init__(self, model: nn.Module) -> None:
        text = model.text_encoder
        config = text.config
        self.pad, self.sep = int(config.pad_token_id or 0), int(config.sep_token_id)
        super().__init__(embed=lambda tokens: text.embeddings(input_ids=tokens), mask=lambda *_: None,
                         blocks=lambda: [_text_block(layer) for layer in text.encoder.layer],
                         head=model.text_proj, pool=self._first,
                         context_length=int(config.max_position_embeddings),
                         weight=lambda: text.embeddings.word_embeddings.weight)

    @staticmethod
    def _first(tokens: Tensor) -> Tensor:
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)

    def word_end(self, tokens: Tensor) -> Tensor:
        """The position of each sequence's [SEP] (its length when it has none): its words lie before it."""
        is_sep = tokens == self.sep
        length = torch.full_like(tokens[:, 0], tokens.shape[1])
        return torch.where(is_sep.any(dim=1), is_sep.int().argmax(dim=1), length)

    def inputs(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        x, _ = super().inputs(tokens)
        return x, key_mask(tokens.to(x.device), self.pad, x.dtype)

    def embedding_from(self, hidden: Tensor, tokens: Tensor, block: int) -> Tensor:
        blocks = self._blocks()
        block = check_block_index(block, len(blocks))
        if hidden.shape[:2] != tokens.shape:
            raise ValueError(f"hidden states {tuple(hidden.shape)} do not match tokens {tuple(tokens.shape)}")
        x = run_native(blocks[block:], hidden, key_mask(tokens.to(hidden.device), self.pad, hidden.dtype))
        return self._head(x[:, 0])


# ------------------------------------------------------------------------------------ the matching head
@dataclass
class MatchTrace:
    """The matching head of B images x K captions: ``probability`` (B, K), the match probability, and ``logits``
    (B, K, 2), the head's, with their graph to ``attention`` (B * K, H, L, N), one text-encoder layer's
    cross-attention probabilities of each pair (b, k) at row b * K + k (text tokens over image tokens, the
    image's class token first; the tensor in the graph, to differentiate with respect to);
    ``mask`` (K, L): the captions' tokens that are not padding; ``grid``: the image's patch grid."""

    probability: Tensor
    logits: Tensor
    attention: Tensor
    mask: Tensor
    grid: tuple[int, int]


def _cross_layer(layer: nn.Module, x: Tensor, self_mask: Tensor, image: Tensor) -> tuple[Tensor, Tensor]:
    """One text-encoder layer with the image embeddings, its cross-attention computed explicitly as
    ``BlipTextSelfAttention`` computes it (all image tokens are keys: the model's image mask is all ones):
    the layer's output and the cross-attention probabilities (P, H, L, N), in the graph."""
    h = layer.attention(x, attention_mask=self_mask)[0]
    cross = layer.crossattention.self
    heads, width = int(cross.num_attention_heads), int(cross.attention_head_size)

    def split(t: Tensor) -> Tensor:
        return t.view(*t.shape[:-1], heads, width).transpose(1, 2)

    logits = split(cross.query(h)) @ split(cross.key(image)).transpose(-1, -2) / width ** 0.5
    probs = logits.softmax(dim=-1)
    context = (cross.dropout(probs) @ split(cross.value(image))).transpose(1, 2).reshape(h.shape)
    h = layer.crossattention.output(context, h)
    return layer.feed_forward_chunk(h), probs


def match_trace(model: nn.Module, tower: BlipVisionTower, pad: int, pixels: Tensor, tokens: Tensor,
                block: int) -> MatchTrace:
    """``MatchTrace`` of (B, 3, H, W) pixels and (K, L) token ids, the cross-attention of text layer ``block``."""
    text = model.text_encoder
    grid = tower.check_pixels(pixels)
    image = tower.image_embeds(pixels.to(device=tower.device, dtype=tower.dtype))  # (B, N, C), no graph
    count, length = tokens.shape
    batch = image.shape[0]
    ids = tokens.to(image.device).repeat(batch, 1)  # pair (b, k) at b * K + k
    image = image.repeat_interleave(count, dim=0)
    with torch.no_grad():
        x = text.embeddings(input_ids=ids)
    self_mask = key_mask(ids, pad, x.dtype)[:, None]  # (P, 1, 1, L)
    layers = text.encoder.layer
    with torch.no_grad():  # the layers before the explained one: nothing there depends on its attention
        for layer in layers[:block]:
            x = layer(x, image, attention_mask=self_mask)
    x, probs = _cross_layer(layers[block], x.detach(), self_mask, image)
    for layer in layers[block + 1:]:
        x = layer(x, image, attention_mask=self_mask)
    logits = model.itm_head(x[:, 0]).float().reshape(batch, count, 2)
    return MatchTrace(logits.softmax(dim=-1)[..., 1], logits, probs, tokens.to(image.device) != pad, grid)


# ----------------------------------------------------------------------------------------- adapter
class BlipAdapter(CLIPAdapter):
    """The adapter of a ``BlipForImageTextRetrieval``: its ITC cosine explained as a CLIP's, its matching
    probability (``match_trace``) by the methods that declare it."""

    score_names = ("itc", "itm", "contrast")
    #: the length of BLIP's captions (``BlipTokenizer``), for memory estimates
    caption_length = MAX_TEXT_LENGTH
    score_note = ("BLIP gives its image-text contrastive cosine ('itc', the default, also called 'cosine'), the "
                  "contrast of two captions' cosines ('contrast') and its image-text matching probability ('itm', "
                  "explained by itm_gradcam); it carries no logit scale for 'logit' or 'probability'")

    def make_score(self, name: str, *, rest: Tensor | None = None, columns: Sequence[int] | None = None):
        from ..methods.scores import ExplainedScore, MatchScore  # the scores import the adapters' errors

        if name == "itm":
            return MatchScore(name, columns=columns)
        return ExplainedScore(name, 1.0, rest, columns)

    @property
    def num_cross_blocks(self) -> int:
        """The text encoder's layers, each with its cross-attention over the image tokens."""
        return len(self.model.text_encoder.encoder.layer)

    def match_trace(self, pixels: Tensor, tokens: Tensor, block: int) -> MatchTrace:
        """The matching probability of B images x K captions' token ids, with the cross-attention of text layer
        ``block`` (an index, negative from the end) in its graph (``MatchTrace``)."""
        total = self.num_cross_blocks
        if isinstance(block, bool) or not isinstance(block, int) or not -total <= block < total:
            raise ValueError(f"block must be a text-encoder layer index in [{-total}, {total - 1}], got {block!r}")
        if tokens.ndim != 2 or tokens.is_floating_point():
            raise ValueError(f"the matching head takes the captions' token ids (K, L), got a "
                             f"{'float' if tokens.is_floating_point() else 'integer'} tensor {tuple(tokens.shape)}")
        return match_trace(self.model, self.image, self._text().pad, pixels, tokens, block % total)


def build(model: nn.Module) -> BlipAdapter:
    """The adapter of a ``BlipForImageTextRetrieval``; ``UnsupportedModelError`` naming the reason."""
    reason = unsupported_reason(model)
    if reason:
        raise UnsupportedModelError(reason)
    tower = BlipVisionTower(model)
    text = BertTextTower(model)
    size = int(model.config.vision_config.image_size)

    def native_image(pixels: Tensor) -> Tensor:
        other = tuple(pixels.shape[-2:]) != (size, size)
        embeds = model.vision_model(pixel_values=pixels, interpolate_pos_encoding=other).last_hidden_state
        return model.vision_proj(embeds[:, 0])

    def native_text(tokens: Tensor) -> Tensor:
        out = model.text_encoder(input_ids=tokens, attention_mask=(tokens != text.pad).long())
        return model.text_proj(out.last_hidden_state[:, 0])

    return BlipAdapter(model, tower, text, FAMILY, native_image=native_image, native_text=native_text)


# ------------------------------------------------------------------------------------------ loading
class BlipTokenizer(HFTokenizer):
    """BLIP's BERT tokenizer as the callable the package uses: [CLS] words [SEP], padded with [PAD] to
    ``MAX_TEXT_LENGTH`` (as BLIP_ITM tokenises); its word pieces in the package's convention (a piece that ends
    a word ends with "</w>", "##" dropped: ``pieces``, shown as they are, ``plain_pieces``)."""

    plain_pieces = True

    def __call__(self, texts: str | Sequence[str]) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                              return_tensors="pt")["input_ids"].long()

    def pieces(self, ids: Sequence[int]) -> list[str]:
        raw = self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
        out = []
        for index, piece in enumerate(raw):
            follows = index + 1 < len(raw) and raw[index + 1].startswith("##")
            body = piece[2:] if piece.startswith("##") else piece
            out.append(body if follows else body + "</w>")
        return out


def claims(spec: str) -> bool:
    """Whether "hf:SPEC" names a BLIP model (its config's model type or architectures)."""
    config = hub.model_config(spec)
    architectures = config.get("architectures") or []
    return config.get("model_type") == "blip" or any(name.startswith("Blip") for name in architectures)


def preprocess_from(folder: Path | None, image_size: int):
    """BlipImageProcessor's preprocessing: resize to the model's size (bicubic, the aspect not kept), to [0, 1],
    normalised with the folder's ``preprocessor_config.json`` mean and std (CLIP's without one)."""
    from torchvision import transforms

    from ..checkpoints import CLIP_MEAN, CLIP_STD

    path = None if folder is None else folder / "preprocessor_config.json"
    config = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    size = config.get("size", {})
    height, width = (size.get("height", image_size), size.get("width", image_size)) if isinstance(size, dict) else (
        int(size), int(size))
    mean, std = config.get("image_mean", CLIP_MEAN), config.get("image_std", CLIP_STD)
    return transforms.Compose([
        transforms.Lambda(lambda image: image.convert("RGB")),
        transforms.Resize((int(height), int(width)), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize(mean, std)])


def load(spec: str, *, pretrained: str | None, device: torch.device, dtype: torch.dtype, cache_dir: str | None):
    """A ``BlipForImageTextRetrieval`` from the hub ("Salesforce/blip-itm-base-coco", downloaded once) or a local
    folder with ``config.json``, safetensors weights and BLIP's tokenizer files. Returns (model, preprocess,
    tokenizer): BLIP's own BERT tokenizer from the same place (offline: from the folder; a folder without it is
    a FileNotFoundError saying what is missing)."""
    from transformers import AutoTokenizer, BlipForImageTextRetrieval

    if pretrained is not None:
        raise ValueError(f"{PREFIX}{spec} carries its own weights; leave pretrained=None")
    folder = Path(spec).expanduser()
    local = folder.is_dir()
    if local and not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"{folder} has no safetensors weights (model.safetensors); pickled weights are not "
                                "loaded: convert them with safetensors first")
    if local and not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise FileNotFoundError(f"{folder} has no tokenizer (tokenizer.json or vocab.txt): BLIP's captions need its "
                                "own BERT tokenizer; copy the tokenizer's files of the checkpoint into the folder")
    source = str(folder) if local else spec
    model = hub.from_pretrained(BlipForImageTextRetrieval, source, dtype, cache_dir=cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=cache_dir)
    model = model.to(device).eval()
    size = int(model.config.vision_config.image_size)
    return model, preprocess_from(folder if local else None, size), BlipTokenizer(tokenizer, MAX_TEXT_LENGTH)


__all__ = ["BlipAdapter", "BlipTokenizer", "MatchTrace", "build", "claims", "load", "recognises"]
