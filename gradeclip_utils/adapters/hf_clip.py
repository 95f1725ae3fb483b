"""Hugging Face ``transformers`` CLIP: ``CLIPModel``, or a ``CLIPVisionModelWithProjection`` +
``CLIPTextModelWithProjection`` pair (held together by ``HFCLIPPair``).

Where the pieces are: ``vision_model.embeddings`` (``patch_embedding``, ``class_embedding``,
``position_embedding``) -> ``pre_layrnorm`` -> ``encoder.layers[i]`` (``layer_norm1``, separate
``self_attn.q_proj/k_proj/v_proj``, ``self_attn.out_proj``, ``layer_norm2``, ``mlp``) -> row 0 ->
``post_layernorm`` -> ``visual_projection``; the text tower likewise, pooled at the end token
(the argmax of the ids for legacy configs whose ``eos_token_id`` is 2, else the first position of
the configured end id) -> ``final_layer_norm`` -> ``text_projection``.

Blocks run as the model runs them: the layer's own norms, MLP and attention module (whatever
attention implementation the config selects, eager or SDPA). The text tower is always given its
causal mask explicitly: a text layer called without one is silently bidirectional under SDPA. Other
image sizes than the config's go through the adapter's own bicubic interpolation of the position
embedding (the same as ``interpolate_pos_encoding=True``), with sides checked against the patch size
(the model itself floors other sizes silently).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .. import hub
from ..checkpoints import CLIP_MEAN, CLIP_STD
from .base import CLIPAdapter, UnsupportedModelError
from .transformer import BlockView, CausalTextTower, ViTTower, interpolate_positions, pool_positions

FAMILY = "Hugging Face CLIP"
PREFIX = "hf:"
OFFLINE_HINT = ("copy the model's folder (config.json and model.safetensors, e.g. a hub snapshot) from a machine that "
                "has it and use load_model('hf:/path/to/folder')")
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


class HFCLIPPair(nn.Module):
    """A ``CLIPVisionModelWithProjection`` and a ``CLIPTextModelWithProjection`` as one model (the
    modules are held, not copied)."""

    def __init__(self, vision: nn.Module, text: nn.Module) -> None:
        super().__init__()
        self.vision, self.text = vision, text


def _towers(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module] | None:
    """(vision_model, visual_projection, text_model, text_projection) of a CLIPModel or a pair."""
    if isinstance(model, HFCLIPPair):
        vision, text = model.vision, model.text
    else:
        vision = text = model
    parts = tuple(getattr(holder, name, None) for holder, name in (
        (vision, "vision_model"), (vision, "visual_projection"), (text, "text_model"), (text, "text_projection")))
    return parts if all(p is not None for p in parts) else None


def recognises(model: nn.Module) -> bool:
    return isinstance(model, HFCLIPPair) or (type(model).__module__.startswith("transformers")
                                             and _towers(model) is not None)


def _implementation(config) -> str:
    return getattr(config, "_attn_implementation", None) or "eager"


def unsupported_reason(model: nn.Module) -> str | None:
    towers = _towers(model)
    if towers is None:
        return (f"{type(model).__name__} is not a CLIPModel (nor a CLIPVisionModelWithProjection + "
                "CLIPTextModelWithProjection pair)")
    vision, _, text, _ = towers
    for name, tower in (("image", vision), ("text", text)):
        implementation = _implementation(tower.config)
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            return (f"{name} tower uses attention implementation {implementation!r}; load the model with "
                    f"attn_implementation='sdpa' or 'eager'")
        layer = tower.encoder.layers[0]
        attention = layer.self_attn
        if not all(hasattr(attention, p) for p in ("q_proj", "k_proj", "v_proj", "out_proj", "num_heads")):
            return f"{name} tower attention {type(attention).__name__} has no q/k/v/out projections"
    return None


def block_view(layer: nn.Module) -> BlockView:
    attention = layer.self_attn

    def native(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # the layer's own modules in the layer's order; the mask as (1, 1, L, L) for every implementation
        full_mask = None if mask is None else mask[None, None]
        out = attention(hidden_states=layer.layer_norm1(x), attention_mask=full_mask)
        x = x + (out[0] if isinstance(out, tuple) else out)
        return x + layer.mlp(layer.layer_norm2(x))

    return BlockView(module=layer, ln_1=layer.layer_norm1,
                     qkv=lambda h: (attention.q_proj(h), attention.k_proj(h), attention.v_proj(h)),
                     heads=int(attention.num_heads), out_proj=attention.out_proj, ln_2=layer.layer_norm2,
                     mlp=layer.mlp, native=native)


def _vit_tower(vision: nn.Module, projection: nn.Module) -> ViTTower:
    embeddings = vision.embeddings
    config = vision.config
    patch, size = int(config.patch_size), int(config.image_size)
    native = (size // patch, size // patch)

    def blocks() -> list[BlockView]:
        return [block_view(layer) for layer in vision.encoder.layers]

    def embed(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = embeddings.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        pos = interpolate_positions(embeddings.position_embedding.weight, native, grid)
        return vision.pre_layrnorm(torch.cat([cls, x], dim=1) + pos.to(x.dtype))

    def head(pooled: torch.Tensor) -> torch.Tensor:
        return projection(vision.post_layernorm(pooled))

    def groups() -> list[tuple[str, list[nn.Parameter]]]:
        out = [("head", list(vision.post_layernorm.parameters()) + list(projection.parameters()))]
        for index in reversed(range(len(vision.encoder.layers))):
            out.append((f"block {index}", list(vision.encoder.layers[index].parameters())))
        out.append(("embedding", [*embeddings.parameters(), *vision.pre_layrnorm.parameters()]))
        return out

    return ViTTower(embed=embed, blocks=blocks, head=head, patch_size=(patch, patch), image_size=(size, size),
                    embed_dim=int(projection.out_features), weight=lambda: embeddings.patch_embedding.weight,
                    parameter_groups=groups)


def _text_tower(text: nn.Module, projection: nn.Module) -> CausalTextTower:
    embeddings = text.embeddings
    eos = getattr(text, "eos_token_id", None)
    if eos is None:
        eos = text.config.eos_token_id
    pool_type = "argmax" if eos == 2 else "eos"  # legacy configs carried eos_token_id 2 and pool at the argmax

    def blocks() -> list[BlockView]:
        return [block_view(layer) for layer in text.encoder.layers]

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        positions = embeddings.position_embedding.weight[:tokens.shape[1]]
        return embeddings.token_embedding(tokens) + positions

    def mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu(1)

    return CausalTextTower(embed=embed, mask=mask, blocks=blocks, head=lambda pooled: projection(text.final_layer_norm(pooled)),
                           pool=lambda tokens: pool_positions(tokens, pool_type, eos),
                           context_length=int(embeddings.position_embedding.weight.shape[0]),
                           weight=lambda: embeddings.token_embedding.weight)


def build(model: nn.Module) -> CLIPAdapter:
    reason = unsupported_reason(model)
    if reason:
        raise UnsupportedModelError(reason)
    vision, visual_projection, text, text_projection = _towers(model)
    size = int(vision.config.image_size)

    def native_image(pixels: torch.Tensor) -> torch.Tensor:
        other = tuple(pixels.shape[-2:]) != (size, size)
        pooled = vision(pixel_values=pixels, interpolate_pos_encoding=other).pooler_output
        return visual_projection(pooled)

    def native_text(tokens: torch.Tensor) -> torch.Tensor:
        return text_projection(text(input_ids=tokens).pooler_output)

    return CLIPAdapter(model, _vit_tower(vision, visual_projection), _text_tower(text, text_projection), FAMILY,
                       native_image=native_image, native_text=native_text,
                       logit_scale=getattr(model, "logit_scale", None))


def _preprocess_from(folder: Path, image_size: int):
    """CLIP preprocessing as a checkpoint's ``preprocessor_config.json`` describes it (resize of the
    short side, centre crop, mean and std), or CLIP's own at the model's image size without one."""
    import open_clip

    path = folder / "preprocessor_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    crop = config.get("crop_size", image_size)
    crop = crop.get("height", image_size) if isinstance(crop, dict) else crop
    mean, std = tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD))
    return open_clip.image_transform(int(crop), is_train=False, mean=mean, std=std)


def _path_like(spec: str) -> bool:
    """A folder path rather than a hub repository id: absolute, or starting with ./, ../ or ~ (a relative folder
    that exists is taken as a folder before this is asked)."""
    return spec.startswith(("/", "./", "../", "~", ".\\", "..\\")) or Path(spec).is_absolute()


def load(spec: str, *, pretrained: str | None, device: torch.device, dtype: torch.dtype, cache_dir: str | None):
    """A ``CLIPModel`` from the hub ("openai/clip-vit-base-patch16", downloaded once) or from a local
    folder with ``config.json`` and ``model.safetensors`` (offline). Only safetensors weights are read.
    Returns (model, preprocess, tokenizer); the tokenizer is left to the default (open_clip's bundled
    CLIP tokenizer: the same ids for CLIP checkpoints, and nothing to download)."""
    from transformers import CLIPModel

    if pretrained is not None:
        raise ValueError(f"{PREFIX}{spec} carries its own weights; leave pretrained=None")
    folder = Path(spec).expanduser()
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a Hugging Face model folder: it has no config.json")
        if not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{folder} has no safetensors weights (model.safetensors); pickled weights "
                                    "(pytorch_model.bin) are not loaded: convert them with safetensors first")
        spec = str(folder)
    elif _path_like(spec):  # transformers would take it for a malformed repository id
        raise FileNotFoundError(f"model folder not found: {spec} ({PREFIX} takes a local folder with config.json "
                                "and model.safetensors, or a hub repository such as openai/clip-vit-base-patch16)")
    offline = not folder.exists() and hub.unreachable() is not None  # cached files only, without retries
    with hub.session(offline):
        model = hub.from_pretrained(CLIPModel, spec, dtype, attn_implementation="sdpa", cache_dir=cache_dir)
    model = model.to(device).eval()
    local = folder if folder.is_dir() else Path(getattr(model.config, "_name_or_path", "") or spec)
    return model, _preprocess_from(local, int(model.config.vision_config.image_size)), None
