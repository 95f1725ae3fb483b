"""M2IB, the multi-modal information bottleneck (Wang et al., NeurIPS 2023; docs/method.md section 6.8).

Original code: github.com/YingWANGG/M2IB, ``scripts/iba.py`` (``InformationBottleneck``,
``IBAInterpreter``) and ``scripts/methods.py`` (``vision_heatmap_iba`` / ``text_heatmap_iba``); the
defaults here (``ib_layer=None``, beta 0.1, var 1, 10 steps, lr 1, 10 samples) reproduce it.

A bottleneck replaces the tokens R leaving block ``ib_layer`` by z = lambda R + (1 - lambda) eps,
eps ~ N(0, 1) in units of sqrt(``var``) (the authors' estimator: mean 0, variance ``var`` = 1), with
lambda = sigmoid(alpha) per token and channel, alpha starting at 5. For each image-text pair alpha is
optimised for ``steps`` Adam steps (learning rate ``lr``) on beta * mean(KL capacity) - mean cos(f(z),
t) over ``samples`` noise draws; the capacity KL(N(lambda R, (1 - lambda)^2) || N(0, 1)), summed over
channels, at the class token's patches (image) or every position (text), is the map. As in the
authors' code the capacity is the one of the last optimisation step, and log((1 - lambda)^2) is used
as it is: M2IB's ``iba.py`` has the older IBA code's clamp of the log variance to [-10, 10] commented
out (with alpha starting at 5 that clamp would be active everywhere from the first step, and give
another map). All pairs are optimised together (Adam acts element-wise, so they stay independent);
the noise of every pair is the same draw from ``seed`` (what explaining that pair alone with
``seed`` draws), so a pair's map never depends on the other pairs of the call or on its place among
them.
Defaults as the authors ran ViT-B/16: block index 9 of 12 (generally: L/6 blocks after it), beta 0.1,
10 steps, learning rate 1, 10 samples.

The fit term is the explained score (``score``, ``scores.py``) of the pair: the cosine by default, or the
logit, the probability among the prompts (text side: among the captions given for the image, the other
captions' logits constants), or a contrast of two prompts (image side). The bottleneck trades the fit
against beta x the capacity, so a score on another scale (the logit: s x cos) shifts that balance: its
maps are not the cosine's times s.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters import CLIPAdapter
from ..budget import Cost, block_bytes, image_forward_bytes, map_bytes, tokens, tokens_bytes
from ._common import to_grid
from .outputs import MapOutput, TokenOutput, cosine_scores
from .registry import AuthorsProtocol, MethodSpec
from .scores import DEFAULT_SCORE, ExplainedScore, explained_score


def default_layer(blocks: int) -> int:
    """Block index 9 of ViT-B's 12 (two blocks after it), scaled: L/6 blocks after it."""
    return max(0, blocks - max(1, round(blocks / 6)) - 1)


def _resolve(layer: int | None, blocks: int) -> int:
    if layer is None:
        return default_layer(blocks)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -blocks <= layer < blocks:
        raise ValueError(f"ib_layer must be a block index in [-{blocks}, {blocks}), got {layer!r}")
    return layer % blocks


def capacity(hidden: Tensor, lam: Tensor) -> Tensor:
    """KL(N(lam h, (1 - lam)^2) || N(0, 1)) element-wise, as M2IB's ``_calc_capacity`` (no clamp)."""
    var = (1 - lam) ** 2
    mu = hidden * lam
    return -0.5 * (1 + torch.log(var) - mu ** 2 - var)


def optimise_bottleneck(hidden: Tensor, targets: Tensor, finish: Callable[[Tensor], Tensor], *, beta: float,
                        var: float, steps: int, lr: float, samples: int, seed: int,
                        fit: Callable[[Tensor], Tensor] | None = None, sample_chunk: int | None = None) -> Tensor:
    """Optimise one bottleneck per row of ``hidden`` (P, N, C) against ``targets`` (P, D) (unit).

    ``finish`` maps (S P, N, C) tokens to embeddings (S P, D), sample-major (row s P + p). ``fit`` maps the
    embeddings of n whole samples (n P rows, sample-major) to the (n P,) explained scores of the rows' pairs;
    by default each row's cosine with its target. Returns the capacity (P, N, C) of the last step. Every row
    gets the same noise, (S, N, C) per step from ``seed``: a row's result is the one it gets alone.
    ``sample_chunk``: noise samples per forward of ``finish`` (None: all ``samples``); the noise is drawn
    whole per step either way, so the chunks see the same draws.
    """
    if steps < 1 or samples < 1:
        raise ValueError("M2IB needs steps >= 1 and samples >= 1")
    chunk = samples if sample_chunk is None else max(1, min(int(sample_chunk), samples))
    scale = math.sqrt(var)
    standard = (hidden.detach().float() / scale)
    alpha = torch.full_like(standard, 5.0, requires_grad=True)
    optimiser = torch.optim.Adam([alpha], lr=lr)
    generator = torch.Generator(device=hidden.device).manual_seed(seed)
    pairs = hidden.shape[0]
    if fit is None:
        def fit(embedding: Tensor) -> Tensor:
            return F.cosine_similarity(embedding.float(), targets.float().repeat(embedding.shape[0] // pairs, 1),
                                       dim=-1, eps=1e-6)
    last = None
    for _ in range(steps):
        lam = torch.sigmoid(alpha)
        kl = capacity(standard, lam)
        noise = torch.randn((samples, 1, *standard.shape[1:]), generator=generator, device=hidden.device)
        z = (standard * lam + (1 - lam) * noise) * scale  # M2IB's _sample_t: mu + sqrt((1 - lam)^2) eps
        if chunk < samples:
            (alpha.grad,) = _chunked_gradient(z, kl, alpha, fit, finish, hidden.dtype, beta, samples, chunk)
        else:
            embedding = finish(z.flatten(0, 1).to(hidden.dtype))
            values = fit(embedding)
            loss = beta * kl.flatten(1).mean(dim=1) - values.reshape(samples, pairs).mean(dim=0)
            # gradients for alpha only (the model's parameters may require grad too)
            (alpha.grad,) = torch.autograd.grad(loss.sum(), [alpha])
        optimiser.step()
        last = kl.detach()
    return last


def _chunked_gradient(z: Tensor, kl: Tensor, alpha: Tensor, fit: Callable[[Tensor], Tensor],
                      finish: Callable[[Tensor], Tensor], dtype: torch.dtype, beta: float, samples: int,
                      chunk: int) -> tuple[Tensor]:
    """The gradient of the loss for ``alpha`` with ``finish`` run on ``chunk`` samples at a time: each chunk's
    rows pulled back to their noisy tokens (each fit's gradient -1/S, as the mean over samples gives it),
    then those gradients through the noisy tokens and the capacity together, as one pass does."""
    rows = z.detach().flatten(0, 1).to(dtype)
    grads = torch.empty_like(rows)
    per = rows.shape[0] // samples  # rows of one sample: every pair
    weight = -1.0 / samples
    for start in range(0, samples, chunk):
        lo, hi = start * per, min(start + chunk, samples) * per
        leaf = rows[lo:hi].detach().requires_grad_(True)
        values = fit(finish(leaf))  # whole samples: each pair's score among every target row of the call
        (grads[lo:hi],) = torch.autograd.grad(values, [leaf], grad_outputs=torch.full_like(values, weight))
        del leaf, values
    kl_term = beta * kl.flatten(1).mean(dim=1)
    return torch.autograd.grad([kl_term.sum(), z], [alpha], grad_outputs=[None, grads.view_as(z).to(z.dtype)])


def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, ib_layer: int | None = None,
               beta: float = 0.1, var: float = 1.0, steps: int = 10, lr: float = 1.0, samples: int = 10,
               seed: int = 0, paired: bool = False, score: str | ExplainedScore = DEFAULT_SCORE,
               sample_chunk: int | None = None, **_: Any) -> MapOutput:
    """M2IB maps (B, K, h, w) of the explained ``score``: one bottleneck per (image, explained score) pair,
    all optimised together.

    ``paired=True`` explains image b against target b only (``targets`` (B, D), or the B pairs of the
    contrast; maps (B, 1, h, w), scores (B, 1)): B bottlenecks instead of B x K when every image has its
    own target (the probability is then image b's target's among the B targets).
    """
    score = explained_score(score, adapter)
    layer = _resolve(ib_layer, adapter.num_image_blocks)
    hidden, grid = adapter.image_tokens_before(pixels, layer + 1)
    batch, count = hidden.shape[0], score.count(targets.shape[0])
    if paired and count != batch:
        raise ValueError(f"paired=True needs one target per image: {count} targets for {batch} images")
    with torch.no_grad():
        scores = score.image_scores(adapter.image_embedding_from(hidden, layer + 1), targets)
    # each bottleneck's explained score: its image's column ``columns[p]`` of ``score.image_scores``
    columns = torch.arange(count, device=hidden.device)
    if paired:
        scores, count = scores.diagonal().unsqueeze(1).contiguous(), 1
        paired_hidden, paired_targets = hidden, targets
    else:
        paired_hidden, paired_targets = hidden.repeat_interleave(count, dim=0), targets.repeat(batch, 1)
        columns = columns.repeat(batch)
    fit = None
    if score.name != DEFAULT_SCORE or score.columns is not None:  # the targets' rows are not the pairs' own
        def fit(embedding: Tensor) -> Tensor:
            values = score.image_scores(embedding, targets)  # (S P, K): every target row of the call
            return values.gather(1, columns.repeat(embedding.shape[0] // columns.shape[0])[:, None]).squeeze(1)
    with torch.enable_grad():
        kl = optimise_bottleneck(paired_hidden, paired_targets, lambda z: adapter.image_embedding_from(z, layer + 1),
                                 beta=beta, var=var, steps=steps, lr=lr, samples=samples, seed=seed, fit=fit,
                                 sample_chunk=sample_chunk)
    maps = kl.sum(dim=-1)[:, 1:].reshape(batch, count, -1)
    return MapOutput(maps=to_grid(maps, grid), scores=scores)


def token_relevance(adapter: CLIPAdapter, tokens: Tensor, targets: Tensor, *, ib_layer: int | None = None,
                    beta: float = 0.1, var: float = 1.0, steps: int = 10, lr: float = 1.0, samples: int = 10,
                    seed: int = 0, score: str | ExplainedScore = DEFAULT_SCORE, sample_chunk: int | None = None,
                    **_: Any) -> TokenOutput:
    """M2IB text relevance (B, K, L) for K texts against B unit image embeddings, of the explained ``score``
    (the probability: among the K texts for each image, ``ExplainedScore.of_texts``)."""
    score = explained_score(score, adapter)
    layer = _resolve(ib_layer, adapter.num_text_blocks)
    tokens = tokens.to(targets.device)
    hidden = adapter.text_tokens_before(tokens, layer + 1)
    count, batch = tokens.shape[0], targets.shape[0]
    with torch.no_grad():
        cosines = cosine_scores(adapter.text_embedding_from(hidden, tokens, layer + 1), targets)  # (K, B)
        scores = score.of_texts(cosines).T
    paired = hidden.repeat(batch, 1, 1)  # image-major: row b * K + k
    paired_tokens = tokens.repeat(batch, 1)
    paired_targets = targets.repeat_interleave(count, dim=0)
    fit = None
    if score.name != DEFAULT_SCORE:
        # each pair's score of its own cosine, the other captions' logits (``rest``) constants, pair by pair
        rest = score.text_rest(cosines).T.reshape(-1) if score.relative else None
        def fit(embedding: Tensor) -> Tensor:
            n = embedding.shape[0] // paired_targets.shape[0]  # the samples of these rows
            cosine = F.cosine_similarity(embedding.float(), paired_targets.float().repeat(n, 1), dim=-1, eps=1e-6)
            return (score if rest is None else replace(score, rest=rest.repeat(n))).of_texts(cosine)

    def finish(z: Tensor) -> Tensor:
        return adapter.text_embedding_from(z, paired_tokens.repeat(z.shape[0] // paired_tokens.shape[0], 1),
                                           layer + 1)

    with torch.enable_grad():
        kl = optimise_bottleneck(paired, paired_targets, finish, beta=beta, var=var, steps=steps, lr=lr,
                                 samples=samples, seed=seed, fit=fit, sample_chunk=sample_chunk)
    relevance = kl.sum(dim=-1).reshape(batch, count, -1)
    return TokenOutput(relevance=relevance.float(), scores=scores.contiguous())


def memory(adapter: CLIPAdapter, grid: tuple[int, int], count: int, options: dict[str, Any]) -> Cost:
    """Fixed: a step's noise (S x N x C, float32). One image: its forward without a graph and, for each of its
    pairs (one per target, one when ``paired``), the bottleneck's state in float32 (the tokens, alpha, its
    gradient, Adam's two moments, lambda, the capacity and two temporaries: 8 N x C values) and its samples'
    noisy tokens, their graph and their gradients (3 S N x C). Each noise sample of a forward, per image: its
    pairs' rows through the blocks after the bottleneck with their graph, and their gradients (``budget.py``)."""
    layer = _resolve(options["ib_layer"], adapter.num_image_blocks)
    pairs = 1 if options["paired"] else count
    samples = options["samples"]
    after = adapter.num_image_blocks - layer - 1
    floats = 4 * tokens(grid) * adapter.image.block_shape()[0]  # N x C float32 values
    image = image_forward_bytes(adapter, grid) + pairs * (8 + 3 * samples) * floats + map_bytes(grid, count)
    unit = pairs * (after * block_bytes(adapter, grid, graph=True) + 2 * tokens_bytes(adapter, grid))
    return Cost(image=image, unit=unit, option="sample_chunk", limit=min(options["sample_chunk"] or samples, samples),
                unit_name="noise sample per forward", fixed=samples * floats,
                fixed_what=f"the noise of {samples} samples")


SPEC = MethodSpec(
    name="m2ib", image=image_maps, text=token_relevance,
    requires=("intermediate_tokens",), text_requires=("intermediate_tokens",),
    options={"ib_layer": None, "beta": 0.1, "var": 1.0, "steps": 10, "lr": 1.0, "samples": 10, "seed": 0,
             "paired": False, "sample_chunk": None},
    instead={"layers": "its ib_layer option sets the block of the bottleneck"},
    probe={"steps": 1, "samples": 1},
    slow=True, paired=True,
    run_options={"steps": "m2ib_steps", "samples": "m2ib_samples", "seed": "seed"},
    shown=False,
    # the authors' M2IB: against the bare class name, on the model's centre crop; M2IB's own
    # vision_heatmap hands back the map upsampled to the model's input size
    authors=AuthorsProtocol(target="class_name", resolution="model", upsampled=True),
    memory=memory,
)
