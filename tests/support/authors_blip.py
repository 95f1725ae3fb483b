"""The Grad-ECLIP authors' BLIP code, step by step, and salesforce BLIP's module names for a transformers model.

github.com/Cyang-Zhao/Grad-Eclip, ``gradeclip_adaptation_blip.ipynb`` (salesforce BLIP's ``BLIP_ITM``), rewritten
here operation for operation (the same tensor operations in the same order, on the same modules):
``notebook_image`` is its ``blip_img_encoder`` (with ``num_heads_last = 1``), ``notebook_text`` its text feature
cell (``text_encoder`` in mode "text", ``text_proj`` of the first token, normalised) and ``notebook_map`` its
``grad_eclip(..., withksim=True)``. What the notebook fixes is kept: the image size 224 and patch 16 of its
positional grid (14 x 14: it slices the positional embedding to the number of tokens before it reshapes it, so
an image of fewer than 196 patches fails its assertion) and the first image of the batch in the map; so the
tests run it on a model of that size, one image at a time, on images of 196 patches or more. Left out: its
``print`` calls; the dropouts and drop paths are the identity in eval mode, as the notebook runs.

The notebook reads salesforce's ``VisionTransformer`` (``visual_encoder``: ``patch_embed.proj`` and
``patch_embed.norm``, ``cls_token``, ``pos_embed``, ``pos_drop``, ``blocks[i]`` with ``norm1``, ``attn.qkv``,
``attn.scale``, ``attn.attn_drop``, ``attn.proj``, ``attn.proj_drop``, ``drop_path``, ``norm2``, ``mlp``, and
``norm``). ``as_salesforce(model)`` gives a transformers ``BlipForImageTextRetrieval`` those names: a module
holding the model's own vision modules under salesforce's names, each block's ``forward`` computing what
salesforce's ``Block`` and ``Attention`` (BLIP's ``models/vit.py``) compute, and ``vision_proj``, ``text_proj``
and ``text_encoder`` as they are (the text side is transformers' own forward, with the padding mask).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

#: what the notebook fixes: the image size and patch of its positional grid
IMG_SIZE, PATCH_SIZE = 224, 16
NUM_HEADS_LAST = 1


# --------------------------------------------------------------------- salesforce names for transformers
class PatchEmbed(nn.Module):
    def __init__(self, proj: nn.Conv2d) -> None:
        super().__init__()
        self.proj, self.norm = proj, nn.Identity()  # BLIP's ViT has no patch norm


class Attention(nn.Module):
    """salesforce BLIP ``Attention``: the packed qkv, heads of C / num_heads, ``scale`` = head_dim ** -0.5."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.num_heads = int(attention.num_heads)
        self.scale = attention.scale
        self.qkv, self.proj = attention.qkv, attention.projection
        self.attn_drop, self.proj_drop = attention.dropout, nn.Identity()

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class Block(nn.Module):
    """salesforce BLIP ``Block``: x + drop_path(attn(norm1(x))), then x + drop_path(mlp(norm2(x)))."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.norm1, self.norm2, self.mlp = layer.layer_norm1, layer.layer_norm2, layer.mlp
        self.attn = Attention(layer.self_attn)
        self.drop_path = nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VisionTransformer(nn.Module):
    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        embeddings = vision.embeddings
        self.patch_embed = PatchEmbed(embeddings.patch_embedding)
        self.cls_token, self.pos_embed = embeddings.class_embedding, embeddings.position_embedding
        self.pos_drop = nn.Identity()
        self.blocks = nn.ModuleList([Block(layer) for layer in vision.encoder.layers])
        self.norm = vision.post_layernorm


class SalesforceBLIP(nn.Module):
    """A ``BlipForImageTextRetrieval``'s modules under salesforce ``BLIP_ITM``'s names (held, not copied)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.visual_encoder = VisionTransformer(model.vision_model)
        self.vision_proj, self.text_proj, self.text_encoder = model.vision_proj, model.text_proj, model.text_encoder
        self.itm_head = model.itm_head


def as_salesforce(model: nn.Module) -> SalesforceBLIP:
    return SalesforceBLIP(model).eval()


# ------------------------------------------------------------------------------------------- notebook
def notebook_image(model: SalesforceBLIP, x: torch.Tensor):
    """The notebook's ``blip_img_encoder``: returns (the (B, D) image feature, the (B, N, C) attention output of
    the last block in the graph, the detached (q, k, v) each (B, 1, N, C), the map size)."""
    img_size, patch_size, num_heads_last = IMG_SIZE, PATCH_SIZE, NUM_HEADS_LAST
    vit = model.visual_encoder
    x = vit.patch_embed.proj(x)
    B, C, feah, feaw = x.shape

    x = x.flatten(2).transpose(1, 2)  # BCHW -> BNC
    x = vit.patch_embed.norm(x)
    cls_tokens = vit.cls_token.expand(B, -1, -1)
    x = torch.cat((cls_tokens, x), dim=1)

    pos_embedding = vit.pos_embed[0, :x.size(1), :]
    tok_pos, img_pos = pos_embedding[:1, :], pos_embedding[1:, :]
    pos_h = img_size // patch_size
    pos_w = img_size // patch_size
    assert img_pos.size(0) == (pos_h * pos_w), "the size of pos_embedding does not match resolution"
    img_pos = img_pos.reshape(1, pos_h, pos_w, img_pos.shape[1]).permute(0, 3, 1, 2)
    img_pos = torch.nn.functional.interpolate(img_pos, size=(feah, feaw), mode='bicubic', align_corners=False)
    img_pos = img_pos.reshape(1, img_pos.shape[1], -1).permute(0, 2, 1)
    pos_embedding = torch.cat((tok_pos[None, ...], img_pos), dim=1)
    x = x + pos_embedding
    x = vit.pos_drop(x)

    for i, blk in enumerate(vit.blocks[:-1]):
        x = blk(x)

    x_in = x
    lastTR = vit.blocks[-1]
    x = lastTR.norm1(x_in)

    B, N, C = x.shape
    qkv = lastTR.attn.qkv(x).reshape(B, N, 3, num_heads_last, C // num_heads_last).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]

    attn = (q @ k.transpose(-2, -1)) * lastTR.attn.scale
    attn = attn.softmax(dim=-1)
    attn = lastTR.attn.attn_drop(attn)
    attn_out = (attn @ v).transpose(1, 2).reshape(B, N, C)

    x = lastTR.attn.proj(attn_out)
    x = lastTR.attn.proj_drop(x)
    x = x_in + lastTR.drop_path(x)
    x = x + lastTR.drop_path(lastTR.mlp(lastTR.norm2(x)))

    x = vit.norm(x)
    x = model.vision_proj(x[:, 0, :])
    return x, attn_out, (q.detach(), k.detach(), v.detach()), (feah, feaw)


def notebook_text(model: SalesforceBLIP, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The notebook's text feature: the text encoder (transformers' own forward, without image embeddings: the
    unimodal mode) with the caption's padding mask, ``text_proj`` of the first token, normalised."""
    text_output = model.text_encoder(input_ids, attention_mask=attention_mask, return_dict=True)
    return F.normalize(model.text_proj(text_output.last_hidden_state[:, 0, :]), dim=-1)


def notebook_map(c, q, k, v, att_output, map_size, withksim=True):
    """The notebook's ``grad_eclip``."""
    grad = torch.autograd.grad(c, att_output, retain_graph=True)[0]
    grad = grad.detach()
    grad_cls = grad[0, :1, :]
    if withksim:
        q_cls = q[0, 0, :1, :]
        k_patch = k[0, 0, 1:, :]
        q_cls = F.normalize(q_cls, dim=-1)
        k_patch = F.normalize(k_patch, dim=-1)
        cosine_qk = (q_cls * k_patch).sum(-1)
        cosine_qk = (cosine_qk - cosine_qk.min()) / (cosine_qk.max() - cosine_qk.min())
        emap_lastv = F.relu_((grad_cls * v[0, 0, 1:, :] * cosine_qk[:, None]).detach().sum(-1))
    else:
        emap_lastv = F.relu_((grad_cls * v[0, 0, 1:, :]).detach().sum(-1))
    return emap_lastv.reshape(*map_size)


def authors_maps(model: SalesforceBLIP, pixels: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The notebook run image by image and caption by caption: the (B, K) cosines of its image features with
    its text features and the (B, K, h, w) maps of each cosine."""
    text_feature = notebook_text(model, input_ids, attention_mask).detach()
    cosines, maps = [], []
    for image in pixels:
        img_feature, last_att_outputs, (q, k, v), map_size = notebook_image(model, image.unsqueeze(0))
        img_feature = F.normalize(img_feature, dim=-1)
        row = (img_feature @ text_feature.t())[0]
        cosines.append(row.detach())
        maps.append(torch.stack([notebook_map(row[j], q, k, v, last_att_outputs, map_size)
                                 for j in range(len(row))]))
    return torch.stack(cosines), torch.stack(maps)


__all__ = ["as_salesforce", "authors_maps", "notebook_image", "notebook_map", "notebook_text"]
