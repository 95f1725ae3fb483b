"""Realistic random parameters for a CLIP of any family, for tests that compare against literal code.

A freshly initialised CLIP is special in ways trained weights never are: open_clip and OpenAI's clip
start every attention projection bias (``in_proj_bias``, ``out_proj.bias``) at 0 and every LayerNorm at
the identity (Hugging Face zeroes every linear bias too), so code that drops a bias, takes the wrong
slice of one, or skips a norm's affine part computes the same numbers as the right code.
``realistic_init(module, seed)`` redraws every parameter so that none of these is special:

- ``nn.Linear`` (attention out-projections, MLPs, separate q/k/v projections, attention-pool
  projections): weight ~ N(0, 1 / fan_in) (unit gain); bias ~ N(0, ``bias_std``).
- Any module with a packed ``in_proj_weight`` (``nn.MultiheadAttention``): the same, with the query and
  key rows scaled by ``qk_gain`` so that attention is peaked, not uniform; ``in_proj_bias``, separate
  ``q/k/v_proj_weight`` and ``bias_k``/``bias_v`` when present. Linear layers named ``q_proj`` /
  ``k_proj`` (Hugging Face, ResNet attention pools) get ``qk_gain`` too.
- Convolutions: weight ~ N(0, 1 / fan_in), bias ~ N(0, ``bias_std``).
- LayerNorm (and subclasses), GroupNorm, BatchNorm: weight ~ U(1 - ``norm_spread``, 1 + ``norm_spread``),
  bias ~ N(0, ``bias_std``); BatchNorm's running mean ~ N(0, ``bias_std``) and running variance
  ~ U(1 - ``norm_spread``, 1 + ``norm_spread``), so that an eval-mode BatchNorm is no identity either.
- ``nn.Embedding`` and every other parameter whose name contains ``embedding`` (class, positional and
  token embeddings, Hugging Face's ``position_embedding``): N(0, ``embedding_std``).
- Other 2-D parameters (CLIP's ``proj`` and ``text_projection``, used as ``x @ P``): N(0, 1 / shape[0]).
- LayerScale ``gamma``: the family's value times U(1 - ``norm_spread``, 1 + ``norm_spread``) per channel.
- Anything else (``logit_scale``, ``logit_bias``) is left as it is; the function returns those names, so
  a test can assert that nothing it should cover slipped through.

Scales. The init of open_clip (and OpenAI's) draws the class and positional embeddings with std
width^-0.5 and the text embeddings with 0.01-0.02, while the patch embedding's convolution gives tokens
of order one: the position signal starts negligible and only training makes it matter (the
embedded synthetic CLIP, trained 2,500 steps, has positional embeddings at a quarter of its patch
tokens' std). Here the embeddings get ``embedding_std`` = 0.5 against patch tokens of std about 1 for
unit-variance pixels. Biases of 0.1 and norm gains in [0.6, 1.4] are larger than that model's after its
short training (biases of std 0.01-0.06, gains within about 0.9-1.16): large enough that a dropped or
misplaced bias or norm moves every map far beyond the tests' 1e-5 tolerance, small enough that nothing
saturates; ``qk_gain`` 1.5 gives class-token attention logits of std about 2, so attention stays peaked
(entropy about 0.6 of the uniform one in the tiny test model). These are reasoned choices, not
statistics of a real checkpoint (none can be downloaded here).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["realistic_init"]


def _normal(t: torch.Tensor, std: float, g: torch.Generator) -> None:
    t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).mul_(std).to(t.dtype))


def _uniform(t: torch.Tensor, low: float, high: float, g: torch.Generator) -> None:
    t.copy_((low + (high - low) * torch.rand(t.shape, generator=g, dtype=torch.float64)).to(t.dtype))


def _fan_in(weight: torch.Tensor) -> int:
    return int(math.prod(weight.shape[1:])) if weight.ndim > 1 else int(weight.shape[0])


@torch.no_grad()
def realistic_init(module: nn.Module, seed: int = 0, *, bias_std: float = 0.1, norm_spread: float = 0.4,
                   embedding_std: float = 0.5, qk_gain: float = 1.5) -> list[str]:
    """Redraw ``module``'s parameters (in place, seeded) as described in the module docstring.

    Returns the names of the parameters left as they were (e.g. ``logit_scale``). The draws depend
    only on ``seed`` and the module's structure, never on the global random state.
    """
    g = torch.Generator().manual_seed(seed)
    done: set[int] = set()

    def mark(*tensors):
        for t in tensors:
            if t is not None:
                done.add(id(t))

    def bias(t):
        if t is not None:
            _normal(t, bias_std, g)
            mark(t)

    def gain(t):
        if t is not None:
            _uniform(t, 1 - norm_spread, 1 + norm_spread, g)
            mark(t)

    for name, m in module.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(m, nn.Linear):
            _normal(m.weight, (qk_gain if leaf in ("q_proj", "k_proj") else 1.0) / math.sqrt(m.in_features), g)
            mark(m.weight)
            bias(m.bias)
        elif isinstance(m, nn.modules.conv._ConvNd):
            _normal(m.weight, 1 / math.sqrt(_fan_in(m.weight)), g)
            mark(m.weight)
            bias(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)) or (
                hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm)):
            gain(getattr(m, "weight", None))
            bias(getattr(m, "bias", None))
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                _normal(m.running_mean, bias_std, g)
                _uniform(m.running_var, 1 - norm_spread, 1 + norm_spread, g)
        elif isinstance(m, nn.Embedding):
            _normal(m.weight, embedding_std, g)
            mark(m.weight)
        if getattr(m, "in_proj_weight", None) is not None:
            w = m.in_proj_weight
            _normal(w, 1 / math.sqrt(w.shape[1]), g)
            w[: 2 * (w.shape[0] // 3)] *= qk_gain
            mark(w)
        for part, scale in (("q_proj_weight", qk_gain), ("k_proj_weight", qk_gain), ("v_proj_weight", 1.0)):
            w = getattr(m, part, None)
            if isinstance(w, nn.Parameter):
                _normal(w, scale / math.sqrt(w.shape[1]), g)
                mark(w)
        for part in ("in_proj_bias", "bias_k", "bias_v"):
            if isinstance(getattr(m, part, None), nn.Parameter):
                bias(getattr(m, part))

    untouched = []
    for name, p in module.named_parameters():
        if id(p) in done:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if "embedding" in leaf:
            _normal(p, embedding_std, g)
        elif p.ndim == 2:
            _normal(p, 1 / math.sqrt(p.shape[0]), g)
        elif leaf == "gamma":
            factor = torch.empty_like(p)
            _uniform(factor, 1 - norm_spread, 1 + norm_spread, g)
            p.mul_(factor)
        else:
            untouched.append(name)
            continue
        mark(p)
    return untouched
