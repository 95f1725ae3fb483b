"""timm ``VisionTransformer`` image classifiers pooled at their class token (ViT, DeiT without distillation,
and the other class-token ViTs of timm's zoo).

The tokens and blocks are read as the open_clip family with a timm trunk reads them (``timm_vit.Trunk``: the
trunk's own patch embedding, class token, positional embedding resampled as timm resamples it for other
grids, ``norm_pre``, and its blocks); the head is the model's: final ``norm``, ``fc_norm``, ``head_drop`` and
``head`` on the class token, giving the logits. Official mode is the authors' ViT notebook's recomputation
(``classifier.NOTEBOOK_OFFICIAL``), the same as for a Hugging Face ViT classifier, so that both families
give the same maps on the same weights.

Refused by name, with the reason: the distilled DeiT (``VisionTransformerDistilled``, whose logit averages
the heads of the class and the distillation token), average-pooled and attention-pool-probe classifiers
(no class-token head), models without a class token, without a head (``num_classes=0``), and the other timm
architectures (their blocks are not the ones ``timm_vit`` reads).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import UnsupportedModelError
from .classifier import DISTILLED_MAPS, NOTEBOOK_OFFICIAL, ClassifierAdapter, ClassifierTower
from .timm_vit import Trunk, layout_problem
from .transformer import BlockView

FAMILY = "timm ViT classifier"
PREFIX = "timm:"
OFFLINE_HINT = ("copy the weights (a safetensors file) from a machine that has them and use "
                "load_model('timm:NAME', pretrained='/path/to/model.safetensors')")

POOL_REASONS = {
    "avg": "it pools by averaging the patch tokens: there is no class token whose attention Grad-ECLIP could weight",
    "avgmax": "it pools by averaging and max-pooling the patch tokens: there is no class-token head",
    "max": "it max-pools the patch tokens: there is no class-token head",
    "map": ("it pools with an attention-pool probe (a learnt latent query), not at a class token; the CLIP "
            "families read such probes (SigLIP), the classifiers do not yet"),
    "": "it has no pooling (global_pool=''): its head reads every token, not a class token",
}


def recognises(model: nn.Module) -> bool:
    """A model of timm's zoo (``timm.models``); ``build`` says which it reads."""
    return type(model).__module__.startswith("timm.")


def unsupported_reason(model: nn.Module) -> str | None:
    """Why this file cannot explain ``model`` (None when it can)."""
    kind = type(model).__name__
    if kind == "VisionTransformerDistilled":
        return ("a distilled DeiT: its logit is the mean of the heads on the class token and on the distillation "
                "token (which sits between the class token and the patches). " + DISTILLED_MAPS + "; use a DeiT "
                "without distillation (deit_*_patch16_224)")
    if kind != "VisionTransformer":
        return f"timm {kind} classifiers have no adapter (only class-token VisionTransformer classifiers are read)"
    pool = model.global_pool
    if pool != "token":
        return f"timm VisionTransformer with global_pool={pool!r}: " + POOL_REASONS.get(pool, "not a class-token head")
    if model.cls_token is None:
        return "timm VisionTransformer without a class token (class_token=False): there is no class-token head"
    if not isinstance(model.head, nn.Linear):
        return "timm VisionTransformer with no classification head (num_classes=0: its head is the identity)"
    problem = layout_problem(model)
    return None if problem is None else f"timm VisionTransformer: {problem}"


def _tower(model: nn.Module, trunk: Trunk) -> ClassifierTower:
    def blocks() -> list[BlockView]:
        views = trunk.blocks()
        for view in views:
            view.official = NOTEBOOK_OFFICIAL
        return views

    def feature(pooled: torch.Tensor) -> torch.Tensor:
        return model.head_drop(model.fc_norm(model.norm(pooled)))

    def groups() -> list[tuple[str, list[nn.Parameter]]]:
        params = [*model.norm.parameters(), *model.fc_norm.parameters(), *model.head.parameters()]
        return [("head", params), *trunk.block_groups(), ("embedding", trunk.embedding_groups())]

    return ClassifierTower(embed=trunk.embed, blocks=blocks, feature=feature, linear=model.head,
                           patch_size=trunk.patch_size, image_size=trunk.image_size, weight=lambda: trunk.weight,
                           parameter_groups=groups)


def _labels(model: nn.Module) -> list[str] | None:
    """ImageNet's class descriptions for a model timm knows to be an ImageNet classifier, else None."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
    except ImportError:
        return None
    subset = infer_imagenet_subset(model)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    count = int(model.head.out_features)
    if info.num_classes() != count:
        return None
    return [info.index_to_description(i) for i in range(count)]


def build(model: nn.Module) -> ClassifierAdapter:
    """The adapter for a timm class-token ViT classifier; ``UnsupportedModelError`` naming the reason."""
    reason = unsupported_reason(model)
    if reason:
        raise UnsupportedModelError(reason)
    config = getattr(model, "pretrained_cfg", None) or {}
    normalization = (config.get("mean", (0.485, 0.456, 0.406)), config.get("std", (0.229, 0.224, 0.225)))
    return ClassifierAdapter(model, _tower(model, Trunk(model)), FAMILY, native_image=model, labels=_labels(model),
                             normalization=normalization)


def load(spec: str, *, pretrained: str | None, device: torch.device, dtype: torch.dtype, cache_dir: str | None):
    """timm model ``spec`` ("vit_base_patch16_224", "deit_small_patch16_224") with random weights
    (``pretrained=None``), timm's pretrained weights (``pretrained="timm"``, downloaded once) or a local
    safetensors file. Returns (model, preprocess, None): timm's own eval transform for the model."""
    import timm

    options: dict = {}
    if pretrained is not None and pretrained != "timm":
        options["pretrained_cfg_overlay"] = {"file": str(pretrained)}
    model = timm.create_model(spec, pretrained=pretrained is not None, cache_dir=cache_dir, **options)
    model = model.to(device=device, dtype=dtype).eval()
    data = timm.data.resolve_data_config({}, model=model)
    return model, timm.data.create_transform(**data), None
