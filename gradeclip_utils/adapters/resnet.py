"""ResNet CLIP image towers (``ModifiedResNet``, as open_clip and OpenAI's ``clip`` package both build it).

The trunk (three stem convolutions, an average pool, four stages of bottlenecks) ends in an attention
pool: one query, the mean of the final feature map, attends over the mean token and the spatial
tokens (positional embedding added); its output after ``c_proj`` is the image embedding. The pool is
this tower's one attention "block" (block 0), and Grad-ECLIP transfers to it as docs/method.md section 5.1
defines it: the gradient with respect to the pooled attention output before ``c_proj``, the spatial
weight from cos(q_mean, k_i) over the spatial tokens (the mean token's own key excluded), the values
of the spatial tokens. The authors' code has no ResNet version: this is the project's transfer.

The trunk runs as the model's own modules; the pool is computed explicitly (the same maths as its
``multi_head_attention_forward``), with its positional embedding interpolated bicubically when the
feature grid is not the model's own (native resolution: sides are multiples of the total stride, 32).

What the baselines get here (the project's analogues, documented in README): raw attention, rollout
and GAME on the pool's attention (its only attention); Grad-CAM on the final feature map (the pool's
input, gradients through the mean token included: Grad-CAM as first defined for CNNs); MaskCLIP as
its authors run ResNets (``c_proj(v_proj(x_i))`` per position of the bare feature map); CLIP Surgery as its
authors run ResNets (the pool's attention with the values as queries and keys, ``surgery_features``). ITSM
(no per-token output), M2IB and LeGrad (no tokens after the pool) need what the pool does not have: they are
refused with the reason the tower gives (``lacking``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .base import BlockCapture, BlockSteps, ImageTower, Mode, TowerTrace, check_block_index
from .transformer import attention, interpolate_positions


def image_tower(visual: nn.Module, vit_tower: Callable[[nn.Module], ImageTower]) -> tuple[ImageTower, str]:
    """The tower of a CLIP image encoder that is either a ModifiedResNet or the family's ViT
    (``vit_tower`` builds that one), and its kind ("ResNet" or "ViT") for the family's name."""
    if is_modified_resnet(visual):
        return AttentionPoolTower(visual), "ResNet"
    return vit_tower(visual), "ViT"


def is_modified_resnet(module: nn.Module) -> bool:
    """A CLIP ``ModifiedResNet`` (open_clip's or OpenAI's), recognised by its structure."""
    pool = getattr(module, "attnpool", None)
    return (pool is not None and all(hasattr(pool, name) for name in ("q_proj", "k_proj", "v_proj", "c_proj",
                                                                       "positional_embedding", "num_heads"))
            and all(hasattr(module, f"layer{i}") for i in range(1, 5))
            and all(hasattr(module, name) for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "avgpool")))


class AttentionPoolTower(ImageTower):
    """A ``ModifiedResNet`` image tower with its attention pool as the one explained block."""

    kind = "ResNet attention-pool"
    captures = frozenset({"probs", "block_inputs", "value_path", "vv_attention", "parameter_groups", "joint_space"})
    lacking = {"block_outputs": "the ResNet attention pool leaves no tokens after it (only the pooled one)",
               "intermediate_tokens": "the ResNet attention pool leaves no tokens after it (only the pooled one)",
               "final_tokens": "the ResNet attention pool has no per-patch output tokens"}
    STRIDE = 32

    def __init__(self, visual: nn.Module) -> None:
        self.visual = visual

    # ----------------------------------------------------------------------------------- geometry
    @property
    def pool(self) -> nn.Module:
        return self.visual.attnpool

    @property
    def num_blocks(self) -> int:
        return 1

    @property
    def patch_size(self) -> tuple[int, int]:
        return (self.STRIDE, self.STRIDE)

    @property
    def native_grid(self) -> tuple[int, int]:
        side = round((self.pool.positional_embedding.shape[0] - 1) ** 0.5)
        return (side, side)

    @property
    def image_size(self) -> tuple[int, int]:
        side = self.native_grid[0] * self.STRIDE
        return (side, side)

    @property
    def embed_dim(self) -> int:
        return int(self.pool.c_proj.out_features)

    def weight(self) -> Tensor:
        return self.visual.conv1.weight

    def block_shape(self) -> tuple[int, int]:
        return int(self.pool.k_proj.in_features), int(self.pool.num_heads)

    def trunk_map(self) -> tuple[int, int] | None:
        last = self.visual.layer1[-1]  # the first stage, at a quarter of the picture's sides
        return int(last.bn3.num_features), 4

    # -------------------------------------------------------------------------------------- trunk
    def features(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """The final feature map as (B, h*w, C) tokens (no positional embedding), and its grid."""
        grid = self.check_pixels(pixels)
        visual = self.visual
        x = pixels.to(device=self.device, dtype=self.dtype)
        for i in (1, 2, 3):  # the stem; open_clip names its activations act1-3, OpenAI relu1-3
            activation = getattr(visual, f"act{i}", None) or getattr(visual, f"relu{i}")
            x = activation(getattr(visual, f"bn{i}")(getattr(visual, f"conv{i}")(x)))
        x = visual.avgpool(x)
        for stage in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = stage(x)
        if tuple(x.shape[-2:]) != grid:
            raise ValueError(f"the trunk gave a {tuple(x.shape[-2:])} feature grid for {tuple(pixels.shape[-2:])} "
                             f"pixels; expected {grid}")
        return x.flatten(2).transpose(1, 2), grid

    def pool_input(self, spatial: Tensor, grid: tuple[int, int]) -> Tensor:
        """The attention pool's tokens: the mean token, then the spatial tokens, positional embedding added."""
        tokens = torch.cat([spatial.mean(dim=1, keepdim=True), spatial], dim=1)
        pos = interpolate_positions(self.pool.positional_embedding, self.native_grid, grid)
        return tokens + pos.to(tokens.dtype)

    def _pool(self, tokens: Tensor, heads: int, all_rows: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        pool = self.pool
        q, k, v = pool.q_proj(tokens), pool.k_proj(tokens), pool.v_proj(tokens)
        out, probs = attention(q if all_rows else q[:, :1], k, v, heads, None)
        return q, k, v, out, probs

    # -------------------------------------------------------------------------------------- trace
    def trace(self, pixels: Tensor, layers: Sequence[int], *, mode: Mode = "faithful", keep_probs: bool = False,
              keep_block_inputs: bool = False, keep_final_tokens: bool = False,
              keep_block_outputs: bool = False) -> TowerTrace:
        if keep_block_outputs:
            raise self._missing("block_outputs")
        if keep_final_tokens:
            raise self._missing("final_tokens")
        if any(layer != 0 for layer in layers):
            raise ValueError(f"a ResNet CLIP has one attention block (the pool, block 0); got layers {list(layers)}")
        explained = bool(layers)
        with torch.no_grad():
            spatial, grid = self.features(pixels)
        batch = spatial.shape[0]
        # the leaf: row 0 holds the mean token's value but the mean is recomputed from rows 1: so that
        # gradients with respect to the feature map include the path through the mean token
        leaf = torch.cat([spatial.mean(dim=1, keepdim=True), spatial], dim=1).detach().requires_grad_(explained)
        tokens = self.pool_input(leaf[:, 1:], grid)
        heads = 1 if (explained and mode == "official") else int(self.pool.num_heads)
        q, k, v, out, probs = self._pool(tokens, heads, all_rows=keep_probs)
        token_out = out[:, 0]
        embedding = self.pool.c_proj(token_out)
        token_index = torch.zeros(batch, dtype=torch.long, device=embedding.device)
        captures = {}
        if explained:
            captures[0] = BlockCapture(
                layer=0, q=q.detach(), k=k.detach(), v=v.detach(), attn_output=out.detach(), token_output=token_out,
                heads=heads, out_proj_weight=self.pool.c_proj.weight.detach(),
                out_proj_bias=None if self.pool.c_proj.bias is None else self.pool.c_proj.bias.detach(),
                probs=probs if keep_probs else None, block_input=leaf if keep_block_inputs else None)
        return TowerTrace(embedding, token_index, captures, grid, None)

    # ------------------------------------------------------------------------- for the baselines
    @torch.no_grad()
    def tokens_before(self, pixels: Tensor, block: int) -> tuple[Tensor, tuple[int, int]]:
        check_block_index(block, 1)
        if block != 0:
            raise self._missing("intermediate_tokens")
        spatial, grid = self.features(pixels)
        return self.pool_input(spatial, grid), grid

    def embedding_from(self, tokens: Tensor, block: int) -> Tensor:
        check_block_index(block, 1)
        if block != 0:
            raise self._missing("intermediate_tokens")
        return self.pool.c_proj(self._pool(tokens, int(self.pool.num_heads), all_rows=False)[3][:, 0])

    def steps(self, pixels: Tensor, first: int) -> BlockSteps:
        check_block_index(first, 0)
        with torch.no_grad():
            spatial, grid = self.features(pixels)
            # contiguous, as the trace's leaf is: the mean token then sums in the same order (same numbers)
            tokens = self.pool_input(spatial.contiguous(), grid)

        def step(block: int, x: Tensor) -> tuple[Tensor, Tensor]:
            check_block_index(block, 0)
            out, probs = self._pool(x, int(self.pool.num_heads), all_rows=True)[3:]
            return self.pool.c_proj(out[:, 0]), probs

        return BlockSteps(tokens, 0, step, torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device), grid)

    @torch.no_grad()
    def value_path_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """MaskCLIP's ResNet head: ``c_proj(v_proj(x_i))`` on the bare feature map (its
        ``maskclip_head.py`` applies the two 1x1 projections without the pool's positional embedding)."""
        spatial, grid = self.features(pixels)
        embedding = self.embedding_from(self.pool_input(spatial, grid), 0)
        return embedding, self.pool.c_proj(self.pool.v_proj(spatial))

    @torch.no_grad()
    def surgery_features(self, pixels: Tensor, depth: int) -> tuple[Tensor, Tensor, Tensor]:
        """CLIP Surgery's ResNet form (its ``CS-RN`` models, ``clip_surgery_model.py``): the attention pool
        is rebuilt with the value projection as query, key and value (``qkv = [v_proj; v_proj; v_proj]``),
        so every token, the mean token included, becomes ``c_proj(softmax(v v^T / sqrt(d_head)) v)`` per
        head over the pool's tokens (positional embedding added; interpolated bicubically off the native
        grid, where the original interpolates bilinearly). Returns the model's own embedding (for the
        scores), the v-v pool's mean-token feature (what the feature surgery weighs the prompts with, as
        the original's class token) and its spatial features. ``depth``: the pool is the one block (1)."""
        if isinstance(depth, bool) or depth != 1:
            raise ValueError(f"a ResNet CLIP has one attention block (the pool): depth must be 1, got {depth!r}")
        spatial, grid = self.features(pixels)
        tokens = self.pool_input(spatial, grid)
        v = self.pool.v_proj(tokens)
        surgery = self.pool.c_proj(attention(v, v, v, int(self.pool.num_heads), None)[0])
        return self.embedding_from(tokens, 0), surgery[:, 0], surgery[:, 1:]

    def parameter_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        visual = self.visual
        groups = [("attention pool", list(self.pool.parameters()))]
        for index in (4, 3, 2, 1):
            groups.append((f"layer{index}", list(getattr(visual, f"layer{index}").parameters())))
        stem = [p for i in (1, 2, 3) for name in (f"conv{i}", f"bn{i}") for p in getattr(visual, name).parameters()]
        groups.append(("stem", stem))
        return groups
