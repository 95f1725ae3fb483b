"""CLIP Surgery (Li et al. 2023; docs/method.md section 6.6).

Original code: github.com/xmed-lab/CLIP_Surgery, ``clip/clip_surgery_model.py`` (the dual-path
architecture surgery) and ``clip/clip.py`` (``clip_feature_surgery``), run as in its ``demo.py``: the
class-set form (no ``redundant``; the set is ``surgery_targets`` or the K targets) reproduces
``clip_feature_surgery(image_features, text_features)``, the single-text form (``redundant=`` the
empty string's text embedding, e.g. ``gradeclip_utils.encode_texts(model, "")``) reproduces
``clip_feature_surgery(image_features, text_features, redundant_features)`` of the demo's "CLIP
Surgery for a single text" (which encodes "" the way it encodes the prompts).

Architecture surgery: from the first of the last ``depth`` blocks on, a parallel path adds the
blocks' v-v self-attention (queries and keys replaced by the values, computed from the original
path's tokens) and skips the MLPs; the original path is left as it is and still gives the class
token. Feature surgery: with unit patch features f_i and unit text embeddings t over a set of class
prompts c, w(t) = exp(2 cos(f_cls, t)) / mean_c exp(2 cos(f_cls, t_c)) (the softmax over the set divided
by its mean), the redundant response r_i = mean_c(w(t_c) f_i * t_c) is subtracted before summing:
map_k,i = sum(w(t_k) f_i * t_k - r_i). The set of class prompts is
``surgery_targets`` when given (e.g. all class prompts of a data set, so that a prompt's map does not
depend on the other prompts in the call) and otherwise the K targets themselves, as the authors do.
Single-text form: map_k,i = f_i . (t_k - r) with r the (unit) redundant text feature. ResNet CLIPs get
the original's ResNet form (its ``CS-RN`` models): the attention pool with the value projection as
query, key and value gives every token, and its mean token is the class feature the weights w use
(``surgery_features`` of the ResNet adapter; ``depth`` is 1, the pool). Through
``explain_image``, a single prompt with neither ``surgery_targets`` nor ``redundant`` gets the demo's
single-text form (``prepare`` fills in the empty string's embedding; the settings say
``surgery_form``); called directly with a single target and neither, the class-set surgery would
cancel everything, so that is refused (the error names both forms).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters import CLIPAdapter
from ..prompts import encode_texts
from ._common import to_grid
from .outputs import MapOutput, cosine_scores
from .registry import AuthorsProtocol, MethodSpec


#: CLIP Surgery's prompt ensemble (``encode_text_with_prompt_ensemble`` in its clip/clip.py): each text's
#: embedding is the normalised mean of its unit-normalised template embeddings
SURGERY_TEMPLATES: tuple[str, ...] = (
    'a bad photo of a {}.', 'a photo of many {}.', 'a sculpture of a {}.', 'a photo of the hard to see {}.',
    'a low resolution photo of the {}.', 'a rendering of a {}.', 'graffiti of a {}.', 'a bad photo of the {}.',
    'a cropped photo of the {}.', 'a tattoo of a {}.', 'the embroidered {}.', 'a photo of a hard to see {}.',
    'a bright photo of a {}.', 'a photo of a clean {}.', 'a photo of a dirty {}.', 'a dark photo of the {}.',
    'a drawing of a {}.', 'a photo of my {}.', 'the plastic {}.', 'a photo of the cool {}.',
    'a close-up photo of a {}.', 'a black and white photo of the {}.', 'a painting of the {}.',
    'a painting of a {}.', 'a pixelated photo of the {}.', 'a sculpture of the {}.', 'a bright photo of the {}.',
    'a cropped photo of a {}.', 'a plastic {}.', 'a photo of the dirty {}.', 'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.', 'a photo of the {}.', 'a good photo of the {}.', 'a rendering of the {}.',
    'a {} in a video game.', 'a photo of one {}.', 'a doodle of a {}.', 'a close-up photo of the {}.',
    'a photo of a {}.', 'the origami {}.', 'the {} in a video game.', 'a sketch of a {}.', 'a doodle of the {}.',
    'a origami {}.', 'a low resolution photo of a {}.', 'the toy {}.', 'a rendition of the {}.',
    'a photo of the clean {}.', 'a photo of a large {}.', 'a rendition of a {}.', 'a photo of a nice {}.',
    'a photo of a weird {}.', 'a blurry photo of a {}.', 'a cartoon {}.', 'art of a {}.', 'a sketch of the {}.',
    'a embroidered {}.', 'a pixelated photo of a {}.', 'itap of the {}.', 'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.', 'a plushie {}.', 'a photo of the nice {}.', 'a photo of the small {}.',
    'a photo of the weird {}.', 'the cartoon {}.', 'art of the {}.', 'a drawing of the {}.',
    'a photo of the large {}.', 'a black and white photo of a {}.', 'the plushie {}.', 'a dark photo of a {}.',
    'itap of a {}.', 'graffiti of the {}.', 'a toy {}.', 'itap of my {}.', 'a photo of a cool {}.',
    'a photo of a small {}.', 'a tattoo of the {}.', 'there is a {} in the scene.',
    'there is the {} in the scene.', 'this is a {} in the scene.', 'this is the {} in the scene.',
    'this is one {} in the scene.',
)

#: the class set of the Grad-ECLIP authors' CLIP Surgery maps (their imagenet_eval_*.py), after the target's class name
AUTHORS_CLASS_SET: tuple[str, ...] = (
    'airplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book', 'bottle', 'building', 'bus',
    'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow', 'cup', 'curtain', 'dog', 'door', 'fence',
    'floor', 'flower', 'food', 'grass', 'ground', 'horse', 'keyboard', 'light', 'motorbike', 'mountain', 'mouse',
    'person', 'plate', 'platform', 'potted plant', 'road', 'rock', 'sheep', 'shelves', 'sidewalk', 'sign', 'sky',
    'snow', 'sofa', 'table', 'track', 'train', 'tree', 'truck', 'tv monitor', 'wall', 'water', 'window', 'wood')


def default_depth(blocks: int) -> int:
    """The last half of the blocks: 6 of ViT-B's 12, as the authors run it."""
    return max(1, round(blocks / 2))


def feature_surgery(features: Tensor, cls_embedding: Tensor, targets: Tensor, surgery_set: Tensor) -> Tensor:
    """Feature surgery of (B, P, D) patch features against K targets with a (R, D) class set: (B, K, P)."""
    f = F.normalize(features.float(), dim=-1)
    t = targets.float()
    s = F.normalize(surgery_set.float(), dim=-1)
    # w(t) = softmax weight of t relative to the mean over the set: exp(2 cos(f_cls, t)) / mean_r exp(2 cos(f_cls, s_r))
    log_mean = torch.logsumexp(2 * cosine_scores(cls_embedding, s), dim=-1, keepdim=True) - math.log(s.shape[0])
    set_weight = (2 * cosine_scores(cls_embedding, s) - log_mean).exp()  # (B, R)
    target_weight = (2 * cosine_scores(cls_embedding, t) - log_mean).exp()  # (B, K)
    redundant = torch.einsum("bpd,rd,br->bp", f, s, set_weight) / s.shape[0]
    return torch.einsum("bpd,kd,bk->bkp", f, t, target_weight) - redundant.unsqueeze(1)


def prepare(model: Any, targets: Tensor, options: dict) -> dict:
    """The defaults of a call over ``targets`` (explain_image's prompts, or all the prompts of a dataset
    run): a single prompt without a class set or a redundant feature gets the single-text form with the
    empty string's embedding, as the authors' demo runs it; several prompts are the class set
    themselves, fixed here, so that a caller explaining a batch against some of them keeps them all."""
    if options.get("redundant") is None and options.get("surgery_targets") is None and targets.shape[0] == 1:
        options["redundant"] = encode_texts(model, "")[0].to(targets.device)
        options["surgery_form"] = "single-text (empty string)"
    elif options.get("redundant") is not None:
        options["surgery_form"] = "single-text"
    else:
        if options.get("surgery_targets") is None:
            options["surgery_targets"] = targets
        options["surgery_form"] = "class set"
    return options


def single_text_surgery(features: Tensor, targets: Tensor, redundant: Tensor) -> Tensor:
    """The single-text form: unit (B, P, D) patch features against K targets minus the redundant
    feature r (unit): f_i . (t_k - r), (B, K, P)."""
    f = F.normalize(features.float(), dim=-1)
    return torch.einsum("bpd,kd->bkp", f, targets.float() - F.normalize(redundant.float(), dim=-1))


@torch.no_grad()
def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, depth: int | None = None,
               surgery_targets: Tensor | None = None, redundant: Tensor | None = None, **_: Any) -> MapOutput:
    """CLIP Surgery maps (B, K, h, w); ``depth`` surgery blocks (default: the last half).

    ``redundant`` (a (D,) or (1, D) text embedding, e.g. of the empty string) selects the single-text
    form; otherwise the class-set form over ``surgery_targets`` (default: the K targets).
    """
    if redundant is not None:
        if surgery_targets is not None:
            raise ValueError("pass either redundant= (the single-text form) or surgery_targets= (the class-set "
                             "form), not both")
        if redundant.numel() != targets.shape[-1]:
            raise ValueError(f"redundant must be one ({targets.shape[-1]},) text embedding, got "
                             f"{tuple(redundant.shape)}")
        redundant = redundant.to(targets.device).reshape(targets.shape[-1])
    else:
        surgery_set = targets if surgery_targets is None else surgery_targets.to(targets.device)
        if surgery_set.ndim != 2 or surgery_set.shape[-1] != targets.shape[-1]:
            raise ValueError(f"surgery_targets must be (R, {targets.shape[-1]}) text embeddings")
        if surgery_set.shape[0] < 2:
            raise ValueError("CLIP Surgery's class-set form subtracts the mean response over a set of class "
                             "prompts: with a single prompt that removes everything. Use the single-text form "
                             "with redundant=gradeclip_utils.encode_texts(model, '') (the empty string's "
                             "embedding, as the authors' demo does), or pass surgery_targets=(R, D) embeddings "
                             "of R >= 2 class prompts, or explain several prompts at once.")
    depth = default_depth(adapter.num_image_blocks) if depth is None else depth
    embedding, class_feature, features = adapter.surgery_features(pixels, depth)
    ph, pw = adapter.patch_size
    grid = (pixels.shape[-2] // ph, pixels.shape[-1] // pw)
    if redundant is not None:
        maps = single_text_surgery(features, targets, redundant)
    else:
        maps = feature_surgery(features, class_feature, targets, surgery_set)
    return MapOutput(maps=to_grid(maps, grid), scores=cosine_scores(embedding, targets))


SPEC = MethodSpec(
    name="clip_surgery", image=image_maps,
    requires=("joint_space", "vv_attention"),
    options={"depth": None, "surgery_targets": None, "redundant": None},
    instead={"layers": "its depth option sets the number of surgery blocks"},
    prepare=prepare,
    class_set="surgery_targets",
    # the authors explain the class name and their class set, each with CLIP Surgery's prompt ensemble, on
    # the model's centre crop; CLIP Surgery's get_similarity_map hands back the map upsampled to its input
    authors=AuthorsProtocol(target="class_name", templates=SURGERY_TEMPLATES, class_set=AUTHORS_CLASS_SET,
                            resolution="model", upsampled=True),
)
