"""Models of OpenAI's ``clip`` package (``clip.model.CLIP``: ViT and ResNet image towers).

They are recognised by their structure, so the package itself is not needed to explain one (its PyPI
builds import ``pkg_resources``, which recent setuptools no longer ships). The towers are
sequence-first: blocks take (length, batch, width) tensors, in an ``nn.Sequential``; each text block
holds its own causal mask (``attn_mask``), which it applies itself; ``build_model`` gives fp16 weights
with fp32 LayerNorms (its ``LayerNorm`` computes in fp32 and casts back), which the adapter keeps.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoints import read_state_dict
from .base import CLIPAdapter, UnsupportedModelError
from .openclip import attention_problem, clip_vit_tower
from .resnet import image_tower, is_modified_resnet
from .transformer import BlockView, CausalTextTower, ViTTower, fused_qkv, pool_positions

FAMILY = "OpenAI clip"
PREFIX = "openai-clip:"
OFFLINE_HINT = "pass the model's state dict as a local file (pretrained='/path/to/state_dict.safetensors')"
_TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "visual")
_VIT_PARTS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")


def _is_openai_block(block: nn.Module) -> bool:
    return (all(hasattr(block, name) for name in ("attn", "ln_1", "mlp", "ln_2", "attn_mask"))
            and not hasattr(block, "ls_1"))


def _is_openai_transformer(transformer: nn.Module) -> bool:
    blocks = getattr(transformer, "resblocks", None)
    return isinstance(blocks, nn.Sequential) and len(blocks) > 0 and all(_is_openai_block(b) for b in blocks)


def recognises(model: nn.Module) -> bool:
    """OpenAI's CLIP layout: text pieces on the model, sequence-first blocks that hold their mask."""
    return (all(hasattr(model, name) for name in _TEXT_PARTS) and _is_openai_transformer(model.transformer)
            and not hasattr(model, "text_pool_type"))  # open_clip's CLIP has it


def unsupported_reason(model: nn.Module) -> str | None:
    visual = model.visual
    if not is_modified_resnet(visual):
        if not all(hasattr(visual, name) for name in _VIT_PARTS) or not _is_openai_transformer(visual.transformer):
            return f"image tower {type(visual).__name__} is neither OpenAI's VisionTransformer nor a ModifiedResNet"
    for tower, transformer in (("image", getattr(visual, "transformer", None)), ("text", model.transformer)):
        if transformer is None:
            continue
        for block in transformer.resblocks:
            if not isinstance(block.attn, nn.MultiheadAttention):
                return f"{tower} tower attention is {type(block.attn).__name__}, not nn.MultiheadAttention"
            problem = attention_problem(block.attn)
            if problem:
                return f"{tower} tower uses {problem}"
            if block.attn.batch_first:
                return f"{tower} tower attention is batch-first, unlike OpenAI's sequence-first blocks"
    return None


def block_view(block: nn.Module) -> BlockView:
    attn = block.attn

    def native(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return block(x.transpose(0, 1)).transpose(0, 1)  # the block applies its own mask

    return BlockView(module=block, ln_1=block.ln_1, qkv=fused_qkv(attn.in_proj_weight, attn.in_proj_bias),
                     heads=int(attn.num_heads), out_proj=attn.out_proj, ln_2=block.ln_2, mlp=block.mlp, native=native)


def _vit_tower(visual: nn.Module) -> ViTTower:
    patch = tuple(visual.conv1.kernel_size)
    side = round((visual.positional_embedding.shape[0] - 1) ** 0.5)
    return clip_vit_tower(visual, block_view, grid=(side, side), image_size=(side * patch[0], side * patch[1]),
                          embed_dim=visual.proj.shape[1] if visual.proj is not None else visual.conv1.out_channels)


def _text_tower(model: nn.Module) -> CausalTextTower:
    transformer = model.transformer

    def blocks() -> list[BlockView]:
        return [block_view(b) for b in transformer.resblocks]

    def dtype() -> torch.dtype:
        return model.visual.conv1.weight.dtype  # what the model's own encode_text casts to

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        return model.token_embedding(tokens).to(dtype()) + model.positional_embedding[:tokens.shape[1]].to(dtype())

    def mask(length: int, mask_dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        full = transformer.resblocks[0].attn_mask
        return None if full is None else full[..., -length:, -length:].to(device=device, dtype=mask_dtype)

    def head(pooled: torch.Tensor) -> torch.Tensor:
        return model.ln_final(pooled).to(dtype()) @ model.text_projection

    return CausalTextTower(embed=embed, mask=mask, blocks=blocks, head=head,
                           pool=lambda tokens: pool_positions(tokens, "argmax"),
                           context_length=int(model.positional_embedding.shape[0]),
                           weight=lambda: model.token_embedding.weight)


def build(model: nn.Module) -> CLIPAdapter:
    reason = unsupported_reason(model)
    if reason:
        raise UnsupportedModelError(reason)
    image, kind = image_tower(model.visual, _vit_tower)
    return CLIPAdapter(model, image, _text_tower(model), f"{FAMILY} {kind}",
                       native_image=model.encode_image, native_text=model.encode_text,
                       logit_scale=model.logit_scale)


def load(spec: str, *, pretrained: str | None, device: torch.device, dtype: torch.dtype, cache_dir: str | None):
    """An OpenAI clip model built by the package's ``build_model`` from a local state dict: ``pretrained``
    (safetensors, or a torch file of plain tensors, read with ``weights_only=True``), or ``spec`` itself
    when it is such a file. OpenAI's ``clip.load`` downloads TorchScript archives, which are never
    unpickled here; the same weights are open_clip's ``pretrained="openai"`` (safetensors)."""
    weights = pretrained if pretrained is not None else (spec if Path(spec).is_file() else None)
    if weights is None:
        raise FileNotFoundError(
            f"{PREFIX}{spec}: give the model's state dict as a local file (load_model('{PREFIX}{spec}', "
            "pretrained='ViT-B-16.safetensors')). OpenAI's clip.load downloads TorchScript archives, which this "
            "package does not unpickle; on a trusted machine, save clip.load(name, jit=False)[0].state_dict() with "
            "safetensors, or use open_clip's copy of the same weights: load_model('ViT-B-16', pretrained='openai').")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package's pkg_resources import warns
            from clip.model import build_model
    except ImportError as error:
        raise ImportError(f"building an OpenAI clip model needs OpenAI's clip package ({error}): pip install "
                          "clip-anytorch 'setuptools<81' (its import needs pkg_resources)") from error
    model = build_model(read_state_dict(weights))  # fp16 weights with fp32 LayerNorms, as OpenAI builds them
    if dtype != torch.float16:
        model = model.to(dtype)
    return model.to(device).eval(), None, None
