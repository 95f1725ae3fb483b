"""CLIP Surgery (Li et al. 2023; method.md 5.6).

Architecture surgery: from the first of the last ``depth`` blocks on, a parallel path adds the
blocks' v-v self-attention (queries and keys replaced by the values, computed from the original
path's tokens) and skips the MLPs; the original path is left as it is and still gives the class
token. Feature surgery: with unit patch features f_i and unit text embeddings t over a set of class
prompts c, w(t) = exp(2 cos(f_cls, t)) / mean_c exp(2 cos(f_cls, t_c)) (the softmax over the set divided
by its mean), the redundant response r_i = mean_c(w(t_c) f_i * t_c) is subtracted before summing:
map_k,i = sum(w(t_k) f_i * t_k - r_i). The set of class prompts is
``surgery_targets`` when given (e.g. all class prompts of a data set, so that a prompt's map does not
depend on the other prompts in the call) and otherwise the K targets themselves, as the authors do.
With a single target and no ``surgery_targets`` the surgery cancels everything, so that is refused.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters import CLIPAdapter
from ._common import cosine_scores, to_grid
from .grad_eclip import MapOutput


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


@torch.no_grad()
def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, depth: int | None = None,
               surgery_targets: Tensor | None = None, **_: Any) -> MapOutput:
    """CLIP Surgery maps (B, K, h, w); ``depth`` surgery blocks (default: the last half)."""
    surgery_set = targets if surgery_targets is None else surgery_targets.to(targets.device)
    if surgery_set.ndim != 2 or surgery_set.shape[-1] != targets.shape[-1]:
        raise ValueError(f"surgery_targets must be (R, {targets.shape[-1]}) text embeddings")
    if surgery_set.shape[0] < 2:
        raise ValueError("CLIP Surgery subtracts the mean response over a set of class prompts: with a single "
                         "prompt that removes everything. Pass surgery_targets=(R, D) embeddings of R >= 2 "
                         "class prompts, or explain several prompts at once.")
    depth = default_depth(adapter.num_image_blocks) if depth is None else depth
    embedding, features = adapter.surgery_features(pixels, depth)
    ph, pw = adapter.patch_size
    grid = (pixels.shape[-2] // ph, pixels.shape[-1] // pw)
    maps = feature_surgery(features, embedding, targets, surgery_set)
    return MapOutput(maps=to_grid(maps, grid), scores=cosine_scores(embedding, targets))
