"""Adapter for open_clip CLIP models with a ViT image tower and a transformer text tower.

The adapter re-runs the towers block by block with the model's own modules. Blocks before the first
explained one are the model's own ``ResidualAttentionBlock`` calls under ``no_grad``; from the first
explained block on, attention is computed explicitly from the block's own in-projection so that q, k,
v and the attention output before ``out_proj`` can be captured and differentiated. Nothing in the
model is modified: no hooks, no parameter changes. Both transformer batch layouts are handled, and
LayerScale (``ls_1``/``ls_2``) is applied as the model applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BlockCapture, CLIPAdapter, Mode, TowerTrace


def _open_clip_classes():
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transformer import ResidualAttentionBlock, TextTransformer, VisionTransformer

    return CLIP, CustomTextCLIP, ResidualAttentionBlock, TextTransformer, VisionTransformer


@dataclass
class _TextTower:
    """The pieces of a text tower, wherever the model keeps them."""

    token_embedding: nn.Embedding
    positional_embedding: Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Tensor | nn.Linear | None
    attn_mask: Tensor | None
    pool_type: str
    eos_id: int | None


def _text_tower(model: nn.Module) -> _TextTower:
    CLIP, CustomTextCLIP, *_ = _open_clip_classes()
    if isinstance(model, CustomTextCLIP):
        text = model.text
        return _TextTower(text.token_embedding, text.positional_embedding, text.transformer, text.ln_final,
                          text.text_projection, text.attn_mask, text.pool_type, getattr(text, "eos_id", None))
    return _TextTower(model.token_embedding, model.positional_embedding, model.transformer, model.ln_final,
                      model.text_projection, model.attn_mask, model.text_pool_type,
                      getattr(model, "text_eos_id", None))


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this adapter cannot explain ``model`` (None when it can)."""
    CLIP, CustomTextCLIP, Block, TextTransformer, VisionTransformer = _open_clip_classes()
    if not isinstance(model, (CLIP, CustomTextCLIP)):
        return f"not an open_clip CLIP model ({type(model).__name__})"
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        return f"image tower {type(visual).__name__} is not an open_clip VisionTransformer"
    if visual.attn_pool is not None:
        return "image tower pools with an attentional pooler (CoCa-style), not a class token"
    if visual.pool_type != "tok":
        return f"image tower pools with '{visual.pool_type}', not the class token"
    for tower_name, transformer in (("image", visual.transformer), ("text", None)):
        if transformer is None:
            if isinstance(model, CustomTextCLIP) and not isinstance(model.text, TextTransformer):
                return f"text tower {type(model.text).__name__} is not an open_clip TextTransformer"
            if isinstance(model, CustomTextCLIP) and model.text.cls_emb is not None:
                return "text tower appends a class embedding (CoCa-style)"
            transformer = _text_tower(model).transformer
        for block in transformer.resblocks:
            if type(block) is not Block or hasattr(block, "ln_1_kv"):
                return f"{tower_name} tower uses {type(block).__name__} blocks, not the standard ResidualAttentionBlock"
            if not isinstance(block.attn, nn.MultiheadAttention) or block.attn.in_proj_weight is None:
                return f"{tower_name} tower attention has no packed in-projection"
    if _text_tower(model).pool_type not in ("argmax", "last", "first", "eos"):
        return f"text tower pools with '{_text_tower(model).pool_type}'"
    return None


class OpenClipViTAdapter(CLIPAdapter):
    """open_clip ``CLIP``/``CustomTextCLIP`` with ``VisionTransformer`` (class-token pooling)."""

    family = "open_clip ViT"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.visual = model.visual
        self.text = _text_tower(model)

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return unsupported_reason(model) is None

    # ----------------------------------------------------------------------------------- geometry
    @property
    def num_image_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def num_text_blocks(self) -> int:
        return len(self.text.transformer.resblocks)

    @property
    def image_heads(self) -> int:
        return self.visual.transformer.resblocks[0].attn.num_heads

    @property
    def text_heads(self) -> int:
        return self.text.transformer.resblocks[0].attn.num_heads

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.visual.patch_size)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.visual.image_size)

    @property
    def context_length(self) -> int:
        return int(self.text.positional_embedding.shape[0])

    @property
    def embed_dim(self) -> int:
        return int(self.visual.output_dim)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    def image_blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    def text_blocks(self) -> nn.ModuleList:
        return self.text.transformer.resblocks

    def positional_embedding(self, grid: tuple[int, int]) -> Tensor:
        """Positional embedding for a patch grid, interpolated bicubically when it is not the model's."""
        pos = self.visual.positional_embedding
        native = tuple(self.visual.grid_size)
        if tuple(grid) == native:
            return pos
        cls_pos, patch_pos = pos[:1], pos[1:]
        width = pos.shape[-1]
        patch_pos = patch_pos.float().reshape(1, native[0], native[1], width).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=tuple(grid), mode="bicubic", align_corners=False)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], width).to(pos.dtype)
        return torch.cat([cls_pos, patch_pos], dim=0)

    def text_token_index(self, tokens: Tensor) -> Tensor:
        """Position of the pooled (EOS) token of each sequence, as the model pools it."""
        pool = self.text.pool_type
        if pool == "argmax":
            return tokens.argmax(dim=-1)
        if pool == "eos":
            return (tokens == self.text.eos_id).int().argmax(dim=-1)
        if pool == "last":
            return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long, device=tokens.device)
        return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)

    # ------------------------------------------------------------------------------------ towers
    def image_tokens(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding, class token, positional embedding and ``ln_pre``: the first block's input."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
        ph, pw = self.patch_size
        height, width = pixels.shape[-2:]
        if height % ph or width % pw or height < ph or width < pw:
            raise ValueError(
                f"image size {height}x{width} is not a positive multiple of the patch size {ph}x{pw}")
        grid = (height // ph, width // pw)
        visual = self.visual
        x = visual.conv1(pixels.to(device=self.device, dtype=self.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding(grid).to(x.dtype)
        x = visual.patch_dropout(x)
        return visual.ln_pre(x), grid

    def _image_head(self, pooled: Tensor) -> Tensor:
        pooled = self.visual.ln_post(pooled)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def _text_head(self, pooled: Tensor) -> Tensor:
        pooled = self.text.ln_final(pooled)
        proj = self.text.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj

    def text_input(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """Token plus positional embedding and the attention mask: the first text block's input."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (K, L), got {tuple(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"token sequences of length {length} exceed the context length {self.context_length}")
        tokens = tokens.to(self.device)
        dtype = self.text.transformer.get_cast_dtype()
        x = self.text.token_embedding(tokens).to(dtype) + self.text.positional_embedding[:length].to(dtype)
        mask = self.text.attn_mask
        if mask is not None:
            mask = mask[:length, :length].to(device=x.device, dtype=dtype)
        return x, mask

    def trace_image(self, pixels: Tensor, layers: Sequence[int], *, mode: Mode = "faithful",
                    keep_probs: bool = False, keep_block_inputs: bool = False,
                    keep_final_tokens: bool = False, keep_block_outputs: bool = False) -> TowerTrace:
        with torch.no_grad():
            x, grid = self.image_tokens(pixels)
        token_index = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        pooled, captures, final, outputs = self._run_blocks(
            self.visual.transformer, x, None, layers, mode, token_index,
            keep_probs=keep_probs, keep_block_inputs=keep_block_inputs, keep_final_tokens=keep_final_tokens,
            keep_block_outputs=keep_block_outputs)
        return TowerTrace(self._image_head(pooled), token_index, captures, grid, final, outputs)

    def trace_text(self, tokens: Tensor, layers: Sequence[int], *, mode: Mode = "faithful",
                   keep_probs: bool = False, keep_block_inputs: bool = False,
                   keep_final_tokens: bool = False, keep_block_outputs: bool = False) -> TowerTrace:
        with torch.no_grad():
            x, mask = self.text_input(tokens)
        token_index = self.text_token_index(tokens.to(x.device))
        pooled, captures, final, outputs = self._run_blocks(
            self.text.transformer, x, mask, layers, mode, token_index,
            keep_probs=keep_probs, keep_block_inputs=keep_block_inputs, keep_final_tokens=keep_final_tokens,
            keep_block_outputs=keep_block_outputs)
        return TowerTrace(self._text_head(pooled), token_index, captures, None, final, outputs)

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.model, "logit_scale", None)
        if scale is None:
            raise NotImplementedError(f"{type(self.model).__name__} has no logit_scale")
        return float(scale.detach().float().exp())

    @torch.no_grad()
    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.trace_image(pixels, []).embedding

    @torch.no_grad()
    def encode_text(self, tokens: Tensor) -> Tensor:
        return self.trace_text(tokens, []).embedding

    # ------------------------------------------------------------------------------------ blocks
    def _run_blocks(self, transformer: nn.Module, x: Tensor, mask: Tensor | None, layers: Sequence[int],
                    mode: Mode, token_index: Tensor, *, keep_probs: bool, keep_block_inputs: bool,
                    keep_final_tokens: bool, keep_block_outputs: bool = False
                    ) -> tuple[Tensor, dict[int, BlockCapture], Tensor | None, dict[int, Tensor]]:
        """Run all blocks; return the pooled token's row after the last block, captures, final tokens
        and the explained blocks' outputs (when asked for).

        Under a causal mask (the text tower) the rows after the last pooled token reach no pooled
        token, so when nothing but the captures and the embedding is asked for, the graph (and so the
        backward pass) covers only the rows up to the last pooled token; q, k, v and the attention
        output of every row come from a second pass without a graph. Same numbers, and a backward
        pass that skips the padding after the end tokens.
        """
        blocks = transformer.resblocks
        explained = set(layers)
        first = min(explained) if explained else len(blocks)
        with torch.no_grad():
            for block in blocks[:first]:
                x = self._native_block(transformer, block, x, mask)
        prefix = None
        if explained and not (keep_probs or keep_block_inputs or keep_final_tokens or keep_block_outputs):
            prefix = self._causal_prefix(mask, token_index, x.shape[1])
        if prefix is None:
            return self._explicit_blocks(blocks, first, len(blocks), x, mask, explained, mode, token_index,
                                         keep_probs=keep_probs, keep_block_inputs=keep_block_inputs,
                                         keep_final_tokens=keep_final_tokens, keep_block_outputs=keep_block_outputs)
        with torch.no_grad():
            _, whole, _, _ = self._explicit_blocks(blocks, first, max(explained) + 1, x, mask, explained, mode,
                                                   token_index, keep_probs=False, keep_block_inputs=False,
                                                   keep_final_tokens=False)
        pooled, captures, final_tokens, _ = self._explicit_blocks(
            blocks, first, len(blocks), x[:, :prefix], mask[:prefix, :prefix], explained, mode, token_index,
            keep_probs=False, keep_block_inputs=False, keep_final_tokens=False)
        for index, capture in captures.items():
            capture.q, capture.k, capture.v = whole[index].q, whole[index].k, whole[index].v
            capture.attn_output = whole[index].attn_output
        return pooled, captures, final_tokens, {}

    @staticmethod
    def _causal_prefix(mask: Tensor | None, token_index: Tensor, length: int) -> int | None:
        """Rows up to the last pooled token when ``mask`` is causal and rows follow it; else None."""
        if mask is None or mask.shape[-2:] != (length, length):
            return None
        prefix = int(token_index.max()) + 1
        if prefix >= length:
            return None
        above = torch.ones(length, length, dtype=torch.bool, device=mask.device).triu(1)
        causal = bool(torch.isneginf(mask[above]).all()) and bool(torch.isfinite(mask[~above]).all())
        return prefix if causal else None

    def _explicit_blocks(self, blocks: nn.ModuleList, first: int, stop: int, x: Tensor, mask: Tensor | None,
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
            x, capture = self._explicit_block(
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

    @staticmethod
    def _native_block(transformer: nn.Module, block: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
        if getattr(transformer, "batch_first", True):
            return block(x, attn_mask=mask)
        return block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)

    def _explicit_block(self, block: nn.Module, index: int, x: Tensor, mask: Tensor | None, rows: Tensor,
                        token_index: Tensor, *, capture: bool, mode: Mode, token_only: bool,
                        keep_probs: bool, keep_input: bool) -> tuple[Tensor, BlockCapture | None]:
        """One residual attention block computed explicitly (same maths as the model's block).

        With ``token_only`` only the pooled token's row leaves the block (the last block: nothing else
        reaches the embedding). An explained block splits the pooled token's attention-output row into
        its own tensor so that gradients with respect to it are the partial derivatives method.md uses.
        """
        attn = block.attn
        batch, length, width = x.shape
        h = block.ln_1(x)
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).split(width, dim=-1)
        heads = 1 if (capture and mode == "official") else attn.num_heads
        head_dim = width // heads

        def split(t: Tensor) -> Tensor:
            return t.reshape(t.shape[0], t.shape[1], heads, head_dim).transpose(1, 2)

        all_rows = capture or not token_only
        query = q if all_rows else q[rows, token_index].unsqueeze(1)
        logits = split(query) @ split(k).transpose(-1, -2) / math.sqrt(head_dim)
        if mask is not None:
            logits = logits + (mask if all_rows else mask[token_index].unsqueeze(1)).unsqueeze(-3)
        probs = logits.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        out = (probs @ split(v)).transpose(1, 2).reshape(batch, query.shape[1], width)

        record = None
        if capture:
            token_out = out[rows, token_index]
            record = BlockCapture(
                layer=index, q=q.detach(), k=k.detach(), v=v.detach(), attn_output=out.detach(),
                token_output=token_out, heads=heads, out_proj_weight=attn.out_proj.weight.detach(),
                out_proj_bias=None if attn.out_proj.bias is None else attn.out_proj.bias.detach(),
                probs=probs if keep_probs else None, block_input=x if keep_input else None)
            if token_only:
                out = token_out.unsqueeze(1)
            else:
                is_token = torch.zeros(batch, length, 1, dtype=torch.bool, device=x.device)
                is_token[rows, token_index] = True
                out = torch.where(is_token, token_out.unsqueeze(1), out)
        if token_only:
            x = x[rows, token_index]
            out = out[:, 0]
        x = x + block.ls_1(attn.out_proj(out))
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return x, record

    # ------------------------------------------------------------------------- for the baselines
    def image_head(self, tokens: Tensor) -> Tensor:
        return self._image_head(tokens)

    def _check_block(self, block: int, total: int) -> int:
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block <= total:
            raise ValueError(f"block must be an int in [0, {total}], got {block!r}")
        return block

    @torch.no_grad()
    def image_tokens_before(self, pixels: Tensor, block: int) -> tuple[Tensor, tuple[int, int]]:
        block = self._check_block(block, self.num_image_blocks)
        x, grid = self.image_tokens(pixels)
        for resblock in self.image_blocks()[:block]:
            x = self._native_block(self.visual.transformer, resblock, x, None)
        return x, grid

    def image_embedding_from(self, tokens: Tensor, block: int) -> Tensor:
        block = self._check_block(block, self.num_image_blocks)
        x = tokens
        for resblock in self.image_blocks()[block:]:
            x = self._native_block(self.visual.transformer, resblock, x, None)
        return self._image_head(x[:, 0])

    @torch.no_grad()
    def text_tokens_before(self, tokens: Tensor, block: int) -> Tensor:
        block = self._check_block(block, self.num_text_blocks)
        x, mask = self.text_input(tokens)
        for resblock in self.text_blocks()[:block]:
            x = self._native_block(self.text.transformer, resblock, x, mask)
        return x

    def text_embedding_from(self, hidden: Tensor, tokens: Tensor, block: int) -> Tensor:
        block = self._check_block(block, self.num_text_blocks)
        if hidden.shape[:2] != tokens.shape:
            raise ValueError(f"hidden states {tuple(hidden.shape)} do not match tokens {tuple(tokens.shape)}")
        mask = self.text.attn_mask
        if mask is not None:
            mask = mask[:tokens.shape[1], :tokens.shape[1]].to(device=hidden.device, dtype=hidden.dtype)
        x = hidden
        for resblock in self.text_blocks()[block:]:
            x = self._native_block(self.text.transformer, resblock, x, mask)
        index = self.text_token_index(tokens.to(x.device))
        return self._text_head(x[torch.arange(x.shape[0], device=x.device), index])

    @staticmethod
    def _values(block: nn.Module, x: Tensor) -> Tensor:
        """The in-projected values of ``ln_1(x)``."""
        width = x.shape[-1]
        attn = block.attn
        bias = None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width:]
        return F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:], bias)

    @torch.no_grad()
    def value_path_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        last = self.num_image_blocks - 1
        x, _ = self.image_tokens_before(pixels, last)
        block = self.image_blocks()[last]
        embedding = self.image_embedding_from(x, last)
        u = x[:, 1:] + block.ls_1(block.attn.out_proj(self._values(block, x[:, 1:])))
        u = u + block.ls_2(block.mlp(block.ln_2(u)))
        return embedding, self._image_head(u)

    @torch.no_grad()
    def surgery_features(self, pixels: Tensor, depth: int) -> tuple[Tensor, Tensor]:
        total = self.num_image_blocks
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= total:
            raise ValueError(f"depth must be an int in [1, {total}], got {depth!r}")
        start = total - depth
        x, _ = self.image_tokens_before(pixels, start)
        path = x
        for block in self.image_blocks()[start:]:
            heads = block.attn.num_heads
            v = self._values(block, x)
            batch, length, width = v.shape
            vh = v.reshape(batch, length, heads, width // heads).transpose(1, 2)
            mixing = (vh @ vh.transpose(-1, -2) / math.sqrt(width // heads)).softmax(dim=-1)
            out = (mixing @ vh).transpose(1, 2).reshape(batch, length, width)
            path = path + block.ls_1(block.attn.out_proj(out))
            x = self._native_block(self.visual.transformer, block, x, None)
        return self._image_head(x[:, 0]), self._image_head(path[:, 1:])

    def image_parameter_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        visual = self.visual
        head = list(visual.ln_post.parameters()) + ([visual.proj] if isinstance(visual.proj, nn.Parameter) else [])
        groups = [("head", head)]
        for index in reversed(range(self.num_image_blocks)):
            groups.append((f"block {index}", list(self.image_blocks()[index].parameters())))
        embedding = [visual.class_embedding, visual.positional_embedding, *visual.conv1.parameters(),
                     *visual.ln_pre.parameters()]
        groups.append(("embedding", embedding))
        return groups
