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


def prompt_count(prompts: Any) -> int:
    """How many prompts ``prompt_targets`` makes of ``prompts``, without encoding them (nor checking them)."""
    if isinstance(prompts, (np.ndarray, torch.Tensor)):
        return 1 if prompts.ndim < 2 else int(prompts.shape[0])
    if isinstance(prompts, str):
        return 1
    try:
        return max(1, len(prompts))
    except TypeError:
        return 1


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
