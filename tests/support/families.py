"""The same random CLIP in every family: an open_clip model with realistic random parameters, and
converters of its weights into a Hugging Face ``CLIPModel``, an OpenAI ``clip`` model (built from a
state dict by the package's own ``build_model``) and the open_clip 4.x attention contract.

The converters are written here, apart from the package: they map parameter names and layouts
(HF's separate q/k/v projections are slices of the packed in-projection, its ``nn.Linear``
projections are the transposes of open_clip's ``x @ P`` matrices) and nothing else, so that equal
maps across families show that each adapter reads its family right.

Sizes: OpenAI's ``build_model`` fixes heads = width / 64, a 4x MLP and QuickGELU, so the reference
model has 64-wide heads and QuickGELU.
"""

from __future__ import annotations

import math
import warnings

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

from support.realistic import realistic_init

CONTEXT = 16
EMBED = 48


def reference_open_clip(*, resnet: bool = False, layers: int = 3, seed: int = 0) -> CLIP:
    """A small open_clip CLIP (ViT 64x64 px, patch 16, two 64-wide heads; or a ResNet of one
    bottleneck per stage) with realistic random parameters, in eval mode."""
    if resnet:
        vision = CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, head_width=64, image_size=64)
    else:
        vision = CLIPVisionCfg(layers=layers, width=128, head_width=64, patch_size=16, image_size=64)
    text = CLIPTextCfg(context_length=CONTEXT, vocab_size=49408, width=128, heads=2, layers=layers)
    model = CLIP(embed_dim=EMBED, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    realistic_init(model, seed)
    with torch.no_grad():  # values that fp16 holds exactly: OpenAI's build_model stores its weights in fp16
        for p in model.parameters():
            p.copy_(p.half().float())
        model.logit_scale.fill_(math.log(100.0))  # what trained CLIPs end at (and a model without one assumes)
    return model.eval()


def preprocess(size: int = 64):
    return open_clip.image_transform(size, is_train=False)


def tokenizer():
    return open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT)


# --------------------------------------------------------------------------------- Hugging Face
def hf_config(model: CLIP, *, eos_token_id: int = 49407, attn_implementation: str = "sdpa"):
    from transformers import CLIPConfig

    visual, width = model.visual, model.visual.transformer.width
    text_width = model.transformer.width
    config = CLIPConfig(
        projection_dim=EMBED,
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=len(visual.transformer.resblocks),
                           num_attention_heads=visual.transformer.resblocks[0].attn.num_heads,
                           image_size=visual.image_size[0], patch_size=visual.patch_size[0], hidden_act="quick_gelu",
                           layer_norm_eps=1e-5, projection_dim=EMBED),
        text_config=dict(hidden_size=text_width, intermediate_size=4 * text_width,
                         num_hidden_layers=len(model.transformer.resblocks),
                         num_attention_heads=model.transformer.resblocks[0].attn.num_heads,
                         max_position_embeddings=CONTEXT, vocab_size=49408, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, eos_token_id=eos_token_id, bos_token_id=49406, pad_token_id=1,
                         projection_dim=EMBED))
    config._attn_implementation = attn_implementation
    config.vision_config._attn_implementation = attn_implementation
    config.text_config._attn_implementation = attn_implementation
    return config


def _hf_layer_weights(prefix: str, block) -> dict[str, torch.Tensor]:
    width = block.ln_1.weight.shape[0]
    w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
    out = {}
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        out[f"{prefix}.self_attn.{name}.weight"] = w[i * width:(i + 1) * width]
        out[f"{prefix}.self_attn.{name}.bias"] = b[i * width:(i + 1) * width]
    out[f"{prefix}.self_attn.out_proj.weight"] = block.attn.out_proj.weight
    out[f"{prefix}.self_attn.out_proj.bias"] = block.attn.out_proj.bias
    for hf, oc in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2")):
        out[f"{prefix}.{hf}.weight"] = getattr(block, oc).weight
        out[f"{prefix}.{hf}.bias"] = getattr(block, oc).bias
    for hf, oc in (("fc1", "c_fc"), ("fc2", "c_proj")):
        out[f"{prefix}.mlp.{hf}.weight"] = getattr(block.mlp, oc).weight
        out[f"{prefix}.mlp.{hf}.bias"] = getattr(block.mlp, oc).bias
    return out


def hf_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    v = model.visual
    state = {
        "vision_model.embeddings.class_embedding": v.class_embedding,
        "vision_model.embeddings.patch_embedding.weight": v.conv1.weight,
        "vision_model.embeddings.position_embedding.weight": v.positional_embedding,
        "vision_model.pre_layrnorm.weight": v.ln_pre.weight, "vision_model.pre_layrnorm.bias": v.ln_pre.bias,
        "vision_model.post_layernorm.weight": v.ln_post.weight, "vision_model.post_layernorm.bias": v.ln_post.bias,
        "visual_projection.weight": v.proj.T,
        "text_model.embeddings.token_embedding.weight": model.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": model.positional_embedding,
        "text_model.final_layer_norm.weight": model.ln_final.weight,
        "text_model.final_layer_norm.bias": model.ln_final.bias,
        "text_projection.weight": model.text_projection.T,
        "logit_scale": model.logit_scale,
    }
    for i, block in enumerate(v.transformer.resblocks):
        state.update(_hf_layer_weights(f"vision_model.encoder.layers.{i}", block))
    for i, block in enumerate(model.transformer.resblocks):
        state.update(_hf_layer_weights(f"text_model.encoder.layers.{i}", block))
    return {k: t.detach().clone().contiguous() for k, t in state.items()}


def to_hf(model: CLIP, **config_options):
    """A transformers CLIPModel holding ``model``'s weights."""
    from transformers import CLIPModel

    hf = CLIPModel(hf_config(model, **config_options))
    missing, unexpected = hf.load_state_dict(hf_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    assert not missing and not unexpected, (missing, unexpected)
    return hf.eval()


def to_hf_pair(model: CLIP):
    """The same weights as a CLIPVisionModelWithProjection + CLIPTextModelWithProjection pair."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    config = hf_config(model)
    state = hf_state_dict(model)
    vision = CLIPVisionModelWithProjection(config.vision_config)
    text = CLIPTextModelWithProjection(config.text_config)
    for part, prefixes in ((vision, ("vision_model.", "visual_projection.")), (text, ("text_model.", "text_projection."))):
        own = {k: v for k, v in state.items() if k.startswith(prefixes)}
        missing, unexpected = part.load_state_dict(own, strict=False)
        assert not [k for k in missing if not k.endswith("position_ids")] and not unexpected, (missing, unexpected)
    return vision.eval(), text.eval()


# ------------------------------------------------------------------------------------ OpenAI clip
def import_openai_clip():
    """OpenAI's clip package (its PyPI build imports pkg_resources, deprecated: silence the warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip.model

    return clip.model


def openai_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """open_clip's state dict in OpenAI's layout: open_clip was made to load OpenAI's keys, so the
    names are the same; only the buffers OpenAI does not have are dropped."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "attn_mask"}
    state["input_resolution"] = torch.tensor(model.visual.image_size[0] if not hasattr(model.visual, "attnpool")
                                             else model.visual.image_size)
    state["context_length"] = torch.tensor(CONTEXT)
    state["vocab_size"] = torch.tensor(49408)
    return state


def to_openai(model: CLIP, *, fp16: bool = False):
    """An OpenAI clip model built by the package's own ``build_model`` from ``model``'s weights (fp16
    weights with fp32 LayerNorms, as it builds them; converted to fp32 unless ``fp16``)."""
    clip_model = import_openai_clip()
    built = clip_model.build_model(openai_state_dict(model))
    return (built if fp16 else built.float()).eval()


# ------------------------------------------------------------------------- open_clip 4.x attention
class DevAttention(nn.Module):
    """open_clip's development-line (4.x) attention contract, as its source has it: a fused
    in_proj_weight (3C, C), in_proj_bias, num_heads, out_proj, scaled-dot-product attention, batch
    first, and no ``batch_first`` attribute on the block or the attention (optional ln_inner). (open_clip
    3.3's ``Transformer.forward``, which runs the model's own forward here, still reads its own
    ``batch_first``; 4.x's has none.)"""

    def __init__(self, mha: nn.MultiheadAttention, inner_norm: nn.Module | None = None) -> None:
        super().__init__()
        dim = mha.embed_dim
        self.num_heads, self.head_dim = mha.num_heads, dim // mha.num_heads
        self.scale = self.head_dim ** -0.5
        self.in_proj_weight = nn.Parameter(mha.in_proj_weight.detach().clone())
        self.in_proj_bias = nn.Parameter(mha.in_proj_bias.detach().clone())
        self.ln_q, self.ln_k = nn.Identity(), nn.Identity()
        self.logit_scale = self.head_scale = None
        self.ln_inner = inner_norm if inner_norm is not None else nn.Identity()
        self.out_proj = nn.Linear(dim, dim)
        self.out_proj.load_state_dict(mha.out_proj.state_dict())

    def forward(self, x, k_x=None, v_x=None, attn_mask=None):
        n, length, channels = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, -1, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.out_proj(self.ln_inner(out.transpose(1, 2).reshape(n, -1, channels)))


class DevBlock(nn.Module):
    """open_clip 4.x's ResidualAttentionBlock call: ``block(q_x, k_x=None, v_x=None, attn_mask=None)``."""

    def __init__(self, block: nn.Module, inner_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.ln_1, self.ln_2, self.mlp, self.ls_1, self.ls_2 = block.ln_1, block.ln_2, block.mlp, block.ls_1, block.ls_2
        self.attn = DevAttention(block.attn, inner_norm)

    def get_weight_dtype(self) -> torch.dtype:
        return self.mlp.c_fc.weight.dtype

    def forward(self, q_x, k_x=None, v_x=None, attn_mask=None):
        mask = attn_mask.to(q_x.dtype) if attn_mask is not None else None
        x = q_x + self.ls_1(self.attn(self.ln_1(q_x), attn_mask=mask))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


def to_dev_attention(model: CLIP, inner_norm: bool = False) -> CLIP:
    """A copy of ``model`` whose blocks follow open_clip 4.x's attention contract (optionally with a
    random ``ln_inner``, which changes the model)."""
    import copy

    model = copy.deepcopy(model)
    for transformer in (model.visual.transformer, model.transformer):
        blocks = []
        for block in transformer.resblocks:
            norm = None
            if inner_norm:
                norm = nn.LayerNorm(block.ln_1.weight.shape[0])
                realistic_init(norm, seed=len(blocks) + 7)
            blocks.append(DevBlock(block, norm))
        transformer.resblocks = nn.ModuleList(blocks)
    return model.eval()


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are 0)."""
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max())
    diff = float((a.float() - b.float()).abs().max())
    return diff / scale if scale > 0 else diff


def non_square_pixels(count: int = 2, size: tuple[int, int] = (48, 80), seed: int = 3) -> torch.Tensor:
    """Preprocessed pixels of a non-square shape (sides multiples of 16: the ViT's patch; ResNet tests
    pass multiples of 32)."""
    return torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(seed))


__all__ = ["DevAttention", "DevBlock", "hf_config", "hf_state_dict", "import_openai_clip", "non_square_pixels",
           "openai_state_dict", "preprocess", "reference_open_clip", "relative", "to_dev_attention", "to_hf",
           "to_hf_pair", "to_openai", "tokenizer"]

