"""Prompts as targets: texts encoded to unit embeddings, zero-shot classifiers, and the prompts of an
explanation (texts or embeddings) as unit-normalised targets; for an image classifier, classes (indices or
label names) as one-hot rows over its classes (``class_targets``)."""

from __future__ import annotations

import difflib
import numbers
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm  # text progress: it stays readable in a saved or reloaded notebook (a widget bar does not)

from .loading import LoadedModel
from .guard import explaining
from .methods.scores import DEFAULT_SCORE, MATCH_SCORES, check_count, is_classifier
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
    is a ValueError before any text is encoded (``methods.scores.check_count``). An image classifier's
    prompts are classes (``class_targets``); a match score's, captions as token ids (``caption_targets``)."""
    if is_classifier(model.adapter):
        return class_targets(model, prompts, labels)
    if score in MATCH_SCORES:
        return caption_targets(model, prompts, labels, score)
    pairs = score == "contrast"
    if isinstance(prompts, np.ndarray):
        if prompts.dtype.kind != "f":
            raise TypeError(f"prompt embeddings must be floating point, got dtype {prompts.dtype}")
        prompts = torch.from_numpy(np.ascontiguousarray(prompts))
    if isinstance(prompts, torch.Tensor):
        targets = _embedding_targets(model, prompts, pairs)
        count = targets.shape[0] // (2 if pairs else 1)
        check_count(score, count, adapter=model.adapter)
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
        check_count(score, len(names), adapter=model.adapter)
        targets = encode_texts(model, names).to(model.device)
        if labels is not None:
            names = [str(l) for l in labels]
    if len(names) * (2 if pairs else 1) != targets.shape[0]:
        raise ValueError(f"{len(names)} labels for {targets.shape[0] // (2 if pairs else 1)} "
                         f"{'pairs of prompts' if pairs else 'prompts'}")
    return targets, names


def caption_targets(model: LoadedModel, prompts: Any, labels: Sequence[str] | None = None,
                    score: str = MATCH_SCORES[0]) -> tuple[torch.Tensor, list[str]]:
    """The prompts of a match score (``methods.scores.MATCH_SCORES``: BLIP's "itm", whose head reads the whole
    caption with the image) as the captions' token ids (K, L), and their names: captions must be texts
    (embeddings are refused, with the reason)."""
    if isinstance(prompts, (np.ndarray, torch.Tensor)):
        raise ValueError(f"score={score!r} reads each caption's words with the image through the text encoder's "
                         "cross-attention: give the captions as text, not as embeddings")
    names = as_text_list(prompts, "prompts")
    if labels is not None:
        names = [str(label) for label in labels]
        if len(names) != len(prompts if isinstance(prompts, (list, tuple)) else [prompts]):
            raise ValueError(f"{len(names)} labels for {len(as_text_list(prompts))} prompts")
    return model.tokenize(as_text_list(prompts, "prompts")), names


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


# ---------------------------------------------------------------------------------------- classifiers
def class_targets(model: LoadedModel, prompts: Any, labels: Sequence[str] | None = None
                  ) -> tuple[torch.Tensor, list[str]]:
    """An image classifier's prompts as targets (K, L) over its L classes, and the names of the K scores.

    ``prompts``: a class index, a label name, a list of these, or an integer tensor or array of indices: each
    becomes the one-hot row of its class (``class_index``), named by its label (or by ``labels``). A float
    (K, L) tensor or array is taken as K weightings of the classes as they are (the score of row t is
    t . logits, or t . probabilities), named "weighting k" (or by ``labels``).
    """
    adapter = model.adapter
    count = adapter.num_classes
    if isinstance(prompts, np.ndarray):
        prompts = torch.from_numpy(np.ascontiguousarray(prompts))
    if isinstance(prompts, torch.Tensor) and prompts.is_floating_point():
        rows = prompts.unsqueeze(0) if prompts.ndim == 1 else prompts
        if rows.ndim != 2 or rows.shape[1] != count or rows.shape[0] == 0 or not torch.isfinite(rows).all():
            raise ValueError(f"class weightings must be a finite (K, {count}) tensor for this classifier of {count} "
                             f"classes, got {tuple(prompts.shape)}; give classes as indices or label names")
        targets, names = rows.detach().float(), [f"weighting {k}" for k in range(rows.shape[0])]
    else:
        if isinstance(prompts, torch.Tensor):
            prompts = prompts.reshape(-1).tolist()
        items = [prompts] if isinstance(prompts, (str, numbers.Integral)) else prompts
        if not isinstance(items, (list, tuple)) or not items:
            raise TypeError(f"a classifier's prompts are class indices or label names (one, or a non-empty list), "
                            f"got {prompts!r}")
        indices = [class_index(adapter.labels, item) for item in items]
        targets = F.one_hot(torch.tensor(indices), count).float()
        names = [adapter.labels[i] for i in indices]
    if labels is not None:
        names = [str(label) for label in labels]
        if len(names) != targets.shape[0]:
            raise ValueError(f"{len(names)} labels for {targets.shape[0]} classes")
    return targets.to(model.device), names


def class_index(labels: Sequence[str], item: Any) -> int:
    """The index of class ``item`` among a classifier's ``labels``: an index in range, or a label name, matched
    whole, then case-insensitively whole or as one of its comma-separated names ("tabby" for "tabby, tabby
    cat"), or else a string of digits as an index ("281", as typed in a box). An unknown name is a ValueError
    listing the close matches; an ambiguous one lists its classes."""
    count = len(labels)
    if isinstance(item, bool) or not isinstance(item, (str, numbers.Integral)):
        raise TypeError(f"a class is an index or a label name, got {item!r}")
    if isinstance(item, str) and item.strip().isdigit() and item not in labels:
        item = int(item)
    if isinstance(item, numbers.Integral):
        if not 0 <= int(item) < count:
            raise ValueError(f"class index {int(item)} is out of range: this classifier has {count} classes "
                             f"(indices 0 to {count - 1})")
        return int(item)
    if item in labels:
        return list(labels).index(item)
    key = item.strip().lower()
    names = {i: [label.strip().lower(), *(part.strip().lower() for part in label.split(","))]
             for i, label in enumerate(labels)}
    found = [i for i, choices in names.items() if key in choices]
    if len(found) == 1:
        return found[0]
    if not found and key.isascii() and key.isdigit():  # a label spelt with digits was matched above: this is an index
        return class_index(labels, int(key))
    if found:
        listed = ", ".join(f"{labels[i]!r} ({i})" for i in found[:10])
        raise ValueError(f"class name {item!r} names {len(found)} classes: {listed}; give the full label or the index")
    # the labels holding the name as a word ("cat": "tabby, tabby cat"), then the names spelt alike
    words = [i for i, label in enumerate(labels) if key in label.lower().replace(",", " ").split()]
    every = sorted({choice for choices in names.values() for choice in choices if choice})
    close = difflib.get_close_matches(key, every, n=5, cutoff=0.6)
    alike = [i for c in close for i, choices in names.items() if c in choices]
    matches = [f"{labels[i]!r} ({i})" for i in dict.fromkeys(words + alike)][:8]
    hint = f"; close matches: {', '.join(matches)}" if matches else ""
    raise ValueError(f"unknown class name {item!r}: it is none of this classifier's {count} class labels{hint}")


def class_entries(labels: Sequence[str], items: Sequence[Any]) -> list[dict[str, Any]]:
    """The classes ``items`` (indices or label names, as ``class_index`` reads them) as records name them:
    ``{"index": i, "label": labels[i]}`` each."""
    return [{"index": index, "label": labels[index]} for index in (class_index(labels, item) for item in items)]


def folder_classes(labels: Sequence[str], folders: Sequence[str]) -> list[int]:
    """The class index, among a classifier's ``labels``, of each class folder of an ImageNet-style tree:
    ImageNet's wnid folders ("n01440764") by their place among ImageNet-1k's 1000 wnids, for a classifier of
    1000 classes whose labels are not the wnids themselves; any other folder as ``class_index`` takes a class
    (a label name, "_" read as a space, or an index). A folder that names no class is a ValueError naming
    the folder, with ``class_index``'s close matches."""
    wnids = _imagenet_wnids() if len(labels) == 1000 else {}
    indices = []
    for folder in folders:
        if folder in wnids and folder not in labels:
            indices.append(wnids[folder])
            continue
        try:
            indices.append(class_index(labels, folder if folder in labels else folder.replace("_", " ")))
        except ValueError as error:
            raise ValueError(f"class folder {folder!r}: {error}") from None
    return indices


def _imagenet_wnids() -> dict[str, int]:
    """ImageNet-1k's wnids in the classifiers' order (sorted: timm's ``ImageNetInfo``), each with its index."""
    from timm.data import ImageNetInfo

    return {wnid: i for i, wnid in enumerate(ImageNetInfo().label_names())}
