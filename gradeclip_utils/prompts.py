"""Prompts as targets: texts encoded to unit embeddings, zero-shot classifiers, and the prompts of an
explanation (texts or embeddings) as unit-normalised targets."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm  # text progress: it stays readable in a saved or reloaded notebook (a widget bar does not)

from .loading import LoadedModel
from .guard import explaining
from .methods.scores import DEFAULT_SCORE, check_count
from .text import as_text_list


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


def prompt_count(prompts: Any, score: str = DEFAULT_SCORE) -> int:
    """How many explained scores (K) ``prompt_targets`` makes of ``prompts`` with ``score``, without encoding
    them (nor checking them): the contrast's pairs count one each."""
    if isinstance(prompts, (np.ndarray, torch.Tensor)):
        return 1 if prompts.ndim < 2 else int(prompts.shape[0])
    if isinstance(prompts, str):
        return 1
    if score == "contrast" and isinstance(prompts, tuple) and len(prompts) == 2 and all(
            isinstance(p, str) for p in prompts):
        return 1  # one pair (``_pair_texts``)
    try:
        return max(1, len(prompts))
    except TypeError:
        return 1


def prompt_targets(model: LoadedModel, prompts: Any, labels: Sequence[str] | None = None,
                   score: str = DEFAULT_SCORE) -> tuple[torch.Tensor, list[str]]:
    """Prompts as unit-normalised targets (T, D) and the names of the K explained scores.

    ``prompts``: a string, strings, or a (K, D) tensor or numpy array of text embeddings (T = K). With
    ``score="contrast"``: pairs (a, b), a list of 2-tuples of strings (one tuple of two strings is one pair)
    or a (K, 2, D) tensor or array, as T = 2K rows a_1, b_1, a_2, b_2, ... named "a rather than b".
    ``labels`` name the K scores. A count the score cannot take (the probability among a single prompt)
    is a ValueError before any text is encoded (``methods.scores.check_count``)."""
    pairs = score == "contrast"
    if isinstance(prompts, np.ndarray):
        if prompts.dtype.kind != "f":
            raise TypeError(f"prompt embeddings must be floating point, got dtype {prompts.dtype}")
        prompts = torch.from_numpy(np.ascontiguousarray(prompts))
    if isinstance(prompts, torch.Tensor):
        targets = _embedding_targets(model, prompts, pairs)
        count = targets.shape[0] // (2 if pairs else 1)
        check_count(score, count)
        if labels is not None:
            names = [str(l) for l in labels]
        elif pairs:
            names = [f"embedding {i}a rather than embedding {i}b" for i in range(count)]
        else:
            names = [f"embedding {i}" for i in range(count)]
    elif pairs:
        texts, names = _pair_texts(prompts)
        targets = encode_texts(model, texts).to(model.device)
        if labels is not None:
            names = [str(l) for l in labels]
    else:
        names = as_text_list(prompts, "prompts")
        check_count(score, len(names))
        targets = encode_texts(model, names).to(model.device)
        if labels is not None:
            names = [str(l) for l in labels]
    if len(names) * (2 if pairs else 1) != targets.shape[0]:
        raise ValueError(f"{len(names)} labels for {targets.shape[0] // (2 if pairs else 1)} "
                         f"{'pairs of prompts' if pairs else 'prompts'}")
    return targets, names


def _embedding_targets(model: LoadedModel, prompts: torch.Tensor, pairs: bool) -> torch.Tensor:
    """A (K, D) tensor of embeddings (pairs: (K, 2, D)) checked and unit-normalised as (T, D) targets."""
    if not prompts.is_floating_point():
        raise TypeError(f"prompt embeddings must be floating point, got dtype {prompts.dtype}")
    dim = model.adapter.embed_dim
    if pairs:
        if prompts.ndim != 3 or prompts.shape[1:] != (2, dim):
            raise ValueError(f"score='contrast' takes prompt embeddings as pairs (K, 2, {dim}) for this model (a "
                             f"rather than b in each row), got {tuple(prompts.shape)}")
        prompts = prompts.reshape(-1, dim)
    elif prompts.ndim == 1:
        prompts = prompts.unsqueeze(0)
    if prompts.ndim != 2 or prompts.shape[1] != dim:
        raise ValueError(f"prompt embeddings must be (K, {dim}) for this model (its embedding width is {dim}), "
                         f"got {tuple(prompts.shape)}")
    if prompts.shape[0] == 0:
        raise ValueError("prompt embeddings are empty: give at least one")
    if not torch.isfinite(prompts).all() or (prompts.norm(dim=-1) == 0).any():
        raise ValueError("prompt embeddings must be finite and non-zero")
    return F.normalize(prompts.detach().float().to(model.device), dim=-1)


def _pair_texts(prompts: Any) -> tuple[list[str], list[str]]:
    """The texts a_1, b_1, a_2, b_2, ... of the contrast's pairs, and the names "a rather than b"."""
    if isinstance(prompts, tuple) and len(prompts) == 2 and all(isinstance(p, str) for p in prompts):
        prompts = [prompts]  # one pair
    shape = "pairs (a, b), e.g. [('a red circle', 'a blue circle')]"
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise TypeError(f"score='contrast' takes its prompts as {shape}; got {prompts!r}")
    bad = [p for p in prompts if not isinstance(p, (list, tuple)) or len(p) != 2]
    if bad:
        raise TypeError(f"score='contrast' takes its prompts as {shape}; got {bad[0]!r}")
    texts = as_text_list([text for pair in prompts for text in pair], "the contrast's prompts")
    return texts, [f"{a} rather than {b}" for a, b in zip(texts[0::2], texts[1::2])]
