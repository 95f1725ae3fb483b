"""Hugging Face ``transformers`` ViT image classifiers: ``ViTForImageClassification`` (transformers 4.x and 5.x).

Where the pieces are. ``vit.embeddings`` (patch projection, class token, positional embedding, bicubically
interpolated for other grids than the native one by the model's own ``interpolate_pos_encoding``, which
differs from timm's antialiased resampling) -> the layers -> row 0 ->
``vit.layernorm`` -> ``classifier`` (the logits). transformers 5.x keeps the layers in ``vit.layers``, each
with ``layernorm_before``, ``attention.q_proj/k_proj/v_proj`` and ``attention.o_proj``, ``dropout`` after the
attention and after the MLP, ``layernorm_after`` and ``mlp`` (``fc1``, activation, ``fc2``), and a layer
returns its hidden states. transformers 4.x keeps them in ``vit.encoder.layer``, each with
``attention.attention.query/key/value``, ``attention.output.dense`` (and its dropout), ``intermediate``
(``dense`` and the activation) and ``output`` (``dense``, dropout, and the MLP's residual added inside it),
and a layer returns a tuple. Both read as the same blocks (``BlockView``); the layers before the first
explained one are the model's own calls.

Official mode is the authors' recomputation in ``gradeclip_adaptation_vit.ipynb`` (``vit_classifier``;
``classifier.NOTEBOOK_OFFICIAL``). It differs from the model's own last block in two ways: (1) one head of
width C whose logits are divided by sqrt(C / heads), the module's own head size, not by sqrt(C) as in the
authors' CLIP code (the single head's logit is the sum of the heads' logits); (2) the attention's residual is
added to ``layernorm_before(x)``, which the notebook writes over ``x``, instead of the block's input ``x``, and
the MLP's residual builds on that. Otherwise it is the model's: the earlier layers' own calls, the embedding
with ``interpolate_pos_encoding=True``, dropout and head mask the identity in eval mode (the notebook's softmax
in the input dtype is the float32 one in fp32). On realistic random weights its logits move by about half a
logit-standard-deviation from the model's (docs/method.md section 9.2, which gives the numbers); the package's
official maps and logits equal those of the notebook's functions run on the same weights to within 1e-6
(transformers 4.46.3 and 5.x).

Other Hugging Face image classifiers are refused by name with the reason (``REASONS``): DeiT's distilled
model averages the logits of two heads, its plain one has a distillation token between the class token and
the patches; BEiT, Swin, ConvNeXt and others have no class token whose attention spans the image.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .. import hub
from .base import UnsupportedModelError
from .classifier import DISTILLED_MAPS, NOTEBOOK_OFFICIAL, ClassifierAdapter, ClassifierTower
from .transformer import BlockView

FAMILY = "Hugging Face ViT classifier"
PREFIX = "hf:"
OFFLINE_HINT = ("copy the model's folder (config.json and model.safetensors, e.g. a hub snapshot) from a machine that "
                "has it and use load_model('hf:/path/to/folder')")
#: the classes this file reads
CLASSES = ("ViTForImageClassification",)
#: the input normalisation of ViTImageProcessor (IMAGENET_STANDARD_MEAN / STD), the default of these models
NORMALIZATION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

REASONS = {
    "DeiTForImageClassificationWithTeacher": (
        "its logit is the mean of two heads, one on the class token and one on the distillation token. "
        + DISTILLED_MAPS + "; explain a timm DeiT without distillation (timm:deit_*_patch16_224)"),
    "DeiTForImageClassification": (
        "its sequence holds a distillation token between the class token and the patch tokens, which the methods "
        "take to start right after the class token"),
    "BeitForImageClassification": (
        "it pools by averaging the patch tokens (no class-token head) and adds a learnt relative-position bias "
        "inside every attention"),
    "Data2VecVisionForImageClassification": "it pools by averaging the patch tokens (no class-token head)",
    "Dinov2ForImageClassification": (
        "its head reads the class token concatenated with the mean of the patch tokens, not the class token alone"),
    "SwinForImageClassification": ("it attends within shifted local windows and pools by averaging: no token "
                                   "attends over the whole image"),
    "ConvNextForImageClassification": "it is a convolutional network pooled by averaging: there is no attention",
    "CLIPForImageClassification": "its head reads the mean of the patch tokens, not the class token",
}


def recognises(model: nn.Module) -> bool:
    """A transformers image classifier (any ``...ForImageClassification``, DeiT's with its teacher's head;
    ``build`` says which it reads)."""
    kind = type(model).__name__
    return type(model).__module__.startswith("transformers") and (kind.endswith("ForImageClassification")
                                                                  or kind in REASONS)


def _layers(model: nn.Module) -> nn.ModuleList | None:
    """The layers of a ViT classifier: ``vit.layers`` (transformers 5.x) or ``vit.encoder.layer`` (4.x)."""
    vit = getattr(model, "vit", None)
    layers = getattr(vit, "layers", None)
    if layers is None:
        layers = getattr(getattr(vit, "encoder", None), "layer", None)
    return layers


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this file cannot explain ``model`` (None when it can)."""
    kind = type(model).__name__
    if kind not in CLASSES:
        reason = REASONS.get(kind, "no adapter reads it")
        return f"Hugging Face {kind}: {reason}"
    if not isinstance(getattr(model, "classifier", None), nn.Linear):
        return "it has no classification head (num_labels=0: its classifier is the identity)"
    layers = _layers(model)
    if layers is None or not len(layers):
        return "its ViT has neither vit.layers (transformers 5.x) nor vit.encoder.layer (4.x)"
    attention = layers[0].attention
    if not (hasattr(attention, "q_proj") or hasattr(getattr(attention, "attention", None), "query")):
        return f"its attention {type(attention).__name__} has no q/k/v projections"
    return None


def _block5(layer: nn.Module) -> BlockView:
    """A transformers 5.x ``ViTLayer``: x + dropout(o_proj(attention(layernorm_before(x)))); then + dropout(mlp(.))."""
    attention = layer.attention
    return BlockView(module=layer, ln_1=layer.layernorm_before,
                     qkv=lambda h: (attention.q_proj(h), attention.k_proj(h), attention.v_proj(h)),
                     heads=int(attention.num_attention_heads), out_proj=attention.o_proj, ln_2=layer.layernorm_after,
                     mlp=layer.mlp, native=lambda x, mask: layer(x), post_attn=layer.dropout, post_mlp=layer.dropout,
                     official=NOTEBOOK_OFFICIAL)


def _block4(layer: nn.Module) -> BlockView:
    """A transformers 4.x ``ViTLayer``: the self-attention's query/key/value, ``attention.output`` (dense,
    dropout), ``intermediate`` and ``output`` (dense, dropout; the residual it adds is the block's)."""
    attention, projection = layer.attention.attention, layer.attention.output

    def native(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = layer(x)
        return out[0] if isinstance(out, tuple) else out

    def mlp(h: torch.Tensor) -> torch.Tensor:
        return layer.output.dropout(layer.output.dense(layer.intermediate(h)))

    return BlockView(module=layer, ln_1=layer.layernorm_before,
                     qkv=lambda h: (attention.query(h), attention.key(h), attention.value(h)),
                     heads=int(attention.num_attention_heads), out_proj=projection.dense, ln_2=layer.layernorm_after,
                     mlp=mlp, native=native, post_attn=projection.dropout, official=NOTEBOOK_OFFICIAL)


def _pair(value) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _tower(model: nn.Module) -> ClassifierTower:
    vit, config = model.vit, model.config
    embeddings = vit.embeddings
    block = _block5 if getattr(vit, "layers", None) is not None else _block4

    def blocks() -> list[BlockView]:
        return [block(layer) for layer in _layers(model)]

    patch, size = _pair(config.patch_size), _pair(config.image_size)
    native = (size[0] // patch[0], size[1] // patch[1])

    def embed(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # the model's own embedding, interpolating the positional embedding (bicubically) for another grid only:
        # its interpolation takes the native grid to be square
        return embeddings(pixels, interpolate_pos_encoding=tuple(grid) != native)


    def groups() -> list[tuple[str, list[nn.Parameter]]]:
        layers = _layers(model)
        out = [("head", [*vit.layernorm.parameters(), *model.classifier.parameters()])]
        out += [(f"block {i}", list(layers[i].parameters())) for i in reversed(range(len(layers)))]
        return out + [("embedding", list(embeddings.parameters()))]

    return ClassifierTower(embed=embed, blocks=blocks, feature=vit.layernorm, linear=model.classifier, patch_size=patch,
                           image_size=size, weight=lambda: embeddings.patch_embeddings.projection.weight,
                           parameter_groups=groups)


def _labels(model: nn.Module) -> list[str] | None:
    id2label = getattr(model.config, "id2label", None) or {}
    count = int(model.classifier.out_features)
    if len(id2label) != count:
        return None
    return [str(id2label.get(i, id2label.get(str(i), f"class {i}"))) for i in range(count)]


def build(model: nn.Module) -> ClassifierAdapter:
    """The adapter for a ``ViTForImageClassification``; ``UnsupportedModelError`` naming the reason."""
    reason = unsupported_reason(model)
    if reason:
        raise UnsupportedModelError(reason)
    size = _pair(model.config.image_size)

    def native_image(pixels: torch.Tensor) -> torch.Tensor:
        other = tuple(pixels.shape[-2:]) != size
        return model(pixel_values=pixels, interpolate_pos_encoding=other).logits

    return ClassifierAdapter(model, _tower(model), FAMILY, native_image=native_image, labels=_labels(model),
                             normalization=NORMALIZATION)


# ------------------------------------------------------------------------------------------ loading
def claims(spec: str) -> bool:
    """Whether "hf:SPEC" names an image classifier (its config's architectures), rather than a CLIP model."""
    architectures = hub.model_config(spec).get("architectures") or []
    return any(name.endswith("ForImageClassification") for name in architectures)


def preprocess_from(folder: Path | None, image_size: tuple[int, int]):
    """ViTImageProcessor's preprocessing: resize to the model's size (bilinear, the aspect not kept), to [0, 1],
    normalised with the mean and std of the folder's ``preprocessor_config.json`` (0.5 without one)."""
    from torchvision import transforms

    path = None if folder is None else folder / "preprocessor_config.json"
    config = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    size = config.get("size", {})
    height, width = (size.get("height", image_size[0]), size.get("width", image_size[1])) if isinstance(
        size, dict) else _pair(size)
    mean, std = config.get("image_mean", NORMALIZATION[0]), config.get("image_std", NORMALIZATION[1])
    return transforms.Compose([
        transforms.Lambda(lambda image: image.convert("RGB")),
        transforms.Resize((int(height), int(width)), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ToTensor(), transforms.Normalize(mean, std)])


def load(spec: str, *, pretrained: str | None, device: torch.device, dtype: torch.dtype, cache_dir: str | None):
    """A ``ViTForImageClassification`` from the hub ("google/vit-base-patch16-224") or a local folder with
    ``config.json`` and safetensors weights. Returns (model, preprocess, None): a classifier takes no texts."""
    from transformers import AutoModelForImageClassification

    if pretrained is not None:
        raise ValueError(f"{PREFIX}{spec} carries its own weights; leave pretrained=None")
    model = hub.from_pretrained(AutoModelForImageClassification, spec, dtype, cache_dir=cache_dir)
    model = model.to(device).eval()
    folder = Path(spec) if Path(spec).is_dir() else None
    return model, preprocess_from(folder, _pair(model.config.image_size)), None
