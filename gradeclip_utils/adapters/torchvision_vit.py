"""torchvision ``VisionTransformer`` image classifiers (``vit_b_16``, ``vit_l_32``, ...).

Where the pieces are: ``conv_proj`` (the patch embedding, or a convolutional stem) -> the class token ->
``encoder.pos_embedding`` (added, then ``encoder.dropout``) -> ``encoder.layers`` (``EncoderBlock``: ``ln_1``,
``self_attention``, a batch-first ``nn.MultiheadAttention`` with a packed in-projection and ``out_proj``,
``dropout``, ``ln_2``, ``mlp``) -> ``encoder.ln`` -> row 0 -> ``heads`` (the logits; with a
``representation_size``, a tanh pre-logits layer first). The blocks before the first explained one are the
model's own calls.

torchvision's forward accepts only its own image size. For other grids the positional embedding is resampled
bicubically with ``align_corners=True``, as torchvision's own ``interpolate_embeddings`` resamples a
checkpoint for another image size (it differs from timm's antialiased and transformers' resampling). Official
mode is the authors' ViT notebook's recomputation (``classifier.NOTEBOOK_OFFICIAL``), as for the other
classifier families. Other torchvision classifiers are refused by name.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import UnsupportedModelError
from .classifier import NOTEBOOK_OFFICIAL, ClassifierAdapter, ClassifierTower
from .transformer import BlockView, fused_qkv

FAMILY = "torchvision ViT classifier"
PREFIX = "torchvision:"
OFFLINE_HINT = ("copy the weights (a state dict file) from a machine that has them and use "
                "load_model('torchvision:NAME', pretrained='/path/to/weights.pth')")
NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def recognises(model: nn.Module) -> bool:
    """A model of torchvision's zoo (``torchvision.models``); ``build`` says which it reads."""
    return type(model).__module__.startswith("torchvision.models")


def unsupported_reason(model: nn.Module) -> str | None:
    kind = type(model).__name__
    if kind != "VisionTransformer":
        return f"torchvision {kind} classifiers have no adapter (only VisionTransformer classifiers are read)"
    head = getattr(model.heads, "head", None)
    if not isinstance(head, nn.Linear):
        return "torchvision VisionTransformer without a linear classification head (heads.head)"
    for index, block in enumerate(model.encoder.layers):
        attention = getattr(block, "self_attention", None)
        if not isinstance(attention, nn.MultiheadAttention) or not attention.batch_first:
            return f"block {index}'s attention is not the batch-first nn.MultiheadAttention torchvision builds"
        if not attention._qkv_same_embed_dim or attention.bias_k is not None:
            return f"block {index}'s attention has separate q/k/v weights or extra key/value biases"
    return None


def _block(block: nn.Module) -> BlockView:
    """A torchvision ``EncoderBlock``: x + dropout(self_attention(ln_1(x))); then + mlp(ln_2(.))."""
    attention = block.self_attention
    return BlockView(module=block, ln_1=block.ln_1, qkv=fused_qkv(attention.in_proj_weight, attention.in_proj_bias),
                     heads=int(attention.num_heads), out_proj=attention.out_proj, ln_2=block.ln_2, mlp=block.mlp,
                     native=lambda x, mask: block(x), post_attn=block.dropout, official=NOTEBOOK_OFFICIAL)


def resample_positions(pos: torch.Tensor, native: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + h*w, C) positions for another grid as torchvision's ``interpolate_embeddings`` resamples them:
    the class token's row kept, the grid part bicubic with ``align_corners=True``."""
    if tuple(grid) == tuple(native):
        return pos
    width = pos.shape[-1]
    patches = pos[:, 1:].reshape(1, *native, width).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=True)
    return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], width)], dim=1)


def _tower(model: nn.Module) -> ClassifierTower:
    encoder, size, patch = model.encoder, int(model.image_size), int(model.patch_size)
    native = (size // patch, size // patch)

    def blocks() -> list[BlockView]:
        return [_block(block) for block in encoder.layers]

    def embed(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = model.conv_proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return encoder.dropout(x + resample_positions(encoder.pos_embedding, native, grid))

    def feature(pooled: torch.Tensor) -> torch.Tensor:
        x = encoder.ln(pooled)
        for name, layer in model.heads.named_children():  # a representation_size's pre-logits layer and tanh
            if name != "head":
                x = layer(x)
        return x

    def groups() -> list[tuple[str, list[nn.Parameter]]]:
        layers = encoder.layers
        out = [("head", [*encoder.ln.parameters(), *model.heads.parameters()])]
        out += [(f"block {i}", list(layers[i].parameters())) for i in reversed(range(len(layers)))]
        return out + [("embedding", [model.class_token, encoder.pos_embedding, *model.conv_proj.parameters()])]

    return ClassifierTower(embed=embed, blocks=blocks, feature=feature, linear=model.heads.head,
                           patch_size=(patch, patch), image_size=(size, size),
                           weight=lambda: encoder.layers[0].ln_1.weight, parameter_groups=groups)


def build(model: nn.Module) -> ClassifierAdapter:
    """The adapter for a torchvision ``VisionTransformer``; ``UnsupportedModelError`` naming the reason. A
    torchvision model does not carry its class names ("class i" until ``wrap_model(model, classes=...)``
    names them, e.g. with its weights' ``meta["categories"]``)."""
    reason = unsupported_reason(model)
    if reason:
        raise UnsupportedModelError(reason)
    return ClassifierAdapter(model, _tower(model), FAMILY, native_image=model, normalization=NORMALIZATION)


def load(spec: str, *, pretrained: str | None, device: torch.device, dtype: torch.dtype, cache_dir: str | None):
    """torchvision model ``spec`` ("vit_b_16") with random weights (``pretrained=None``), torchvision's weights
    (a weights tag such as "IMAGENET1K_V1" or "DEFAULT", downloaded once, with their own preprocessing) or a
    local state dict file. Returns (model, preprocess, None)."""
    import torchvision
    from torchvision import transforms

    from ..checkpoints import read_state_dict

    weights = None
    if pretrained is not None and Path(pretrained).is_file():
        model = torchvision.models.get_model(spec)
        model.load_state_dict(read_state_dict(pretrained))
    else:
        weights = None if pretrained is None else torchvision.models.get_model_weights(spec)[pretrained]
        model = torchvision.models.get_model(spec, weights=weights)
    model = model.to(device=device, dtype=dtype).eval()
    size = int(model.image_size)
    preprocess = weights.transforms() if weights is not None else transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR), transforms.CenterCrop(size),
        transforms.ToTensor(), transforms.Normalize(*NORMALIZATION)])
    return model, preprocess, None
