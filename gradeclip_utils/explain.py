"""The public entry points: explain images against prompts, and the words of texts against images."""

from __future__ import annotations

import contextlib
import threading
import traceback
import weakref
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm  # text progress: it stays readable in a saved or reloaded notebook (a widget bar does not)

from .adapters import MODES, UnsupportedMethodError
from .inputs import DEFAULT_MAX_PATCHES, RESOLUTIONS, group_by_shape, prepare_images
from .loading import LoadedModel, as_loaded
from .methods import QK_CHOICES, get_image_method, get_text_method, prepare_options, probe_options
from .results import ImageExplanation, TextExplanation
from .text import as_text_list, group_words, token_pieces


KEEP_TRACEBACK_LOCALS = False
"""Set True to keep the locals of the package's frames in tracebacks (for a debugger); by default they
are released when an explanation raises, so that a kept exception (a notebook's last traceback) does
not keep the autograd graph and its activations alive."""

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises explanations of one model (re-entrant: nested calls are fine)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def explaining(model: nn.Module) -> Iterator[None]:
    """The state an explanation needs, restored exactly after, also when the explanation raises.

    For the duration: the model's lock is held (other explanations of the same model wait), every
    module is in eval mode (dropout and patch dropout off) and gradients are on. After: each module's
    training flag is as it was, and each parameter's ``.grad`` is the same tensor with the same
    values (a method that calls ``backward()`` accumulates into fresh tensors, dropped after).
    ``requires_grad`` is never touched: the adapter differentiates with respect to captured
    activations, so frozen models are explained as they are. Nothing is registered on the model.
    """
    with model_lock(model):
        flags = [(module, module.training) for module in model.modules()]
        grads = [(p, p.grad) for p in model.parameters()]
        try:
            model.eval()
            for p, grad in grads:
                if grad is not None:
                    p.grad = None
            with torch.enable_grad():
                yield
        finally:
            for module, flag in flags:
                module.training = flag
            for p, grad in grads:
                if p.grad is not grad:
                    p.grad = grad


def release_frames(error: BaseException) -> None:
    """Drop the locals of the finished frames of ``error``'s traceback (and of the errors it chains):
    they hold the graph and activations of the failed explanation."""
    if KEEP_TRACEBACK_LOCALS:
        return
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _run_method(model: LoadedModel, method: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a method; a method the model's family cannot run, and a half-precision model on the CPU
    that hits a missing kernel, get a clear error naming what is missing."""
    try:
        return fn(*args, **kwargs)
    except UnsupportedMethodError as error:
        raise UnsupportedMethodError(f"{method} is not available for {model.family} models: {error}") from None
    except RuntimeError as error:
        if model.adapter.dtype == torch.float16 and model.device.type == "cpu" and "Half" in str(error):
            raise RuntimeError(
                f"{method} failed on a half-precision (fp16) model on the CPU, where this torch build lacks a "
                f"kernel ({error}). Convert the model with model.float() (or .bfloat16()), or run it on a CUDA "
                "device.") from error
        raise


def method_support(model: LoadedModel, method: str, **options: Any) -> str | None:
    """None when ``model``'s family can run the image method ``method`` with ``options``; otherwise why
    not (the ``UnsupportedMethodError`` message, naming method and family). Tried on one random picture
    at the model's image size against one random target, with the method's cheap ``probe`` options (a
    refusal comes before any work). Other errors (bad options) are raised as they are."""
    model = as_loaded(model)
    get_image_method(method)  # an unknown name is an error, not "unsupported"
    height, width = model.adapter.image_size
    pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    target = F.normalize(torch.randn(1, model.adapter.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    try:
        explain_image(model, pixels, target, method=method, progress=False, **probe_options(method, options))
    except UnsupportedMethodError as error:
        return str(error)
    return None


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


@torch.no_grad()
def encode_texts(model: LoadedModel, texts: str | Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Unit-normalised text embeddings (K, D), float32, in batches."""
    texts = as_text_list(texts, "texts")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    adapter = model.adapter
    with explaining(model.model):
        with torch.no_grad():
            parts = [adapter.encode_text(model.tokenize(texts[i:i + batch_size]))
                     for i in range(0, len(texts), batch_size)]
    return F.normalize(torch.cat(parts).float(), dim=-1)


@torch.no_grad()
def zero_shot_classifier(model: LoadedModel, classnames: Sequence[str], templates: Sequence[Any],
                         batch_size: int = 2048, progress: bool = True) -> torch.Tensor:
    """A zero-shot classifier (C, D), float32, unit rows: for each class, the mean of its unit-normalised
    template embeddings, normalised again (CLIP's and the Grad-ECLIP authors' recipe). ``templates``
    are format strings with one ``{}`` or callables of the class name (open_clip's template lists); the
    texts of several classes are encoded together, about ``batch_size`` at a time."""
    if not classnames or not templates:
        raise ValueError("a zero-shot classifier needs at least one class name and one template")
    step = max(1, batch_size // len(templates))
    rows = []
    for start in tqdm(range(0, len(classnames), step), desc="zero-shot classifier", leave=False,
                      disable=not progress or len(classnames) <= step):
        group = classnames[start:start + step]
        texts = [t(name) if callable(t) else t.format(name) for name in group for t in templates]
        embedded = encode_texts(model, texts, batch_size=batch_size).reshape(len(group), len(templates), -1)
        rows.append(F.normalize(embedded.mean(dim=1), dim=-1))
    return torch.cat(rows)


def prompt_targets(model: LoadedModel, prompts: Any, labels: Sequence[str] | None = None
                   ) -> tuple[torch.Tensor, list[str]]:
    """Prompts (a string, strings, or a (K, D) tensor or numpy array of text embeddings) as
    unit-normalised targets."""
    if isinstance(prompts, np.ndarray):
        if prompts.dtype.kind != "f":
            raise TypeError(f"prompt embeddings must be floating point, got dtype {prompts.dtype}")
        prompts = torch.from_numpy(np.ascontiguousarray(prompts))
    if isinstance(prompts, torch.Tensor):
        if not prompts.is_floating_point():
            raise TypeError(f"prompt embeddings must be floating point, got dtype {prompts.dtype}")
        if prompts.ndim == 1:
            prompts = prompts.unsqueeze(0)
        dim = model.adapter.embed_dim
        if prompts.ndim != 2 or prompts.shape[1] != dim:
            raise ValueError(f"prompt embeddings must be (K, {dim}) for this model (its embedding width is {dim}), "
                             f"got {tuple(prompts.shape)}")
        if prompts.shape[0] == 0:
            raise ValueError("prompt embeddings are empty: give at least one")
        if not torch.isfinite(prompts).all() or (prompts.norm(dim=-1) == 0).any():
            raise ValueError("prompt embeddings must be finite and non-zero")
        targets = F.normalize(prompts.detach().float().to(model.device), dim=-1)
        names = [str(l) for l in labels] if labels is not None else [f"embedding {i}" for i in range(len(targets))]
    else:
        names = as_text_list(prompts, "prompts")
        targets = encode_texts(model, names).to(model.device)
        if labels is not None:
            names = [str(l) for l in labels]
    if len(names) != targets.shape[0]:
        raise ValueError(f"{len(names)} labels for {targets.shape[0]} prompts")
    return targets, names


def explain_image(model: LoadedModel, images: Any, prompts: Any, *, method: str = "grad_eclip",
                  layers: int | Sequence[int] = (-1,), mode: str = "faithful", qk: str = "raw",
                  resolution: str = "native", labels: Sequence[str] | None = None, batch_size: int = 8,
                  max_patches: int = DEFAULT_MAX_PATCHES, progress: bool | None = None,
                  **options: Any) -> ImageExplanation:
    """Heat maps of images against prompts.

    ``images``: a path, a PIL image, a numpy array or integer tensor holding a picture (HWC or CHW,
    uint8 0-255, uint16, or float 0-1), a list of these, or a float tensor (3, H, W) / (B, 3, H, W) of
    preprocessed pixels used as is (see ``gradeclip_utils.inputs`` for the exact rule).
    ``prompts``: a string, a list of strings (empty strings give all-zero or weak maps, never NaN;
    texts longer than the context length are cut with a warning), or a (K, D) tensor of text
    embeddings (e.g. a zero-shot classifier; name them with ``labels``). ``layers``: block indices (negative from the end) or an int
    n for the last n blocks; several blocks combine as ReLU per block, then sum. ``mode``: "faithful"
    (the model's own multi-head blocks; scores equal the model's cosine) or "official" (the authors'
    single-head recomputation of the explained blocks: its scores, and so its maps, are not the model's;
    on the embedded model its cosines differ from the model's own by 0.057 on average and up to 0.40,
    the best of 35 prompts changes for 2.9% of images and zero-shot accuracy falls from 98.6% to 97.1%,
    docs/critique.md). ``qk``: "raw" or "out_proj" q and k for the
    spatial weight. ``resolution``: "native" (aspect kept, sides rounded to the patch size, positional
    embeddings interpolated; at most ``max_patches`` patches) or "model" (the model's preprocessing).

    Cost (Grad-ECLIP): per batch of images on one grid, one forward of the image tower and one batched
    backward of min(K, D) cotangents through the blocks after the earliest explained block (after
    the last block only the class-token row), whatever the number of prompts K: no per-prompt passes.
    Returns an ImageExplanation with raw maps (B, K, h, w), scores (B, K) and the settings used.

    State: nothing is left on the model: training flags and ``.grad`` tensors are restored, ``requires_grad`` is
    never touched, no hooks are registered, and no graph outlives the call, also when
    it raises. The same inputs give bit-identical maps on the CPU. Threads: calls on one model are
    serialised by a per-model lock (safe, but not parallel); different models run in parallel. Code
    that runs the model outside this package while an explanation is in progress sees it in eval mode.
    """
    model = as_loaded(model)
    _check_choice("mode", mode, MODES)
    _check_choice("qk", qk, QK_CHOICES)
    _check_choice("resolution", resolution, RESOLUTIONS)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    fn = get_image_method(method)
    adapter = model.adapter
    absolute_layers = adapter.resolve_layers(layers, "image")
    targets, names = prompt_targets(model, prompts, labels)
    options = prepare_options(method, model, targets, options)
    prepared = prepare_images(model, images, resolution, max_patches=max_patches)
    raw: list[torch.Tensor | None] = [None] * len(prepared)
    scores = torch.zeros(len(prepared), len(names))
    batches = [indices[i:i + batch_size] for indices in group_by_shape(prepared).values()
               for i in range(0, len(indices), batch_size)]
    show = progress if progress is not None else len(batches) > 1
    try:
        with explaining(model.model):
            for batch in tqdm(batches, desc=f"explain ({method})", disable=not show, leave=False):
                pixels = torch.stack([prepared[i].pixels for i in batch]).to(model.device)
                out = _run_method(model, method, fn, adapter, pixels, targets, layers=absolute_layers, mode=mode,
                                  qk=qk, **options)
                maps, batch_scores = out.maps.detach().float().cpu(), out.scores.detach().float().cpu()
                del out, pixels
                if not (torch.isfinite(maps).all() and torch.isfinite(batch_scores).all()):
                    raise FloatingPointError(f"{method} produced non-finite maps or scores for "
                                             f"{[prepared[i].source for i in batch]} (are the model's weights finite?)")
                for row, index in enumerate(batch):
                    raw[index] = maps[row].clone()
                    scores[index] = batch_scores[row]
    except BaseException as error:
        release_frames(error)
        raise
    settings = {"method": method, "layers": absolute_layers, "mode": mode, "qk": qk, "resolution": resolution,
                **model.describe(), **{k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))}}
    return ImageExplanation(raw=raw, scores=scores, prompts=names, images=[p.display for p in prepared],
                            settings=settings)


def explain_text(model: LoadedModel, images: Any, texts: str | Sequence[str], *, method: str = "grad_eclip",
                 layers: int | Sequence[int] = 8, mode: str = "faithful", qk: str = "raw",
                 resolution: str | None = None, max_patches: int = DEFAULT_MAX_PATCHES,
                 **options: Any) -> TextExplanation:
    """Importance of each word of each text for its match with each image.

    ``layers``: text blocks (an int n: the last n; the authors sum the last 8). Relevance is summed over
    the blocks before the ReLU, restricted to the tokens between the start and end tokens and
    normalised to sum to 1; words get the sum of their BPE pieces. Cost: one forward of the image
    tower (no graph), one forward of the text tower for all K texts and one batched backward of
    min(B, D) cotangents. An empty or whitespace-only text has no words: its word list is empty and
    its importance row all zero. ``resolution`` of the image embedding: by default "native" in the
    faithful mode and "model" (the model's resize and centre crop, 224 for ViT-B) in the official mode,
    as the authors' text notebook embeds the image. State and threads: as for ``explain_image``.
    """
    model = as_loaded(model)
    _check_choice("mode", mode, MODES)
    _check_choice("qk", qk, QK_CHOICES)
    if resolution is None:
        resolution = "model" if mode == "official" else "native"
    _check_choice("resolution", resolution, RESOLUTIONS)
    fn = get_text_method(method)
    adapter = model.adapter
    absolute_layers = adapter.resolve_layers(layers, "text")
    texts = as_text_list(texts, "texts")
    prepared = prepare_images(model, images, resolution, max_patches=max_patches)
    tokens = model.tokenize(texts)
    try:
        with explaining(model.model):
            image_targets = torch.zeros(len(prepared), adapter.embed_dim, device=model.device)
            with torch.no_grad():
                for indices in group_by_shape(prepared).values():  # one forward per patch grid
                    pixels = torch.stack([prepared[i].pixels for i in indices]).to(model.device)
                    image_targets[indices] = F.normalize(adapter.encode_image(pixels).float(), dim=-1)
            out = _run_method(model, method, fn, adapter, tokens, image_targets, layers=absolute_layers, mode=mode,
                              qk=qk, **options)
        relevance, text_scores = out.relevance.detach().float().cpu(), out.scores.detach().float().cpu()
        del out
        if not (torch.isfinite(relevance).all() and torch.isfinite(text_scores).all()):
            raise FloatingPointError(f"{method} produced non-finite relevance or scores (are the model's weights "
                                     "finite?)")
    except BaseException as error:
        release_frames(error)
        raise
    eos = adapter.text_token_index(tokens).cpu()
    pieces = [token_pieces(model, tokens[k, 1:int(eos[k])].tolist()) for k in range(len(texts))]
    words = [group_words(p) for p in pieces]
    n_images = len(prepared)
    token_importance = torch.zeros(n_images, len(texts), max(len(p) for p in pieces) or 1)
    word_importance = torch.zeros(n_images, len(texts), max(len(w) for w in words) or 1)
    for k in range(len(texts)):
        kept = relevance[:, k, 1:int(eos[k])]
        total = kept.sum(dim=-1, keepdim=True)
        kept = torch.where(total > 0, kept / torch.where(total > 0, total, torch.ones_like(total)),
                           torch.zeros_like(kept))
        token_importance[:, k, :kept.shape[-1]] = kept
        for position, (_, members) in enumerate(words[k]):
            word_importance[:, k, position] = kept[:, members].sum(dim=-1)
    settings = {"method": method, "layers": absolute_layers, "mode": mode, "qk": qk, "resolution": resolution,
                **model.describe()}
    return TextExplanation(texts=texts, tokens=pieces, token_importance=token_importance,
                           words=[[w for w, _ in ws] for ws in words], word_importance=word_importance,
                           scores=text_scores, images=[p.display for p in prepared], settings=settings)
