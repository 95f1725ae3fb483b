"""Hugging Face ``transformers`` SigLIP: ``SiglipModel`` (SigLIP, and the fixed-resolution SigLIP 2 checkpoints,
which are saved in that format with SigLIP 2's tokenizer).

Where the pieces are. Image: ``vision_model.embeddings`` (``patch_embedding``, ``position_embedding`` over the
patches: no class token) -> ``encoder.layers[i]`` (CLIP's layout: ``layer_norm1``, ``self_attn.q_proj/k_proj/
v_proj``, ``self_attn.out_proj``, ``layer_norm2``, ``mlp``) -> ``post_layernorm`` -> ``head``, the attention-pool
head (``SiglipMultiheadAttentionPoolingHead``): a learnt ``probe`` (1, 1, C) attends over the normed patch tokens
through torch's ``nn.MultiheadAttention`` (fused ``in_proj``, ``out_proj``), then y + mlp(layernorm(y)); that is
the image embedding (no projection). Text: ``text_model.embeddings`` (token and position) -> ``encoder.layers``
without a causal mask (SigLIP's text attention is bidirectional, and the model is called without an attention
mask, as its processor calls it, on texts padded to the context length) -> ``final_layer_norm`` -> the last
position, whatever token it holds (the padding of a short text) -> ``head`` (a linear projection).

The image head is explained as the open_clip/timm SigLIP probe is (``timm_vit.ProbeTower``, docs/method.md
section 5.2): the probe is the tower's one explained block, its query the pooled token, its keys and values the
patch tokens'; the same maps as the open_clip/timm family on the same weights. Positions at another grid than
the model's are the model's own ``interpolate_pos_encoding`` (bicubic, ``align_corners=False``, no
antialiasing), which timm's resampling (antialiased bicubic, another kernel) does not match: there the two
families' maps differ (docs/method.md section 5.2 gives by how much).

Scores (``SiglipAdapter``): SigLIP is trained with a sigmoid loss that scores each image-text pair on its own,
so its scores are ``"logit"`` = exp(logit_scale) cos + logit_bias (the default: the model's own
``logits_per_image``) and ``"probability"`` = sigmoid(logit), the probability that the pair matches, not a
softmax over the prompts given (``methods.scores.SigmoidScore``); and a CLIP's ``"cosine"`` and ``"contrast"``
(the cosine's maps are the logit's divided by the scale, for the methods linear in the gradient: the cosine is
kept to compare with CLIP families). open_clip's SigLIP models give the same scores (``sigmoid.py``).

``Siglip2Model`` (NaFlex) is refused with the reason (``REASONS``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import hub
from ..errors import WeightsUnavailableError
from .base import CLIPAdapter, UnsupportedModelError
from .hf_clip import ATTENTION_IMPLEMENTATIONS, _path_like, block_view
from .sigmoid import SigmoidScores
from .timm_vit import ProbeTower
from .transformer import BlockView, CausalTextTower, interpolate_positions, pool_positions, run_native

FAMILY = "Hugging Face SigLIP"
PREFIX = "hf:"
OFFLINE_HINT = ("copy the model's folder (config.json, model.safetensors and its tokenizer files, e.g. a hub "
                "snapshot) from a machine that has it and use load_model('hf:/path/to/folder')")
#: the classes this file reads
CLASSES = ("SiglipModel",)
#: SigLIP's image processor's normalisation (mean and std 0.5), its resize to the model's size without a crop
NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
REASONS = {
    "Siglip2Model": (
        "SigLIP 2's NaFlex model embeds each image at its own aspect ratio as a variable number of patches (a "
        "linear patch embedding of pre-cut patches, position embeddings resized per image to its spatial_shapes, "
        "a pixel attention mask over the padding), which the fixed-grid probe tower does not read: use a "
        "fixed-resolution SigLIP 2 checkpoint (such as google/siglip2-base-patch16-224, saved as a SiglipModel)"),
}


def recognises(model: nn.Module) -> bool:
    kind = type(model).__name__
    return type(model).__module__.startswith("transformers") and (kind in CLASSES or kind in REASONS)


def unsupported_reason(model: nn.Module) -> str | None:
    kind = type(model).__name__
    if kind in REASONS:
        return REASONS[kind]
    vision, text = model.vision_model, model.text_model
    for name, tower in (("image", vision), ("text", text)):
        implementation = getattr(tower.config, "_attn_implementation", None) or "eager"
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            return (f"{name} tower uses attention implementation {implementation!r}; load the model with "
                    "attn_implementation='sdpa' or 'eager'")
    if not getattr(vision, "use_head", False):
        return "its vision tower has no attention-pool head (vision_use_head=False): there is no pooled token"
    attention = vision.head.attention
    if not attention._qkv_same_embed_dim or attention.bias_k is not None or attention.add_zero_attn:
        return "its attention-pool head's attention has separate key/value widths, key/value biases or zero attention"
    if vision.head.probe.shape[1] != 1:
        return f"its attention-pool head has {vision.head.probe.shape[1]} probes (one pooled token is explained)"
    return None


class HeadTower(ProbeTower):
    """SigLIP's vision tower pooled by its attention-pool head, as ``ProbeTower`` explains a timm probe: the
    head's query is the pooled token; keys and values are the in-projections of the patch tokens after
    ``post_layernorm``."""

    def __init__(self, vision: nn.Module) -> None:
        self.vision = vision
        config = vision.config
        self._patch, self._size = int(config.patch_size), int(config.image_size)
        self._embed_dim = int(config.hidden_size)

    @property
    def probe(self) -> nn.Module:
        return self.vision.head

    @property
    def heads(self) -> int:
        return int(self.probe.attention.num_heads)

    @property
    def out_proj(self) -> nn.Linear:
        return self.probe.attention.out_proj

    @property
    def patch_size(self) -> tuple[int, int]:
        return self._patch, self._patch

    @property
    def image_size(self) -> tuple[int, int]:
        return self._size, self._size

    def weight(self) -> Tensor:
        return self.vision.encoder.layers[0].self_attn.out_proj.weight

    def _in_proj(self, part: int) -> tuple[Tensor, Tensor | None]:
        """Rows ``part`` (0: q, 1: k, 2: v) of the head's fused in-projection (weight, bias)."""
        attention, width = self.probe.attention, self._embed_dim
        rows = slice(part * width, (part + 1) * width)
        bias = attention.in_proj_bias
        return attention.in_proj_weight[rows], None if bias is None else bias[rows]

    def keys_values(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        normed = self.vision.post_layernorm(patches)
        return F.linear(normed, *self._in_proj(1)), F.linear(normed, *self._in_proj(2))

    def query(self, dtype: torch.dtype) -> Tensor:
        return F.linear(self.probe.probe.to(dtype), *self._in_proj(0))

    def finish(self, out: Tensor) -> Tensor:
        y = self.out_proj(out)
        return y + self.probe.mlp(self.probe.layernorm(y))

    def blocks(self) -> list[BlockView]:
        return [block_view(layer) for layer in self.vision.encoder.layers]

    def embed(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        """The first block's input: the patch tokens plus the position embedding, interpolated for another
        grid as the model's ``interpolate_pos_encoding`` does (bicubic, align_corners=False)."""
        embeddings = self.vision.embeddings
        x = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        native = (self._size // self._patch,) * 2
        pos = interpolate_positions(embeddings.position_embedding.weight, native, grid, prefix=0)
        return x + pos.to(x.dtype)

    @torch.no_grad()
    def probe_input(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        grid = self.check_pixels(pixels)
        x = run_native(self.blocks(), self.embed(pixels.to(device=self.device, dtype=self.dtype), grid), None)
        return F.pad(x, (0, 0, 1, 0)), grid

    def parameter_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        vision = self.vision
        probe = [*self.probe.parameters(), *vision.post_layernorm.parameters()]
        layers = vision.encoder.layers
        blocks = [(f"block {i}", list(layers[i].parameters())) for i in reversed(range(len(layers)))]
        return [("head", []), ("attention-pool probe", probe), *blocks, ("embedding", list(vision.embeddings.parameters()))]


def _text_tower(text: nn.Module) -> CausalTextTower:
    embeddings = text.embeddings

    def blocks() -> list[BlockView]:
        return [block_view(layer) for layer in text.encoder.layers]

    def embed(tokens: Tensor) -> Tensor:
        return embeddings.token_embedding(tokens) + embeddings.position_embedding.weight[:tokens.shape[1]]

    return CausalTextTower(embed=embed, mask=lambda length, dtype, device: None, blocks=blocks,
                           head=lambda pooled: text.head(text.final_layer_norm(pooled)),
                           pool=lambda tokens: pool_positions(tokens, "last"),
                           context_length=int(embeddings.position_embedding.weight.shape[0]),
                           weight=lambda: embeddings.token_embedding.weight)


class SiglipTokenizer:
    """A Hugging Face tokenizer as SigLIP's text tower takes its ids: padded to the context length with the
    tokenizer's own padding, on the tokenizer's side. The model pools at the last position and attends over
    the padding, as it was trained (CLIP's padding with 0 after the end token, ``text.HFTokenizer``, would
    change the embedding). Its words are the sequence's tokens that are not special (start, end, padding:
    ``spans``), its pieces SentencePiece's, a word starting at a piece that starts with U+2581."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer, self.context_length = tokenizer, int(context_length)

    def __call__(self, texts: str | Sequence[str]) -> Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.context_length,
                                 return_tensors="pt")
        return encoded["input_ids"].long()

    def all_ids(self, text: str) -> list[int]:
        """Every id of ``text`` without special tokens and without the cut to the context length."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count(self, text: str) -> int:
        return len(self.all_ids(text))

    @property
    def special_tokens(self) -> int:
        """The special tokens SigLIP's tokenizer adds to a text: its end token alone."""
        from ..text import special_token_count

        return special_token_count(self.tokenizer)

    def spans(self, tokens: Tensor) -> list[tuple[int, int]]:
        """(start, end) of each row's words: from its first to its last token that is not a start, end or
        padding token ((0, 0) for a text without words)."""
        special = {getattr(self.tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")} - {None}
        spans = []
        for row in tokens.tolist():
            content = [i for i, token in enumerate(row) if token not in special]
            spans.append((content[0], content[-1] + 1) if content else (0, 0))
        return spans

    def readable_pieces(self, ids: Sequence[int]) -> list[str]:
        """SentencePiece pieces without their word-start mark, '</w>' after a word's last piece (before a piece
        that starts a word, and at the end); byte pieces (<0xNN>) decoded across pieces."""
        import codecs

        raw = self.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces = []
        for index, piece in enumerate(raw):
            piece = str(piece)
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                text = decoder.decode(bytes([int(piece[3:5], 16)]))
            else:
                text = decoder.decode(b"", final=True) + piece.replace("\u2581", "")
            last = index == len(raw) - 1 or str(raw[index + 1]).startswith("\u2581")
            pieces.append(text + (decoder.decode(b"", final=True) + "</w>" if last else ""))
        return pieces


def _tokenizer_missing(reason: str) -> Callable:
    """The tokenizer of a SigLIP whose tokenizer could not be had: prompts must then be embeddings."""

    def tokenizer(texts: Any) -> Tensor:
        raise WeightsUnavailableError(
            f"the SigLIP tokenizer could not be loaded ({reason}). Pass prompts as (K, D) text embeddings "
            "(explain_image(model, images, embeddings, labels=names)), give the folder the model's tokenizer files, "
            "or wrap the model with its tokenizer (wrap_model(model, tokenizer=AutoTokenizer.from_pretrained(...))).")

    tokenizer.unavailable = True
    return tokenizer


class SiglipAdapter(SigmoidScores, CLIPAdapter):
    """The adapter of a ``SiglipModel``: its scores (the logit with its bias, the pair's sigmoid probability,
    a CLIP's cosine and contrast), its preprocessing and its tokenizer's padding."""

    def __init__(self, model: nn.Module) -> None:
        vision, text = model.vision_model, model.text_model
        size = int(vision.config.image_size)

        def native_image(pixels: Tensor) -> Tensor:
            other = tuple(pixels.shape[-2:]) != (size, size)
            return vision(pixel_values=pixels, interpolate_pos_encoding=other).pooler_output

        def native_text(tokens: Tensor) -> Tensor:
            return text(input_ids=tokens).pooler_output

        super().__init__(model, HeadTower(vision), _text_tower(text), FAMILY, native_image=native_image,
                         native_text=native_text, logit_scale=model.logit_scale)

    def default_preprocess(self) -> Callable:
        return preprocess_from(None, self.image_size)

    def own_tokenizer(self, tokenizer: Callable | None) -> Callable | None:
        if tokenizer is None:
            return _tokenizer_missing("wrap_model was given none, and CLIP's bundled tokenizer is not SigLIP's")
        from ..text import _is_hf_tokenizer

        return SiglipTokenizer(tokenizer, self.context_length) if _is_hf_tokenizer(tokenizer) else tokenizer


def build(model: nn.Module) -> CLIPAdapter:
    reason = unsupported_reason(model)
    if reason:
        raise UnsupportedModelError(reason)
    return SiglipAdapter(model)


# ------------------------------------------------------------------------------------------ loading
def claims(spec: str) -> bool:
    """Whether "hf:SPEC" names a SigLIP model (its config's model type), rather than a CLIP model."""
    return hub.model_config(spec).get("model_type") in ("siglip", "siglip2")


def preprocess_from(folder: Path | None, image_size: tuple[int, int]):
    """SiglipImageProcessor's preprocessing: resize to the model's size (the aspect not kept; bicubic unless the
    folder's ``preprocessor_config.json`` says otherwise), to [0, 1], normalised with its mean and std (0.5)."""
    from torchvision import transforms

    path = None if folder is None else folder / "preprocessor_config.json"
    config = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    size = config.get("size") or {}
    height, width = (size.get("height", image_size[0]), size.get("width", image_size[1])) if isinstance(
        size, dict) else (size, size)
    modes = {0: "NEAREST", 2: "BILINEAR", 3: "BICUBIC"}
    mode = getattr(transforms.InterpolationMode, modes.get(config.get("resample", 3), "BICUBIC"))
    mean, std = config.get("image_mean", NORMALIZATION[0]), config.get("image_std", NORMALIZATION[1])
    return transforms.Compose([
        transforms.Lambda(lambda image: image.convert("RGB")),
        transforms.Resize((int(height), int(width)), interpolation=mode),
        transforms.ToTensor(), transforms.Normalize(mean, std)])


def load(spec: str, *, pretrained: str | None, device: torch.device, dtype: torch.dtype, cache_dir: str | None):
    """A ``SiglipModel`` from the hub ("google/siglip-base-patch16-224", downloaded once) or from a local folder
    with ``config.json`` and safetensors weights (offline), with its own tokenizer (the folder's, or the hub's;
    one that cannot be had leaves prompts to be given as embeddings). Returns (model, preprocess, tokenizer)."""
    from transformers import AutoTokenizer, SiglipModel

    if pretrained is not None:
        raise ValueError(f"{PREFIX}{spec} carries its own weights; leave pretrained=None")
    folder = Path(spec).expanduser()
    if folder.exists():
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{folder} has no safetensors weights (model.safetensors); pickled weights "
                                    "(pytorch_model.bin) are not loaded: convert them with safetensors first")
        spec = str(folder)
    elif _path_like(spec):
        raise FileNotFoundError(f"model folder not found: {spec}")
    if hub.model_config(spec).get("model_type") == "siglip2":
        raise UnsupportedModelError(f"{PREFIX}{spec} is a Siglip2Model: {REASONS['Siglip2Model']}")
    offline = not folder.exists() and hub.unreachable() is not None
    with hub.session(offline):
        model = hub.from_pretrained(SiglipModel, spec, dtype, attn_implementation="sdpa", cache_dir=cache_dir)
        context = int(model.config.text_config.max_position_embeddings)
        try:
            tokenizer = SiglipTokenizer(AutoTokenizer.from_pretrained(spec, cache_dir=cache_dir), context)
        except Exception as error:  # no tokenizer files, offline, or sentencepiece missing
            tokenizer = _tokenizer_missing(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
    model = model.to(device).eval()
    size = int(model.config.vision_config.image_size)
    return model, preprocess_from(folder if folder.is_dir() else None, (size, size)), tokenizer
