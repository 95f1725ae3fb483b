"""The same random ViT classifier in every classifier family, and a literal implementation to compare with.

``timm_classifier`` builds a timm ``VisionTransformer`` classifier with realistic random parameters
(``realistic.realistic_init``, plus what it leaves: the class token and the positional embedding drawn like
embeddings, and the query and key rows of the fused q/k/v projection scaled by its ``qk_gain`` so that the
attention is peaked); ``to_hf`` writes its weights into a transformers ``ViTForImageClassification`` (names
and the split of the fused q/k/v projection only: the converter is written here, apart from the package).

``reference`` is the classifier and Grad-ECLIP written out from the weights, apart from the package and
from both libraries: patch convolution, class token, positional embedding (kept at the native grid, else
resampled bicubically as each library resamples it: timm with antialiasing, transformers without, torchvision
with ``align_corners=True``), pre-norm
blocks with explicit per-head attention, final norm of the class token, head; the map of class k is
ReLU(sum_c dS/do_c v_i[c] minmax(cos(q_cls, k_i))) over the patches for the last block's class-token
attention output o, S the logit z_k or the probability softmax(z)_k, the gradient taken by autograd one
image and one class at a time. Official mode: the last block recomputed as the authors' notebook does (one
head of width C, logits divided by sqrt(C / heads), the attention's residual on the normalised input).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from support.realistic import realistic_init

WIDTH, HEADS, PATCH = 768, 12, 16  # the authors' notebook hard-codes ViT-B's width 768 and patch 16


def timm_classifier(*, image_size: tuple[int, int] = (64, 64), layers: int = 2, classes: int = 10, seed: int = 0,
                    qk_gain: float = 1.5, name: str | None = None) -> nn.Module:
    """A timm class-token ViT classifier (width 768, 12 heads, patch 16) with realistic random parameters;
    ``name``: built through timm's registry entry of that name (one of width 768, 12 heads and patch 16, such
    as "deit_base_patch16_224"), with this size, depth and head."""
    from timm.models.vision_transformer import VisionTransformer

    options = dict(img_size=image_size, depth=layers, mlp_ratio=2.0, num_classes=classes)
    if name is None:
        model = VisionTransformer(patch_size=PATCH, embed_dim=WIDTH, num_heads=HEADS, class_token=True,
                                  global_pool="token", **options)
    else:
        import timm

        model = timm.create_model(name, pretrained=False, **options)
        assert (model.embed_dim, model.blocks[0].attn.num_heads) == (WIDTH, HEADS), name
    untouched = realistic_init(model, seed)
    assert sorted(untouched) == ["cls_token", "pos_embed"], untouched
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in (model.cls_token, model.pos_embed):
            parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.5)
        for block in model.blocks:
            block.attn.qkv.weight[:2 * WIDTH] *= qk_gain
    return model.eval()


def hf_config(model: nn.Module):
    from transformers import ViTConfig

    size = tuple(model.patch_embed.img_size)
    config = ViTConfig(hidden_size=WIDTH, num_hidden_layers=len(model.blocks), num_attention_heads=HEADS,
                       intermediate_size=model.blocks[0].mlp.fc1.out_features, hidden_act="gelu", layer_norm_eps=1e-6,
                       image_size=size if size[0] != size[1] else size[0], patch_size=PATCH, qkv_bias=True,
                       num_labels=model.head.out_features, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config._attn_implementation = "sdpa"
    return config


def to_hf(model: nn.Module) -> nn.Module:
    """The timm classifier's weights in a transformers 5.x ``ViTForImageClassification``."""
    from transformers import ViTForImageClassification

    hf = ViTForImageClassification(hf_config(model))
    state = {"vit.embeddings.cls_token": model.cls_token, "vit.embeddings.position_embeddings": model.pos_embed,
             "vit.embeddings.patch_embeddings.projection.weight": model.patch_embed.proj.weight,
             "vit.embeddings.patch_embeddings.projection.bias": model.patch_embed.proj.bias,
             "vit.layernorm.weight": model.norm.weight, "vit.layernorm.bias": model.norm.bias,
             "classifier.weight": model.head.weight, "classifier.bias": model.head.bias}
    for i, block in enumerate(model.blocks):
        prefix = f"vit.layers.{i}."
        for name, part in zip(("q_proj", "k_proj", "v_proj"), range(3)):
            state[f"{prefix}attention.{name}.weight"] = block.attn.qkv.weight[part * WIDTH:(part + 1) * WIDTH]
            state[f"{prefix}attention.{name}.bias"] = block.attn.qkv.bias[part * WIDTH:(part + 1) * WIDTH]
        for ours, theirs in (("attention.o_proj", block.attn.proj), ("mlp.fc1", block.mlp.fc1),
                             ("mlp.fc2", block.mlp.fc2), ("layernorm_before", block.norm1),
                             ("layernorm_after", block.norm2)):
            state[f"{prefix}{ours}.weight"], state[f"{prefix}{ours}.bias"] = theirs.weight, theirs.bias
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return hf.eval()


def to_torchvision(model: nn.Module) -> nn.Module:
    """The timm classifier's weights (square native size) in a torchvision ``VisionTransformer``."""
    from torchvision.models.vision_transformer import VisionTransformer

    size = tuple(model.patch_embed.img_size)
    assert size[0] == size[1], "torchvision's ViTs are square"
    tv = VisionTransformer(image_size=size[0], patch_size=PATCH, num_layers=len(model.blocks), num_heads=HEADS,
                           hidden_dim=WIDTH, mlp_dim=model.blocks[0].mlp.fc1.out_features,
                           num_classes=model.head.out_features)
    state = {"class_token": model.cls_token, "encoder.pos_embedding": model.pos_embed,
             "conv_proj.weight": model.patch_embed.proj.weight, "conv_proj.bias": model.patch_embed.proj.bias,
             "encoder.ln.weight": model.norm.weight, "encoder.ln.bias": model.norm.bias,
             "heads.head.weight": model.head.weight, "heads.head.bias": model.head.bias}
    for i, block in enumerate(model.blocks):
        prefix = f"encoder.layers.encoder_layer_{i}."
        state[f"{prefix}self_attention.in_proj_weight"] = block.attn.qkv.weight
        state[f"{prefix}self_attention.in_proj_bias"] = block.attn.qkv.bias
        for ours, theirs in (("self_attention.out_proj", block.attn.proj), ("mlp.0", block.mlp.fc1),
                             ("mlp.3", block.mlp.fc2), ("ln_1", block.norm1), ("ln_2", block.norm2)):
            state[f"{prefix}{ours}.weight"], state[f"{prefix}{ours}.bias"] = theirs.weight, theirs.bias
    tv.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return tv.eval()


# ------------------------------------------------------------------------------------- the literal code
#: how each library resamples the positional embedding for another grid: F.interpolate's options
RESAMPLING = {"timm": {"align_corners": False, "antialias": True}, "hf": {"align_corners": False},
              "torchvision": {"align_corners": True}}


def _positions(model: nn.Module, grid: tuple[int, int], resample: str) -> torch.Tensor:
    pos = model.pos_embed[0]
    native = tuple(model.patch_embed.grid_size)
    if tuple(grid) == native:
        return pos
    patches = pos[1:].reshape(1, *native, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=grid, mode="bicubic", **RESAMPLING[resample])
    return torch.cat([pos[:1], patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


def _layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, divisor: int) -> torch.Tensor:
    """(N, C) queries, keys and values, ``heads`` heads, logits divided by sqrt(divisor)."""
    d = q.shape[-1] // heads
    out = []
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        probs = torch.softmax(q[:, part] @ k[:, part].T / math.sqrt(divisor), dim=-1)
        out.append(probs @ v[:, part])
    return torch.cat(out, dim=-1)


def _forward(model: nn.Module, image: torch.Tensor, official: bool, resample: str):
    """One image: the logits (L,), the last block's class-token attention output o (C,) in the graph, and its
    q, k, v (N, C)."""
    embed = model.patch_embed.proj
    x = F.conv2d(image[None], embed.weight, embed.bias, stride=PATCH)[0]  # (C, h, w)
    grid = tuple(x.shape[1:])
    x = torch.cat([model.cls_token[0], x.flatten(1).T]) + _positions(model, grid, resample)
    blocks = list(model.blocks)
    for index, block in enumerate(blocks):
        h = _layer_norm(x, block.norm1)
        q, k, v = (h @ block.attn.qkv.weight.T + block.attn.qkv.bias).chunk(3, dim=-1)
        last = index == len(blocks) - 1
        if last and official:
            out = _attention(q, k, v, 1, WIDTH // HEADS)
        else:
            out = _attention(q, k, v, HEADS, WIDTH // HEADS)
        if last:
            o = out[0].detach().requires_grad_(True)
            out = torch.cat([o[None], out[1:]])
            record = (o, q.detach(), k.detach(), v.detach())
        base = h if (last and official) else x
        x = base + out @ block.attn.proj.weight.T + block.attn.proj.bias
        m = _layer_norm(x, block.norm2)
        m = F.gelu(m @ block.mlp.fc1.weight.T + block.mlp.fc1.bias) @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
        x = x + m
    z = _layer_norm(x[0], model.norm) @ model.head.weight.T + model.head.bias
    return z, *record


def reference(model: nn.Module, pixels: torch.Tensor, classes: list[int], *, official: bool = False,
              resample: str = "timm", probability: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B, L) logits and the (B, K, h, w) Grad-ECLIP maps of ``classes`` (last block) of the timm
    classifier ``model``'s weights, written out; ``resample``: whose resampling of the positional embedding
    ("timm", "hf" or "torchvision", ``RESAMPLING``)."""
    logits, maps = [], []
    for image in pixels:
        z, o, q, k, v = _forward(model, image, official, resample)
        grid = (image.shape[1] // PATCH, image.shape[2] // PATCH)
        score = torch.softmax(z, dim=-1) if probability else z
        cos = F.cosine_similarity(q[0][None], k[1:], dim=-1)
        spatial = (cos - cos.min()) / (cos.max() - cos.min())
        rows = []
        for label in classes:
            (grad,) = torch.autograd.grad(score[label], [o], retain_graph=True)
            rows.append(torch.relu((grad[None] * v[1:] * spatial[:, None]).sum(-1)).reshape(grid))
        logits.append(z.detach())
        maps.append(torch.stack(rows))
    return torch.stack(logits), torch.stack(maps)


__all__ = ["HEADS", "PATCH", "RESAMPLING", "WIDTH", "hf_config", "reference", "timm_classifier", "to_hf",
           "to_torchvision"]
