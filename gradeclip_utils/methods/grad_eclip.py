"""Grad-ECLIP (docs/method.md sections 2-4) as functions over what an adapter captures.

Image: for the explained block, ``w = dS/d o_cls`` (channel weights), ``l = minmax(cos(q_cls, k_i))``
over patch tokens (spatial weights), ``H_i = ReLU(sum_c w_c l_i v_i[c])``; several blocks: ReLU per
block, then sum. Text: the same with the EOS token over all positions, summed over blocks before the
ReLU. All K targets are explained from one forward pass: the K gradients are one batched
vector-Jacobian product (or, when K exceeds the embedding width D, the D x C Jacobian of the embedding
times the closed-form dS/df; or the Jacobian of a narrower feature the embedding is a linear map of, a
classifier's normalised class token, times the closed-form dS/dh), never a loop of per-target backward
passes.

S is the explained score (``score``, ``scores.py``): the cosine by default, or the logit, the
probability among the prompts, a contrast of two prompts (image side only). The gradient flows through
the score by autograd; the K one-hot cotangents on the explained scores cost what K cosines cost. The
map is linear in w before its ReLU, so the logit's maps are the cosine's times the logit scale, and a
caption's word importance (normalised to sum 1) is the same for the cosine, the logit and the
probability (whose gradient is s p (1 - p) times the cosine's).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..adapters import BlockCapture, CLIPAdapter, Mode, TowerTrace
from ..budget import Cost, backward_bytes, explicit_bytes, image_forward_bytes, map_bytes
from ..maps import minmax
from .autograd import batched_vjp, one_hot_cotangents
from .outputs import MapOutput, TokenOutput, cosine_scores
from .registry import AuthorsProtocol, MethodSpec
from .scores import DEFAULT_SCORE, ExplainedScore, cosine_gradients, explained_score

QK = Literal["raw", "out_proj"]
QK_CHOICES: tuple[str, ...] = ("raw", "out_proj")


def channel_weights(trace: TowerTrace, layers: Sequence[int], targets: Tensor, chunk: int = 128,
                    score: ExplainedScore | None = None, side: str = "image") -> tuple[dict[int, Tensor], Tensor]:
    """Gradients of every explained score S[n, m] with respect to the pooled token's attention output.

    ``targets`` (T, D) are unit-normalised embeddings of the other modality (a classifier's: rows over its
    classes); ``score`` the explained score (default the cosine) of the traced ``side`` ("image": the N
    images' scores over the target rows, ``ExplainedScore.image_scores``, M = K explained scores from T rows;
    "text": the N texts' against the M = T images, entry by entry, ``of_texts``). Returns, per layer, a
    float32 tensor (N, M, C) with ``[n, m] = dS[n, m] / d token_output[n]`` and the scores (N, M). Cost: one
    batched backward of min(M, D, F) cotangents through the blocks after the earliest layer: M one-hot
    cotangents on the scores when that is fewest, else the D x C Jacobian of the embedding (D one-hot
    cotangents) times the closed-form dS/df (``ExplainedScore.embedding_gradients``: the cosines' combined by
    ``pull``, or a classifier's), or, where the trace declares its embedding a linear map W h + b of a feature
    h of width F below both (``TowerTrace.linear_head``: a classifier's logits of its normalised class token),
    the F x C Jacobian of h times the closed-form dS/dh (``ExplainedScore.feature_gradients``). The three are
    the same chain rule in another order.
    """
    score = score if score is not None else explained_score()
    embedding = trace.embedding
    inputs = [trace.blocks[layer].token_output for layer in layers]
    dim = embedding.shape[-1]
    if side == "image":
        scores = score.image_scores(embedding, targets)
    else:
        cosines = cosine_scores(embedding, targets)
        scores = score.of_texts(cosines)
    count = scores.shape[1]
    head = trace.linear_head if side == "image" else None
    narrow = head is not None and head.feature.shape[-1] < min(count, dim)
    if count <= dim and not narrow:
        grads = batched_vjp(scores, inputs, one_hot_cotangents(scores), count, chunk)
        weights = [g.float().permute(1, 0, 2) for g in grads]
    elif narrow:  # embedding = W h + b with h narrower: the F x C Jacobian of h times the closed-form dS/dh
        ds_dh = score.feature_gradients(embedding, targets, head.weight)
        weights = [torch.bmm(ds_dh, jac.float().transpose(0, 1)) for jac in _jacobians(head.feature, inputs, chunk)]
    else:
        if side == "image":  # the closed-form dS/df of the score (the cosines' combined, or a classifier's)
            ds_df, _ = score.embedding_gradients(embedding, targets)
        else:
            ds_df = score.pull_texts(cosine_gradients(embedding, targets)[0], cosines)
        weights = [torch.bmm(ds_df, jac.float().transpose(0, 1)) for jac in _jacobians(embedding, inputs, chunk)]
    return dict(zip(layers, weights)), scores.detach()


def _jacobians(output: Tensor, inputs: Sequence[Tensor], chunk: int) -> list[Tensor]:
    """The Jacobians (D, N, C) of the (N, D) ``output`` with respect to each (N, C) input: D one-hot cotangents,
    one per output column for every row at once (the rows do not interact)."""
    n, dim = output.shape
    eye = torch.eye(dim, dtype=output.dtype, device=output.device)
    return batched_vjp(output, inputs, lambda start, stop: eye[start:stop, None, :].expand(-1, n, dim), dim, chunk)


def loosened_attention(capture: BlockCapture, token_index: Tensor, qk: QK, first_key: int) -> Tensor:
    """Spatial weights l = minmax(cos(q_token, k_j)) over key positions ``first_key:`` (float32, (N, P)).

    ``qk="out_proj"`` takes q and k through the block's output projection (weight and bias) first, as
    the authors' evaluation scripts do; ``"raw"`` uses the in-projected q and k, as their notebooks do.
    """
    q, k = capture.q.float(), capture.k.float()
    if qk == "out_proj":
        weight = capture.out_proj_weight.float()
        bias = None if capture.out_proj_bias is None else capture.out_proj_bias.float()
        q, k = F.linear(q, weight, bias), F.linear(k, weight, bias)
    elif qk != "raw":
        raise ValueError(f"qk must be one of {QK_CHOICES}, got {qk!r}")
    rows = torch.arange(q.shape[0], device=q.device)
    query = q[rows, token_index]
    relevance = F.cosine_similarity(query[:, None, :], k[:, first_key:], dim=-1)
    return minmax(relevance)


def value_projection(weights: Tensor, capture: BlockCapture, first_key: int) -> Tensor:
    """sum_c w[n, m, c] v[n, j, c] for key positions ``first_key:``: (N, M, P) float32."""
    return torch.einsum("nmc,npc->nmp", weights, capture.v[:, first_key:].float())


def image_maps(adapter: CLIPAdapter, pixels: Tensor, targets: Tensor, *, layers: Sequence[int] = (-1,),
               mode: Mode = "faithful", qk: QK = "raw", score: str | ExplainedScore = DEFAULT_SCORE,
               spatial_weight: bool = True, chunk: int = 128) -> MapOutput:
    """Grad-ECLIP maps of the explained ``score`` for B images (one grid) and K explained scores of the
    unit-normalised target embeddings (K rows; 2K for the contrast's pairs).

    Cost: one forward of the image tower and one batched backward of min(K, D) cotangents through the
    blocks after the earliest explained block (only the class-token row after the last block).
    """
    score = explained_score(score, adapter)
    blocks = adapter.resolve_layers(layers, "image")
    trace = adapter.trace_image(pixels, blocks, mode=mode)
    try:
        weights, scores = channel_weights(trace, blocks, targets, chunk=chunk, score=score)
        total = None
        for layer in blocks:
            capture = trace.blocks[layer]
            contribution = value_projection(weights[layer], capture, first_key=1)
            if spatial_weight:
                contribution = contribution * loosened_attention(capture, trace.token_index, qk, 1)[:, None, :]
            contribution = contribution.relu()
            total = contribution if total is None else total + contribution
        grid = trace.grid
        maps = total.reshape(total.shape[0], total.shape[1], grid[0], grid[1])
        return MapOutput(maps=maps.detach(), scores=scores)
    finally:
        del trace


def token_relevance(adapter: CLIPAdapter, tokens: Tensor, targets: Tensor, *, layers: int | Sequence[int] = 8,
                    mode: Mode = "faithful", qk: QK = "raw", score: str | ExplainedScore = DEFAULT_SCORE,
                    spatial_weight: bool = True, chunk: int = 128) -> TokenOutput:
    """Grad-ECLIP text relevance e = ReLU(sum over blocks of m) for K texts and B image targets.

    ``targets`` (B, D) are unit-normalised image embeddings. Returns relevance (B, K, L) over all
    positions (callers keep 1..eos-1) and the explained scores (B, K) (``score``: the cosine, the logit or
    the probability among the K texts for each image, ``ExplainedScore.of_texts``). Cost: one forward of
    the text tower and one batched backward of min(B, D) cotangents.
    """
    score = explained_score(score, adapter)
    blocks = adapter.resolve_layers(layers, "text")
    trace = adapter.trace_text(tokens, blocks, mode=mode)
    try:
        weights, scores = channel_weights(trace, blocks, targets, chunk=chunk, score=score, side="text")
        total = None
        for layer in blocks:
            capture = trace.blocks[layer]
            contribution = value_projection(weights[layer], capture, first_key=0)
            if spatial_weight:
                contribution = contribution * loosened_attention(capture, trace.token_index, qk, 0)[:, None, :]
            total = contribution if total is None else total + contribution
        relevance = total.relu().permute(1, 0, 2)
        return TokenOutput(relevance=relevance.detach(), scores=scores.T.contiguous())
    finally:
        del trace


def memory(adapter: CLIPAdapter, grid: tuple[int, int], count: int, options: dict) -> Cost:
    """One image: its forward with the graph of the blocks after the earliest explained one (after the last
    block only its class-token row, which is small), each explained block computed explicitly (its q, k, v
    and attention output captured), a backward of ``chunk`` cotangents (at most min(K, D)) through those
    blocks, and per explained block the K maps with their spatial product and sum and the K channel weights
    (float32) (``budget.py``)."""
    layers = options["layers"]
    graph = adapter.num_image_blocks - 1 - min(layers)
    cotangents = min(options["chunk"], count, adapter.embed_dim) if graph else 0
    width = adapter.image.block_shape()[0]
    per_layer = explicit_bytes(adapter, grid) + 3 * map_bytes(grid, count) + 4 * count * width
    return Cost(image=image_forward_bytes(adapter, grid, graph) + cotangents * backward_bytes(adapter, grid)
                + len(layers) * per_layer)


SPEC = MethodSpec(
    name="grad_eclip", image=image_maps, text=token_relevance,
    options={"spatial_weight": True, "chunk": 128},
    # the authors' evaluation scripts: official mode (one head), q and k through the output projection
    authors=AuthorsProtocol(options={"mode": "official", "qk": "out_proj"}),
    memory=memory,
)
