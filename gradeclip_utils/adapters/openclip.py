"""open_clip models: ``CLIP`` / ``CustomTextCLIP`` with a ViT image tower (class-token pooling) or a
ResNet one (attention pool), and a transformer text tower.

Both attention modules open_clip has used are accepted: ``nn.MultiheadAttention`` (open_clip up to
3.x; its ``batch_first`` flag gives the layout) and open_clip's own ``Attention`` (custom blocks in 3.x,
every block from 4.x on: a fused ``in_proj_weight`` (3C, C), ``in_proj_bias``, ``num_heads``,
``out_proj``, scaled-dot-product attention, always batch first). Its optional ``ln_inner`` (a norm
before the output projection) and the custom block's ``ln_attn`` are applied as the model applies
them; q/k normalisation, per-head scaling and cosine attention with a learnt logit scale change what
q, k and the attention output mean, so a model that uses them is refused with the feature named.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .base import CLIPAdapter, UnsupportedModelError
from .resnet import image_tower, is_modified_resnet
from .sigmoid import adapter_class
from .transformer import (BlockView, CausalTextTower, ViTTower, fused_qkv, identity, interpolate_positions,
                          pool_positions)

FAMILY = "open_clip"


def _classes():
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import TextTransformer, VisionTransformer

    return CLIP, CustomTextCLIP, TextTransformer, VisionTransformer


def _is_identity(module: Any) -> bool:
    return module is None or isinstance(module, nn.Identity)


def attention_problem(attn: nn.Module) -> str | None:
    """Why an attention module does not have the contract the engine needs (None when it does)."""
    if isinstance(attn, nn.MultiheadAttention):
        if attn.in_proj_weight is None:
            return "attention with separate q/k/v projection weights (kdim/vdim differ from the width)"
        if attn.bias_k is not None or attn.add_zero_attn:
            return "attention with added key/value biases or zero attention"
        return None
    if getattr(attn, "in_proj_weight", None) is None or not hasattr(attn, "num_heads") \
            or not isinstance(getattr(attn, "out_proj", None), nn.Linear):
        return (f"attention module {type(attn).__name__} has no fused in-projection (in_proj_weight (3C, C)), "
                "num_heads and out_proj")
    if not (_is_identity(getattr(attn, "ln_q", None)) and _is_identity(getattr(attn, "ln_k", None))):
        return "q/k normalisation (qk_norm) in the attention"
    if getattr(attn, "logit_scale", None) is not None:
        return "scaled cosine attention with a learnt logit scale (scaled_cosine_attn)"
    if getattr(attn, "head_scale", None) is not None:
        return "per-head output scaling (scale_heads)"
    return None


def _batch_first(attn: nn.Module) -> bool:
    """The layout the block expects, from its attention module: nn.MultiheadAttention says so itself;
    open_clip's own Attention always reads (batch, length, width)."""
    return bool(attn.batch_first) if isinstance(attn, nn.MultiheadAttention) else True


def block_view(block: nn.Module) -> BlockView:
    attn = block.attn
    batch_first = _batch_first(attn)

    def native(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if batch_first:
            return block(x, attn_mask=mask)
        return block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)

    ln_attn = getattr(block, "ln_attn", None)
    post_attn = block.ls_1 if _is_identity(ln_attn) else (lambda t: block.ls_1(ln_attn(t)))
    inner = getattr(attn, "ln_inner", None)
    return BlockView(module=block, ln_1=block.ln_1, qkv=fused_qkv(attn.in_proj_weight, attn.in_proj_bias),
                     heads=int(attn.num_heads), out_proj=attn.out_proj, ln_2=block.ln_2, mlp=block.mlp,
                     native=native, inner_norm=identity if _is_identity(inner) else inner, post_attn=post_attn,
                     post_mlp=block.ls_2)


def _blocks_problem(name: str, transformer: nn.Module) -> str | None:
    for index, block in enumerate(transformer.resblocks):
        if hasattr(block, "ln_1_kv"):
            return f"{name} tower block {index} is a cross-attention block"
        for part in ("ln_1", "attn", "ln_2", "mlp", "ls_1", "ls_2"):
            if not hasattr(block, part):
                return f"{name} tower block {index} ({type(block).__name__}) has no {part}"
        problem = attention_problem(block.attn)
        if problem:
            return f"{name} tower uses {problem}"
    return None


def _text_parts(model: nn.Module) -> dict[str, Any]:
    """The text tower's pieces, wherever the model keeps them (CLIP keeps them on itself)."""
    _, CustomTextCLIP, _, _ = _classes()
    if isinstance(model, CustomTextCLIP):
        text = model.text
        return dict(token_embedding=text.token_embedding, positional_embedding=text.positional_embedding,
                    transformer=text.transformer, ln_final=text.ln_final, text_projection=text.text_projection,
                    attn_mask=text.attn_mask, pool_type=text.pool_type, eos_id=getattr(text, "eos_id", None))
    return dict(token_embedding=model.token_embedding, positional_embedding=model.positional_embedding,
                transformer=model.transformer, ln_final=model.ln_final, text_projection=model.text_projection,
                attn_mask=model.attn_mask, pool_type=model.text_pool_type, eos_id=getattr(model, "text_eos_id", None))


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this file cannot explain ``model`` (None when it can)."""
    CLIP, CustomTextCLIP, _, VisionTransformer = _classes()
    if not isinstance(model, (CLIP, CustomTextCLIP)):
        return f"not an open_clip CLIP model ({type(model).__name__})"
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        if visual.attn_pool is not None:
            return "image tower pools with an attentional pooler (CoCa-style), not a class token"
        if visual.pool_type != "tok":
            return f"image tower pools with '{visual.pool_type}', not the class token"
        problem = _blocks_problem("image", visual.transformer)
        if problem:
            return problem
    elif not is_modified_resnet(visual):
        return f"image tower {type(visual).__name__} is neither an open_clip VisionTransformer nor a ModifiedResNet"
    return text_problem(model)


def text_problem(model: nn.Module) -> str | None:
    """Why the text tower of an open_clip model cannot be read (None when it can); the families whose
    models carry open_clip's text tower (timm trunks too) share these checks."""
    _, CustomTextCLIP, TextTransformer, _ = _classes()
    if isinstance(model, CustomTextCLIP):
        if not isinstance(model.text, TextTransformer):
            return f"text tower {type(model.text).__name__} is not an open_clip TextTransformer"
        if model.text.cls_emb is not None:
            return "text tower appends a class embedding (CoCa-style)"
    parts = _text_parts(model)
    problem = _blocks_problem("text", parts["transformer"])
    if problem:
        return problem
    if parts["pool_type"] not in ("argmax", "last", "first", "eos"):
        return f"text tower pools with '{parts['pool_type']}'"
    return None


def clip_vit_tower(visual: nn.Module, view: Callable[[nn.Module], BlockView], *, grid: tuple[int, int],
                   image_size: tuple[int, int], embed_dim: int, dropout: Callable = identity) -> ViTTower:
    """The engine's view of a VisionTransformer in OpenAI's layout, which open_clip's keeps (``conv1``,
    ``class_embedding``, ``positional_embedding`` for a ``grid``, ``ln_pre``, ``transformer.resblocks``,
    ``ln_post``, ``proj``); ``view`` makes a block's view (each family's own layout), ``dropout`` is
    open_clip's patch dropout (the identity in eval mode). OpenAI's adapter uses it too."""
    def blocks() -> list[BlockView]:
        return [view(b) for b in visual.transformer.resblocks]

    def embed(pixels: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
        x = visual.conv1(pixels).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        pos = interpolate_positions(visual.positional_embedding, grid, target)
        return visual.ln_pre(dropout(torch.cat([cls, x], dim=1) + pos.to(x.dtype)))

    def head(pooled: torch.Tensor) -> torch.Tensor:
        pooled = visual.ln_post(pooled)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def groups() -> list[tuple[str, list[nn.Parameter]]]:
        head_params = list(visual.ln_post.parameters()) + ([visual.proj] if isinstance(visual.proj, nn.Parameter) else [])
        out = [("head", head_params)]
        for index in reversed(range(len(visual.transformer.resblocks))):
            out.append((f"block {index}", list(visual.transformer.resblocks[index].parameters())))
        out.append(("embedding", [visual.class_embedding, visual.positional_embedding, *visual.conv1.parameters(),
                                  *visual.ln_pre.parameters()]))
        return out

    return ViTTower(embed=embed, blocks=blocks, head=head, patch_size=tuple(visual.conv1.kernel_size),
                    image_size=tuple(image_size), embed_dim=int(embed_dim), weight=lambda: visual.conv1.weight,
                    parameter_groups=groups)


def _vit_tower(visual: nn.Module) -> ViTTower:
    return clip_vit_tower(visual, block_view, grid=tuple(visual.grid_size), image_size=tuple(visual.image_size),
                          embed_dim=int(visual.output_dim), dropout=visual.patch_dropout)


def _text_tower(model: nn.Module) -> CausalTextTower:
    parts = _text_parts(model)
    transformer = parts["transformer"]

    def blocks() -> list[BlockView]:
        return [block_view(b) for b in transformer.resblocks]

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        dtype = transformer.get_cast_dtype()
        return parts["token_embedding"](tokens).to(dtype) + parts["positional_embedding"][:tokens.shape[1]].to(dtype)

    def mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        full = parts["attn_mask"]
        return None if full is None else full[:length, :length].to(device=device, dtype=dtype)

    def head(pooled: torch.Tensor) -> torch.Tensor:
        pooled = parts["ln_final"](pooled)
        proj = parts["text_projection"]
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj

    return CausalTextTower(embed=embed, mask=mask, blocks=blocks, head=head,
                           pool=lambda tokens: pool_positions(tokens, parts["pool_type"], parts["eos_id"]),
                           context_length=int(parts["positional_embedding"].shape[0]),
                           weight=lambda: parts["token_embedding"].weight)


def build(model: nn.Module) -> CLIPAdapter:
    """The adapter for an open_clip model; ``UnsupportedModelError`` naming the reason otherwise."""
    reason = unsupported_reason(model)
    if reason:
        raise UnsupportedModelError(reason)
    image, kind = image_tower(model.visual, _vit_tower)
    return adapter_class(model)(model, image, _text_tower(model), f"{FAMILY} {kind}",
                       native_image=model.encode_image, native_text=model.encode_text,
                       logit_scale=model.logit_scale)


def recognises(model: nn.Module) -> bool:
    """Whether ``model`` belongs to this family (supported or not)."""
    try:
        CLIP, CustomTextCLIP, _, _ = _classes()
    except ImportError:
        return False
    return isinstance(model, (CLIP, CustomTextCLIP))
