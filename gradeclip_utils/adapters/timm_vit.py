"""open_clip models whose image tower is a timm ViT trunk (open_clip's ``TimmModel``: ``visual.trunk``
a timm model, ``visual.head`` open_clip's projection).

Three kinds of trunk are read:

- timm ``VisionTransformer`` pooled at its class token (``global_pool='token'``; open_clip
  configs such as MobileCLIP-B and MobileCLIP2-L-14): the blocks (``norm1``, fused ``attn.qkv``,
  ``num_heads``, ``attn.proj``, ``ls1``, ``norm2``, ``mlp``, ``ls2``; the attention's optional output
  norm ``attn.norm`` applied as the model applies it) run through the engine; the embedding is the
  trunk's own (patch embedding, class token, positional embedding, ``norm_pre``) and the head too
  (final ``norm``, ``fc_norm``, the trunk's ``head``, open_clip's ``head``).
- timm ``Eva`` (EVA01, EVA02) pooled at its class token: the same, with q and k of the patch tokens
  rotated by the trunk's rotary position embedding (the captured q and k are the rotated ones the
  attention uses), separate or fused q/k/v projections with EVA's zero k-bias, the sub-LN inside the
  attention (``attn.norm``), SwiGLU MLPs (the block's own module) and LayerScale ``gamma_1/gamma_2``.
- SigLIP: a ``VisionTransformer`` without class token pooled by an attention-pool probe (timm
  ``AttentionPoolLatent``, ``global_pool='map'``): one learnt latent query attends over the patch
  tokens (after the trunk's final norm); its output after ``proj`` and the probe's MLP residual is the
  embedding. Grad-ECLIP transfers to the probe as it does to a ResNet's attention pool (docs/method.md
  section 5.2): the latent query is the pooled token, the channel weights are the gradient with respect
  to the probe's attention output before ``proj``, the spatial weight is cos(q_latent, k_i) over the
  patch tokens, the values are the patch tokens'. The probe is the tower's one explained block
  (block 0), presented with the latent at position 0 and a dummy (zero) query/key/value row there,
  so that every method's ``first_key=1`` convention holds; the trunk's blocks run as the model's
  own modules. The authors' code has no such version: this is the project's transfer.

Native resolution: positional embeddings are resampled with timm's own ``resample_abs_pos_embed``
(bicubic with antialiasing, what the trunk's ``set_input_size`` and ``dynamic_img_size`` use; it
differs from the plain bicubic interpolation of the open_clip ViT adapter) and EVA's rotary tables are
rebuilt for the grid as timm rebuilds them on a size change. Patch dropout (a training-time
augmentation, the identity in eval mode) is not applied.

What the baselines get on the probe (the analogues, as for the ResNet attention pool): raw attention,
rollout and GAME on the probe's attention row (its only attention over the whole image); Grad-CAM on
the tokens entering the probe (the last trunk block's output); MaskCLIP on the probe's value path
(``proj(v_i)``, the probe's MLP residual and the head, per patch token). ITSM (no per-patch output),
CLIP Surgery (no v-v path through a probe) and M2IB (no tokens after the probe) need what the probe does
not have: they are refused with the reason the tower gives (``lacking``). Class-token trunks support every
method, as the open_clip ViT does.

The text towers are open_clip ``TextTransformer`` s (SigLIP's: pooled at the last position, no causal
mask), read by the open_clip family's text tower.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import openclip
from .base import (BlockCapture, BlockSteps, CLIPAdapter, ImageTower, Mode, TowerTrace, UnsupportedModelError,
                   check_block_index)
from .sigmoid import adapter_class
from .transformer import BlockView, ViTTower, fused_qkv, identity, run_native

FAMILY = "open_clip"
#: the trunk classes this file reads (by class name: subclasses may change the maths)
TRUNKS = ("VisionTransformer", "Eva")
VIT_BLOCKS = {"VisionTransformer": ("Block", ("Attention",)), "Eva": ("EvaBlock", ("EvaAttention", "AttentionRope"))}
PATCH_EMBEDS = ("PatchEmbed", "HybridEmbed")
ROPES = ("RotaryEmbeddingCat",)


def recognises(model: nn.Module) -> bool:
    """An open_clip CLIP / CustomTextCLIP whose image tower is open_clip's ``TimmModel`` (any trunk)."""
    if not openclip.recognises(model):
        return False
    from open_clip.timm_model import TimmModel

    return isinstance(model.visual, TimmModel)


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


# ------------------------------------------------------------------------------------------ checks
def _attention_problem(attn: nn.Module) -> str | None:
    if not (_is_identity(getattr(attn, "q_norm", None)) and _is_identity(getattr(attn, "k_norm", None))):
        return "q/k normalisation (qk_norm) in the attention"
    if getattr(attn, "gate", None) is not None:
        return "a sigmoid gate on the attention output (gated attention)"
    if getattr(attn, "num_kv_groups", 1) != 1:
        return "grouped-query attention (fewer key/value heads than query heads)"
    if getattr(attn, "qkv", None) is None and getattr(attn, "q_proj", None) is None:
        return f"attention {type(attn).__name__} without q/k/v projections"
    return None


def _probe_problem(trunk: nn.Module) -> str | None:
    probe = trunk.attn_pool
    if type(probe).__name__ != "AttentionPoolLatent":
        return f"its attention pool is timm's {type(probe).__name__}, not the AttentionPoolLatent probe"
    if probe.latent_len != 1:
        return f"its attention-pool probe has {probe.latent_len} latent queries (one pooled token is explained)"
    if not (_is_identity(probe.q_norm) and _is_identity(probe.k_norm)):
        return "q/k normalisation (qk_norm) in its attention-pool probe"
    if probe.pos_embed is not None:
        return "a positional embedding inside its attention-pool probe (timm does not resample it)"
    if probe.pool not in ("token", "avg"):
        return f"its attention-pool probe returns every latent (pool {probe.pool!r}) instead of one pooled token"
    includes_prefix = trunk.num_prefix_tokens and (type(trunk).__name__ == "Eva" or trunk.pool_include_prefix)
    if includes_prefix:
        return ("its attention-pool probe attends over the class token as well as the patch tokens (as Perception "
                "Encoder's does), so the probe's keys are not the patch grid")
    return None


def trunk_problem(visual: nn.Module) -> str | None:
    """Why the timm trunk of ``visual`` (a ``TimmModel``) cannot be explained here (None when it can)."""
    trunk = visual.trunk
    kind = type(trunk).__name__
    if kind not in TRUNKS:
        return f"its image tower is a timm {kind} trunk: only VisionTransformer and Eva trunks are read"
    custom = [type(m).__name__ for m in visual.head.children() if "Pool" in type(m).__name__]
    if custom:
        return f"open_clip pools the timm trunk with its own {custom[0]}"
    pool = trunk.global_pool
    if pool in ("avg", "avgmax", "max"):
        return (f"its timm {kind} trunk pools by averaging the patch tokens ('{pool}'): there is no pooled token "
                "whose attention Grad-ECLIP could weight")
    if pool not in ("token", "map"):
        return f"its timm {kind} trunk pools with {pool!r}, neither a class token nor an attention-pool probe"
    problem = layout_problem(trunk)
    if problem is None and pool == "map":
        return _probe_problem(trunk)
    return problem


def layout_problem(trunk: nn.Module) -> str | None:
    """Why the tokens and blocks of a timm ``VisionTransformer`` or ``Eva`` cannot be read (register tokens, a
    patch embedding, a rotary embedding, a block or an attention this file does not read), None when they can;
    the pooling is the caller's to judge."""
    kind = type(trunk).__name__
    if getattr(trunk, "reg_token", None) is not None:
        return f"its timm {kind} trunk has register tokens between the class token and the patch tokens"
    embed = type(trunk.patch_embed).__name__
    if embed not in PATCH_EMBEDS:
        return f"its timm {kind} trunk embeds patches with {embed}"
    rope = getattr(trunk, "rope", None)
    if getattr(trunk, "rope_mixed", False) or (rope is not None and type(rope).__name__ not in ROPES):
        return f"its rotary position embedding is timm's {type(rope).__name__} (only RotaryEmbeddingCat is read)"
    block_kind, attention_kinds = VIT_BLOCKS[kind]
    for index, block in enumerate(trunk.blocks):
        if type(block).__name__ != block_kind:
            return f"image tower block {index} is timm's {type(block).__name__}, not a pre-norm {block_kind}"
        if type(block.attn).__name__ not in attention_kinds:
            return f"image tower block {index} uses timm's {type(block.attn).__name__}"
        problem = _attention_problem(block.attn)
        if problem:
            return f"image tower block {index} uses {problem}"
    return None


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this file cannot explain ``model`` (None when it can)."""
    if not recognises(model):
        return f"not an open_clip model with a timm image tower ({type(model).__name__})"
    return trunk_problem(model.visual) or openclip.text_problem(model)


# --------------------------------------------------------------------------------------- the trunk
def rotate(t: Tensor, table: Tensor, heads: int, prefix: int, half: bool) -> Tensor:
    """(B, N, C) queries or keys with the patch tokens rotated per head by a (P, 2 d) rotary table
    (timm's ``apply_rot_embed_cat``, as the attention applies it). The ``prefix`` tokens (class token)
    are left as they are; a sequence of the patch tokens alone (N = P) is rotated whole."""
    from timm.layers import apply_rot_embed_cat

    batch, length, width = t.shape
    start = length - table.shape[0]
    if start not in (0, prefix):
        raise ValueError(f"{length} tokens do not fit the rotary table of {table.shape[0]} patches (tokens from "
                         "another grid than the one last embedded?)")
    t = t.reshape(batch, length, heads, width // heads).transpose(1, 2)
    patches = t[:, :, start:]
    rotated = apply_rot_embed_cat(patches, table, half=True) if half else apply_rot_embed_cat(patches, table)
    t = torch.cat([t[:, :, :start], rotated], dim=2)
    return t.transpose(1, 2).reshape(batch, length, width)


def _scale(gamma: nn.Parameter | None) -> Callable[[Tensor], Tensor]:
    return identity if gamma is None else (lambda t: gamma * t)


def _vit_block(block: nn.Module) -> BlockView:
    """A timm ``Block``: x + drop_path1(ls1(proj_drop(proj(norm(attn))))); x + drop_path2(ls2(mlp(norm2(x))))."""
    attn = block.attn
    return BlockView(module=block, ln_1=block.norm1, qkv=fused_qkv(attn.qkv.weight, attn.qkv.bias),
                     heads=int(attn.num_heads), out_proj=attn.proj, ln_2=block.norm2, mlp=block.mlp,
                     native=lambda x, mask: block(x), inner_norm=attn.norm,
                     post_attn=lambda t: block.drop_path1(block.ls1(attn.proj_drop(t))),
                     post_mlp=lambda t: block.drop_path2(block.ls2(t)))


def _eva_block(block: nn.Module, table: Callable[[], Tensor | None]) -> BlockView:
    """A timm ``EvaBlock`` (EvaAttention or AttentionRope): q/k/v with EVA's biases, q and k of the patch
    tokens rotated by ``table()`` (the rotary table of the current grid), sub-LN ``attn.norm``, gamma_1/2."""
    attn = block.attn
    heads, prefix, half = int(attn.num_heads), int(attn.num_prefix_tokens), bool(getattr(attn, "rotate_half", False))

    def qkv(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if attn.qkv is not None:
            q_bias = getattr(attn, "q_bias", None)  # EvaAttention: q and v biases, a zero k bias
            bias = attn.qkv.bias if q_bias is None else torch.cat((q_bias, attn.k_bias, attn.v_bias))
            q, k, v = F.linear(h, attn.qkv.weight, bias).chunk(3, dim=-1)
        else:
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        rope = table()
        if rope is not None:
            q, k = rotate(q, rope, heads, prefix, half).type_as(v), rotate(k, rope, heads, prefix, half).type_as(v)
        return q, k, v

    return BlockView(module=block, ln_1=block.norm1, qkv=qkv, heads=heads, out_proj=attn.proj, ln_2=block.norm2,
                     mlp=block.mlp, native=lambda x, mask: block(x, rope=table()), inner_norm=attn.norm,
                     post_attn=lambda t: block.drop_path1(_scale(block.gamma_1)(attn.proj_drop(t))),
                     post_mlp=lambda t: block.drop_path2(_scale(block.gamma_2)(t)))


def rope_table(rope: nn.Module | None, grid: tuple[int, int]) -> Tensor | None:
    """The rotary table (P, 2 d) of ``rope`` for a patch grid: the trunk's own table at its own grid;
    for another grid the table timm builds when the trunk's size changes (``update_feat_shape``, what
    ``set_input_size`` calls, on a copy of the rope module: the model is not changed), or, for a rope
    built without a fixed grid (``dynamic_img_size``), the table it builds for that shape."""
    if rope is None:
        return None
    feat_shape = getattr(rope, "feat_shape", None)
    if feat_shape is None:
        return rope.get_embed(shape=list(grid))
    if tuple(feat_shape) == tuple(grid):
        return rope.get_embed()
    if not hasattr(rope, "update_feat_shape"):
        raise ValueError(f"this timm version cannot rebuild the trunk's rotary embedding for a {grid[0]}x{grid[1]} "
                         f"grid (only for its own {tuple(feat_shape)}): use resolution='model', or a timm with "
                         "RotaryEmbeddingCat.update_feat_shape")
    resized = copy.deepcopy(rope)
    resized.update_feat_shape(list(grid))
    return resized.get_embed()


class Trunk:
    """A timm ViT trunk as the towers use it: the embedding, the block views and the grid geometry.

    EVA's rotary tables depend on the grid, so the views read the table of the grid last embedded
    (every tower call embeds its pixels first; tokens handed back to the tower must come from that
    grid, and a sequence of another length is refused)."""

    def __init__(self, trunk: nn.Module) -> None:
        self.trunk = trunk
        self.eva = type(trunk).__name__ == "Eva"
        self._table: Tensor | None = None
        self._grid: tuple[int, int] | None = None

    @property
    def native_grid(self) -> tuple[int, int]:
        return tuple(self.trunk.patch_embed.grid_size)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.trunk.patch_embed.feat_ratio(as_scalar=False))

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.trunk.patch_embed.img_size)

    @property
    def weight(self) -> Tensor:
        return self.trunk.blocks[0].attn.proj.weight

    def table(self) -> Tensor | None:
        if not self.eva:
            return None
        if self._grid is None:
            self.set_grid(self.native_grid)
        return self._table

    def set_grid(self, grid: tuple[int, int]) -> None:
        if self.eva and grid != self._grid:
            self._table = rope_table(self.trunk.rope, grid)
        self._grid = tuple(grid)

    def blocks(self) -> list[BlockView]:
        if self.eva:
            return [_eva_block(b, self.table) for b in self.trunk.blocks]
        return [_vit_block(b) for b in self.trunk.blocks]

    def patches(self, pixels: Tensor) -> Tensor:
        """(B, P, C) patch tokens: PatchEmbed's projection and norm (without its fixed-size check), or the
        hybrid embedding's own forward."""
        embed = self.trunk.patch_embed
        if type(embed).__name__ == "PatchEmbed":
            return embed.norm(embed.proj(pixels).flatten(2).transpose(1, 2))
        x = embed(pixels)
        return x.flatten(1, 2) if x.ndim == 4 else x

    def embed(self, pixels: Tensor, grid: tuple[int, int]) -> Tensor:
        """The first block's input: patch tokens, class token, positional embedding (resampled to the
        grid as timm resamples it), ``norm_pre``."""
        from timm.layers import resample_abs_pos_embed

        trunk = self.trunk
        self.set_grid(grid)
        x = self.patches(pixels)
        if x.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"the patch embedding gave {x.shape[1]} tokens for a {grid[0]}x{grid[1]} grid")
        prefix = [] if trunk.cls_token is None else [trunk.cls_token.to(x.dtype).expand(x.shape[0], -1, -1)]
        pos = trunk.pos_embed
        if pos is not None:
            pos = resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(self.native_grid),
                                         num_prefix_tokens=0 if trunk.no_embed_class else trunk.num_prefix_tokens)
            pos = pos.to(x.dtype)
        if trunk.no_embed_class:
            x = torch.cat(prefix + [x if pos is None else x + pos], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1)
            x = x if pos is None else x + pos
        return trunk.norm_pre(trunk.pos_drop(x))

    def embedding_groups(self) -> list[nn.Parameter]:
        trunk = self.trunk
        params = [p for p in (trunk.cls_token, trunk.pos_embed) if p is not None]
        return params + list(trunk.patch_embed.parameters()) + list(trunk.norm_pre.parameters())

    def block_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        return [(f"block {i}", list(self.trunk.blocks[i].parameters())) for i in reversed(range(len(self.trunk.blocks)))]


# ------------------------------------------------------------------------------------ the probe
class ProbeTower(ImageTower):
    """A timm trunk pooled by an attention-pool probe (SigLIP): the probe as the one explained block.

    Block 0's tokens are the probe's view of the image: position 0 holds the latent query (a dummy
    zero row in the block input, keys and values: the latent is a parameter, not a token), positions
    1.. the patch tokens leaving the last trunk block. q, k, v and the attention output are captured
    in that layout; the probe's attention probabilities are presented as a (1+P, 1+P) matrix whose row
    0 is the latent's attention (none on the dummy key) and whose other rows are zero (patch tokens do
    not query in the probe), with the pooled output computed from that matrix so that gradients with
    respect to it are the probe's."""

    kind = "attention-pool probe"
    captures = frozenset({"probs", "block_inputs", "value_path", "parameter_groups", "joint_space"})
    lacking = {"block_outputs": "the attention-pool probe leaves no tokens after it (only the pooled one)",
               "intermediate_tokens": "the attention-pool probe leaves no tokens after it (only the pooled one)",
               "final_tokens": "the attention-pool probe has no per-patch output tokens"}

    def __init__(self, visual: nn.Module, trunk: Trunk, embed_dim: int) -> None:
        self.visual, self.trunk, self._embed_dim = visual, trunk, int(embed_dim)

    @property
    def probe(self) -> nn.Module:
        return self.trunk.trunk.attn_pool

    @property
    def num_blocks(self) -> int:
        return 1

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.trunk.patch_size

    @property
    def image_size(self) -> tuple[int, int]:
        return self.trunk.image_size

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def weight(self) -> Tensor:
        return self.trunk.weight

    def block_shape(self) -> tuple[int, int]:
        # the probe's width and heads, which are the trunk's: its blocks' cost per token is estimated alike
        return int(self.weight().shape[0]), self.heads

    # ----------------------------------------------------------------------------------- pieces
    @torch.no_grad()
    def probe_input(self, pixels: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, 1+P, C): a zero row (the latent's place), then the patch tokens leaving the last trunk block."""
        grid = self.check_pixels(pixels)
        trunk = self.trunk
        x = run_native(trunk.blocks(), trunk.embed(pixels.to(device=self.device, dtype=self.dtype), grid), None)
        return F.pad(x[:, trunk.trunk.num_prefix_tokens:], (0, 0, 1, 0)), grid

    @property
    def heads(self) -> int:
        """The probe's attention heads."""
        return int(self.probe.num_heads)

    @property
    def out_proj(self) -> nn.Linear:
        """The probe's output projection (``proj``), applied to its attention output."""
        return self.probe.proj

    def keys_values(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """The probe's keys and values (B, P, C) of the (B, P, C) patch tokens leaving the last trunk block:
        the trunk's final norm, then the probe's ``kv``."""
        return self.probe.kv(self.trunk.trunk.norm(patches)).chunk(2, dim=-1)

    def query(self, dtype: torch.dtype) -> Tensor:
        """The latent's query (1, 1, C): the probe's ``q`` of its latent."""
        return self.probe.q(self.probe.latent.to(dtype))

    def attend(self, tokens: Tensor, heads: int, keep_probs: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """The probe's attention on (B, 1+P, C) tokens: q, k, v (B, 1+P, C) in the block layout, the
        latent's attention output (B, C) before ``proj`` and, with ``keep_probs``, the (B, H, 1+P, 1+P)
        probabilities it is computed from."""
        batch, length, _ = tokens.shape
        k, v = self.keys_values(tokens[:, 1:])
        q = self.query(k.dtype).expand(batch, -1, -1)
        width = k.shape[-1]
        d = width // heads

        def split(t: Tensor) -> Tensor:
            return t.reshape(batch, t.shape[1], heads, d).transpose(1, 2)

        probs = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(d)).softmax(dim=-1, dtype=torch.float32)
        row = F.pad(probs.to(v.dtype), (1, 0))  # (B, H, 1, 1+P): no attention on the dummy key
        full = F.pad(row, (0, 0, 0, length - 1)) if keep_probs else row
        v = F.pad(v, (0, 0, 1, 0))
        out = (full[:, :, :1] @ split(v)).transpose(1, 2).reshape(batch, width)
        return F.pad(q, (0, 0, 0, length - 1)), F.pad(k, (0, 0, 1, 0)), v, out, (full if keep_probs else None)

    def finish(self, out: Tensor) -> Tensor:
        """The embedding from the probe's attention output (..., C): ``proj``, the probe's MLP residual,
        then the trunk's ``fc_norm`` and head and open_clip's head."""
        probe, trunk = self.probe, self.trunk.trunk
        y = probe.proj_drop(probe.proj(out))
        if probe.mlp is not None:
            y = y + probe.mlp(probe.norm(y))
        return self.visual.head(trunk.head(trunk.head_drop(trunk.fc_norm(y))))

    # ------------------------------------------------------------------------------------ trace
    def trace(self, pixels: Tensor, layers: Sequence[int], *, mode: Mode = "faithful", keep_probs: bool = False,
              keep_block_inputs: bool = False, keep_final_tokens: bool = False,
              keep_block_outputs: bool = False) -> TowerTrace:
        if keep_block_outputs:
            raise self._missing("block_outputs")
        if keep_final_tokens:
            raise self._missing("final_tokens")
        if any(layer != 0 for layer in layers):
            raise ValueError(f"a probe-pooled tower has one explained block (the probe, block 0); got layers "
                             f"{list(layers)}")
        explained = bool(layers)
        tokens, grid = self.probe_input(pixels)
        leaf = tokens.detach().requires_grad_(explained)
        heads = 1 if (explained and mode == "official") else self.heads
        q, k, v, out, probs = self.attend(leaf, heads, keep_probs)
        embedding = self.finish(out)
        token_index = torch.zeros(leaf.shape[0], dtype=torch.long, device=embedding.device)
        captures = {}
        if explained:
            proj = self.out_proj
            captures[0] = BlockCapture(
                layer=0, q=q.detach(), k=k.detach(), v=v.detach(),
                attn_output=F.pad(out.detach()[:, None], (0, 0, 0, leaf.shape[1] - 1)), token_output=out,
                heads=heads, out_proj_weight=proj.weight.detach(),
                out_proj_bias=None if proj.bias is None else proj.bias.detach(), probs=probs,
                block_input=leaf if keep_block_inputs else None)
        return TowerTrace(embedding, token_index, captures, grid, None)

    # ------------------------------------------------------------------------- for the baselines
    def _only_block_zero(self, block: int) -> None:
        check_block_index(block, 1)
        if block != 0:
            raise self._missing("intermediate_tokens")

    def tokens_before(self, pixels: Tensor, block: int) -> tuple[Tensor, tuple[int, int]]:
        self._only_block_zero(block)
        return self.probe_input(pixels)

    def embedding_from(self, tokens: Tensor, block: int) -> Tensor:
        self._only_block_zero(block)
        return self.finish(self.attend(tokens, self.heads, False)[3])

    def steps(self, pixels: Tensor, first: int) -> BlockSteps:
        self._only_block_zero(first)
        tokens, grid = self.probe_input(pixels)

        def step(block: int, x: Tensor) -> tuple[Tensor, Tensor]:
            self._only_block_zero(block)
            out, probs = self.attend(x, self.heads, True)[3:]
            return self.finish(out), probs

        return BlockSteps(tokens, 0, step, torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device), grid)

    @torch.no_grad()
    def value_path_features(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        tokens, _ = self.probe_input(pixels)
        values = self.attend(tokens, self.heads, False)[2]
        return self.embedding_from(tokens, 0), self.finish(values[:, 1:])

    def parameter_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        trunk = self.trunk.trunk
        head = [*trunk.fc_norm.parameters(), *trunk.head.parameters(), *self.visual.head.parameters()]
        probe = [*self.probe.parameters(), *trunk.norm.parameters()]
        return [("head", head), ("attention-pool probe", probe), *self.trunk.block_groups(),
                ("embedding", self.trunk.embedding_groups())]


# ------------------------------------------------------------------------------------- building
def _token_tower(visual: nn.Module, trunk: Trunk, embed_dim: int) -> ViTTower:
    timm_trunk = trunk.trunk

    def head(pooled: Tensor) -> Tensor:
        pooled = timm_trunk.fc_norm(timm_trunk.norm(pooled))
        return visual.head(timm_trunk.head(timm_trunk.head_drop(pooled)))

    def groups() -> list[tuple[str, list[nn.Parameter]]]:
        params = [*timm_trunk.norm.parameters(), *timm_trunk.fc_norm.parameters(), *timm_trunk.head.parameters(),
                  *visual.head.parameters()]
        return [("head", params), *trunk.block_groups(), ("embedding", trunk.embedding_groups())]

    return ViTTower(embed=trunk.embed, blocks=trunk.blocks, head=head, patch_size=trunk.patch_size,
                    image_size=trunk.image_size, embed_dim=embed_dim, weight=lambda: trunk.weight,
                    parameter_groups=groups)


def _output_width(visual: nn.Module) -> int:
    """The image embedding's width: the last projection of open_clip's head, else the trunk's head, else
    the trunk's width (SigLIP: no projection after the probe)."""
    for module in (*reversed(list(visual.head.children())), visual.trunk.head):
        width = getattr(module, "out_features", None) or getattr(getattr(module, "fc2", None), "out_features", None)
        if width:
            return int(width)
    return int(visual.trunk.num_features)


def family_name(trunk: nn.Module) -> str:
    if trunk.global_pool == "map":
        return f"{FAMILY} SigLIP"
    return f"{FAMILY} EVA" if type(trunk).__name__ == "Eva" else f"{FAMILY} timm ViT"


def build(model: nn.Module) -> CLIPAdapter:
    """The adapter for an open_clip model with a timm ViT trunk; ``UnsupportedModelError`` naming the reason."""
    reason = unsupported_reason(model)
    if reason:
        raise UnsupportedModelError(reason)
    visual = model.visual
    trunk = Trunk(visual.trunk)
    embed_dim = _output_width(visual)
    probe = visual.trunk.global_pool == "map"
    image = ProbeTower(visual, trunk, embed_dim) if probe else _token_tower(visual, trunk, embed_dim)
    return adapter_class(model)(model, image, openclip._text_tower(model), family_name(visual.trunk),
                       native_image=model.encode_image, native_text=model.encode_text, logit_scale=model.logit_scale)
