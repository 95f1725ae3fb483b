"""The public entry points: explain images against prompts, and the words of texts against images.

Their keywords build an ``ExplainConfig`` (``config.py``, validated once), which the result carries; each
batch runs through the one safe runner (``session.run_image_method`` / ``run_text_method``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm  # text progress: it stays readable in a saved or reloaded notebook (a widget bar does not)

from .adapters import UnsupportedMethodError
from .budget import caption_bytes, chunk_size, default_budget, grid_of, image_plan, resolve_budget
from .config import ExplainConfig
from .inputs import DEFAULT_MAX_PATCHES, group_by_shape, prepare_images
from .loading import LoadedModel, as_loaded
from .methods import (cosine_scores, get_image_method, get_spec, get_text_method, prepare_options, probe_options,
                      refusal)
from .methods.registry import SETTING_DEFAULTS, MethodSpec, find_spec
from .methods.scores import (DEFAULT_SCORE, KNOWN_SCORES, MATCH_SCORES, check_count, explained_score, model_scores,
                             others_logsumexp, scale_refusal)
from .prompts import encode_texts, prompt_count, prompt_targets, zero_shot_classifier
from .results import ImageExplanation, TextExplanation
from .session import check_supported, explaining, release_frames, run_image_method, run_text_method
from .text import as_text_list, cut_words, group_words, token_pieces, word_spans

#: the text blocks explained by default (the authors sum the last 8)
TEXT_LAYERS = 8


def method_support(model: LoadedModel, method: str, **options: Any) -> str | None:
    """None when ``model``'s family can run the image method ``method`` with ``options``; otherwise why
    not (the ``UnsupportedMethodError`` message, naming method and family). Tried on one random picture
    at the model's image size against one random target (a caption for a matching head's score), with the
    method's cheap ``probe`` options (a refusal comes before any work). Other errors (bad options) are raised as they are."""
    model = as_loaded(model)
    get_image_method(method)  # an unknown name is an error, not "unsupported"
    reason = refusal(get_spec(method), model.adapter)  # what the declarations already say: no trial needed
    if reason is not None:
        return reason
    height, width = model.adapter.image_size
    pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    target = F.normalize(torch.randn(1, model.adapter.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    if options.get("score", method_default_score(model.adapter, get_spec(method))) in MATCH_SCORES:
        target = ["a photo"]  # a matching head reads a caption's tokens, not an embedding
    try:
        explain_image(model, pixels, target, method=method, progress=False, **probe_options(method, options))
    except UnsupportedMethodError as error:
        return str(error)
    return None




def method_default_score(adapter: Any, spec: MethodSpec | None) -> str:
    """The score a method explains when none is named: the first of the model's scores (its default first) that
    the method explains (a CLIP's cosine, a classifier's logit, BLIP's "itc", or its "itm" for a method that
    explains only that), else the method's first (the model's refusal of it then says why); the default cosine
    for a method that explains no score (or an unknown one)."""
    if spec is None or "score" not in spec.uses:
        return DEFAULT_SCORE
    return next((name for name in model_scores(adapter) if spec.explains(name)), spec.scores[0])


def check_score(model: LoadedModel, score: str, spec: MethodSpec | None = None) -> None:
    """An ``UnsupportedMethodError`` naming the score and the family when ``model`` cannot give ``score``
    (the logit and the probability need the model's logit scale; a classifier gives only those two), before
    any work. A method that explains no score (``spec``) runs with the default score, which stands for the
    model's own (a classifier's logit): that is no refusal."""
    if spec is not None and "score" not in spec.uses and score == DEFAULT_SCORE:
        return
    reason = scale_refusal(score, model.adapter)
    if reason is not None:
        raise UnsupportedMethodError(reason)


def explain_image(model: LoadedModel, images: Any, prompts: Any, *, method: str = "grad_eclip",
                  layers: int | Sequence[int] = (-1,), mode: str = "faithful", qk: str = "raw",
                  resolution: str = "native", labels: Sequence[str] | None = None, batch_size: int = 8,
                  max_patches: int = DEFAULT_MAX_PATCHES, progress: bool | None = None,
                  score: str | None = None, memory_budget: int | None = None, **options: Any) -> ImageExplanation:
    """Heat maps of images against prompts.

    ``images``: a path, a PIL image, a numpy array or integer tensor holding a picture (HWC or CHW,
    uint8 0-255, uint16, or float 0-1), a list of these, or a float tensor (3, H, W) / (B, 3, H, W) of
    preprocessed pixels used as is (see ``gradeclip_utils.inputs`` for the exact rule).
    ``prompts``: a string, a list of strings (empty strings give all-zero or weak maps, never NaN;
    texts longer than the context length are cut with a warning), or a (K, D) tensor of text
    embeddings (e.g. a zero-shot classifier; name them with ``labels``). For an image classifier
    (``wrap_model`` of a ViT classifier): classes, as indices or label names (``prompts.class_targets``:
    an unknown name or an index out of range is a ValueError naming the close matches or the range).
    ``layers``: block indices (negative from the end) or an int
    n for the last n blocks; several blocks combine as ReLU per block, then sum. ``mode``: "faithful"
    (the model's own multi-head blocks; scores equal the model's cosine) or "official" (the authors'
    single-head recomputation of the explained blocks: its scores, and so its maps, are not the model's;
    on the embedded model its cosines differ from the model's own by 0.057 on average and up to 0.40,
    the best of 35 prompts changes for 2.9% of images and zero-shot accuracy falls from 98.6% to 97.1%,
    docs/critique.md). ``qk``: "raw" or "out_proj" q and k for the
    spatial weight. ``resolution``: "native" (aspect kept, sides rounded to the patch size, positional
    embeddings interpolated; at most ``max_patches`` patches) or "model" (the model's preprocessing).

    ``score``: what the maps explain (``methods/scores.py``, docs/method.md "The explained score"); None
    (the default) is the model's default, "cosine" for a CLIP and "logit" for a classifier. A CLIP gives
    "cosine", "logit" (the model's logit scale x the cosine: the cosine's maps times the scale
    for Grad-ECLIP, Grad-CAM and LeGrad), "probability" (each prompt's softmax among the prompts given at
    the model's logit scale, the zero-shot class probability; a single prompt is a ValueError, its map
    being identically zero) or "contrast" (S(a) - S(b), the cosine of prompt a minus that of prompt b:
    give ``prompts`` as pairs, ``[("a red circle", "a blue circle"), ...]`` or a (K, 2, D) tensor; K pairs
    give K maps labelled "a rather than b"). ``scores`` hold the explained score (rows of probabilities sum
    to 1). Methods that take no gradient of a score (raw attention, rollout, MaskCLIP, CLIP Surgery, ITSM)
    refuse a score other than the cosine by name; a model without a logit scale (a Hugging Face
    vision/text pair) refuses the logit and the probability. An image classifier gives "logit" (its class
    logit) and "probability" (its softmax over all its classes, whatever classes are asked for); the methods
    that explain no score return its logits as ``scores``.

    Cost (Grad-ECLIP): per batch of images on one grid, one forward of the image tower and one batched
    backward of min(K, D) cotangents through the blocks after the earliest explained block (after
    the last block only the class-token row), whatever the number of prompts K: no per-prompt passes,
    whichever the score (the probability's and the contrast's cotangents are combinations of the
    per-prompt ones). Returns an ImageExplanation with raw maps (B, K, h, w), scores (B, K) and the settings used.

    Memory: the images run in chunks of at most ``batch_size`` whose estimated peak fits ``memory_budget``
    bytes (by default half the memory free on the model's device, at most 1 GiB), planned once for the
    largest patch grid from the method's declared cost (``budget.py``), which also sets the method's own
    inner chunk (GAME's targets per backward pass, M2IB's noise samples and RISE's masks per forward) to
    what fits. The settings record the images per chunk (``image_chunk``) and the inner chunk under its
    option's name: passing them back (``batch_size=``, the option) repeats the call's chunks. Chunks give
    the maps of one batch (images are independent; the inner chunks draw the same masks and noise). A budget
    below one image with one unit is a ValueError, before the model's first forward, naming the bytes it needs.

    State: nothing is left on the model: training flags and ``.grad`` tensors are restored, ``requires_grad`` is
    never touched, no hooks are registered, and no graph outlives the call, also when
    it raises. The same inputs give bit-identical maps on the CPU. Threads: calls on one model are
    serialised by a per-model lock (safe, but not parallel); different models run in parallel. Code
    that runs the model outside this package while an explanation is in progress sees it in eval mode.
    """
    model = as_loaded(model)
    if score is None:  # the model's default, for a method that explains a score
        score = method_default_score(model.adapter, find_spec(method))
    elif score in KNOWN_SCORES:  # a score the model does not give: said before what a method would say of it
        check_score(model, score, find_spec(method))
    config = ExplainConfig(method=method, layers=layers, mode=mode, qk=qk, resolution=resolution,
                           max_patches=max_patches, options=options, score=score, memory_budget=memory_budget)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    get_image_method(method)  # an unknown name is an error before any work
    spec = get_spec(method)
    check_supported(model, spec)  # so is a method the model's family cannot run
    check_score(model, config.score, spec)  # and a score the model cannot give
    adapter = model.adapter
    config = config.resolved(adapter, "image")
    prepared = prepare_images(model, images, config.resolution, max_patches=config.max_patches)
    # the chunks, planned before the model's first forward (the prompts' encoding) for the largest grid
    budget = resolve_budget(config.memory_budget, model.device)
    grid = max((grid_of(adapter, p.pixels.shape) for p in prepared), key=lambda g: g[0] * g[1])
    plan = image_plan(adapter, spec, grid, prompt_count(prompts, config.score), config.options,
                      adapter.resolve_layers(config.layers, "image"), budget, min(batch_size, len(prepared)))
    targets, names = prompt_targets(model, prompts, labels, score=config.score)
    config = config.with_options({**prepare_options(method, model, targets, config.options), **plan.options})
    running = replace(config, memory_budget=budget)  # every batch planned with the same budget
    raw: list[torch.Tensor | None] = [None] * len(prepared)
    scores = torch.zeros(len(prepared), len(names))
    batches = [indices[i:i + plan.images] for indices in group_by_shape(prepared).values()
               for i in range(0, len(indices), plan.images)]
    show = progress if progress is not None else len(batches) > 1
    try:
        with explaining(model.model):  # the lock held over all the batches
            for batch in tqdm(batches, desc=f"explain ({method})", disable=not show, leave=False):
                pixels = torch.stack([prepared[i].pixels for i in batch]).to(model.device)
                out = run_image_method(model, running, pixels, targets, inputs=[prepared[i].source for i in batch],
                                       image_chunk=plan.images)
                del pixels
                for row, index in enumerate(batch):
                    raw[index] = out.maps[row].clone()
                    scores[index] = out.scores[row]
                del out
    except BaseException as error:
        release_frames(error)
        raise
    return ImageExplanation(raw=raw, scores=scores, prompts=names, images=[p.display for p in prepared],
                            settings={**config.to_settings(model.describe()), "image_chunk": plan.images},
                            config=config)


@torch.no_grad()
def _other_texts(model: LoadedModel, config: ExplainConfig, tokens: torch.Tensor, image_targets: torch.Tensor,
                 chunk: int) -> torch.Tensor | None:
    """For the probability over texts run in several chunks: ``rest`` (K, B), each text's log-sum-exp of the
    other texts' logits for each image (``methods.scores.ExplainedScore``), from the cosines the method
    explains (the official mode's recomputed blocks where the method uses the mode) of all K texts, a chunk
    at a time without a graph. None otherwise (a single chunk sees all the texts itself)."""
    adapter = model.adapter
    score = explained_score(config.score, adapter)
    if not score.relative or chunk >= len(tokens):
        return None
    official = config.uses("mode") and config.mode == "official"
    blocks = adapter.resolve_layers(config.layers, "text") if official else []
    cosines = torch.cat([cosine_scores(adapter.trace_text(tokens[start:start + chunk].to(model.device), blocks,
                                                          mode=config.mode if official else "faithful").embedding,
                                       image_targets)
                         for start in range(0, len(tokens), chunk)])
    return others_logsumexp(score.scale * cosines.double(), dim=0)


def explain_text(model: LoadedModel, images: Any, texts: str | Sequence[str], *, method: str = "grad_eclip",
                 layers: int | Sequence[int] | None = None, mode: str = "faithful", qk: str = "raw",
                 resolution: str | None = None, max_patches: int = DEFAULT_MAX_PATCHES,
                 memory_budget: int | None = None, score: str | None = None, **options: Any) -> TextExplanation:
    """Importance of each word of each text for its match with each image.

    ``layers``: text blocks (an int n: the last n; by default 8, the authors sum the last 8; a method
    that takes no layers, such as GAME, refuses them). Relevance is summed over
    the blocks before the ReLU, restricted to the tokens between the start and end tokens and
    normalised to sum to 1; words get the sum of their BPE pieces. Cost: one forward of the image
    tower (no graph), one forward of the text tower for all K texts and one batched backward of
    min(B, D) cotangents. An empty or whitespace-only text has no words: its word list is empty and
    its importance row all zero. ``resolution`` of the image embedding: by default "native" in the
    faithful mode and "model" (the model's resize and centre crop, 224 for ViT-B) in the official mode,
    as the authors' text notebook embeds the image. State and threads: as for ``explain_image``.

    ``score``: what the word importance explains for each (image, text) pair: None (the default) is the model's
    default, "cosine" for a CLIP and "logit" for SigLIP (whose "probability" is each pair's sigmoid, one text
    having one too); "cosine", "logit" or "probability", each text's softmax among the texts given for the image at the model's logit scale
    (a single text is a ValueError). For text k the probability's gradient with respect to its own tokens
    is s p_k (1 - p_k) times the cosine's (the other texts' tokens are other inputs): a positive multiple,
    so Grad-ECLIP's word importances (normalised to sum 1) are the cosine's, for the logit too; ``scores``
    hold the explained score. "contrast" has no text side and is refused (``methods.scores.TEXT_CONTRAST``).

    Memory: the texts run in chunks whose graphs fit ``memory_budget`` bytes (by default half the memory
    free on the model's device, at most 1 GiB; ``budget.py`` states the estimate of one caption's cost from
    the model), each chunk one forward and one backward as above, so the peak is bounded whatever the
    number of texts; the results equal one batch of all texts (every method's texts are independent; the
    probability's softmax runs over all the texts: a forward without a graph over the texts gives each
    chunk the other texts' logits first). The settings record the chunk used (``caption_chunk``). A budget
    below one caption is a ValueError, before any work, naming the bytes one caption needs.
    """
    model = as_loaded(model)
    if resolution is None:
        resolution = "model" if mode == "official" else "native"
    spec = find_spec(method)
    if layers is None:
        layers = TEXT_LAYERS if spec is None or "layers" in spec.uses else SETTING_DEFAULTS["layers"]
    if score is None:  # the model's default, for a method that explains a score
        score = method_default_score(model.adapter, spec)
    elif score in KNOWN_SCORES:  # a score the model does not give: said before what a method would say of it
        check_score(model, score, spec)
    config = ExplainConfig(method=method, layers=layers, mode=mode, qk=qk, resolution=resolution,
                           max_patches=max_patches, options=options, score=score)
    get_text_method(method)
    config.check_uses(get_spec(method), "text")  # a score the text function does not explain (the contrast)
    check_supported(model, get_spec(method), "text")
    check_score(model, config.score)
    adapter = model.adapter
    config = config.resolved(adapter, "text")
    texts = as_text_list(texts, "texts")
    check_count(config.score, len(texts), "text", adapter)
    budget = default_budget(model.device) if memory_budget is None else memory_budget
    chunk = chunk_size(budget, caption_bytes(adapter), len(texts))
    prepared = prepare_images(model, images, config.resolution, max_patches=config.max_patches)
    tokens = model.tokenize(texts)
    try:
        with explaining(model.model):
            image_targets = torch.zeros(len(prepared), adapter.embed_dim, device=model.device)
            with torch.no_grad():
                for indices in group_by_shape(prepared).values():  # one forward per patch grid
                    pixels = torch.stack([prepared[i].pixels for i in indices]).to(model.device)
                    image_targets[indices] = F.normalize(adapter.encode_image(pixels).float(), dim=-1)
            rest = _other_texts(model, config, tokens, image_targets, chunk)
            relevance_parts, score_parts = [], []
            for start in range(0, len(texts), chunk):  # the graph of one chunk of texts at a time
                out = run_text_method(model, config, tokens[start:start + chunk], image_targets,
                                      rest=None if rest is None else rest[start:start + chunk])
                relevance_parts.append(out.relevance)
                score_parts.append(out.scores)
                del out
        relevance, text_scores = torch.cat(relevance_parts, dim=1), torch.cat(score_parts, dim=1)
        del relevance_parts, score_parts
    except BaseException as error:
        release_frames(error)
        raise
    spans = word_spans(model, tokens)
    pieces = [token_pieces(model, tokens[k, start:end].tolist()) for k, (start, end) in enumerate(spans)]
    words = [group_words(p) for p in pieces]
    n_images = len(prepared)
    token_importance = torch.zeros(n_images, len(texts), max(len(p) for p in pieces) or 1)
    word_importance = torch.zeros(n_images, len(texts), max(len(w) for w in words) or 1)
    for k in range(len(texts)):
        kept = relevance[:, k, spans[k][0]:spans[k][1]]
        total = kept.sum(dim=-1, keepdim=True)
        kept = torch.where(total > 0, kept / torch.where(total > 0, total, torch.ones_like(total)),
                           torch.zeros_like(kept))
        token_importance[:, k, :kept.shape[-1]] = kept
        for position, (_, members) in enumerate(words[k]):
            word_importance[:, k, position] = kept[:, members].sum(dim=-1)
    # the text settings record no method options (as they always have), and the chunk of texts per batch
    settings = {**config.to_settings(model.describe(), options=False), "caption_chunk": chunk}
    return TextExplanation(texts=texts, tokens=pieces, token_importance=token_importance,
                           words=[[w for w, _ in ws] for ws in words], word_importance=word_importance,
                           scores=text_scores, images=[p.display for p in prepared],
                           settings=settings, config=config,
                           truncated=[cut_words(model, text, kept) for text, kept in zip(texts, pieces)])
