"""open_clip models with a timm image tower: class-token timm ViTs, EVA (rotary attention) and SigLIP's
attention-pool probe explained, the rest of open_clip's zoo refused with family and reason.

The models are small timm trunks built through open_clip's own ``TimmModel`` (``CustomTextCLIP`` with
``CLIPVisionCfg(timm_model_name=...)``); the size overrides (depth, width, image size) go through
``timm.create_model``. Weights are realistic (tests/support/realistic.py, plus the class token, positional
embedding, EVA's q/v biases and the probe's latent, which it leaves to the family). Every map is checked
against a literal implementation of the equations of docs/method.md sections 2 and 5, written below: per image and per prompt,
every head in its own loop iteration, rotary embeddings pair by pair, one backward pass per prompt.
Native-resolution ground truth is timm's own: a copy of the trunk resized with ``set_input_size``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import re

import pytest
import torch
import torch.nn.functional as F

import gradeclip_utils as ge
from gradeclip_utils.adapters import UnsupportedMethodError, UnsupportedModelError, get_adapter
from gradeclip_utils.methods import IMAGE_METHODS

from support import full_matrix
from support.families import relative
from support.reference import input_of, loosen, pooled_heads
from support.realistic import realistic_init
from support.blip import match_head_methods

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")

TOL = 1e-5
CONTEXT = 16
EMBED = 32
PROMPTS = ["a red circle", "a photo of a dog", "two blue squares"]
FAST = {"rise": {"masks": 32, "mask_batch": 32}, "m2ib": {"steps": 2, "samples": 2}}


@contextlib.contextmanager
def trunk_overrides(**kwargs):
    """timm.create_model with size overrides, for open_clip's TimmModel to build a small trunk."""
    real = timm.create_model
    timm.create_model = functools.partial(real, **kwargs)
    try:
        yield
    finally:
        timm.create_model = real


def timm_clip(trunk: str, pool: str, proj, size: int, *, seed: int = 0, text: dict | None = None, clip_dim: int = EMBED,
              sized: bool = True, **overrides):
    """A CustomTextCLIP whose image tower is open_clip's TimmModel over a small ``trunk`` (built at ``size``
    when ``sized``: convolutional trunks take no image size)."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    with trunk_overrides(**({"img_size": size} if sized else {}), **overrides):
        vision = CLIPVisionCfg(timm_model_name=trunk, timm_model_pretrained=False, timm_pool=pool, timm_proj=proj,
                               image_size=size)
        text_cfg = CLIPTextCfg(context_length=CONTEXT, vocab_size=49408, width=64, heads=2, layers=2, **(text or {}))
        model = CustomTextCLIP(embed_dim=clip_dim, vision_cfg=vision, text_cfg=text_cfg)
    realistic(model, seed)
    return model.eval()


@torch.no_grad()
def realistic(model, seed: int) -> None:
    """realistic_init, plus what it leaves to the family: class token, positional embedding, the probe's
    latent (embeddings: N(0, 0.5)), EVA's q/v biases (N(0, 0.1)); q and k rows of fused timm projections
    (qkv, the probe's q and kv) get the same 1.5 gain realistic_init gives separate q/k projections."""
    left = realistic_init(model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    for name, p in model.named_parameters():
        if name not in left or name.endswith(("logit_scale", "logit_bias")):
            continue
        std = 0.1 if name.endswith("_bias") else 0.5
        p.copy_(torch.randn(p.shape, generator=g) * std)
        left.remove(name)
    assert all(n.endswith(("logit_scale", "logit_bias")) for n in left), left
    for module_name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        if module_name.endswith("attn.qkv"):  # the q and k rows of a fused projection
            m.weight[: 2 * m.out_features // 3] *= 1.5
        elif module_name.endswith("attn_pool.q"):
            m.weight *= 1.5
        elif module_name.endswith("attn_pool.kv"):  # the k rows
            m.weight[: m.out_features // 2] *= 1.5


def wrap(model, name):
    return ge.wrap_model(model, tokenizer=open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT), name=name)


# The models: ((timm trunk, open_clip pool, open_clip projection, model resolution), trunk overrides,
# native-resolution pixel size)
SPECS = {
    # class-token timm ViT with LayerScale, a pre-norm (CLIP style) and the attention's output norm
    "vit": (("vit_tiny_patch16_224", "token", "linear", 64),
            dict(depth=3, embed_dim=64, num_heads=2, init_values=0.5, pre_norm=True, scale_attn_norm=True), (48, 80)),
    # EVA02 tiny: fused qkv with q/v biases and EVA's zero k bias, rotary q/k, SwiGLU (GluMlp)
    "eva": (("eva02_tiny_patch14_224", "token", None, 56), dict(depth=3, embed_dim=64, num_heads=2), (42, 70)),
    # EVA02-CLIP base: separate q/k/v projections, sub-LN in the attention, SwiGLU with its norm
    "eva_clip": (("eva02_base_patch16_clip_224", "token", None, 64), dict(depth=2, embed_dim=64, num_heads=2),
                 (48, 80)),
    # MobileCLIP-B's trunk: a convolutional stem (HybridEmbed), positions not covering the class token
    "mobileclip_b": (("vit_base_mci_224", "token", None, 64), dict(depth=1), (48, 80)),
    # SigLIP: no class token, attention-pool probe, no projection after it (the embedding is the trunk's
    # width, as in open_clip's SigLIP configs); text pooled at the last position, no causal mask
    "siglip": (("vit_base_patch16_siglip_224", "map", "none", 64), dict(depth=2, embed_dim=64, num_heads=2), (48, 80)),
}
SIGLIP_TEXT = dict(no_causal_mask=True, pool_type="last", proj_bias=True)
SIGLIP_WIDTH = 64


def build(name: str, seed: int = 0):
    (trunk, pool, proj, size), overrides, _ = SPECS[name]
    if name == "siglip":
        return timm_clip(trunk, pool, proj, size, seed=seed, text=SIGLIP_TEXT, clip_dim=SIGLIP_WIDTH, **overrides)
    return timm_clip(trunk, pool, proj, size, seed=seed, **overrides)


@pytest.fixture(scope="module")
def models():
    return {name: wrap(build(name), name) for name in SPECS}


def pixels(name: str, resolution: str, count: int = 2, seed: int = 4) -> torch.Tensor:
    (_, _, _, size), _, native = SPECS[name]
    shape = (size, size) if resolution == "model" else native
    return torch.randn(count, 3, *shape, generator=torch.Generator().manual_seed(seed))


def resized(model, size: tuple[int, int]):
    """A copy of ``model`` whose trunk timm itself resized to ``size`` (positions and rotary tables)."""
    other = copy.deepcopy(model)
    other.visual.trunk.set_input_size(img_size=size)
    return other.eval()


def unit(n: int, seed: int = 1, dim: int = SIGLIP_WIDTH) -> torch.Tensor:
    """n random unit text embeddings (SigLIP's width unless told)."""
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ----------------------------------------------------------------------------- the literal code
def _cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


def literal_rope(t, table, heads, prefix):
    """t (B, N, C) with the patch tokens rotated pair by pair: (a, b) -> (a cos - b sin, b cos + a sin),
    the angles of timm's interleaved table (P, 2 d) = [sin | cos]."""
    sin, cos = table.chunk(2, dim=-1)
    d = t.shape[-1] // heads
    patches = t[:, prefix:]
    columns = []
    for j in range(0, t.shape[-1], 2):
        a, b = patches[..., j], patches[..., j + 1]
        jj = j % d
        columns += [a * cos[:, jj] - b * sin[:, jj], b * cos[:, jj + 1] + a * sin[:, jj + 1]]
    return torch.cat([t[:, :prefix], torch.stack(columns, dim=-1)], dim=1)


def literal_qkv(blk, h, eva):
    attn, width = blk.attn, h.shape[-1]
    if eva and attn.qkv is None:
        return (h @ attn.q_proj.weight.T + attn.q_proj.bias, h @ attn.k_proj.weight.T,
                h @ attn.v_proj.weight.T + attn.v_proj.bias)
    w = attn.qkv.weight
    if eva:
        biases = (attn.q_bias, torch.zeros(width), attn.v_bias)
    else:
        biases = (attn.qkv.bias[:width], attn.qkv.bias[width:2 * width], attn.qkv.bias[2 * width:])
    return tuple(h @ w[i * width:(i + 1) * width].T + biases[i] for i in range(3))


def literal_block(blk, x, *, eva, table, explained, official):
    """One timm Block / EvaBlock, literally; returns x and, when explained, (q, k, v, o_cls)."""
    h = blk.norm1(x)
    q, k, v = literal_qkv(blk, h, eva)
    heads = blk.attn.num_heads
    if table is not None:
        q, k = literal_rope(q, table, heads, 1), literal_rope(k, table, heads, 1)
    run_heads = 1 if (explained and official) else heads
    d = x.shape[-1] // run_heads
    outs = []
    for head in range(run_heads):
        cols = slice(head * d, (head + 1) * d)
        outs.append(torch.softmax(q[..., cols] @ k[..., cols].transpose(-1, -2) / math.sqrt(d), dim=-1) @ v[..., cols])
    o = torch.cat(outs, dim=-1)
    captured = None
    if explained:
        o_cls = o[:, 0]
        o = torch.cat([o_cls[:, None], o[:, 1:]], dim=1)
        captured = (q.detach(), k.detach(), v.detach(), o_cls)
    out = blk.attn.norm(o) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    gamma_1 = blk.gamma_1 if eva else getattr(blk.ls1, "gamma", None)
    gamma_2 = blk.gamma_2 if eva else getattr(blk.ls2, "gamma", None)
    x = x + (out if gamma_1 is None else gamma_1 * out)
    mlp = blk.mlp(blk.norm2(x))
    return x + (mlp if gamma_2 is None else gamma_2 * mlp), captured


def literal_tokens(model, images):
    """The first block's input: conv patches, class token, timm's own positions for the grid, norm_pre."""
    trunk = model.visual.trunk
    if tuple(images.shape[-2:]) != tuple(trunk.patch_embed.img_size):
        trunk = resized(model, tuple(images.shape[-2:])).visual.trunk
    embed = trunk.patch_embed
    if type(embed).__name__ == "PatchEmbed":
        x = F.conv2d(images, embed.proj.weight, embed.proj.bias, stride=embed.proj.stride).flatten(2).transpose(1, 2)
    else:  # a hybrid's convolutional stem: its own forward
        x = embed(images)
    prefix = [] if trunk.cls_token is None else [trunk.cls_token.expand(images.shape[0], -1, -1)]
    if trunk.no_embed_class:  # positions for the patches only
        x = torch.cat(prefix + [x + trunk.pos_embed], dim=1)
    else:
        x = torch.cat(prefix + [x], dim=1) + trunk.pos_embed
    table = trunk.rope.get_embed() if getattr(trunk, "rope", None) is not None else None
    return trunk.norm_pre(x), table, embed.grid_size


def literal_class_token(model, images, layers, official):
    trunk = model.visual.trunk
    eva = type(trunk).__name__ == "Eva"
    x, table, grid = literal_tokens(model, images)
    captures = {}
    for i, blk in enumerate(trunk.blocks):
        x, cap = literal_block(blk, x, eva=eva, table=table, explained=i in layers, official=official)
        if cap is not None:
            captures[i] = cap
    pooled = trunk.fc_norm(trunk.norm(x[:, 0]))
    return model.visual.head(trunk.head(pooled)), captures, tuple(grid)


def literal_maps(model, images, targets, layers, official=False, qk="raw"):
    """Literal Grad-ECLIP maps (B, K, h, w) and scores for a class-token trunk, one backward per prompt."""
    blocks = model.visual.trunk.blocks
    with torch.enable_grad():
        embedding, captures, grid = literal_class_token(model, images, layers, official)
        maps = torch.zeros(images.shape[0], len(targets), grid[0] * grid[1])
        scores = torch.zeros(images.shape[0], len(targets))
        for t in range(len(targets)):
            for b in range(images.shape[0]):
                s = _cos(embedding[b], targets[t])
                scores[b, t] = s.detach()
                grads = torch.autograd.grad(s, [captures[l][3] for l in layers], retain_graph=True)
                for layer, grad in zip(layers, grads):
                    q, k, v, _ = captures[layer]
                    loose = loosen(q[b, 0], k[b, 1:], qk, blocks[layer].attn.proj)
                    for i in range(grid[0] * grid[1]):
                        maps[b, t, i] += torch.relu((grad[b] * loose[i] * v[b, i + 1]).sum())
    return maps.reshape(images.shape[0], len(targets), *grid), scores


def trunk_output(model, images):
    """The tokens leaving the last trunk block (the input of the final norm), from the model's own trunk
    (resized by timm for another size), taken by a hook that stops the forward there."""
    trunk = model.visual.trunk
    if tuple(images.shape[-2:]) != tuple(trunk.patch_embed.img_size):
        trunk = resized(model, tuple(images.shape[-2:])).visual.trunk
    return input_of(trunk.norm, lambda: trunk(images)), tuple(trunk.patch_embed.grid_size)


def literal_probe(model, images, targets, official=False, qk="raw"):
    """Literal Grad-ECLIP on an attention-pool probe, per image, per prompt, every head in its own
    iteration: o = concat_h softmax(k_i^h . q^h / sqrt(d)) v_i^h with q the latent's query, k and v the
    normed patch tokens'; w = dS/do; l = minmax cos(q, k_i); H_i = ReLU(sum_c w_c l_i v_i[c])."""
    trunk = model.visual.trunk
    probe = trunk.attn_pool
    with torch.no_grad():
        x, grid = trunk_output(model, images)
    width = x.shape[-1]
    heads = 1 if official else probe.num_heads
    maps = torch.zeros(images.shape[0], len(targets), grid[0] * grid[1])
    scores = torch.zeros(images.shape[0], len(targets))
    with torch.enable_grad():
        for b in range(images.shape[0]):
            tokens = trunk.norm(x[b])
            q = probe.latent[0, 0] @ probe.q.weight.T + probe.q.bias
            k = tokens @ probe.kv.weight[:width].T + probe.kv.bias[:width]
            v = tokens @ probe.kv.weight[width:].T + probe.kv.bias[width:]
            o = pooled_heads(q, k, v, heads).detach().requires_grad_(True)
            y = o @ probe.proj.weight.T + probe.proj.bias
            y = y + probe.mlp(probe.norm(y))
            f = model.visual.head(trunk.head(trunk.fc_norm(y)))
            loose = loosen(q.detach(), k.detach(), qk, probe.proj)
            for t in range(len(targets)):
                s = _cos(f, targets[t])
                scores[b, t] = s.detach()
                (grad,) = torch.autograd.grad(s, [o], retain_graph=True)
                for i in range(grid[0] * grid[1]):
                    maps[b, t, i] = torch.relu((grad * loose[i] * v[i].detach()).sum())
    return maps.reshape(images.shape[0], len(targets), *grid), scores


# -------------------------------------------------------------------------------- recognition
def test_each_model_is_read_by_the_timm_family(models):
    assert models["vit"].family == models["mobileclip_b"].family == "open_clip timm ViT"
    assert type(models["mobileclip_b"].model.visual.trunk.patch_embed).__name__ == "HybridEmbed"
    assert models["eva"].family == models["eva_clip"].family == "open_clip EVA"
    assert models["siglip"].family == "open_clip SigLIP"
    assert models["vit"].adapter.num_image_blocks == 3 and models["siglip"].adapter.num_image_blocks == 1
    assert models["eva_clip"].model.visual.trunk.blocks[0].attn.qkv is None  # the separate-projection variant
    assert not isinstance(models["eva_clip"].model.visual.trunk.blocks[0].attn.norm, torch.nn.Identity)  # sub-LN


@pytest.mark.parametrize("name", list(SPECS))
def test_embeddings_equal_the_models_own_forward(models, name):
    loaded = models[name]
    adapter, model = loaded.adapter, loaded.model
    images = pixels(name, "model")
    assert relative(adapter.encode_image(images), model.encode_image(images)) < TOL
    assert relative(adapter.encode_image(images), adapter.native_encode_image(images)) < TOL
    native = pixels(name, "native")  # the model cannot take it; timm's own resizing of the trunk can
    with torch.no_grad():
        want = resized(model, tuple(native.shape[-2:])).encode_image(native)
    assert relative(adapter.encode_image(native), want) < TOL
    tokens = torch.randint(1, 49406, (3, CONTEXT), generator=torch.Generator().manual_seed(2))
    assert relative(adapter.encode_text(tokens), model.encode_text(tokens)) < TOL


def test_the_rotary_table_for_another_grid_is_timms_own(models):
    from gradeclip_utils.adapters.timm_vit import rope_table

    trunk = models["eva"].model.visual.trunk
    assert torch.equal(rope_table(trunk.rope, (4, 4)), trunk.rope.get_embed())
    other = copy.deepcopy(trunk)
    other.set_input_size(img_size=(42, 70))
    assert torch.equal(rope_table(trunk.rope, (3, 5)), other.rope.get_embed())
    assert rope_table(trunk.rope, (3, 5)).shape[0] == 15


# ---------------------------------------------------------------------------------- Grad-ECLIP
CLASS_TOKEN_CASES = [(name, mode, qk, layers, res) for name in ("vit", "eva", "eva_clip", "mobileclip_b")
                     for mode in ("faithful", "official") for qk in ("raw", "out_proj")
                     for layers in ((-1,), (0, 1)) for res in ("model", "native")
                     if name != "mobileclip_b" or layers == (-1,)]


@pytest.mark.parametrize("name,mode,qk,layers,resolution", CLASS_TOKEN_CASES)
def test_class_token_maps_equal_the_literal_equations(models, name, mode, qk, layers, resolution):
    loaded = models[name]
    images = pixels(name, resolution)
    targets = ge.encode_texts(loaded, PROMPTS)
    blocks = loaded.adapter.resolve_layers(layers, "image")
    want, want_scores = literal_maps(loaded.model, images, targets, blocks, mode == "official", qk)
    got = ge.explain_image(loaded, images, targets, mode=mode, qk=qk, layers=layers)
    assert float(want.abs().max()) > 0
    assert relative(got.maps, want) < TOL
    assert relative(got.scores, want_scores) < TOL


@pytest.mark.parametrize("mode", ["faithful", "official"])
@pytest.mark.parametrize("qk", ["raw", "out_proj"])
@pytest.mark.parametrize("resolution", ["model", "native"])
def test_probe_maps_equal_the_literal_equations(models, mode, qk, resolution):
    loaded = models["siglip"]
    images = pixels("siglip", resolution)
    targets = unit(3)
    want, want_scores = literal_probe(loaded.model, images, targets, mode == "official", qk)
    got = ge.explain_image(loaded, images, targets, mode=mode, qk=qk)
    assert got.maps.shape[-2:] == want.shape[-2:] and float(want.abs().max()) > 0
    assert relative(got.maps, want) < TOL
    assert relative(got.scores, want_scores) < TOL


def test_probe_faithful_scores_are_the_models_own(models):
    loaded = models["siglip"]
    images, targets = pixels("siglip", "model"), unit(3)
    own = F.normalize(loaded.model.encode_image(images).float(), dim=-1) @ targets.T
    assert relative(ge.explain_image(loaded, images, targets).scores, own.detach()) < TOL


def test_probe_layers_name_the_one_block(models):
    with pytest.raises(ValueError, match="out of range"):
        ge.explain_image(models["siglip"], pixels("siglip", "model"), unit(2), layers=(1,))


# ------------------------------------------------------------------------------- other methods
@pytest.mark.parametrize("name", ["vit", "eva_clip"])
@pytest.mark.parametrize("method", sorted(set(IMAGE_METHODS) - {"grad_eclip"} - match_head_methods()))
def test_every_method_runs_on_class_token_trunks(models, name, method):
    loaded = models[name]
    images = pixels(name, "native")
    targets = ge.encode_texts(loaded, PROMPTS)
    got = ge.explain_image(loaded, images, targets, method=method, **FAST.get(method, {}))
    want_scores = ge.explain_image(loaded, images, targets).scores
    if method != "rise":  # RISE maps have the image's pixel resolution
        assert got.maps.shape[-2:] == (images.shape[-2] // 16, images.shape[-1] // 16)
    assert torch.isfinite(got.maps).all() and float(got.maps.abs().max()) > 0
    assert relative(got.scores, want_scores) < TOL


@pytest.mark.parametrize("name", sorted(SPECS))
def test_game_and_rollout_equal_the_full_matrix_computation(models, name):
    """Folded one block at a time (rotary tables, LayerScale, the probe as the one block), GAME and rollout
    give the maps and word rows of the full N x N matrices over every block's attention, 3 images x 3
    prompts at the native (non-square) size."""
    loaded = models[name]
    adapter = loaded.adapter
    images = pixels(name, "native", count=3, seed=13)
    targets = unit(3, seed=2, dim=adapter.embed_dim)
    blocks = adapter.num_image_blocks
    one_block = blocks == 1
    full_matrix.check_image_methods(
        adapter, images, targets, rollout_starts=(0,) if one_block else (0, blocks // 2, -1),
        game_options=full_matrix.ONE_BLOCK_OPTIONS if one_block else full_matrix.GAME_OPTIONS)
    tokens = loaded.tokenize(PROMPTS)
    full_matrix.check_text_game(adapter, tokens, F.normalize(adapter.encode_image(images).float(), dim=-1))


# ------------------------------------------------- the same weights as an open_clip ViT, every method
@pytest.fixture(scope="module")
def open_clip_pair():
    """tests/support/families.py's reference open_clip ViT, and the same weights in a timm ``vit_base_patch16_clip``
    trunk (depth, width and heads of the reference, QuickGELU) converted by timm's own OpenAI-CLIP converter."""
    from support import families as fam
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from timm.models.vision_transformer import _convert_openai_clip

    reference = fam.reference_open_clip()
    with trunk_overrides(img_size=64, depth=3, embed_dim=128, num_heads=2, act_layer="quick_gelu"):
        vision = CLIPVisionCfg(timm_model_name="vit_base_patch16_clip_224", timm_model_pretrained=False,
                               timm_pool="token", timm_proj=None, image_size=64)
        text = CLIPTextCfg(context_length=fam.CONTEXT, vocab_size=49408, width=128, heads=2, layers=3)
        model = CLIP(embed_dim=fam.EMBED, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    state = reference.state_dict()
    model.visual.trunk.load_state_dict(_convert_openai_clip(state, model.visual.trunk))
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if not k.startswith("visual.")},
                                                strict=False)
    assert not unexpected and all(k.startswith("visual.") for k in missing)
    return (ge.wrap_model(reference, fam.preprocess(), fam.tokenizer(), name="open_clip"),
            ge.wrap_model(model.eval(), fam.preprocess(), fam.tokenizer(), name="timm"))


PAIR_PIXELS = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))


@pytest.mark.parametrize("mode", ["faithful", "official"])
@pytest.mark.parametrize("qk", ["raw", "out_proj"])
@pytest.mark.parametrize("layers", [(-1,), (0,), (0, 2)])
def test_grad_eclip_equals_the_open_clip_vit_on_the_same_weights(open_clip_pair, mode, qk, layers):
    reference, converted = open_clip_pair
    assert reference.family == "open_clip ViT" and converted.family == "open_clip timm ViT"
    want = ge.explain_image(reference, PAIR_PIXELS, PROMPTS, mode=mode, qk=qk, layers=layers)
    got = ge.explain_image(converted, PAIR_PIXELS, PROMPTS, mode=mode, qk=qk, layers=layers)
    assert float(want.maps.abs().max()) > 0
    assert relative(got.maps, want.maps) < TOL and relative(got.scores, want.scores) < TOL


@pytest.mark.parametrize("method", sorted(set(IMAGE_METHODS) - {"grad_eclip"} - match_head_methods()))
def test_every_method_equals_the_open_clip_vit_on_the_same_weights(open_clip_pair, method):
    """Model resolution: at other sizes timm resamples positions with antialiasing, open_clip's ViT adapter
    without (the maps then differ by design)."""
    reference, converted = open_clip_pair
    options = FAST.get(method, {})
    want = ge.explain_image(reference, PAIR_PIXELS, PROMPTS, method=method, **options)
    got = ge.explain_image(converted, PAIR_PIXELS, PROMPTS, method=method, **options)
    assert float(want.maps.abs().max()) > 0
    assert relative(got.maps, want.maps) < 5 * TOL and relative(got.scores, want.scores) < TOL


def test_word_importance_equals_the_open_clip_vit_on_the_same_weights(open_clip_pair):
    reference, converted = open_clip_pair
    want = ge.explain_text(reference, PAIR_PIXELS, ["a red circle left of a blue square"], layers=2)
    got = ge.explain_text(converted, PAIR_PIXELS, ["a red circle left of a blue square"], layers=2)
    assert got.words == want.words and relative(got.word_importance, want.word_importance) < 5 * TOL


def test_raw_attention_is_the_class_tokens_literal_attention(models):
    """Raw attention on EVA's last block: the class token's row over the rotated q and k, mean over heads."""
    loaded = models["eva"]
    images = pixels("eva", "native")
    trunk = loaded.model.visual.trunk
    with torch.no_grad():
        x, table, grid = literal_tokens(loaded.model, images)
        for blk in trunk.blocks[:-1]:
            x, _ = literal_block(blk, x, eva=True, table=table, explained=False, official=False)
        blk = trunk.blocks[-1]
        q, k, _ = literal_qkv(blk, blk.norm1(x), True)
        heads = blk.attn.num_heads
        q, k = literal_rope(q, table, heads, 1), literal_rope(k, table, heads, 1)
        d = q.shape[-1] // heads
        rows = [torch.softmax(torch.einsum("bc,bnc->bn", q[:, 0, h * d:(h + 1) * d], k[..., h * d:(h + 1) * d])
                              / math.sqrt(d), dim=-1) for h in range(heads)]
    want = (sum(rows) / heads)[:, 1:].reshape(2, *grid)
    got = ge.explain_image(loaded, images, PROMPTS[:2], method="raw_attention")
    assert relative(got.maps[:, 0], want) < TOL and torch.equal(got.maps[:, 0], got.maps[:, 1])


def _probe_attention(model, images):
    """The probe's attention of the latent over the patch tokens, (B, H, P), literally."""
    trunk = model.visual.trunk
    probe = trunk.attn_pool
    x, grid = trunk_output(model, images)
    tokens = trunk.norm(x)
    width, heads = x.shape[-1], probe.num_heads
    d = width // heads
    q = probe.latent[0, 0] @ probe.q.weight.T + probe.q.bias
    k = tokens @ probe.kv.weight[:width].T + probe.kv.bias[:width]
    return torch.stack([torch.softmax(k[..., h * d:(h + 1) * d] @ q[h * d:(h + 1) * d] / math.sqrt(d), dim=-1)
                        for h in range(heads)], dim=1), grid


@torch.no_grad()
def test_probe_attention_baselines_are_the_probes_attention(models):
    """raw attention: the latent's attention over the patches (mean of heads); rollout over the probe's
    one block: (A + I) row-normalised, row 0 over the patches = A / 2."""
    loaded = models["siglip"]
    images, targets = pixels("siglip", "native"), unit(2)
    attention, grid = _probe_attention(loaded.model, images)
    mean = attention.mean(dim=1).reshape(2, *grid)
    raw = ge.explain_image(loaded, images, targets, method="raw_attention")
    rollout = ge.explain_image(loaded, images, targets, method="rollout")
    assert relative(raw.maps[:, 0], mean) < TOL and relative(rollout.maps[:, 1], mean / 2) < TOL


def test_probe_game_is_the_probes_gradient_times_attention(models):
    """GAME on the probe: R = I + mean_h clamp(dS/dA * A, 0) R; row 0 over the patches is
    mean_h clamp(dS/dA_h,i * A_h,i, 0), with A the probe's attention (autograd on the literal probe)."""
    loaded = models["siglip"]
    images, targets = pixels("siglip", "model"), unit(2)
    model = loaded.model
    trunk, probe = model.visual.trunk, model.visual.trunk.attn_pool
    with torch.no_grad():
        x, grid = trunk_output(model, images)
    width, heads = x.shape[-1], probe.num_heads
    d = width // heads
    with torch.enable_grad():
        tokens = trunk.norm(x)
        q = probe.latent[0, 0] @ probe.q.weight.T + probe.q.bias
        k = tokens @ probe.kv.weight[:width].T + probe.kv.bias[:width]
        v = tokens @ probe.kv.weight[width:].T + probe.kv.bias[width:]
        a = torch.stack([torch.softmax(k[..., h * d:(h + 1) * d] @ q[h * d:(h + 1) * d] / math.sqrt(d), dim=-1)
                         for h in range(heads)], dim=1).detach().requires_grad_(True)  # (B, H, P)
        o = torch.cat([(a[:, h, :, None] * v[..., h * d:(h + 1) * d]).sum(dim=1) for h in range(heads)], dim=-1)
        y = o @ probe.proj.weight.T + probe.proj.bias
        f = model.visual.head(trunk.head(trunk.fc_norm(y + probe.mlp(probe.norm(y)))))
        want = torch.zeros(2, 2, grid[0] * grid[1])
        for t in range(2):
            s = F.normalize(f, dim=-1) @ targets[t]
            (grad,) = torch.autograd.grad(s.sum(), [a], retain_graph=True)
            want[:, t] = (grad * a).clamp(min=0).mean(dim=1)
    got = ge.explain_image(loaded, images, targets, method="game", target="cosine")
    assert relative(got.maps, want.reshape(2, 2, *grid)) < TOL
    on_logit = ge.explain_image(loaded, images, targets, method="game")  # the default: the logit, one block
    assert relative(on_logit.maps, loaded.adapter.logit_scale * want.reshape(2, 2, *grid)) < TOL


def test_probe_grad_cam_and_maskclip_are_the_probes_analogues(models):
    """Grad-CAM on the tokens entering the probe (the last trunk block's output): alpha = mean over the
    patches of dS/dx_i, map = ReLU(sum_c alpha_c x_i[c]). MaskCLIP on the probe's value path:
    proj(v_i), the probe's MLP residual and the head, per patch, cosine with the target."""
    loaded = models["siglip"]
    images, targets = pixels("siglip", "native"), unit(2)
    model = loaded.model
    trunk, probe = model.visual.trunk, model.visual.trunk.attn_pool
    with torch.no_grad():
        x, grid = trunk_output(model, images)
    width = x.shape[-1]

    def finish(y):
        return model.visual.head(trunk.head(trunk.fc_norm(y + probe.mlp(probe.norm(y)))))

    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        f = torch.stack([model.visual.trunk.attn_pool(trunk.norm(leaf[b:b + 1]))[0] for b in range(2)])
        f = model.visual.head(trunk.head(trunk.fc_norm(f)))
        want = torch.zeros(2, 2, grid[0] * grid[1])
        for t in range(2):
            s = F.normalize(f, dim=-1) @ targets[t]
            (grad,) = torch.autograd.grad(s.sum(), [leaf], retain_graph=True)
            alpha = grad.mean(dim=1)
            want[:, t] = torch.relu(torch.einsum("bc,bpc->bp", alpha, x))
    got = ge.explain_image(loaded, images, targets, method="grad_cam")
    assert relative(got.maps, want.reshape(2, 2, *grid)) < TOL
    with torch.no_grad():
        v = trunk.norm(x) @ probe.kv.weight[width:].T + probe.kv.bias[width:]
        dense = F.normalize(finish(v @ probe.proj.weight.T + probe.proj.bias), dim=-1) @ targets.T  # (B, P, K)
    got = ge.explain_image(loaded, images, targets, method="maskclip")
    assert relative(got.maps, dense.permute(0, 2, 1).reshape(2, 2, *grid)) < TOL


@pytest.mark.parametrize("method,reason", [("itsm", "no per-patch output tokens"),
                                           ("clip_surgery", "CLIP Surgery"),
                                           ("m2ib", "leaves no tokens after it")])
def test_probe_refuses_what_needs_tokens_after_it_naming_method_and_family(models, method, reason):
    with pytest.raises(UnsupportedMethodError, match=rf"{method} is not available for open_clip SigLIP models: .*{reason}"):
        ge.explain_image(models["siglip"], pixels("siglip", "model"), unit(2), method=method)


PROBE_METHODS = ["grad_eclip_no_spatial", "rise"]


@pytest.mark.parametrize("method", PROBE_METHODS)
def test_the_other_probe_methods_run(models, method):
    loaded = models["siglip"]
    images, targets = pixels("siglip", "native"), unit(2)
    got = ge.explain_image(loaded, images, targets, method=method, **FAST.get(method, {}))
    assert torch.isfinite(got.maps).all() and float(got.maps.abs().max()) > 0
    assert relative(got.scores, ge.explain_image(loaded, images, targets).scores) < TOL


# ---------------------------------------------------------------------------------------- state
def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.grad for p in model.parameters()], copy.deepcopy(model.state_dict()),
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()))


@pytest.mark.parametrize("name", ["vit", "eva", "siglip"])
def test_the_model_is_left_as_it_was_also_after_an_exception(models, name, monkeypatch):
    loaded = models[name]
    model = loaded.model
    model.train()
    before = _state(model)
    targets = unit(2) if name == "siglip" else ge.encode_texts(loaded, PROMPTS[:2])
    ge.explain_image(loaded, pixels(name, "native"), targets, layers=(-1,))
    ge.explain_image(loaded, pixels(name, "native"), targets, method="game")
    after = _state(model)
    assert before[0] == after[0] and before[1] == after[1] and before[4] == after[4] == 0
    assert all(g is None for g in after[2]) and all(torch.equal(before[3][k], after[3][k]) for k in before[3])
    from gradeclip_utils.methods import grad_eclip

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(grad_eclip, "value_projection", boom)
    with pytest.raises(RuntimeError, match="boom"):
        ge.explain_image(loaded, pixels(name, "model"), targets)
    assert _state(model)[0] == before[0] and _state(model)[4] == 0
    model.eval()


# ------------------------------------------------------------------------ SigLIP's hub tokenizer
@pytest.fixture
def tiny_siglip_name():
    """A small SigLIP in open_clip's registry, with SigLIP's hub tokenizer (unavailable offline)."""
    from open_clip import factory

    name = "tiny-SigLIP-test"
    (trunk, pool, proj, size), overrides, _ = SPECS["siglip"]
    factory._MODEL_CONFIGS[name] = {
        "embed_dim": SIGLIP_WIDTH, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": size, "timm_model_name": trunk, "timm_model_pretrained": False,
                       "timm_pool": pool, "timm_proj": proj},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": 32000, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP",
                     "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 64, "heads": 2, "layers": 2,
                     **SIGLIP_TEXT, "norm_kwargs": {"eps": 1e-6}}}
    with trunk_overrides(img_size=size, **overrides):
        yield name
    del factory._MODEL_CONFIGS[name]


def test_siglip_with_its_tokenizer_unavailable_offline_takes_prompts_as_embeddings(tiny_siglip_name):
    loaded = ge.load_model(tiny_siglip_name, pretrained=None, device="cpu")
    assert loaded.family == "open_clip SigLIP" and loaded.model.logit_bias is not None
    realistic(loaded.model, 3)
    with pytest.raises(ge.WeightsUnavailableError, match="lives on the Hugging Face hub. Pass prompts as .* embeddings"):
        ge.explain_image(loaded, pixels("siglip", "model"), ["a dog"])
    targets = unit(3, seed=8)
    images = pixels("siglip", "native")
    got = ge.explain_image(loaded, images, targets, labels=["cat", "dog", "car"], score="cosine")
    want, want_scores = literal_probe(loaded.model, images, targets)
    assert got.prompts == ["cat", "dog", "car"]
    assert relative(got.maps, want) < TOL and relative(got.scores, want_scores) < TOL
    # its default score is SigLIP's logit, s cos + b (its bias carried), whose maps are s times the cosine's
    logit = ge.explain_image(loaded, images, targets)
    scale, bias = float(loaded.model.logit_scale.exp()), float(loaded.model.logit_bias)
    assert logit.settings["score"] == "logit" and bias != 0
    assert relative(logit.scores, scale * want_scores + bias) < TOL and relative(logit.maps, scale * want) < TOL


# ------------------------------------------------------------------------------------- refusals
def refused(model) -> str:
    with pytest.raises(UnsupportedModelError) as error:
        get_adapter(model)
    return str(error.value)


REFUSALS = [
    ("vit_tiny_patch16_224", "token", "linear", dict(qk_norm=True), r"timm-trunk image tower \(VisionTransformer\) "
     r"\(image tower block 0 uses q/k normalisation"),
    ("vit_tiny_patch16_224", "token", "linear", dict(reg_tokens=2), "has register tokens"),
    ("vit_medium_patch16_gap_256", "", "linear", dict(), r"pools by averaging the patch tokens \('avg'\)"),
    ("eva02_tiny_patch14_224", "token", None, dict(use_post_norm=True), r"EVA \(timm Eva trunk\) \(image tower block 0 "
     "is timm's EvaBlockPostNorm"),
    ("vit_pe_core_tiny_patch16_384", "map", None, dict(), r"Perception Encoder \(timm Eva trunk with an attention-pool "
     r"probe\) \(its attention-pool probe attends over the class token as well as the patch tokens"),
    ("fastvit_mci0", "avg", None, dict(), r"MobileCLIP \(timm FastVit trunk\) \(MobileCLIP's image tower is a timm "
     "FastVit trunk: .*pooled by averaging"),
    ("convnext_tiny", "", "linear", dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)), "ConvNeXt trunk is a "
     "convolutional network"),
]


@pytest.mark.parametrize("trunk,pool,proj,overrides,message", REFUSALS, ids=[r[0] + str(i) for i, r in enumerate(REFUSALS)])
def test_refusals_name_the_family_and_the_reason(trunk, pool, proj, overrides, message):
    small = dict(depth=1, embed_dim=64, num_heads=2) if trunk.startswith(("vit", "eva")) else {}
    if trunk.startswith("vit_pe"):
        small["attn_pool_num_heads"] = 2
    size = 32 if "patch16" in trunk or "fastvit" in trunk or "convnext" in trunk else 28
    model = timm_clip(trunk, pool, proj, size, sized=bool(small), **{**small, **overrides})
    assert re.search(message, refused(model)), refused(model)
    assert "Grad-ECLIP has no adapter for this model family" in refused(model)


def test_coca_is_refused_naming_its_pooler():
    from open_clip.coca_model import CoCa, MultimodalCfg
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=1, width=64, head_width=32, patch_size=16, image_size=32, attentional_pool=True,
                           attn_pooler_heads=2, output_tokens=True)
    text = CLIPTextCfg(context_length=CONTEXT, vocab_size=49408, width=64, heads=2, layers=1, embed_cls=True,
                       output_tokens=True)
    multimodal = MultimodalCfg(context_length=CONTEXT, vocab_size=49408, width=64, heads=2, layers=1,
                               attn_pooler_heads=2)
    message = refused(CoCa(embed_dim=EMBED, multimodal_cfg=multimodal, text_cfg=text, vision_cfg=vision))
    assert "family: CoCa (CoCa's image tower pools with an attentional pooler" in message


FULL_ZOO = {  # open_clip's own configurations, random weights: family -> what load_model says
    "ViT-B-16-SigLIP": "open_clip SigLIP", "ViT-B-16-SigLIP2": "open_clip SigLIP", "EVA02-B-16": "open_clip EVA",
    "MobileCLIP-B": "open_clip timm ViT", "MobileCLIP2-L-14": "open_clip timm ViT",
    "MobileCLIP-S1": "refused: MobileCLIP", "MobileCLIP2-S0": "refused: MobileCLIP", "coca_ViT-B-32": "refused: CoCa",
    "PE-Core-B-16": "refused: attends over the class token", "convnext_base": "refused: ConvNeXt",
    "ViTamin-S": "refused: pools by averaging", "vit_medium_patch16_gap_256": "refused: pools by averaging",
    "vit_relpos_medium_patch16_cls_224": "refused: relative-position bias",
    "swin_base_patch4_window7_224": "refused: shifted local windows",
}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GRADECLIP_FULL_ZOO"), reason="builds full-size zoo models (~10 s each): "
                    "run with GRADECLIP_FULL_ZOO=1")
@pytest.mark.parametrize("name", list(FULL_ZOO))
def test_the_full_size_zoo(name):
    torch.manual_seed(0)
    expected = FULL_ZOO[name]
    if expected.startswith("refused: "):
        with pytest.raises(UnsupportedModelError, match=re.escape(expected[len("refused: "):])):
            ge.load_model(name, pretrained=None, device="cpu")
        return
    loaded = ge.load_model(name, pretrained=None, device="cpu")
    assert loaded.family == expected
    size = loaded.adapter.image_size
    images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    assert relative(loaded.adapter.encode_image(images), loaded.adapter.native_encode_image(images)) < TOL
    ex = ge.explain_image(loaded, images, F.normalize(torch.randn(2, loaded.adapter.embed_dim), dim=-1))
    assert torch.isfinite(ex.maps).all() and float(ex.maps.abs().max()) > 0
