"""A slow, literal implementation of docs/method.md sections 1-4, written apart from the package.

Every head is computed in its own loop iteration, every prompt gets its own backward pass, and the
maps are assembled token by token. The package's batched code is checked against this. The explained
score may be any function of the embeddings (``score``: the cosine by default); Grad-CAM and LeGrad
(sections 6.3 and 6.11) are written the same way, over a forward that keeps every block's input, its
attention probabilities head by head and its output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _interpolate_pos(pos: torch.Tensor, native: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    if tuple(grid) == tuple(native):
        return pos
    width = pos.shape[1]
    patches = pos[1:].reshape(native[0], native[1], width).permute(2, 0, 1)[None]
    patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)[0]
    return torch.cat([pos[:1], patches.permute(1, 2, 0).reshape(-1, width)])


def _block(blk, x, explained: bool, official: bool, mask, token_index, probs=None):
    """One residual block, literally; returns the new x and (q, k, v, o_token) when explained. ``probs``: a
    list that gets each head's attention probabilities (B, N, N), in the graph."""
    width = x.shape[-1]
    h = blk.ln_1(x)
    w_in, b_in = blk.attn.in_proj_weight, blk.attn.in_proj_bias
    q = h @ w_in[:width].T + b_in[:width]
    k = h @ w_in[width:2 * width].T + b_in[width:2 * width]
    v = h @ w_in[2 * width:].T + b_in[2 * width:]
    heads = 1 if (explained and official) else blk.attn.num_heads
    d = width // heads
    outputs = []
    for head in range(heads):
        cols = slice(head * d, (head + 1) * d)
        logits = q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(d)
        if mask is not None:
            logits = logits + mask
        head_probs = torch.softmax(logits, dim=-1)
        if probs is not None:
            probs.append(head_probs)
        outputs.append(head_probs @ v[..., cols])
    o = torch.cat(outputs, dim=-1)
    inner = getattr(blk.attn, "ln_inner", None)  # open_clip's optional norm before the output projection
    captured = None
    if explained:
        rows = torch.arange(x.shape[0])
        o_token = o[rows, token_index]
        pieces = []
        for b in range(x.shape[0]):
            t = int(token_index[b])
            pieces.append(torch.cat([o[b, :t], o_token[b:b + 1], o[b, t + 1:]], dim=0))
        o = torch.stack(pieces)
        captured = (q.detach(), k.detach(), v.detach(), o_token)
    if inner is not None:
        o = inner(o)
    out = o @ blk.attn.out_proj.weight.T + blk.attn.out_proj.bias
    x = x + blk.ls_1(out)
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, captured


def patch_tokens(visual, pixels):
    """The tokens entering the first block, literally: the patches' embeddings after the class token, plus the
    positional embedding resampled to the picture's grid, through ln_pre; and that grid."""
    p = visual.patch_size[0]
    grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    cls = visual.class_embedding[None, None].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + _interpolate_pos(visual.positional_embedding, visual.grid_size, grid)
    return visual.ln_pre(x), grid


def pooled_heads(q, k, v, heads):
    """One query's attention over the tokens, head by head, literally: concat_h sum_i softmax_i(k_i^h . q^h /
    sqrt(d)) v_i^h, with q (C,) and k, v (N, C) split into ``heads`` heads of d = C / heads channels."""
    d = q.shape[-1] // heads
    pieces = []
    for head in range(heads):
        cols = slice(head * d, (head + 1) * d)
        a = torch.softmax(k[:, cols] @ q[cols] / math.sqrt(d), dim=0)
        pieces.append((a[:, None] * v[:, cols]).sum(dim=0))
    return torch.cat(pieces)


def image_forward(model, pixels, layers, official=False):
    """Image embedding and per-layer captures, literally. ``layers`` are absolute indices."""
    visual = model.visual
    x, grid = patch_tokens(visual, pixels)
    token_index = torch.zeros(x.shape[0], dtype=torch.long)
    captures = {}
    for i, blk in enumerate(visual.transformer.resblocks):
        x, cap = _block(blk, x, i in layers, official, None, token_index)
        if cap is not None:
            captures[i] = cap
    embedding = visual.ln_post(x[:, 0]) @ visual.proj
    return embedding, captures, grid


def text_forward(model, tokens, layers, official=False):
    x = model.token_embedding(tokens) + model.positional_embedding[:tokens.shape[1]]
    mask = model.attn_mask[:tokens.shape[1], :tokens.shape[1]]
    token_index = tokens.argmax(dim=-1)
    captures = {}
    for i, blk in enumerate(model.transformer.resblocks):
        x, cap = _block(blk, x, i in layers, official, mask, token_index)
        if cap is not None:
            captures[i] = cap
    x = model.ln_final(x)
    embedding = x[torch.arange(x.shape[0]), token_index] @ model.text_projection
    return embedding, captures, token_index


def _cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


@torch.no_grad()
def loosen(q, k, qk, proj):
    """The loosened spatial weight of one query ``q`` (C,) over keys ``k`` (N, C), one cosine at a time:
    min-max normalised (zero when all equal), q and k first through ``proj`` (the attention's output
    projection) for ``qk="out_proj"``."""
    if qk == "out_proj":
        q, k = q @ proj.weight.T + proj.bias, k @ proj.weight.T + proj.bias
    r = torch.stack([_cos(q, key) for key in k])
    span = float(r.max() - r.min())
    return (r - r.min()) / span if span > 0 else torch.zeros_like(r)


def _loosen(q, k, token, keys, out_proj, qk):
    return loosen(q[token], k[list(keys)], qk, out_proj)


def cosines(f, rows):
    """The cosines (T,) of one embedding ``f`` with every row of ``rows`` (T, D), one by one."""
    return torch.stack([_cos(f, row) for row in rows])


def image_maps(model, pixels, text_embeddings, layers, official=False, qk="raw", spatial=True, score=None):
    """Literal Grad-ECLIP image maps (B, K, h, w) and scores (B, K), one backward per prompt.

    ``score(f, text_embeddings) -> (K,)``: the explained scores of one image embedding (default: the
    cosine with each text embedding)."""
    with torch.enable_grad():
        embedding, captures, grid = image_forward(model, pixels, layers, official)
        blocks = model.visual.transformer.resblocks
        batch = pixels.shape[0]
        count = text_embeddings.shape[0] if score is None else len(score(embedding[0], text_embeddings))
        maps = torch.zeros(batch, count, grid[0] * grid[1])
        scores = torch.zeros(batch, count)
        for k in range(count):
            for b in range(batch):
                s = (_cos(embedding[b], text_embeddings[k]) if score is None
                     else score(embedding[b], text_embeddings)[k])
                scores[b, k] = s.detach()
                grads = torch.autograd.grad(s, [captures[l][3] for l in layers], retain_graph=True)
                for layer, grad in zip(layers, grads):
                    q, key, v, _ = captures[layer]
                    w = grad[b]
                    patches = list(range(1, v.shape[1]))
                    l = (_loosen(q[b], key[b], 0, patches, blocks[layer].attn.out_proj, qk) if spatial
                         else torch.ones(len(patches)))
                    for i, j in enumerate(patches):
                        maps[b, k, i] += torch.relu((w * l[i] * v[b, j]).sum())
    return maps.reshape(batch, count, *grid), scores


def text_relevance(model, tokens, image_embeddings, layers, official=False, qk="raw", score=None):
    """Literal Grad-ECLIP text relevance (B, K, L) and scores (B, K), one backward per image.

    ``score(text_embeddings, g) -> (K,)``: the explained scores of all K texts' embeddings against one image
    embedding ``g`` (default: each text's cosine with it); text k's relevance is its gradient with respect
    to text k's own tokens."""
    with torch.enable_grad():
        embedding, captures, token_index = text_forward(model, tokens, layers, official)
        blocks = model.transformer.resblocks
        count, length = tokens.shape
        batch = image_embeddings.shape[0]
        relevance = torch.zeros(batch, count, length)
        scores = torch.zeros(batch, count)
        for b in range(batch):
            for k in range(count):
                s = (_cos(embedding[k], image_embeddings[b]) if score is None
                     else score(embedding, image_embeddings[b])[k])
                scores[b, k] = s.detach()
                grads = torch.autograd.grad(s, [captures[l][3] for l in layers], retain_graph=True)
                m = torch.zeros(length)
                for layer, grad in zip(layers, grads):
                    q, key, v, _ = captures[layer]
                    l = _loosen(q[k], key[k], int(token_index[k]), range(length), blocks[layer].attn.out_proj, qk)
                    for j in range(length):
                        m[j] += (grad[k] * l[j] * v[k, j]).sum()
                relevance[b, k] = torch.relu(m)
    return relevance, scores


# ------------------------------------------------------------------------------- Grad-CAM and LeGrad
def image_states(model, pixels):
    """A literal forward of the image tower that keeps, in the graph, every block's input tokens (B, N, C),
    its attention probabilities head by head (a list of (B, N, N)) and its output tokens; returns the
    embedding, those three lists and the patch grid."""
    visual = model.visual
    x, grid = patch_tokens(visual, pixels)
    token_index = torch.zeros(x.shape[0], dtype=torch.long)
    inputs, probs, outputs = [], [], []
    for blk in visual.transformer.resblocks:
        inputs.append(x)
        heads = []
        x, _ = _block(blk, x, False, False, None, token_index, probs=heads)
        probs.append(heads)
        outputs.append(x)
    embedding = visual.ln_post(x[:, 0]) @ visual.proj
    return embedding, inputs, probs, outputs, grid


def grad_cam_maps(model, pixels, text_embeddings, layers, score):
    """Literal Grad-CAM (docs/method.md section 6.3, the model's variant) of the explained ``score(f,
    text_embeddings) -> (K,)``: per image and score, the gradient with respect to the tokens entering each
    block in ``layers`` (absolute), averaged over the patch tokens, dotted with each patch token, ReLU per
    block, summed. Maps (B, K, h, w), one backward per image and score."""
    with torch.enable_grad():
        embedding, inputs, _, _, grid = image_states(model, pixels)
        count = len(score(embedding[0], text_embeddings))
        maps = torch.zeros(pixels.shape[0], count, grid[0] * grid[1])
        for b in range(pixels.shape[0]):
            for k in range(count):
                s = score(embedding[b], text_embeddings)[k]
                grads = torch.autograd.grad(s, [inputs[layer] for layer in layers], retain_graph=True)
                for layer, grad in zip(layers, grads):
                    alpha = grad[b, 1:].mean(dim=0)
                    for i in range(grid[0] * grid[1]):
                        maps[b, k, i] += torch.relu((alpha * inputs[layer][b, 1 + i]).sum()).detach()
    return maps.reshape(pixels.shape[0], count, *grid)


def legrad_maps(model, pixels, text_embeddings, first, score):
    """Literal LeGrad (docs/method.md section 6.11) of the explained ``score``: for every block l from
    ``first`` (absolute) on, s_l = score of the block's output tokens averaged over all tokens through the
    final norm and projection; the map is the sum over l of ReLU(d s_l / d A_l), averaged over the heads and
    the query rows, at the patch keys. Maps (B, K, h, w), one backward per image, score and block."""
    visual = model.visual
    with torch.enable_grad():
        embedding, _, probs, outputs, grid = image_states(model, pixels)
        count = len(score(embedding[0], text_embeddings))
        maps = torch.zeros(pixels.shape[0], count, grid[0] * grid[1])
        for layer in range(first, len(outputs)):
            feature = visual.ln_post(outputs[layer].mean(dim=1)) @ visual.proj
            for b in range(pixels.shape[0]):
                for k in range(count):
                    s = score(feature[b], text_embeddings)[k]
                    grads = torch.autograd.grad(s, probs[layer], retain_graph=True)  # one (B, N, N) per head
                    relevance = torch.stack([g[b] for g in grads]).clamp(min=0).mean(dim=(0, 1))  # heads, queries
                    maps[b, k] += relevance[1:].detach()
    return maps.reshape(pixels.shape[0], count, *grid)


# ------------------------------------------------------------------------------- ResNet attention pool
class _Stop(Exception):
    pass


def input_of(module, run):
    """The first input ``module`` gets when ``run()`` calls the model's own forward, taken by a
    pre-hook that stops the forward there (nothing after the module runs)."""
    captured = {}

    def grab(_module, args):
        captured["x"] = args[0]
        raise _Stop

    handle = module.register_forward_pre_hook(grab)
    try:
        run()
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["x"]


def resnet_features(visual, pixels):
    """The input of the attention pool (B, C, h, w), taken from the model's own forward by a hook on
    the pool (the forward stops there, so any input size works)."""
    return input_of(visual.attnpool, lambda: visual(pixels))


def resnet_maps(model, pixels, text_embeddings, official=False, qk="raw"):
    """Literal Grad-ECLIP on a ResNet CLIP's attention pool (docs/method.md section 5.1), one image and one
    prompt at a time, every head in its own loop iteration. Returns maps (B, K, h, w), scores (B, K)."""
    visual = model.visual
    pool = visual.attnpool
    with torch.no_grad():
        features = resnet_features(visual, pixels)
    batch, width, gh, gw = features.shape
    side = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
    pos = _interpolate_pos(pool.positional_embedding, (side, side), (gh, gw))
    heads = 1 if official else pool.num_heads
    count = text_embeddings.shape[0]
    maps = torch.zeros(batch, count, gh * gw)
    scores = torch.zeros(batch, count)
    with torch.enable_grad():
        for b in range(batch):
            spatial = features[b].reshape(width, gh * gw).T  # (HW, C)
            tokens = torch.cat([spatial.mean(dim=0, keepdim=True), spatial]) + pos
            q = tokens[0] @ pool.q_proj.weight.T + pool.q_proj.bias
            k = tokens @ pool.k_proj.weight.T + pool.k_proj.bias
            v = tokens @ pool.v_proj.weight.T + pool.v_proj.bias
            o = pooled_heads(q, k, v, heads).detach().requires_grad_(True)
            f = o @ pool.c_proj.weight.T + pool.c_proj.bias
            with torch.no_grad():
                qq, kk = q, k
                if qk == "out_proj":
                    qq = qq @ pool.c_proj.weight.T + pool.c_proj.bias
                    kk = kk @ pool.c_proj.weight.T + pool.c_proj.bias
                r = torch.stack([_cos(qq, kk[i]) for i in range(1, gh * gw + 1)])
            span = float(r.max() - r.min())
            loose = (r - r.min()) / span if span > 0 else torch.zeros_like(r)
            for t in range(count):
                s = _cos(f, text_embeddings[t])
                scores[b, t] = s.detach()
                (grad,) = torch.autograd.grad(s, [o], retain_graph=True)
                for i in range(gh * gw):
                    maps[b, t, i] = torch.relu((grad * loose[i] * v[i + 1].detach()).sum())
    return maps.reshape(batch, count, gh, gw), scores
