"""The family-neutral engine for transformer towers: ViT image towers and causal text towers.

A family's adapter file describes each residual attention block as a ``BlockView`` (which modules are
its norms, its q/k/v projections, its output projection and its MLP, and how to call the block as the
model does) and each tower as a few callables (embedding, head, pooling). The engine then runs a tower
block by block with the model's own modules. Blocks before the first explained one are the model's own
block calls under ``no_grad``; from the first explained block on, attention is computed explicitly
from the block's own projections, so that q, k, v and the attention output before the output
projection can be captured and differentiated. Nothing in the model is modified: no hooks, no
parameter changes.

A block is ``x + post_attn(out_proj(inner_norm(attention(ln_1(x))))); x + post_mlp(mlp(ln_2(x)))``:
``post_attn``/``post_mlp`` hold LayerScale (and a post-attention norm where a family has one),
``inner_norm`` a norm between the attention and its output projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (BlockCapture, BlockSteps, ImageTower, LinearHead, Mode, TextTower, TowerTrace,
                   check_block_index)


def identity(x: Tensor) -> Tensor:
    return x


@dataclass(frozen=True)
class Official:
    """How a family's official mode recomputes an explained block: as the Grad-ECLIP authors' code for
    that kind of model does. Always one head of width C; ``head_scale``: its attention logits scaled by
    the model's 1/sqrt(C/heads) (their ViT classifier notebook, which keeps the model's head size) instead
    of 1/sqrt(C) (their CLIP code); ``normed_residual``: the attention's residual added to the block's
    normalised input ln_1(x) (their ViT classifier notebook) instead of its input x."""

    head_scale: bool = False
    normed_residual: bool = False


#: the authors' CLIP code: one head scaled by 1/sqrt(C), the residual on the block's input
CLIP_OFFICIAL = Official()


@dataclass
class BlockView:
    """One pre-norm residual attention block, as a family exposes it (batch-first tensors throughout).

    ``qkv(h)`` gives the in-projected (q, k, v), each (B, N, C), of the normalised input ``h``;
    ``native(x, mask)`` runs the block exactly as the model does (the family converts the layout and
    the mask to what its block expects). ``out_proj`` is the block's output projection (an
    ``nn.Linear``: weight (C, C) and bias). ``official``: how official mode recomputes the block.
    """

    module: nn.Module
    ln_1: Callable[[Tensor], Tensor]
    qkv: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
    heads: int
    out_proj: nn.Module
    ln_2: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]
    native: Callable[[Tensor, Tensor | None], Tensor]
    inner_norm: Callable[[Tensor], Tensor] = identity
    post_attn: Callable[[Tensor], Tensor] = identity
    post_mlp: Callable[[Tensor], Tensor] = identity
    official: Official = CLIP_OFFICIAL

    def values(self, x: Tensor) -> Tensor:
        """The in-projected values of ``ln_1(x)``."""
        return self.qkv(self.ln_1(x))[2]

    def project(self, out: Tensor) -> Tensor:
        """The attention output (before the output projection) as the block adds it to the residual."""
        return self.post_attn(self.out_proj(self.inner_norm(out)))

    def finish(self, x: Tensor, out: Tensor) -> Tensor:
        """The rest of the block after the attention: residual, MLP and its residual."""
        x = x + self.project(out)
        return x + self.post_mlp(self.mlp(self.ln_2(x)))


def fused_qkv(weight: Tensor, bias: Tensor | None) -> Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]:
    """q, k, v from a packed (3C, C) in-projection (``nn.MultiheadAttention`` and its look-alikes)."""

    def qkv(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = F.linear(h, weight, bias).chunk(3, dim=-1)
        return q, k, v

    return qkv


def interpolate_positions(pos: Tensor, native: tuple[int, int], grid: tuple[int, int], prefix: int = 1) -> Tensor:
    """A (prefix + h*w, C) positional embedding for another grid: the ``prefix`` rows (class or pooled
    token) kept, the grid part interpolated bicubically (align_corners=False) from ``native``."""
    if tuple(grid) == tuple(native):
        return pos
    head, patches = pos[:prefix], pos[prefix:]
    width = pos.shape[-1]
    patches = patches.float().reshape(1, native[0], native[1], width).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width).to(pos.dtype)
    return torch.cat([head, patches], dim=0)


def causal_prefix(mask: Tensor | None, token_index: Tensor, length: int) -> int | None:
    """Rows up to the last pooled token when ``mask`` is causal and rows follow it; else None."""
    if mask is None or mask.shape[-2:] != (length, length):
        return None
    prefix = int(token_index.max()) + 1
    if prefix >= length:
        return None
    above = torch.ones(length, length, dtype=torch.bool, device=mask.device).triu(1)
    causal = bool(torch.isneginf(mask[above]).all()) and bool(torch.isfinite(mask[~above]).all())
    return prefix if causal else None


def run_native(blocks: Sequence[BlockView], x: Tensor, mask: Tensor | None) -> Tensor:
    for block in blocks:
        x = block.native(x, mask)
    return x


def run_blocks(blocks: Sequence[BlockView], x: Tensor, mask: Tensor | None, layers: Sequence[int], mode: Mode,
               token_index: Tensor, *, keep_probs: bool, keep_block_inputs: bool, keep_final_tokens: bool,
               keep_block_outputs: bool = False
               ) -> tuple[Tensor, dict[int, BlockCapture], Tensor | None, dict[int, Tensor]]:
    """Run all blocks; return the pooled token's row after the last block, captures, final tokens and
    (``keep_block_outputs``) the tokens leaving each explained block, all rows, with their graph.

    Under a causal mask (the text tower) the rows after the last pooled token reach no pooled
    token, so when nothing but the captures and the embedding is asked for, the graph (and so the
    backward pass) covers only the rows up to the last pooled token; q, k, v and the attention
    output of every row come from a second pass without a graph. Same numbers, and a backward
    pass that skips the padding after the end tokens.
    """
    explained = set(layers)
    first = min(explained) if explained else len(blocks)
    with torch.no_grad():
        x = run_native(blocks[:first], x, mask)
    prefix = None
    if explained and not (keep_probs or keep_block_inputs or keep_final_tokens or keep_block_outputs):
        prefix = causal_prefix(mask, token_index, x.shape[1])
    if prefix is None:
        return _explicit_blocks(blocks, first, len(blocks), x, mask, explained, mode, token_index,
                                keep_probs=keep_probs, keep_block_inputs=keep_block_inputs,
                                keep_final_tokens=keep_final_tokens, keep_block_outputs=keep_block_outputs)
    with torch.no_grad():
        _, whole, _, _ = _explicit_blocks(blocks, first, max(explained) + 1, x, mask, explained, mode, token_index,
                                          keep_probs=False, keep_block_inputs=False, keep_final_tokens=False)
    pooled, captures, final_tokens, _ = _explicit_blocks(
        blocks, first, len(blocks), x[:, :prefix], mask[:prefix, :prefix], explained, mode, token_index,
        keep_probs=False, keep_block_inputs=False, keep_final_tokens=False)
    for index, capture in captures.items():
        capture.q, capture.k, capture.v = whole[index].q, whole[index].k, whole[index].v
        capture.attn_output = whole[index].attn_output
    return pooled, captures, final_tokens, {}


def _explicit_blocks(blocks: Sequence[BlockView], first: int, stop: int, x: Tensor, mask: Tensor | None,
                     explained: set[int], mode: Mode, token_index: Tensor, *, keep_probs: bool,
                     keep_block_inputs: bool, keep_final_tokens: bool, keep_block_outputs: bool = False
                     ) -> tuple[Tensor, dict[int, BlockCapture], Tensor | None, dict[int, Tensor]]:
    """Blocks ``first`` to ``stop - 1`` computed explicitly: the pooled token's row, captures, final
    tokens and (``keep_block_outputs``) every explained block's output tokens."""
    # a leaf that requires grad: the captures stay differentiable whatever the parameters' flags
    x = x.detach().requires_grad_(bool(explained))
    rows = torch.arange(x.shape[0], device=x.device)
    captures: dict[int, BlockCapture] = {}
    outputs: dict[int, Tensor] = {}
    final_tokens = None
    for index in range(first, stop):
        last = index == len(blocks) - 1
        keep_output = keep_block_outputs and index in explained
        x, capture = explicit_block(
            blocks[index], index, x, mask, rows, token_index,
            capture=index in explained, mode=mode, token_only=last and not (keep_final_tokens or keep_output),
            keep_probs=keep_probs, keep_input=keep_block_inputs)
        if capture is not None:
            captures[index] = capture
        if keep_output:
            outputs[index] = x
    if x.ndim == 3:
        final_tokens = x if keep_final_tokens else None
        x = x[rows, token_index]
    return x, captures, final_tokens, outputs


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None,
              scale_dim: int | None = None) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention of (B, n, C) queries over (B, N, C) keys and values with ``heads``
    heads (logits divided by sqrt(C/heads), or by sqrt(``scale_dim``) when given; ``mask`` additive, (n, N)
    for every sequence or (B, n, N) per sequence, n = 1 for a key mask): the output (B, n, C),
    heads concatenated, and the probabilities (B, heads, n, N) (softmax in float32, as the models compute
    it)."""
    batch, length, width = q.shape
    head_dim = width // heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)

    logits = split(q) @ split(k).transpose(-1, -2) / math.sqrt(head_dim if scale_dim is None else scale_dim)
    if mask is not None:
        logits = logits + mask.unsqueeze(-3)
    probs = logits.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
    out = (probs @ split(v)).transpose(1, 2).reshape(batch, length, width)
    return out, probs


def explicit_block(block: BlockView, index: int, x: Tensor, mask: Tensor | None, rows: Tensor, token_index: Tensor, *,
                   capture: bool, mode: Mode, token_only: bool, keep_probs: bool, keep_input: bool
                   ) -> tuple[Tensor, BlockCapture | None]:
    """One residual attention block computed explicitly (same maths as the model's block).

    With ``token_only`` only the pooled token's row leaves the block (the last block: nothing else
    reaches the embedding). An explained block splits the pooled token's attention-output row into
    its own tensor so that gradients with respect to it are the partial derivatives of docs/method.md section 2.1.
    Official mode recomputes an explained block with one head of width C, as the authors' code for the
    family does (``block.official``: the scale of its logits, where its residual is added).
    """
    batch, length, width = x.shape
    normed = block.ln_1(x)
    q, k, v = block.qkv(normed)
    official = capture and mode == "official"
    heads = 1 if official else block.heads
    scale_dim = q.shape[-1] // block.heads if official and block.official.head_scale else None
    all_rows = capture or not token_only
    query = q if all_rows else q[rows, token_index].unsqueeze(1)
    # an (L, L) mask has a row per query; a (B, 1, L) key mask (padding) is the same for every query
    key_mask = mask is not None and mask.ndim == 3 and mask.shape[-2] == 1
    row_mask = None if mask is None else (mask if all_rows or key_mask else mask[token_index].unsqueeze(1))
    out, probs = attention(query, k, v, heads, row_mask, scale_dim)
    residual = normed if official and block.official.normed_residual else x

    record = None
    if capture:
        token_out = out[rows, token_index]
        record = BlockCapture(
            layer=index, q=q.detach(), k=k.detach(), v=v.detach(), attn_output=out.detach(),
            token_output=token_out, heads=heads, out_proj_weight=block.out_proj.weight.detach(),
            out_proj_bias=None if block.out_proj.bias is None else block.out_proj.bias.detach(),
            probs=probs if keep_probs else None, block_input=x if keep_input else None)
        if token_only:
            out = token_out.unsqueeze(1)
        else:
            is_token = torch.zeros(batch, length, 1, dtype=torch.bool, device=x.device)
            is_token[rows, token_index] = True
            out = torch.where(is_token, token_out.unsqueeze(1), out)
    if token_only:
        residual = residual[rows, token_index]
        out = out[:, 0]
    return block.finish(residual, out), record


def block_steps(blocks: Sequence[BlockView], x: Tensor, mask: Tensor | None, first: int, token_index: Tensor,
                head: Callable[[Tensor], Tensor], grid: tuple[int, int] | None = None) -> BlockSteps:
    """``BlockSteps`` over ``blocks`` from ``first`` on, ``x`` entering block 0: the blocks before ``first``
    run natively without a graph; each step is ``explicit_block`` as ``run_blocks`` runs an explained
    block (the last one on the pooled row only, then ``head``)."""
    with torch.no_grad():
        x = run_native(blocks[:first], x, mask)
    rows = torch.arange(x.shape[0], device=x.device)
    last = len(blocks) - 1

    def step(index: int, tokens: Tensor) -> tuple[Tensor, Tensor]:
        out, capture = explicit_block(blocks[index], index, tokens, mask, rows, token_index, capture=True,
                                      mode="faithful", token_only=index == last, keep_probs=True, keep_input=False)
        return (head(out) if index == last else out), capture.probs

    return BlockSteps(x, first, step, token_index, grid)


def views_shape(blocks: Sequence[BlockView]) -> tuple[int, int]:
    """(width, heads) of the last block: the residual stream's width (its output projection's rows) and its heads."""
    view = blocks[-1]
    return int(view.out_proj.weight.shape[0]), int(view.heads)


# ---------------------------------------------------------------------------------------- towers
class ViTTower(ImageTower):
    """A ViT image tower: ``embed`` (pixels and grid -> the first block's input, class token first),
    the blocks, and ``head`` (the class token's final norm and projection). ``blocks`` is called
    on every use, so the views always describe the model's current modules."""

    kind = "ViT"
    captures = frozenset({"probs", "block_inputs", "block_outputs", "final_tokens", "token_head", "intermediate_tokens",
                          "value_path", "vv_attention", "parameter_groups", "joint_space"})

    def __init__(self, *, embed: Callable[[Tensor, tuple[int, int]], Tensor], blocks: Callable[[], list[BlockView]],
                 head: Callable[[Tensor], Tensor], patch_size: tuple[int, int], image_size: tuple[int, int],
                 embed_dim: int, weight: Callable[[], Tensor],
                 parameter_groups: Callable[[], list[tuple[str, list[nn.Parameter]]]]) -> None:
        self._embed, self._blocks, self._head = embed, blocks, head
        self._patch_size, self._image_size, self._embed_dim = tuple(patch_size), tuple(image_size), int(embed_dim)
        self._weight, self._groups = weight, parameter_groups

    @property
    def num_blocks(self) -> int:
        return len(self._blocks())

    @property
    def patch_size(self) -> tuple[int, int]:
        return self._patch_size

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def weight(self) -> Tensor:
        return self._weight()

    def block_shape(self) -> tuple[int, int]:
        return views_shape(self._blocks())

    def tokens(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """The first block's input for (B, 3, H, W) pixels, and the patch grid."""
        grid = self.check_pixels(pixels)
        return self._embed(pixels.to(device=self.device, dtype=self.dtype), grid), grid

    def trace(self, pixels: Tensor, layers: Sequence[int], *, mode: Mode = "faithful", keep_probs: bool = False,
              keep_block_inputs: bool = False, keep_final_tokens: bool = False,
              keep_block_outputs: bool = False) -> TowerTrace:
        with torch.no_grad():
            x, grid = self.tokens(pixels)
        token_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        pooled, captures, final, outputs = run_blocks(
            self._blocks(), x, None, layers, mode, token_index, keep_probs=keep_probs,
            keep_block_inputs=keep_block_inputs, keep_final_tokens=keep_final_tokens,
            keep_block_outputs=keep_block_outputs)
        embedding, linear_head = self.head_outputs(pooled)
        return TowerTrace(embedding, token_index, captures, grid, final, outputs, linear_head)

    def head_outputs(self, pooled: Tensor) -> tuple[Tensor, LinearHead | None]:
        """The embedding of the (B, C) pooled rows, and the ``LinearHead`` it is a map of where the tower
        declares one (None here: a CLIP's projection is no narrower than its width)."""
        return self._head(pooled), None

    def steps(self, pixels: Tensor, first: int) -> BlockSteps:
        blocks = self._blocks()
        with torch.no_grad():
            x, grid = self.tokens(pixels)
        token_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return block_steps(blocks, x, None, first, token_index, self._head, grid)

    def head(self, tokens: Tensor) -> Tensor:
        return self._head(tokens)

    @torch.no_grad()
    def tokens_before(self, pixels: Tensor, block: int) -> tuple[Tensor, tuple[int, int]]:
        blocks = self._blocks()
        block = check_block_index(block, len(blocks))
        x, grid = self.tokens(pixels)
        return run_native(blocks[:block], x, None), grid

    def embedding_from(self, tokens: Tensor, block: int) -> Tensor:
        blocks = self._blocks()
        block = check_block_index(block, len(blocks))
        return self._head(run_native(blocks[block:], tokens, None)[:, 0])

    @torch.no_grad()
    def value_path_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        blocks = self._blocks()
        last = len(blocks) - 1
        x, _ = self.tokens_before(pixels, last)
        block = blocks[last]
        embedding = self.embedding_from(x, last)
        u = x[:, 1:] + block.project(block.values(x[:, 1:]))
        u = u + block.post_mlp(block.mlp(block.ln_2(u)))
        return embedding, self._head(u)

    @torch.no_grad()
    def surgery_features(self, pixels: Tensor, depth: int) -> tuple[Tensor, Tensor, Tensor]:
        blocks = self._blocks()
        total = len(blocks)
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= total:
            raise ValueError(f"depth must be an int in [1, {total}], got {depth!r}")
        start = total - depth
        x, _ = self.tokens_before(pixels, start)
        path = x
        for block in blocks[start:]:
            v = block.values(x)
            out, _ = attention(v, v, v, block.heads, None)
            path = path + block.project(out)
            x = block.native(x, None)
        embedding = self._head(x[:, 0])  # the original path's class token: the model's embedding
        return embedding, embedding, self._head(path[:, 1:])

    def parameter_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        return self._groups()


class CausalTextTower(TextTower):
    """A transformer text tower: ``embed`` (token ids -> the first block's input), ``mask(length)``
    (the additive attention mask, or None), the blocks, ``head`` (final norm and projection of the
    pooled row) and ``pool`` (the pooled position of each sequence); ``weight`` is the token embedding
    matrix (its rows are the vocabulary)."""

    kind = "transformer text"
    captures = frozenset({"probs", "block_inputs", "block_outputs", "final_tokens", "intermediate_tokens"})

    def __init__(self, *, embed: Callable[[Tensor], Tensor], mask: Callable[[int, torch.dtype, torch.device], Tensor | None],
                 blocks: Callable[[], list[BlockView]], head: Callable[[Tensor], Tensor],
                 pool: Callable[[Tensor], Tensor], context_length: int, weight: Callable[[], Tensor]) -> None:
        self._embed, self._mask, self._blocks, self._head, self._pool = embed, mask, blocks, head, pool
        self._context_length, self._weight = int(context_length), weight

    @property
    def num_blocks(self) -> int:
        return len(self._blocks())

    @property
    def context_length(self) -> int:
        return self._context_length

    def weight(self) -> Tensor:
        return self._weight()

    def block_shape(self) -> tuple[int, int]:
        return views_shape(self._blocks())

    @property
    def vocab_size(self) -> int:
        return int(self._weight().shape[0])

    def token_index(self, tokens: Tensor) -> Tensor:
        return self._pool(tokens)

    def inputs(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """The first block's input and the attention mask for (K, L) token ids."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (K, L), got {tuple(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"token sequences of length {length} exceed the context length {self.context_length}")
        x = self._embed(tokens.to(self.device))
        return x, self._mask(length, x.dtype, x.device)

    def trace(self, tokens: Tensor, layers: Sequence[int], *, mode: Mode = "faithful", keep_probs: bool = False,
              keep_block_inputs: bool = False, keep_final_tokens: bool = False,
              keep_block_outputs: bool = False) -> TowerTrace:
        with torch.no_grad():
            x, mask = self.inputs(tokens)
        token_index = self.token_index(tokens.to(x.device))
        pooled, captures, final, outputs = run_blocks(
            self._blocks(), x, mask, layers, mode, token_index, keep_probs=keep_probs,
            keep_block_inputs=keep_block_inputs, keep_final_tokens=keep_final_tokens,
            keep_block_outputs=keep_block_outputs)
        return TowerTrace(self._head(pooled), token_index, captures, None, final, outputs)

    def steps(self, tokens: Tensor, first: int) -> BlockSteps:
        with torch.no_grad():
            x, mask = self.inputs(tokens)
        return block_steps(self._blocks(), x, mask, first, self.token_index(tokens.to(x.device)), self._head)

    @torch.no_grad()
    def tokens_before(self, tokens: Tensor, block: int) -> Tensor:
        blocks = self._blocks()
        block = check_block_index(block, len(blocks))
        x, mask = self.inputs(tokens)
        return run_native(blocks[:block], x, mask)

    def embedding_from(self, hidden: Tensor, tokens: Tensor, block: int) -> Tensor:
        blocks = self._blocks()
        block = check_block_index(block, len(blocks))
        if hidden.shape[:2] != tokens.shape:
            raise ValueError(f"hidden states {tuple(hidden.shape)} do not match tokens {tuple(tokens.shape)}")
        mask = self._mask(tokens.shape[1], hidden.dtype, hidden.device)
        x = run_native(blocks[block:], hidden, mask)
        index = self.token_index(tokens.to(x.device))
        return self._head(x[torch.arange(x.shape[0], device=x.device), index])


def pool_positions(tokens: Tensor, pool_type: str, eos_id: int | None = None) -> Tensor:
    """The pooled position of each (K, L) sequence: "argmax" (the largest id: CLIP's end token),
    "eos" (the first ``eos_id``), "last" or "first"."""
    if pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if pool_type == "eos":
        if eos_id is None:
            raise ValueError("pooling at the end token needs its id")
        return (tokens == eos_id).int().argmax(dim=-1)
    if pool_type == "last":
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)
    if pool_type == "first":
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    raise ValueError(f"unknown text pooling {pool_type!r}")
