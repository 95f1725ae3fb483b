"""The Grad-ECLIP authors' ViT classifier code, step by step, and the transformers 4.x names it needs.

github.com/Cyang-Zhao/Grad-Eclip, ``gradeclip_adaptation_vit.ipynb`` (commit 02ad1f6, December 2024, written for
transformers 4.x), rewritten here operation for operation (the same tensor operations in the same order, on
the same modules): ``single_head_attention`` is its ``forward_attention``, ``notebook_forward`` its
``vit_classifier`` and ``notebook_map`` its ``grad_eclip`` (``withksim=True``). What the notebook fixes is
kept: ViT-B's width 768 in the one head's reshape (the scale is the module's own ``attention_head_size``),
the patch 16 of the map size, the first image of the batch in the map; so the tests run it on a model of
width 768 and patch 16, one image at a time. Left out: its ``print`` of the image size and the dropout of
the attention probabilities and the head mask (the identity and None in eval mode, as the notebook runs).

transformers 5.x renamed the modules the notebook reads (``vit.encoder.layer`` is ``vit.layers``; a layer's
``attention.attention.query/key/value`` are ``attention.q_proj/k_proj/v_proj``; ``attention.output.dense``
is ``attention.o_proj``; ``intermediate`` and ``output`` are ``mlp.fc1`` and ``mlp.fc2``; a layer returns
its hidden states, not a tuple). ``as_transformers4(model)`` gives a 5.x ``ViTForImageClassification`` the
4.x layout: a copy whose layers are ``Layer4`` modules holding the copy's own linear layers and norms under
the 4.x names, each module's ``forward`` computing what the eager modules of transformers 4.46.3 compute
(``ViTSelfAttention``, ``ViTSelfOutput``, ``ViTAttention``, ``ViTIntermediate``, ``ViTOutput``, ``ViTLayer``).
The copy's own ``forward`` is not used (its ``vit`` has no ``layers`` any more).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#: what the notebook fixes: ViT-B's width in its one head's reshape, and the patch size of its map
NOTEBOOK_WIDTH, NOTEBOOK_PATCH = 768, 16


# ------------------------------------------------------------------------------------- the notebook
def single_head_attention(attention_layer: nn.Module, x: torch.Tensor):
    """The notebook's ``forward_attention``: the 4.x self-attention's query, key and value of ``x`` as ONE head
    of width 768, logits divided by sqrt of the module's own (per-head) ``attention_head_size``, softmax,
    values; returns ((the (B, N, 768) context,), (q, k, v) each (B, 1, N, 768))."""
    def one_head(t: torch.Tensor) -> torch.Tensor:
        return t.view(t.size()[:-1] + (1, NOTEBOOK_WIDTH)).permute(0, 2, 1, 3)

    query = one_head(attention_layer.query(x))
    key = one_head(attention_layer.key(x))
    value = one_head(attention_layer.value(x))
    scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(attention_layer.attention_head_size)
    probs = nn.functional.softmax(scores, dim=-1)
    context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
    context = context.view(context.size()[:-2] + (attention_layer.all_head_size,))
    return (context,), (query, key, value)


def notebook_forward(model: nn.Module, x: torch.Tensor):
    """The notebook's ``vit_classifier`` on a model in the 4.x layout: the model's embedding (interpolated) and
    its layers but the last; the last recomputed: x = layernorm_before(x), one-head attention of x, its output
    projection, the residual added to that normalised x, layernorm_after, intermediate, output (with its
    residual); the final layernorm and the classifier on row 0. Returns the (B, L) logits, the (B, N, 768)
    context (in the graph), the detached (q, k, v) and the map size (height // 16, width // 16)."""
    height, width = x.shape[-2:]
    x = model.vit.embeddings(x, interpolate_pos_encoding=True)
    for layer in model.vit.encoder.layer[:-1]:
        x = layer(x, None, False)[0]
    last = model.vit.encoder.layer[-1]
    x = last.layernorm_before(x)
    context, (q, k, v) = single_head_attention(last.attention.attention, x)
    x = last.attention.output(context[0], x) + x
    out = last.output(last.intermediate(last.layernorm_after(x)), x)
    logits = model.classifier(model.vit.layernorm(out)[:, 0, :])
    return logits, context[0], (q.detach(), k.detach(), v.detach()), (int(height // NOTEBOOK_PATCH),
                                                                        int(width // NOTEBOOK_PATCH))


def notebook_map(score: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context: torch.Tensor,
                 map_size: tuple[int, int]) -> torch.Tensor:
    """The notebook's ``grad_eclip(..., withksim=True)``: the gradient of ``score`` with respect to the whole
    context, its class-token row of image 0, times the patch values, times the min-max normalised cosine of
    the class token's query with the patch keys, summed over channels, ReLU."""
    grad = torch.autograd.grad(score, context, retain_graph=True)[0].detach()
    grad_cls = grad[0, :1, :]
    q_cls = F.normalize(q[0, 0, :1, :], dim=-1)
    k_patch = F.normalize(k[0, 0, 1:, :], dim=-1)
    cosine_qk = (q_cls * k_patch).sum(-1)
    cosine_qk = (cosine_qk - cosine_qk.min()) / (cosine_qk.max() - cosine_qk.min())
    return F.relu_((grad_cls * v[0, 0, 1:, :] * cosine_qk[:, None]).detach().sum(-1)).reshape(*map_size)


# --------------------------------------------------------------- transformers 4.x names for a 5.x model
class SelfAttention4(nn.Module):
    """transformers 4.x ``ViTSelfAttention`` (eager) over a 5.x ``ViTAttention``'s q/k/v projections: per-head
    softmax(q k^T / sqrt(attention_head_size)) v, heads concatenated, returned as a 1-tuple."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        self.num_attention_heads = attention.num_attention_heads
        self.attention_head_size = attention.head_dim
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query, self.key, self.value = attention.q_proj, attention.k_proj, attention.v_proj
        self.dropout = nn.Dropout(attention.attention_dropout)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size()[:-1] + (self.num_attention_heads, self.attention_head_size)).permute(0, 2, 1, 3)

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        query, key = self.heads(self.query(hidden_states)), self.heads(self.key(hidden_states))
        value = self.heads(self.value(hidden_states))
        probs = self.dropout(torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(self.attention_head_size), -1))
        context = (probs @ value).permute(0, 2, 1, 3).contiguous()
        return (context.view(context.size()[:-2] + (self.all_head_size,)),)


class SelfOutput4(nn.Module):
    """transformers 4.x ``ViTSelfOutput``: the output projection and its dropout (the layer adds the residual)."""

    def __init__(self, dense: nn.Linear, dropout: float) -> None:
        super().__init__()
        self.dense, self.dropout = dense, nn.Dropout(dropout)

    def forward(self, hidden_states, input_tensor):
        return self.dropout(self.dense(hidden_states))


class Attention4(nn.Module):
    """transformers 4.x ``ViTAttention``: self-attention, then its output projection."""

    def __init__(self, attention: nn.Module, dropout: float) -> None:
        super().__init__()
        self.attention = SelfAttention4(attention)
        self.output = SelfOutput4(attention.o_proj, dropout)

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        return (self.output(self.attention(hidden_states, head_mask, output_attentions)[0], hidden_states),)


class Intermediate4(nn.Module):
    """transformers 4.x ``ViTIntermediate``: fc1 and the activation."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.dense, self.intermediate_act_fn = mlp.fc1, mlp.activation_fn

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class Output4(nn.Module):
    """transformers 4.x ``ViTOutput``: fc2, its dropout, and the residual ``input_tensor`` added."""

    def __init__(self, dense: nn.Linear, dropout: float) -> None:
        super().__init__()
        self.dense, self.dropout = dense, nn.Dropout(dropout)

    def forward(self, hidden_states, input_tensor):
        return self.dropout(self.dense(hidden_states)) + input_tensor


class Layer4(nn.Module):
    """transformers 4.x ``ViTLayer`` over a 5.x layer's modules: h = attention(layernorm_before(x)) + x, then
    output(intermediate(layernorm_after(h)), h), returned as a 1-tuple."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        dropout = layer.dropout.p
        self.attention = Attention4(layer.attention, dropout)
        self.intermediate = Intermediate4(layer.mlp)
        self.output = Output4(layer.mlp.fc2, dropout)
        self.layernorm_before, self.layernorm_after = layer.layernorm_before, layer.layernorm_after

    def forward(self, hidden_states, head_mask=None, output_attentions=False):
        attention = self.attention(self.layernorm_before(hidden_states), head_mask, output_attentions)[0]
        hidden_states = attention + hidden_states
        return (self.output(self.intermediate(self.layernorm_after(hidden_states)), hidden_states),)


class Encoder4(nn.Module):
    """transformers 4.x ``ViTEncoder``'s layers (``encoder.layer``)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


def as_transformers4(model: nn.Module) -> nn.Module:
    """A copy of a transformers 5.x ``ViTForImageClassification`` in the 4.x layout: ``vit.encoder.layer``
    of ``Layer4`` modules (the copy's own weights), ``vit.layers`` gone."""
    model = copy.deepcopy(model)
    vit = model.vit
    vit.encoder = Encoder4([Layer4(layer) for layer in vit.layers])
    del vit.layers
    return model.eval()


def authors_maps(model: nn.Module, pixels: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The notebook run image by image and class by class, on a model in the 4.x layout: the (B, L) logits of
    ``notebook_forward`` and the (B, K, h, w) maps of ``notebook_map`` of each class's logit."""
    logits, maps = [], []
    for image in pixels:
        out, context, (q, k, v), map_size = notebook_forward(model, image.unsqueeze(0))
        logits.append(out.detach()[0])
        maps.append(torch.stack([notebook_map(out[:, label], q, k, v, context, map_size) for label in classes]))
    return torch.stack(logits), torch.stack(maps)


__all__ = ["as_transformers4", "authors_maps", "notebook_forward", "notebook_map", "single_head_attention"]
